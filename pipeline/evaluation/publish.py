"""MLflow for an evaluation: metrics and results on each trial run; plots, BD tables and every
results file on an evaluation run of its own."""

from __future__ import annotations

import math
import time

from pipeline.evaluation.metrics import METRICS, RATE_KEYS
from pipeline.evaluation.spec import Job


def _point_metrics(res: dict) -> dict[str, float]:
    m: dict[str, float] = {}
    for d, entry in res.get("datasets", {}).items():
        for p in entry.get("points", []):
            for k in (*RATE_KEYS, *(m.quality for m in METRICS.values())):
                v = p.get(k)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    m[f"eval/{d}_{k}"] = float(v)
        m[f"eval/{d}_skipped"] = float(entry.get("skipped", 0))
    red = res.get("redundancy") or {}
    for k in ("rdn_y1_given_y2", "rdn_y2_given_y1"):
        if isinstance(red.get(k), (int, float)):
            m[f"eval/{k}"] = float(red[k])
    return m


def complexity_params(res: dict) -> dict[str, str]:
    """The codec's parameters and kMAC per pixel per part as MLflow params (``complexity.encoder.kmac_per_pixel``)."""
    parts = (res.get("complexity") or {}).get("parts") or {}
    return {
        f"complexity.{part}.{k}": f"{v:.0f}" if k == "params" else f"{v:.4g}"
        for part, values in parts.items()
        for k, v in values.items()
    }


def log_to_mlflow(job: Job, summary: dict) -> str:
    """Metrics and results files on each trial run; plots, BD tables and all results on an evaluation run."""
    from pipeline.infra import tracking

    uri = job.tracking_uri
    c = tracking.client(uri)
    for t in job.targets:
        res = summary["results"][t.key]
        if t.run_id:
            tracking.log_metrics(uri, t.run_id, _point_metrics(res), step=0)
            tracking.log_params(uri, t.run_id, complexity_params(res))
            tracking.log_artifact(uri, t.run_id, job.out / t.key / "results.json", "evaluation")
            tracking.log_artifact(uri, t.run_id, job.out / t.key / "results.csv", "evaluation")
    run = c.create_run(
        tracking.experiment_id(uri),
        run_name=f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={"dvcm.evaluation": "1", "dvcm.detector": summary["results"]["anchors"]["detector"]},
    )
    rid = run.info.run_id
    tracking.log_params(
        uri,
        rid,
        {
            "targets": ",".join(t.key for t in job.targets)[:500],
            "reference_detections": job.reference,
            "conf_thres": job.settings.conf_thres,
            "nms_iou": job.settings.nms_iou,
            "bd_reference": job.bd_reference,
        },
    )
    for t in job.targets:
        m = {f"{k}.{t.key[:12]}": v for k, v in _point_metrics(summary["results"][t.key]).items()}
        tracking.log_metrics(uri, rid, m, step=0)
    for p in summary["plots"]:
        tracking.log_artifact(uri, rid, p, "plots")
    for name in ("bd_table.md", "bd_table.csv"):
        tracking.log_artifact(uri, rid, job.out / name, "bd")
    for key in summary["results"]:
        tracking.log_artifact(uri, rid, job.out / key / "results.json", f"results/{key}")
    tracking.end_run(uri, rid)
    summary["evaluation_run_id"] = rid
    return rid
