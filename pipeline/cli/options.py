"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

YOLO_WEIGHTS_HELP = ("Darknet .weights of the YOLOv3 family; 'mini': the bundled mini YOLOv3 trained on the synthetic "
                     "world; 'random': seeded random weights")
YoloWeightsOpt = Annotated[Optional[Path], typer.Option(
    "--yolo-weights", help=f"{YOLO_WEIGHTS_HELP} (default: random)")]
YoloCfgOpt = Annotated[Optional[Path], typer.Option(
    "--yolo-cfg", help="Darknet .cfg of the YOLOv3 family the weights belong to (default: standard yolov3.cfg)")]
