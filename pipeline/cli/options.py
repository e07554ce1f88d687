"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

YOLO_WEIGHTS_HELP = (
    "Darknet .weights of the YOLOv3 family; 'mini': the bundled mini YOLOv3 trained on the synthetic "
    "world ('mini-photographic': on its photographic style); 'random': seeded random weights"
)
YoloWeightsOpt = Annotated[Path | None, typer.Option("--yolo-weights", help=f"{YOLO_WEIGHTS_HELP} (default: random)")]
YoloCfgOpt = Annotated[
    Path | None,
    typer.Option(
        "--yolo-cfg", help="Darknet .cfg of the YOLOv3 family the weights belong to (default: standard yolov3.cfg)"
    ),
]
