"""``dvcm-pipeline bench evaluate``: images/s of the COCO and Kodak paths per stage, 1 vs 2 Ray workers.

Stages are timed inside the Ray tasks (encode, decode, V_back, scoring) and summed; the
wall-clock rate of a whole pass shows how the job scales when the chunks run on one worker
at a time or on two side by side. Both passes run in the same process, on the same images,
with the same tiny codec, one after the other.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def _tiny_checkpoint(folder: Path, n: int, m1: int, m2: int, seed: int) -> Path:
    import torch

    from dvcm.checkpoint import save_checkpoint
    from dvcm.registry import build
    from pipeline.evaluation.tasks import Settings, detector

    torch.manual_seed(seed)
    yolo = detector(Settings())
    model = build("proposed", front=yolo.front, yolo_provenance=dict(yolo.provenance), N=n, M1=m1, M2=m2, H=2)
    path = folder / "bench.pt"
    save_checkpoint(path, model, extra={"lmbda": 0.01})
    return path


def run_evaluate_bench(
    images: int = 4,
    n: int = 32,
    data: Path | None = None,
    address: str | None = None,
) -> None:
    """Print images/s per stage for the COCO and Kodak paths with 1 and 2 Ray workers, and the ratios."""
    import ray
    from rich.console import Console
    from rich.table import Table

    from pipeline.data.sample_data import generate_sample
    from pipeline.evaluation.targets import ImageItem
    from pipeline.evaluation.tasks import Settings, run_codec_chunk
    from pipeline.infra.ray_runtime import init_ray

    init_ray(address, num_cpus=2)
    with tempfile.TemporaryDirectory(prefix="dvcm-bench-") as tmp:
        sample = generate_sample(data or Path(tmp) / "sample", coco_images=images, kodak_images=images)
        ckpt = _tiny_checkpoint(Path(tmp), n, n // 2, n, 0)
        coco = [
            ImageItem(str(p), 100 + 37 * i) for i, p in enumerate(sorted((sample.coco_root / "val2014").glob("*.jpg")))
        ][:images]
        kodak = [ImageItem(str(p)) for p in sorted(sample.kodak_root.glob("*.png"))][:images]
        task = ray.remote(run_codec_chunk)
        rows = []
        for dataset, items in (("coco", coco), ("kodak", kodak)):
            for workers in (1, 2):
                s = Settings(threads=2 // workers)
                chunks = [items[i::workers] for i in range(workers)]
                # warm-up: one task per worker, side by side, so that every worker has loaded the models
                ray.get(
                    [task.options(num_cpus=s.threads).remote(str(ckpt), dataset, items[:1], s) for _ in range(workers)]
                )
                t0 = time.perf_counter()
                outs = ray.get([task.options(num_cpus=s.threads).remote(str(ckpt), dataset, c, s) for c in chunks])
                wall = time.perf_counter() - t0
                r = [row for o in outs for row in o["rows"]]
                stage = {k: sum(row[k] for row in r) for k in ("t_encode", "t_decode", "t_back", "t_score")}
                rows.append(
                    (
                        dataset,
                        workers,
                        len(r) / wall,
                        {k: len(r) / v if v > 0 else float("inf") for k, v in stage.items()},
                    )
                )
    con = Console(width=120)
    table = Table(title="bench evaluate: images/s (tiny random codec, random-weight YOLOv3, this machine)")
    for col in ("path", "workers", "end-to-end", "encode", "decode", "V_back", "scoring", "speed-up vs 1 worker"):
        table.add_column(col)
    base = {d: ips for d, w, ips, _ in rows if w == 1}
    for d, w, ips, st in rows:
        vback = "-" if d == "kodak" else f"{st['t_back']:.2f}"
        table.add_row(
            d,
            str(w),
            f"{ips:.2f}",
            f"{st['t_encode']:.2f}",
            f"{st['t_decode']:.2f}",
            vback,
            f"{st['t_score']:.2f}",
            f"{ips / base[d]:.2f}x",
        )
    con.print(table)
    con.print("Per-stage rates are per worker (stage time summed over images); end-to-end is wall clock.")
