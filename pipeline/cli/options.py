"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

YoloCfgOpt = Annotated[Optional[Path], typer.Option(
    "--yolo-cfg", help="Darknet .cfg of the YOLOv3 family the weights belong to (default: standard yolov3.cfg)")]
