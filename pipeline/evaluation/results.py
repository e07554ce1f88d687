"""Operating points from per-image rows, and ``results.json`` / ``results.csv`` (schema ``dvcm-eval/1``,
see :mod:`pipeline.evaluation.job`)."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.evaluation.metrics import METRICS, OperatingPoint, Results, point_qualities
from pipeline.evaluation.tasks import COCO_SIZE, ROW_FIELDS
from pipeline.infra.atomic import atomic_write_json, atomic_write_text, json_safe

SCHEMA = "dvcm-eval/1"


def _mean(values: Sequence[float | None]) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def _median_ms(seconds: Sequence[float | None]) -> float:
    vals = [v for v in seconds if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(statistics.median(vals) * 1e3) if vals else float("nan")


def summarize(
    dataset: str,
    codec: str,
    label: str,
    rows: list[dict],
    dets: list[dict] | None,
    coco_ref: Any,
    image_ids: list[int],
    param: Any = None,
) -> OperatingPoint:
    """One operating point from per-image rows (and, for COCO, its detections): its rates and every metric's
    quality (:data:`pipeline.evaluation.metrics.METRICS`)."""
    mine = [r for r in rows if r["dataset"] == dataset and r["codec"] == codec and r["param"] == param]
    point: OperatingPoint = {
        "codec": codec,
        "label": label,
        "param": param,
        "images": len(mine),
        "bpp": _mean([r["bpp"] for r in mine]),
        "bpp_base": _mean([r["bpp_base"] for r in mine]),
    }
    if codec == "model":  # median coding time per image, in milliseconds (encode: V_front and the encoder)
        point["encode_ms"] = _median_ms([r.get("t_encode") for r in mine])
        point["decode_ms"] = _median_ms([r.get("t_decode") for r in mine])
    pixels = [(COCO_SIZE * COCO_SIZE if dataset == "coco" else r["width"] * r["height"]) for r in mine]
    point["container_bpp"] = _mean([(r["bytes_container"] or 0) * 8 / px for r, px in zip(mine, pixels)])
    if dataset == "coco":
        from pipeline.evaluation.coco import evaluate_per_class as coco_evaluate_per_class

        point["bytes_header"] = _mean([r["bytes_header"] for r in mine])
        stats, per_class = coco_evaluate_per_class(coco_ref, dets or [], image_ids)
        point["coco_stats"] = stats
        point["per_class_ap"] = per_class
        point.update(point_qualities(dataset, mine, stats, _mean))
    else:
        point["bpp_enh"] = _mean([r["bpp_enh"] for r in mine])
        point.update(point_qualities(dataset, mine, None, _mean))
    return point


def write_results(folder: Path, results: Results) -> None:
    """``results.json`` and ``results.csv`` (per-image rows), atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(ROW_FIELDS), lineterminator="\n")
    w.writeheader()
    for r in results.get("per_image", []):
        w.writerow({k: r.get(k) for k in ROW_FIELDS})
    atomic_write_json(folder / "results.json", json_safe(results))
    atomic_write_text(folder / "results.csv", buf.getvalue())


def load_results(folder: Path) -> Results | None:
    p = folder / "results.json"
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except ValueError:
        return None
    if data.get("schema") != SCHEMA:
        return None
    for entry in (data.get("datasets") or {}).values():  # results written before a COCO metric existed: from its stats
        for point in entry.get("points") or []:
            stats = point.get("coco_stats") or {}
            for m in METRICS.values():
                if m.coco_stat is not None and m.coco_stat in stats:
                    point.setdefault(m.quality, stats[m.coco_stat])
    return data


def model_label(meta: dict) -> str:
    """``proposed (64,192,2) λ=0.0067``: model, configuration (M1,M2,H) and λ when known."""
    from dvcm.registry import config_text

    lam = meta.get("lmbda")
    text = f"{meta.get('model', '?')} ({config_text(meta.get('model'), meta.get('config', {}))})"
    return text + (f" λ={lam:g}" if isinstance(lam, (int, float)) else "")
