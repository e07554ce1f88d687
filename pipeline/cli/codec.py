"""``dvcm-pipeline compress``, ``decompress`` (full or ``--base-only``) and ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.options import YOLO_WEIGHTS_HELP, YoloCfgOpt
from pipeline.codec.files import (
    DEMO_NOTICE,
    compress_file,
    decompress_base_file,
    decompress_file,
    make_out_folder,
    run_demo,
    run_trained_demo,
)
from pipeline.infra.errors import check_unit_interval

MaxPixels = Annotated[
    int | None,
    typer.Option(
        "--max-pixels",
        min=1,
        help="Refuse images larger than this many pixels (default: whatever coding fits in this machine's memory).",
    ),
]


def compress_command(
    image: Annotated[Path, typer.Argument(help="PNG/JPEG image to code.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .dvcm file.")],
    checkpoint: Annotated[
        Path,
        typer.Option(
            "--checkpoint",
            "-c",
            help="Codec checkpoint (.pt), or zoo:NAME for a bundled one (e.g. zoo:proposed-l0.0932).",
        ),
    ],
    max_pixels: MaxPixels = None,
) -> None:
    """Code an image into a two-layer file (base layer for machines, enhancement for humans)."""
    typer.echo(compress_file(image, output, checkpoint, max_pixels))


def decompress_command(
    file: Annotated[Path, typer.Argument(help="A .dvcm file (whole, or its base layer only).")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="x̂ as PNG; with --base-only a path stem for .npy/.json.")
    ],
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", "-c", help="The checkpoint that coded the file (a .pt, or zoo:NAME).")
    ],
    base_only: Annotated[
        bool, typer.Option("--base-only", help="Decode the base layer only: ŝ and YOLOv3 detections.")
    ] = False,
    yolo_weights: Annotated[
        Path | None, typer.Option(help=f"{YOLO_WEIGHTS_HELP} (default: the checkpoint's seeded YOLO).")
    ] = None,
    yolo_cfg: YoloCfgOpt = None,
    conf_thres: Annotated[float, typer.Option(help="Detection confidence threshold.")] = 0.25,
    nms_iou: Annotated[float, typer.Option(help="NMS IoU threshold.")] = 0.45,
    max_pixels: MaxPixels = None,
) -> None:
    """Decode a file: the image (both layers), or with --base-only ŝ (.npy) and detections (.json)."""
    if base_only:
        check_unit_interval("--conf-thres", conf_thres)
        check_unit_interval("--nms-iou", nms_iou)
        typer.echo(
            decompress_base_file(file, output, checkpoint, yolo_weights, conf_thres, nms_iou, max_pixels, yolo_cfg)
        )
    else:
        typer.echo(decompress_file(file, output, checkpoint, max_pixels))


def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for the demo's files.")] = Path("dvcm-demo"),
    untrained: Annotated[
        bool, typer.Option("--untrained", help="The file format only: every codec untrained, a random YOLOv3.")
    ] = False,
) -> None:
    """A trained codec and detector on an unseen scene: bpp per layer, PSNR, detections from the base layer alone
    beside those on the original, and both images with their boxes (--untrained: the format-only round trip)."""
    if untrained:
        typer.echo(DEMO_NOTICE)
    make_out_folder(out)
    for line in run_demo(out) if untrained else run_trained_demo(out):
        typer.echo(line)
