"""Detection accuracy with pycocotools: COCO results JSON, ``COCOeval``, mAP@0.5 and the full stats.

Two kinds of reference:

* ``gt``: the annotations file (``instances_val2014.json``).
* ``uncompressed``: the uncompressed YOLOv3's own detections, kept above a score threshold,
  turned into a COCO ground truth. Use it when the ground truth does not fit the weights in
  use (seeded random weights): it then measures how far compression moves the detector
  away from what it sees on the original image.

Detections come in as ``{"boxes": [N,4] xyxy, "scores": [N], "labels": [N] 0..79}`` in the
pixels of the image the detector saw; ``dvcm.yolo.detections_to_coco`` maps them back to the
original image size and to COCO category ids.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pipeline.infra.errors import UserError

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
DEFAULT_REFERENCE_SCORE = 0.25  # darknet's default display threshold
MAX_DETS = 100  # COCOeval's maxDets (per image and category)


def load_coco(path: str | Path) -> COCO:
    """Load a COCO annotations file; a missing or malformed file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"annotations file {path} does not exist; pass --coco-annotations with a COCO instances JSON")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"annotations file {path} is not valid JSON ({exc}); pass a COCO instances JSON") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise UserError(
            f"annotations file {path} lacks the 'images', 'annotations' and 'categories' lists of a COCO instances JSON"
        )
    try:
        return coco_from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"annotations file {path} is malformed ({type(exc).__name__}: {exc}); check it is COCO instances JSON"
        ) from None


@contextlib.contextmanager
def _quiet_pycocotools() -> Iterator[None]:
    """pycocotools' prints, silenced. Ray Train V2 patches ``print`` on its workers to log every line at
    INFO on the root logger, redirected or not, so the root logger skips INFO too while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def coco_from_dict(data: Mapping[str, Any]) -> COCO:
    """A :class:`COCO` index over an in-memory dataset dict (no file, no printing)."""
    coco = COCO()
    coco.dataset = dict(data)
    with _quiet_pycocotools():
        coco.createIndex()
    return coco


def results_as_ground_truth(
    results: Iterable[Mapping[str, Any]],
    images: Sequence[Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]],
    score_thres: float = DEFAULT_REFERENCE_SCORE,
    max_per_class: int = MAX_DETS,
) -> COCO:
    """Turn detections (COCO result entries) into a COCO ground truth: the ``uncompressed`` reference.

    Per (image, category) the detections with score ≥ ``score_thres`` are kept, at most
    ``max_per_class`` of them (COCOeval's own cap on detections, 100), chosen in the order
    COCOeval ranks detections (stable sort by score), so that the detections scored against
    their own ground truth give AP = 1.
    """
    groups: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for r in results:
        groups.setdefault((int(r["image_id"]), int(r["category_id"])), []).append(r)
    anns = []
    for (image_id, category_id), dets in groups.items():
        order = np.argsort([-float(d["score"]) for d in dets], kind="mergesort")
        kept = [dets[i] for i in order[:max_per_class] if dets[i]["score"] >= score_thres]
        for r in kept:
            x, y, w, h = r["bbox"]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x, y, w, h],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
    return coco_from_dict(
        {"images": [dict(i) for i in images], "annotations": anns, "categories": [dict(c) for c in categories]}
    )


def evaluate(coco_gt: COCO, results: Sequence[Mapping[str, Any]], image_ids: Sequence[int]) -> dict[str, float]:
    """COCOeval (bbox) over ``image_ids``; returns the 12 standard stats by name (``AP50`` = mAP@0.5).

    With no detections at all every stat is 0. With no ground-truth box in the images
    pycocotools reports -1, which is returned as is.
    """
    return evaluate_per_class(coco_gt, results, image_ids)[0]


def evaluate_per_class(
    coco_gt: COCO, results: Sequence[Mapping[str, Any]], image_ids: Sequence[int]
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """:func:`evaluate`'s stats, and per category ``{"category_id", "name", "ap50", "ap"}`` from COCOeval's
    precision array (area all, 100 detections; ``ap`` over IoU .50:.95). A category with no ground-truth
    box in the images has ``None``; with no detections at all every AP is 0."""
    ids = sorted({int(i) for i in image_ids})
    if not ids:
        raise UserError("no images to evaluate; check --image-list and the annotations")
    cats = sorted(coco_gt.getCatIds())
    names = {c["id"]: c["name"] for c in coco_gt.loadCats(cats)}
    with_gt = {a["category_id"] for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=ids))}
    if not results:
        return (
            {k: 0.0 for k in STAT_NAMES},
            [
                {
                    "category_id": int(c),
                    "name": str(names[c]),
                    "ap50": 0.0 if c in with_gt else None,
                    "ap": 0.0 if c in with_gt else None,
                }
                for c in cats
            ],
        )
    with _quiet_pycocotools():
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [IoU thresholds, recall points, categories, areas, max detections]

    def mean_ap(p: Any) -> float | None:
        valid = p[p > -1]
        return float(valid.mean()) if valid.size else None

    per_class = [
        {
            "category_id": int(c),
            "name": str(names[c]),
            "ap50": mean_ap(precision[0, :, k, 0, -1]),
            "ap": mean_ap(precision[:, :, k, 0, -1]),
        }
        for k, c in enumerate(ev.params.catIds)
    ]
    return {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}, per_class
