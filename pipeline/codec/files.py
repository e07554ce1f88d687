"""Codec commands: ``compress``, ``decompress`` (full or ``--base-only``), ``demo`` and ``bench codec``."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from pipeline.infra.atomic import atomic_write_bytes, atomic_write_json
from pipeline.infra.errors import UserError


def load_image(path: Path):  # -> torch.Tensor [1,3,H,W] in [0,1]
    """Read an image file as RGB in [0,1]; a clear error for a missing or unreadable file."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import to_tensor

    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return to_tensor(im.convert("RGB")).unsqueeze(0)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UserError(f"cannot read {path} as an image ({exc}); pass a PNG or JPEG file") from None


def save_png(x, path: Path) -> None:  # x: torch.Tensor [1,3,H,W] in [0,1]
    import io

    from torchvision.transforms.functional import to_pil_image

    buf = io.BytesIO()
    to_pil_image(x[0].clamp(0, 1)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def resolve_yolo(provenance: dict[str, Any], weights: Path | None):  # -> dvcm.yolo.YOLOv3
    """The YOLOv3 a checkpoint was trained with: ``--yolo-weights``, or the seed it records."""
    from dvcm.yolo import build_yolov3

    if weights is None:
        source = str(provenance.get("weights", "seeded-random:0"))
        if not source.startswith("seeded-random:"):
            raise UserError(f"the checkpoint was trained with YOLO weights {source}; pass them with --yolo-weights")
        yolo = build_yolov3(None, seed=int(source.split(":", 1)[1]))
    else:
        if not weights.is_file():
            raise UserError(f"YOLO weights not found: {weights}")
        yolo = build_yolov3(weights)
    want = provenance.get("weights_sha256")
    if want and want != yolo.provenance["weights_sha256"]:
        raise UserError(
            f"YOLO weights sha256 {yolo.provenance['weights_sha256'][:12]}… differ from the checkpoint's "
            f"{want[:12]}…; pass the weights the codec was trained with"
        )
    return yolo


def compress_command(
    image: Annotated[Path, typer.Argument(help="PNG/JPEG image to code.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .dvcm file.")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Codec checkpoint (.pt).")],
) -> None:
    """Code an image into a two-layer file (base layer for machines, enhancement for humans)."""
    from dvcm import bitstream
    from dvcm.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    x = load_image(image)
    data = bitstream.compress(model, x)
    atomic_write_bytes(output, data)
    sizes = bitstream.layer_sizes(data)
    pixels = x.shape[-2] * x.shape[-1]
    typer.echo(
        f"{output}: {len(data)} bytes, {len(data) * 8 / pixels:.4f} bpp "
        f"(header {sizes['header']} B, base {sizes['base'] * 8 / pixels:.4f} bpp, "
        f"enhancement {sizes['enhancement'] * 8 / pixels:.4f} bpp)"
    )


def _read_stream(path: Path) -> bytes:
    if not path.is_file():
        raise UserError(f"bitstream not found: {path}")
    return path.read_bytes()


def decompress_command(
    file: Annotated[Path, typer.Argument(help="A .dvcm file (whole, or its base layer only).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="x̂ as PNG; with --base-only a path stem for .npy/.json.")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="The checkpoint that coded the file.")],
    base_only: Annotated[bool, typer.Option("--base-only", help="Decode the base layer only: ŝ and YOLOv3 detections.")] = False,
    yolo_weights: Annotated[Optional[Path], typer.Option(help="Darknet yolov3.weights (default: the checkpoint's seeded YOLO).")] = None,
    conf_thres: Annotated[float, typer.Option(help="Detection confidence threshold.")] = 0.25,
    nms_iou: Annotated[float, typer.Option(help="NMS IoU threshold.")] = 0.45,
) -> None:
    """Decode a file: the image (both layers), or with --base-only ŝ (.npy) and detections (.json)."""
    import numpy as np

    from dvcm import bitstream
    from dvcm.checkpoint import load_checkpoint

    data = _read_stream(file)
    model, meta = load_checkpoint(checkpoint)
    if not base_only:
        x_hat = bitstream.decode(model, data)
        save_png(x_hat, output)
        typer.echo(f"{output}: {x_hat.shape[-1]}x{x_hat.shape[-2]} image from {len(data)} bytes")
        return
    s_hat = bitstream.decode_base(model, data)
    header = bitstream.read_header(data)
    stem = output.with_suffix("") if output.suffix in (".npy", ".json") else output
    npy, det_path = stem.with_suffix(".npy"), stem.with_suffix(".detections.json")
    import io

    buf = io.BytesIO()
    np.save(buf, s_hat[0].numpy())
    atomic_write_bytes(npy, buf.getvalue())
    yolo = resolve_yolo(meta.get("yolo") or {}, yolo_weights)
    from dvcm.yolo import COCO80_TO_COCO91, decode_detections

    import torch

    with torch.no_grad():
        (det,) = decode_detections(yolo.back(s_hat), header.hw, conf_thres=conf_thres, nms_iou=nms_iou)
    detections = [
        {"bbox_xyxy": [round(float(v), 2) for v in box], "score": float(score), "label": int(label),
         "category_id": COCO80_TO_COCO91[int(label)]}
        for box, score, label in zip(det["boxes"], det["scores"], det["labels"])
    ]  # fmt: skip
    random = bool(yolo.provenance.get("random_weights"))
    atomic_write_json(det_path, {
        "image_hw": list(header.hw),
        "base_layer_bytes": bitstream.HEADER_SIZE + header.base_length,
        "yolo": {**yolo.provenance, "note": "random-weight YOLOv3: detections are meaningless" if random else ""},
        "detections": detections,
    })  # fmt: skip
    label = " (random-weight YOLOv3)" if random else ""
    typer.echo(f"{npy}: ŝ {tuple(s_hat.shape[1:])}; {det_path}: {len(detections)} detections{label}")


def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for the demo's files.")] = Path("dvcm-demo"),
) -> None:
    """Round trip on an embedded image with an untrained codec: compress, base-only decode, full decode."""
    from dvcm import bitstream
    from dvcm.models import build
    from dvcm.yolo import build_yolov3
    import torch

    from pipeline.data.sample_data import sample_image

    torch.manual_seed(0)
    x = torch.from_numpy(sample_image(seed=1, size=(768, 512))).permute(2, 0, 1).unsqueeze(0).float() / 255
    yolo = build_yolov3(None, seed=0)
    typer.echo("YOLOv3 uses seeded random weights (seed 0); the codec is untrained: this shows the file format only.")
    for name, cfg in (("proposed", dict(N=64, M1=64, M2=192, H=2)), ("choi2022", dict(N=64, M1=128, M2=64, H=1))):
        model = build(name, front=yolo.front, yolo_provenance=yolo.provenance, **cfg)
        model.update(force=True)
        data = bitstream.compress(model, x)
        s_hat = bitstream.decode_base(model, bitstream.base_layer(data))
        x_hat = bitstream.decode(model, data)
        sizes = bitstream.layer_sizes(data)
        pixels = x.shape[-1] * x.shape[-2]
        mse = torch.mean((x - x_hat) ** 2).item()
        path = out / f"{name}.dvcm"
        atomic_write_bytes(path, data)
        typer.echo(
            f"{name} (M1,M2,H)=({cfg['M1']},{cfg['M2']},{cfg['H']}): base {sizes['base'] * 8 / pixels:.4f} bpp, "
            f"enhancement {sizes['enhancement'] * 8 / pixels:.4f} bpp, total {len(data) * 8 / pixels:.4f} bpp; "
            f"ŝ {tuple(s_hat.shape[1:])} from the base layer alone; PSNR {10 * __import__('math').log10(1 / mse):.2f} dB -> {path}"
        )


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_codec(
    repeats: Annotated[int, typer.Option(help="Timed repetitions per measurement (median reported).")] = 5,
    n: Annotated[int, typer.Option("--N", help="N of all three codecs.")] = 192,
    threads: Annotated[int, typer.Option(help="torch threads (0: torch's default).")] = 0,
) -> None:
    """Median encode/decode time on a 768×512 image: proposed (64,192,2), choi2022 (128,64,1) and
    CompressAI's bmshj2018-hyperprior at the same N, measured side by side. The weights are
    untrained (seeded): the transforms cost the same whatever the weights, but rANS time grows
    with the number of symbols coded, so trained models at high rate code more slowly."""
    import torch
    from compressai.models import ScaleHyperprior
    from rich.console import Console
    from rich.table import Table

    from dvcm import bitstream
    from dvcm.models import build
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
        for name, cfg in (("proposed", dict(M1=64, M2=192, H=2)), ("choi2022", dict(M1=128, M2=64, H=1))):
            model = build(name, front=yolo.front, N=n, **cfg).eval()
            model.update(force=True)
            data = bitstream.compress(model, x)
            rows[f"{name} ({cfg['M1']},{cfg['M2']},{cfg['H']})"] = {
                "encode": _median_time(lambda: bitstream.compress(model, x), repeats),
                "decode": _median_time(lambda: bitstream.decode(model, data), repeats),
                "base-only decode": _median_time(lambda: bitstream.decode_base(model, data), repeats),
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


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("compress")(compress_command)
    app.command("decompress")(decompress_command)
    app.command("demo")(demo_command)
    bench.command("codec")(bench_codec)
