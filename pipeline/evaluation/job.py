"""The ``evaluate`` job: rate–accuracy on COCO, rate–distortion on Kodak, anchors, BD-rate, plots.

Work is spread over Ray tasks, one per (codec × chunk of images); a codec is a checkpoint
or a standard-codec anchor. Every rate comes from real bytes: ``dvcm.bitstream.compress``
for the learned codecs, the codestream of the anchor encoders otherwise.

COCO path (per image): resize to 512×512 (bilinear), encode, decode the **base layer only**
to ŝ, measure its feature PSNR against s = V_front(x) (see ``feature_psnr``), run V_back, decode detections (``--conf-thres``, default 0.001; ``--nms-iou``, default
0.5), map boxes back to the original size; bpp = base-layer bytes × 8 / (512·512). mAP@0.5
and the 12 COCO stats from pycocotools, against the annotations (``--reference-detections
gt``) or against the uncompressed YOLOv3's detections with score ≥ ``--reference-score``
(``uncompressed``). Kodak path (per image, full size): bpp of the base layer, the
enhancement layer and both; PSNR (RGB, 0–255) and MS-SSIM (pytorch-msssim) of x̂.

Feature PSNR of the base layer (``s_psnr``, dB): ``10·log10(peak² / MSE(ŝ, s))`` with ``s =
V_front(x)`` of the same 512×512 input and ``peak = max|s|`` of that image; averaged in dB over
images. Unlike mAP it needs no trained detector, so it is the base-layer quality that still means
something with random-weight YOLOv3. For anchors ŝ is ``V_front(x̂)`` of the decoded image; for
the uncompressed anchor it is undefined (null).

Feature SNR of the base layer (``s_snr``, dB): ``-10·log10(mean_c MSE_c(ŝ, s) / Var_c(s))``, the
MSE of each of the 256 channels normalised by that channel's variance over the image: the base-layer
distortion that training minimises (D_s, normalised per channel), so 0 dB means "no better than each
channel's mean". The peak-normalised PSNR above is dominated by the few channels of largest range.

Output folder (``--out``), one sub-folder per codec key (``<run id>`` or ``ckpt-<sha12>`` for
a checkpoint, ``anchors`` for the anchors)::

    <key>/results.json   the schema below
    <key>/results.csv    one row per (dataset, codec point, image): the ``per_image`` rows
    bd_table.md / .csv   BD-rate and BD-quality of every curve against the references
    plots/*.png          rate–accuracy, PSNR–bpp, MS-SSIM–bpp, redundancy, top-8 channels

``results.json`` (``schema: "dvcm-eval/1"``; typed as :class:`pipeline.evaluation.metrics.Results` and
:class:`~pipeline.evaluation.metrics.OperatingPoint`; each point's qualities are those of the metric registry,
:data:`pipeline.evaluation.metrics.METRICS`)::

    {"schema", "key", "kind": "model"|"anchors", "label", "run_id", "checkpoint", "checkpoint_sha256",
     "model", "config": {N, and the codec's hyperparameters: M1, M2, H or M}, "lmbda", "yolo": {weights, weights_sha256, split_layer,
     random_weights; with --yolo-cfg also cfg, cfg_sha256, feature_channels},
     "detector": "YOLOv3" | "random-weight YOLOv3",
     "datasets": {"coco"|"kodak": {"settings": {...}, "settings_digest", "images", "skipped",
                  "skipped_images": [...], "points": [point, ...]}},
     "redundancy": {"estimator": "kmeans", "rdn_y1_given_y2", "rdn_y2_given_y1", their "_ci95", "_in_sample" and
                    "_ceiling", "H_y1", "H_y2", "K", "fibers", "images", "dataset", "requested"} | null,
     "redundancy_learned": {"estimator": "learned", "rdn_y1_given_y2", "rdn_y2_given_y1", their "_ci95",
                    "_in_sample" and "_vs_codec", "H_y1", "H_y2", "H_y1_codec", "H_y2_codec", "images",
                    "train_images", "test_images", "steps", "dataset", "requested"} | null,
     "channel_rates": {"image", "y1": [{"channel", "bits", "map"}...], "y2": [...]} | null,
     "per_image": [row, ...]}

    (undefined numbers, e.g. MS-SSIM of an image under 161 pixels or the bpp of the
    uncompressed anchor, are null)

    point (COCO): {"codec", "label", "param", "bpp", "bpp_base", "bytes_header", "container_bpp",
                   "map50", "map", "coco_stats": {AP, AP50, ..., ARl}, "s_psnr", "s_snr", "images"}
    point (Kodak): {"codec", "label", "param", "bpp", "bpp_base", "bpp_enh", "container_bpp",
                    "psnr", "ms_ssim", "images"}
    row: {"dataset", "codec", "param", "image", "width", "height", "bytes_base", "bytes_enh",
          "bytes_header", "bytes_container", "bpp_base", "bpp_enh", "bpp", "psnr", "ms_ssim", "s_psnr", "s_snr",
          "t_encode", "t_decode", "t_back", "t_score"}

For anchors ``bpp``/``bpp_base`` count codestream bytes only and ``container_bpp`` the
container; for the learned codecs ``bytes_header`` is the fixed dvcm file header, counted
apart from the layers. A rerun skips (codec, dataset) pairs whose stored ``settings_digest``
matches, unless ``--overwrite``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvcm.zoo import detector_name
from pipeline.evaluation.metrics import BD_METRICS
from pipeline.evaluation.publish import log_to_mlflow
from pipeline.evaluation.results import (
    SCHEMA,
    load_results,
    model_label,
    summarize,
    write_results,
)
from pipeline.evaluation.spec import Job
from pipeline.evaluation.targets import ImageItem, Target
from pipeline.evaluation.tasks import (
    COCO_SIZE,
    detector,
    redundancy_request,
    run_anchor_chunk,
    run_codec_chunk,
    run_model_complexity,
    run_model_extras,
)
from pipeline.infra.atomic import atomic_write_json
from pipeline.infra.errors import UserError
from pipeline.infra.progress import StepProgress
from pipeline.infra.tracking import file_digest

# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _dataset_settings(job: Job, dataset: str) -> dict:
    items = job.coco[0] if dataset == "coco" else job.kodak
    base = {
        "images": [Path(i.path).name for i in items or []],
        "schema": SCHEMA,
        "yolo_weights": job.settings.yolo_weights,
        "yolo_seed": job.settings.yolo_seed,
        # only with --yolo-cfg: results computed before it existed keep their digest
        **({"yolo_cfg_sha256": file_digest(job.settings.yolo_cfg)} if job.settings.yolo_cfg else {}),
    }
    if dataset == "coco":
        base.update(
            conf_thres=job.settings.conf_thres,
            nms_iou=job.settings.nms_iou,
            reference=job.reference,
            reference_score=job.reference_score if job.reference == "uncompressed" else None,
            annotations_sha256=file_digest(job.coco[2]),
            resize=f"{COCO_SIZE}x{COCO_SIZE} bilinear",
            s_psnr="10log10(max|s|^2/MSE) per image",
            s_snr="-10log10(mean_c MSE_c/Var_c(s)) per image",
        )
    return base


def _chunks(items: list[ImageItem], size: int) -> list[list[ImageItem]]:
    return [items[i : i + size] for i in range(0, len(items), max(1, size))]


def _remote(fn):  # -> ray.remote function
    import ray

    return ray.remote(fn)


@dataclass
class Plan:
    """What is still to compute: the results to fill (by key), the (key, dataset) pairs and the extras."""

    datasets: list[str]
    results: dict[str, dict]
    todo: list[tuple[str, str]]
    extras_todo: list[Target]
    anchor_codecs: list[Any]
    notices: list[str]


def _anchor_settings(job: Job, dataset: str, anchor_codecs: list[Any]) -> dict:
    settings = _dataset_settings(job, dataset)
    settings["anchors"] = [(c.name, list(c.params)) for c in anchor_codecs]
    return settings


def plan(job: Job) -> Plan:
    """Read every checkpoint's header and the results already on disk; list the (codec, dataset)
    pairs whose stored settings digest differs (all of them with ``overwrite``)."""
    from dvcm.checkpoint import read_checkpoint
    from pipeline.evaluation.anchors import available_anchors

    job.out.mkdir(parents=True, exist_ok=True)
    datasets = [d for d, present in (("coco", job.coco), ("kodak", job.kodak)) if present]
    if not datasets:
        raise UserError("no dataset to evaluate on: give --coco-root and/or --kodak-root")
    yolo = detector(job.settings)
    name = detector_name(yolo.provenance)
    anchor_codecs, notices = available_anchors(job.anchors)
    anchor_codecs = [dataclasses.replace(c, params=job.anchor_params.get(c.name, c.params)) for c in anchor_codecs]
    results: dict[str, dict] = {}
    for t in job.targets:
        content = read_checkpoint(t.checkpoint)  # unknown model / bad file: one-line CheckpointError
        extra = content.get("extra") or {}
        t.meta = {
            "model": content["model"],
            "config": content["config"],
            "yolo": content.get("yolo") or {},
            "lmbda": extra.get("lmbda", extra.get("lambda")),
            "epoch": extra.get("epoch"),
        }
        prev = None if job.overwrite else load_results(job.out / t.key)
        res = prev or {
            "schema": SCHEMA,
            "key": t.key,
            "kind": "model",
            "datasets": {},
            "per_image": [],
            "redundancy": None,
            "channel_rates": None,
        }
        res.update(
            label=model_label(t.meta),
            run_id=t.run_id,
            checkpoint=t.origin or str(t.checkpoint),
            checkpoint_sha256=file_digest(t.checkpoint),
            model=t.meta["model"],
            config=t.meta["config"],
            lmbda=t.meta["lmbda"],
            yolo=dict(yolo.provenance),
            detector=name,
        )
        results[t.key] = res
    anchors_res = (None if job.overwrite else load_results(job.out / "anchors")) or {
        "schema": SCHEMA,
        "key": "anchors",
        "kind": "anchors",
        "label": "anchors",
        "datasets": {},
        "per_image": [],
    }
    anchors_res.update(yolo=dict(yolo.provenance), detector=name, notices=notices)
    results["anchors"] = anchors_res
    todo = []
    for key, res in results.items():
        for d in datasets:
            settings = _anchor_settings(job, d, anchor_codecs) if key == "anchors" else _dataset_settings(job, d)
            if res["datasets"].get(d, {}).get("settings_digest") != _digest(settings):
                todo.append((key, d))
    extras_todo = [
        t
        for t in job.targets
        if not _redundancy_current(results[t.key], job) or results[t.key].get("complexity") is None
    ]
    return Plan(datasets, results, todo, extras_todo, anchor_codecs, notices)


def _redundancy_current(res: dict[str, Any], job: Job) -> bool:
    """Whether a stored redundancy estimate was made with this job's K, fibers and images (estimates of an
    earlier dvcm, which did not record them, are made again)."""
    from dvcm.registry import CODECS

    spec = CODECS.get(str(res.get("model")))
    if spec is not None and spec.layers == 1:  # no (ŷ1, ŷ2) pair: nothing to estimate, ever
        return True
    red = res.get("redundancy")
    dataset, items = _redundancy_items(job)
    return red is not None and red.get("requested") == redundancy_request(
        job.redundancy_k, job.redundancy_fibers, len(items), job.redundancy_learned_steps, dataset
    )


def _redundancy_items(job: Job) -> tuple[str, list[Any]]:
    """The images of the redundancy estimates: the COCO ones (at 512×512) when the job has them, else Kodak's."""
    dataset, items = ("coco", job.coco[0]) if job.coco else ("kodak", job.kodak or [])
    return dataset, list(items[: max(1, job.redundancy_images)])


def submit(job: Job, p: Plan) -> dict[Any, tuple[str, str, str]]:
    """One Ray task per (codec, chunk of images), and one per checkpoint for the extras; returns
    each task's reference with its (key, dataset, codec)."""
    s = job.settings
    gpus = 1 if s.device == "cuda" else 0
    codec_task = _remote(run_codec_chunk).options(num_cpus=s.threads, num_gpus=gpus)
    anchor_task = _remote(run_anchor_chunk).options(num_cpus=s.threads, num_gpus=gpus)
    extras_task = _remote(run_model_extras).options(num_cpus=s.threads, num_gpus=gpus)
    futures: dict[Any, tuple[str, str, str]] = {}
    by_key = {t.key: t for t in job.targets}
    for key, d in p.todo:
        items = job.coco[0] if d == "coco" else job.kodak
        for chunk in _chunks(items, job.chunk_size):
            if key == "anchors":
                for codec in (["uncompressed"] if d == "coco" else []) + [c.name for c in p.anchor_codecs]:
                    params = next((list(c.params) for c in p.anchor_codecs if c.name == codec), None)
                    futures[anchor_task.remote(codec, d, chunk, s, params)] = (key, d, codec)
            else:
                futures[codec_task.remote(str(by_key[key].checkpoint), d, chunk, s)] = (key, d, "model")
    extra_dataset, extra_items = _redundancy_items(job)
    complexity_task = _remote(run_model_complexity).options(num_cpus=s.threads, num_gpus=gpus)
    for t in p.extras_todo:
        if _redundancy_current(p.results[t.key], job):  # results of an earlier dvcm: only the complexity is new
            futures[complexity_task.remote(str(t.checkpoint), s)] = (t.key, "extras", "model")
            continue
        futures[
            extras_task.remote(
                str(t.checkpoint),
                extra_items,
                s,
                job.redundancy_k,
                job.redundancy_fibers,
                job.redundancy_learned_steps,
                extra_dataset,
            )
        ] = (
            t.key,
            "extras",
            "model",
        )
    return futures


def gather(
    futures: dict[Any, tuple[str, str, str]], results: dict[str, dict], progress: bool
) -> dict[tuple[str, str], dict]:
    """Wait for every task; rows, detections (by ``codec|param``) and skipped images per (key, dataset).
    The extras go straight into ``results``."""
    import ray

    gathered: dict[tuple[str, str], dict] = {}
    pending = list(futures)
    images = [0]
    with StepProgress(
        "evaluate", len(pending), "tasks", enabled=progress, detail=lambda: f"{images[0]} images coded"
    ) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                key, d, codec = futures[ref]
                out = _get(ref)
                if d == "extras":
                    results[key].update(out)
                else:
                    g = gathered.setdefault((key, d), {"rows": [], "detections": {}, "skipped": set()})
                    g["rows"] += out["rows"]
                    images[0] += len(out["rows"])
                    g["skipped"].update(out["skipped"])
                    dets = out["detections"]
                    if codec == "model":
                        g["detections"].setdefault("model|None", []).extend(dets)
                    else:
                        for param, lst in dets.items():
                            g["detections"].setdefault(f"{codec}|{param}", []).extend(lst)
                bar.advance()
    return gathered


def coco_reference(job: Job, gathered: dict[tuple[str, str], dict]) -> Any:
    """What COCO detections are scored against: the annotations, or the uncompressed YOLOv3's detections."""
    from pipeline.evaluation.coco import results_as_ground_truth

    if not job.coco:
        return None
    items, gt, _ = job.coco
    if job.reference == "gt":
        return gt
    image_ids = [int(i.image_id) for i in items]
    g = gathered.get(("anchors", "coco"))
    unc_path = job.out / "anchors" / "uncompressed_detections.json"
    if g is not None:
        unc = g["detections"].get("uncompressed|None", [])
        atomic_write_json(unc_path, unc)
    elif unc_path.is_file():
        unc = json.loads(unc_path.read_text())
    else:
        raise UserError(f"{unc_path} is missing; rerun with --overwrite")
    # the detector's own classes, not only the annotations': a detector of other classes (a random
    # 80-class YOLOv3 on the world's 8) is still scored against what it sees uncompressed
    categories = {int(c["id"]): c for c in gt.dataset["categories"]}
    for r in unc:
        categories.setdefault(int(r["category_id"]), {"id": int(r["category_id"]), "name": f"class {r['category_id']}"})
    return results_as_ground_truth(
        unc, [gt.imgs[i] for i in image_ids], list(categories.values()), score_thres=job.reference_score
    )


def score(job: Job, p: Plan, gathered: dict[tuple[str, str], dict], coco_ref: Any) -> None:
    """Operating points from the gathered rows (mAP from pycocotools); every results folder written."""
    for (key, d), g in gathered.items():
        res = p.results[key]
        res["per_image"] = [r for r in res["per_image"] if r["dataset"] != d] + g["rows"]
        points = []
        ids = [int(i.image_id) for i in job.coco[0]] if d == "coco" else []
        done_ids = (
            sorted({int(i.image_id) for i in job.coco[0] if Path(i.path).name not in g["skipped"]})
            if d == "coco"
            else []
        )
        if key == "anchors":
            for c in ([None] if d == "coco" else []) + list(p.anchor_codecs):
                codec = "uncompressed" if c is None else c.name
                for param in [None] if c is None else c.params:
                    label = "uncompressed" if c is None else c.point_label(param)
                    points.append(
                        summarize(
                            d,
                            codec,
                            label,
                            g["rows"],
                            g["detections"].get(f"{codec}|{param}"),
                            coco_ref,
                            done_ids or ids,
                            param=param,
                        )
                    )
        else:
            points.append(
                summarize(
                    d, "model", res["label"], g["rows"], g["detections"].get("model|None"), coco_ref, done_ids or ids
                )
            )
        settings = _anchor_settings(job, d, p.anchor_codecs) if key == "anchors" else _dataset_settings(job, d)
        res["datasets"][d] = {
            "settings": settings,
            "settings_digest": _digest(settings),
            "images": len(job.coco[0] if d == "coco" else job.kodak) - len(g["skipped"]),
            "skipped": len(g["skipped"]),
            "skipped_images": sorted(g["skipped"]),
            "points": points,
        }
    for key, res in p.results.items():
        write_results(job.out / key, res)


def publish(job: Job, p: Plan) -> dict[str, Any]:
    """BD tables, plots, and (with a tracking URI) MLflow; returns the job's summary."""
    from pipeline.evaluation import plots
    from pipeline.evaluation.bdrate import bd_table, write_table
    from pipeline.evaluation.curves import export_curves

    results = list(p.results.values())
    bd_rows: list[dict] = []
    references = tuple(f"{name.strip()} (" for name in job.bd_reference.split(",") if name.strip())
    for metric in BD_METRICS:
        curves = plots.curves(results, metric)
        refs = [c.label for c in curves if c.meta.get("kind") == "anchor" or c.label.startswith(references)]
        bd_rows += bd_table(curves, refs, metric)
    write_table(bd_rows, job.out)
    export_curves(results, job.out / "curves")
    plot_paths = plots.plot_all(results, job.out / "plots", histories=_histories(job))
    summary = {
        "results": p.results,
        "notices": p.notices,
        "out": job.out,
        "bd_rows": bd_rows,
        "plots": plot_paths,
        "computed": p.todo,
        "extras_computed": [t.key for t in p.extras_todo],
    }
    if job.tracking_uri:
        log_to_mlflow(job, summary)
    return summary


def run_job(job: Job, progress: bool = True) -> dict[str, Any]:
    """Run the evaluation: plan, submit, gather, score, publish. Returns ``{"results": {key: results.json
    dict}, "notices", "out", "bd_rows", "plots", "computed", "extras_computed"}``."""
    p = plan(job)
    gathered = gather(submit(job, p), p.results, progress)
    score(job, p, gathered, coco_reference(job, gathered))
    return publish(job, p)


def _get(ref: Any) -> Any:
    """``ray.get`` that turns a ``DvcmError`` raised inside a task back into itself (one CLI line)."""
    import ray

    from dvcm.errors import DvcmError

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, DvcmError):
            raise type(cause)(str(cause)) from None
        raise


def _histories(job: Job) -> dict[str, list[tuple[int, float, float]]]:
    """Per-epoch redundancy logged by training (``val/rdn_*``) for targets that come from runs."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    if not job.tracking_uri:
        return out
    from pipeline.infra import tracking

    c = tracking.client(job.tracking_uri)
    for t in job.targets:
        if not t.run_id:
            continue
        h12 = {m.step: m.value for m in c.get_metric_history(t.run_id, "val/rdn_y1_given_y2")}
        h21 = {m.step: m.value for m in c.get_metric_history(t.run_id, "val/rdn_y2_given_y1")}
        if h12 or h21:
            out[model_label(t.meta)] = [
                (e, h12.get(e, math.nan), h21.get(e, math.nan)) for e in sorted(set(h12) | set(h21))
            ]
    return out


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
