"""The ``--yolo-weights`` and ``--yolo-cfg`` files of a command: checked once, made absolute.

Every stage that builds a YOLOv3 from the user's files may do so on a Ray worker whose working
directory is not the command's, so the paths leave the command absolute.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.infra.errors import UserError


def checked_file(flag: str, path: str | Path | None, what: str) -> str | None:
    """``path`` absolute, or ``None``; refused in one line (naming ``flag``) when it is not a file."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{flag} {path} does not exist; give {what}")
    return str(p.resolve())


def yolo_files(weights: str | Path | None, cfg: str | Path | None) -> tuple[str | None, str | None]:
    """(weights, cfg) of a command, each absolute or ``None``; a missing file is refused in one line.

    ``--yolo-weights mini`` (or ``mini-photographic``) names a bundled mini YOLOv3 (:mod:`dvcm.zoo`) and brings its
    own cfg;
    ``--yolo-weights random`` the seeded random-weight YOLOv3 (as no weights do)."""
    from dvcm.zoo import MINI_DETECTORS, RANDOM_DETECTOR, mini_detector

    if weights is not None and str(weights) == RANDOM_DETECTOR:
        weights = None
    if weights is not None and str(weights) in MINI_DETECTORS:
        mini_weights, mini_cfg, _ = mini_detector(str(weights))
        if cfg is not None and Path(cfg).expanduser().resolve() != mini_cfg.resolve():
            raise UserError(f"--yolo-weights {weights} brings its own cfg; leave out --yolo-cfg {cfg}")
        return str(mini_weights), str(mini_cfg)
    return (
        checked_file("--yolo-weights", weights, "a Darknet yolov3.weights file"),
        checked_file("--yolo-cfg", cfg, "a Darknet .cfg file of the YOLOv3 family (e.g. yolov3.cfg)"),
    )
