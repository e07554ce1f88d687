"""Trained files that ship inside the package.

``mini_yolov3/``: the mini YOLOv3 that ``dvcm-pipeline train-detector`` trains on the synthetic
world (Darknet ``detector.cfg`` + ``detector.weights``, and ``detector.json``: its provenance, with
the sha256 of both files). ``--yolo-weights mini`` selects it on every command.

``codecs/``: the checkpoints of ``dvcm-pipeline reproduce`` (every model and λ of seed 0), with
``zoo.json``: each one's provenance (command, seed, data digest, code version, sha256).
``--checkpoint zoo:proposed-l0.0932`` selects one on every command that takes a checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from dvcm.errors import CheckpointError, DarknetWeightsError
from dvcm.fileio import file_sha256

MINI_DETECTOR = "mini"
"""The ``--yolo-weights`` value that names the bundled mini YOLOv3."""
RANDOM_DETECTOR = "random"
"""The ``--yolo-weights`` value that names the seeded random-weight YOLOv3 (what no weights give)."""
RANDOM_DETECTOR_NAME = "random-weight YOLOv3"


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


@lru_cache(maxsize=1)
def _mini_provenance() -> dict[str, Any]:
    meta = mini_detector_dir() / "detector.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def is_mini_detector(provenance: Mapping[str, Any]) -> bool:
    """Whether a YOLOv3 provenance (or a checkpoint's record of it) names the bundled mini YOLOv3's weights."""
    mini = _mini_provenance()
    return bool(mini) and provenance.get("weights_sha256") == mini.get("weights_sha256")


def detector_name(provenance: Mapping[str, Any]) -> str:
    """What every output calls the YOLOv3 whose provenance (``YOLOv3.provenance``) this is.

    ``random-weight YOLOv3`` for seeded random weights; the bundled detector's own name ("mini YOLOv3
    (width 0.125, 8 classes) trained on the synthetic world") for its weights; else ``YOLOv3``, with the
    cfg's file name when the network is not standard YOLOv3."""
    if provenance.get("random_weights"):
        return RANDOM_DETECTOR_NAME
    if is_mini_detector(provenance):
        return str(_mini_provenance()["name"])
    cfg = provenance.get("cfg")
    return f"YOLOv3 ({Path(str(cfg)).name})" if cfg else "YOLOv3"


ZOO_PREFIX = "zoo:"
"""``--checkpoint zoo:NAME`` names a bundled codec checkpoint."""


def codec_zoo_dir() -> Path:
    return Path(str(files("dvcm.zoo") / "codecs"))


def codec_zoo() -> dict[str, dict[str, Any]]:
    """The bundled codec checkpoints by name (``zoo.json``); empty when none ship."""
    index = codec_zoo_dir() / "zoo.json"
    return json.loads(index.read_text())["checkpoints"] if index.is_file() else {}


def zoo_checkpoint(name: str) -> Path:
    """The file of the bundled checkpoint ``name`` (``proposed-l0.0932``, with or without ``zoo:``), checked
    against the sha256 its provenance records; an unknown name is refused, listing the known ones."""
    name = name.removeprefix(ZOO_PREFIX)
    entries = codec_zoo()
    if name not in entries:
        known = ", ".join(f"{ZOO_PREFIX}{n}" for n in sorted(entries)) or "none (this install ships no codec zoo)"
        raise CheckpointError(f"no checkpoint {ZOO_PREFIX}{name} in the zoo; known: {known}")
    path = codec_zoo_dir() / entries[name]["file"]
    if not path.is_file() or file_sha256(path) != entries[name]["sha256"]:
        raise CheckpointError(f"{path} is missing or does not match the sha256 in zoo.json; reinstall dvcm")
    return path
