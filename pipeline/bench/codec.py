"""``bench codec``: median encode/decode time of the two codecs and CompressAI's bmshj2018-hyperprior."""

from __future__ import annotations

import statistics
import time
from functools import partial
from typing import Any


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_codec_bench(
    repeats: int = 5,
    n: int = 192,
    threads: int = 0,
) -> None:
    """Median encode/decode time on a 768×512 image: every registered codec at its first paper configuration
    (proposed (64,192,2), choi2022 (128,64,1), bmshj2018 (192)) and CompressAI's own bmshj2018-hyperprior at
    the same N, measured side by side. The weights are
    untrained (seeded): the transforms cost the same whatever the weights, but rANS time grows
    with the number of symbols coded, so trained models at high rate code more slowly."""
    import torch
    from compressai.models import ScaleHyperprior
    from rich.console import Console
    from rich.table import Table

    from dvcm import bitstream
    from dvcm.registry import CODECS, build
    from dvcm.yolo import build_yolov3
    from pipeline.data.sample_data import sample_image

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.from_numpy(sample_image(seed=1, size=(768, 512))).permute(2, 0, 1).unsqueeze(0).float() / 255
    yolo = build_yolov3(None, seed=0)
    rows: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        ref = ScaleHyperprior(n, 320).eval()
        ref.update(force=True)
        coded = ref.compress(x)
        rows["bmshj2018-hyperprior (reference)"] = {
            "encode": _median_time(lambda: ref.compress(x), repeats),
            "decode": _median_time(lambda: ref.decompress(coded["strings"], coded["shape"]), repeats),
            "bytes": float(sum(len(s[0]) for s in coded["strings"])),
        }
        for spec in CODECS.values():
            text = spec.defaults("paper")[0]
            model = build(spec.name, front=yolo.front, N=n, **spec.parse(text)).eval()
            model.update(force=True)
            data = bitstream.compress(model, x)
            rows[f"{spec.name} ({text})"] = {
                "encode": _median_time(partial(bitstream.compress, model, x), repeats),
                "decode": _median_time(partial(bitstream.decode, model, data), repeats),
                "base-only decode": _median_time(partial(bitstream.decode_base, model, data), repeats),
                "bytes": float(len(data)),
            }
    table = Table(title=f"Codec timing, 768×512, median of {repeats}, {torch.get_num_threads()} threads (CPU)")
    for col in ("codec", "encode ms", "full decode ms", "base-only decode ms"):
        table.add_column(col, justify="right" if col != "codec" else "left")
    for name, r in rows.items():
        base = f"{r['base-only decode'] * 1e3:.0f}" if "base-only decode" in r else "-"
        table.add_row(name, f"{r['encode'] * 1e3:.0f}", f"{r['decode'] * 1e3:.0f}", base)
    console = Console()
    console.print(table)
    ref_row, prop = rows["bmshj2018-hyperprior (reference)"], rows["proposed (64,192,2)"]
    ratios = [
        ("proposed full decode / reference decode", prop["decode"] / ref_row["decode"], 1.5),
        ("proposed base-only decode / proposed full decode", prop["base-only decode"] / prop["decode"], 0.5),
        ("proposed encode (V_front included) / reference encode", prop["encode"] / ref_row["encode"], 2.5),
    ]
    for label, value, target in ratios:
        verdict = "meets" if value <= target else "MISSES"
        console.print(f"{label}: {value:.2f}x (target <= {target}x: {verdict})")
    console.print(complexity_table(n, yolo))


def complexity_table(n: int, yolo: Any) -> Any:  # yolo: dvcm.yolo.YOLOv3; returns a rich.table.Table
    """Parameters and kMAC per pixel of each part of every registered codec at its first paper configuration
    (dvcm.complexity)."""
    from rich.table import Table

    from dvcm.complexity import HEIGHT, PARTS, WIDTH, codec_complexity
    from dvcm.registry import CODECS, build

    table = Table(title=f"Complexity at {WIDTH}×{HEIGHT} (torch FlopCounterMode): parameters / kMAC per pixel")
    table.add_column("codec")
    for part in PARTS:
        table.add_column(part.replace("_", " "), justify="right")
    for spec in CODECS.values():
        text = spec.defaults("paper")[0]
        parts = codec_complexity(build(spec.name, front=yolo.front, N=n, **spec.parse(text)))
        table.add_row(
            f"{spec.name} ({text})",
            *(f"{parts[p]['params'] / 1e6:.2f}M / {parts[p]['kmac_per_pixel']:.1f}" for p in PARTS),
        )
    return table
