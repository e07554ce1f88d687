"""Trained files that ship inside the package.

``mini_yolov3/``: the mini YOLOv3 that ``dvcm-pipeline train-detector`` trains on the synthetic
world (Darknet ``detector.cfg`` + ``detector.weights``, and ``detector.json``: its provenance, with
the sha256 of both files). ``--yolo-weights mini`` selects it on every command.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from dvcm.errors import DarknetWeightsError
from dvcm.fileio import file_sha256

MINI_DETECTOR = "mini"
"""The ``--yolo-weights`` value that names the bundled mini YOLOv3."""


def mini_detector_dir() -> Path:
    return Path(str(files("dvcm.zoo") / "mini_yolov3"))


def mini_detector() -> tuple[Path, Path, dict[str, Any]]:
    """(weights, cfg, provenance) of the bundled mini YOLOv3, checked against the sha256 its provenance records."""
    root = mini_detector_dir()
    weights, cfg, meta = root / "detector.weights", root / "detector.cfg", root / "detector.json"
    if not (weights.is_file() and cfg.is_file() and meta.is_file()):
        raise DarknetWeightsError(f"the bundled mini YOLOv3 is missing from {root}; reinstall dvcm")
    provenance = json.loads(meta.read_text())
    for path, key in ((weights, "weights_sha256"), (cfg, "cfg_sha256")):
        if file_sha256(path) != provenance.get(key):
            raise DarknetWeightsError(f"{path} does not match the sha256 in {meta.name}; reinstall dvcm")
    return weights, cfg, provenance
