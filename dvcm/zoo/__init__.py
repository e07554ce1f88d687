"""Trained files that ship inside the package.

``mini_yolov3/``: the mini YOLOv3 that ``dvcm-pipeline train-detector`` trains on the synthetic
world (Darknet ``detector.cfg`` + ``detector.weights``, and ``detector.json``: its provenance, with
the sha256 of both files). ``--yolo-weights mini`` selects it on every command.
``mini_yolov3_photographic/``: the same detector trained on the photographic world
(``train-detector --world-style photographic``); ``--yolo-weights mini-photographic`` selects it.

``codecs/``: the checkpoints of ``dvcm-pipeline reproduce`` (every model and λ of seed 0), with
``zoo.json``: each one's provenance (command, seed, data digest, code version, sha256).
``--checkpoint zoo:proposed-l0.0932`` selects one on every command that takes a checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from dvcm.errors import CheckpointError, DarknetWeightsError
from dvcm.fileio import file_sha256

MINI_DETECTOR = "mini"
"""The ``--yolo-weights`` value that names the bundled mini YOLOv3 (trained on the plain world)."""
MINI_DETECTORS = {MINI_DETECTOR: "mini_yolov3", "mini-photographic": "mini_yolov3_photographic"}
"""Each bundled mini YOLOv3: its ``--yolo-weights`` name and its folder here."""
WORLD_STYLE_DETECTORS = {"plain": MINI_DETECTOR, "photographic": "mini-photographic"}
"""The bundled detector trained on each style of the synthetic world."""
RANDOM_DETECTOR = "random"
"""The ``--yolo-weights`` value that names the seeded random-weight YOLOv3 (what no weights give)."""
RANDOM_DETECTOR_NAME = "random-weight YOLOv3"


def mini_detector_dir(name: str = MINI_DETECTOR) -> Path:
    if name not in MINI_DETECTORS:
        raise DarknetWeightsError(f"no bundled detector {name!r}; known: {', '.join(MINI_DETECTORS)}")
    return Path(str(files("dvcm.zoo") / MINI_DETECTORS[name]))


def mini_detector(name: str = MINI_DETECTOR) -> tuple[Path, Path, dict[str, Any]]:
    """(weights, cfg, provenance) of the bundled mini YOLOv3 ``name``, checked against the sha256 its provenance
    records."""
    root = mini_detector_dir(name)
    weights, cfg, meta = root / "detector.weights", root / "detector.cfg", root / "detector.json"
    if not (weights.is_file() and cfg.is_file() and meta.is_file()):
        raise DarknetWeightsError(f"the bundled detector {name!r} is missing from {root}; reinstall dvcm")
    provenance = json.loads(meta.read_text())
    for path, key in ((weights, "weights_sha256"), (cfg, "cfg_sha256")):
        if file_sha256(path) != provenance.get(key):
            raise DarknetWeightsError(f"{path} does not match the sha256 in {meta.name}; reinstall dvcm")
    return weights, cfg, provenance


@cache
def _mini_provenance(name: str) -> dict[str, Any]:
    meta = mini_detector_dir(name) / "detector.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def bundled_detector(provenance: Mapping[str, Any]) -> str | None:
    """The ``--yolo-weights`` name of the bundled mini YOLOv3 whose weights a provenance (``YOLOv3.provenance``
    or a checkpoint's record of it) names, or ``None``."""
    sha = provenance.get("weights_sha256")
    return next((n for n in MINI_DETECTORS if sha and _mini_provenance(n).get("weights_sha256") == sha), None)


def detector_name(provenance: Mapping[str, Any]) -> str:
    """What every output calls the YOLOv3 whose provenance (``YOLOv3.provenance``) this is.

    ``random-weight YOLOv3`` for seeded random weights; a bundled detector's own name ("mini YOLOv3
    (width 0.125, 8 classes) trained on the synthetic world") for its weights; else ``YOLOv3``, with the
    cfg's file name when the network is not standard YOLOv3."""
    if provenance.get("random_weights"):
        return RANDOM_DETECTOR_NAME
    bundled = bundled_detector(provenance)
    if bundled is not None:
        return str(_mini_provenance(bundled)["name"])
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


def codec_zoo_fits(yolo_provenance: Mapping[str, Any]) -> bool:
    """Whether the codec zoo was trained on the s of this detector (a YOLOv3 provenance, or shards' record of it):
    only then can its checkpoints be fine-tuned on them (the zoo saw the plain world's detector, not
    mini-photographic's)."""
    front = yolo_provenance.get("weights_sha256")
    return bool(front) and any(e.get("detector", {}).get("weights_sha256") == front for e in codec_zoo().values())
