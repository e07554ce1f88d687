"""``dvcm-pipeline sweep``: a grid of (model, configuration, λ) trials run in parallel by Ray Tune.

Each Tune trial drives one Ray Train ``TorchTrainer`` (see :mod:`pipeline.training.trainable`). The CLI
process is the only MLflow writer: a :class:`MlflowTrialLogger` Tune callback turns each trial
into a nested run under the sweep's parent run and logs every epoch's metrics as they arrive,
while the live table (:mod:`pipeline.training.live_table`) shows each trial's state, epoch and loss.

Resume: ``<storage>/<sweep>/sweep.json`` records every trial that finished (final checkpoint
written and logged). ``--resume`` skips those and relaunches the others under the same Ray
Train run name, and Ray Train restores each from its latest per-epoch checkpoint. A record of
our own, rather than ``Tuner.restore``, is used because it survives code changes and a grid
edited between runs (add a λ, resume), and ``Tuner.restore`` of function trainables would
restart unfinished trials from scratch anyway (the checkpoints live in Ray Train's storage).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.infra import storage, tracking
from pipeline.infra.errors import UserError
from pipeline.infra.progress import LogTicker, fmt_elapsed, is_terminal
from pipeline.training import faults
from pipeline.training.live_table import TrialRow, render_table, trial_notes
from pipeline.training.settings import (
    Resources,
    SweepSettings,
    check_resume_settings,
    resume_record,
)
from pipeline.training.sweep_state import read_state, write_state
from pipeline.training.trainable import trial_trainable
from pipeline.training.trial import TrialConfig, trial_configs
from pipeline.training.tune_callback import SweepContext, make_tune_callback


# --------------------------------------------------------------------------------------------
# Checks before training
# --------------------------------------------------------------------------------------------
def check_shards(root: str, yolo_provenance: dict[str, Any], crop: int = 0, batch_size: int = 1) -> dict[str, Any]:
    """``dataset.json`` must exist, list samples in train and val, and match the YOLO front; the frames of each split
    must hold the crop and a batch of them; returns it."""
    from pipeline.data import shards as shard_reader

    shards = storage.local_path(root)
    if shards is not None:  # an object store has no folders; its missing dataset.json is the reader's one line
        if not shards.is_dir():
            raise UserError(
                f"shard folder {shards} does not exist; run `dvcm-pipeline prepare ... --out {shards}` first"
            )
        if not (shards / "dataset.json").is_file():
            raise UserError(
                f"{shards} has no dataset.json; it is not a prepared shard folder (run `dvcm-pipeline prepare`)"
            )
        if not any(shards.rglob("*.tar")):
            raise UserError(f"{shards} holds no .tar shards; run `dvcm-pipeline prepare` again")
    info = shard_reader.read_dataset_info(root)
    shard_reader.check_provenance(info, yolo_provenance)
    for split in ("train", "val"):
        if not shard_reader.shard_urls(root, split):
            raise UserError(
                f"split {split!r} of {root} holds no samples; prepare more frames (training needs train and val)"
            )
    shard_reader.check_frames_fit(root, crop, batch_size)
    shard_reader.check_shard_files(root, info)
    shard_reader.feature_stats(info)
    return info


def check_placement(workers: int, cpus: float, gpus: float, use_gpu: bool) -> None:
    """Refuse a trial whose workers the cluster could never place, even when idle."""
    import ray

    total = ray.cluster_resources()
    need_cpu, need_gpu = workers * cpus, workers * gpus
    if need_cpu > total.get("CPU", 0) + 1e-9:
        raise UserError(
            f"a trial needs {workers} workers x {cpus:g} CPUs = {need_cpu:g} CPUs but the Ray cluster has "
            f"{total.get('CPU', 0):g}; lower --workers-per-trial or --cpus-per-worker"
        )
    if use_gpu and need_gpu > total.get("GPU", 0) + 1e-9:
        raise UserError(
            f"a trial needs {workers} workers x {gpus:g} GPUs = {need_gpu:g} GPUs but the Ray cluster has "
            f"{total.get('GPU', 0):g}; lower --workers-per-trial/--gpus-per-worker or drop --use-gpu"
        )


# --------------------------------------------------------------------------------------------
# Running a sweep
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepData:
    """The checked inputs of a sweep: the resolved shards, their ``dataset.json`` and the YOLOv3 provenance."""

    shards: str
    info: dict[str, Any]
    yolo_provenance: dict[str, Any]

    def digest(self) -> str:
        """The data a trial learns from: every shard's sha256 and the feature statistics (not the counts)."""
        return tracking.text_digest(
            json.dumps({k: self.info.get(k) for k in ("splits", "s_mean", "s_std")}, sort_keys=True)
        )


def check_data(settings: SweepSettings, storage_root: str | Path) -> SweepData:
    """Storage URLs, the YOLOv3 front and the shards it must match; all refused in one line when wrong."""
    from dvcm.yolo import build_yolov3

    t = settings.training
    storage.check(t.shards)
    storage.check(storage_root)
    shards = storage.resolve(t.shards)
    provenance = dict(build_yolov3(t.yolo_weights, seed=t.yolo_seed, cfg=t.yolo_cfg).provenance)
    return SweepData(shards, check_shards(shards, provenance, t.crop, t.batch_size), provenance)


def open_record(name: str, sweep_dir: str, resume: bool, settings: SweepSettings, data: SweepData) -> dict[str, Any]:
    """The sweep record (``sweep.json``): a new one, or the one to resume with the same training settings."""
    state = read_state(sweep_dir)
    if state is not None and not resume:
        raise UserError(
            f"sweep {name!r} already exists in {sweep_dir}; pass --resume to continue it or --name for a new one"
        )
    if state is None:
        state = {"name": name, "trials": {}, "parent_run_id": None}
    trained_on = resume_record(
        settings,
        {
            "shards_digest": data.digest(),
            "yolo_weights_sha256": data.yolo_provenance.get("weights_sha256"),
            "yolo_cfg_sha256": data.yolo_provenance.get("cfg_sha256"),
        },
    )
    check_resume_settings(name, state, trained_on)
    state["training_settings"] = trained_on
    return state


def describe(name: str, grid: list[dict[str, Any]], settings: SweepSettings, data: SweepData) -> str:
    """The parent run's description in the MLflow UI: what the sweep trains and which metrics to compare."""
    from dvcm.zoo import detector_name

    detector = detector_name(data.yolo_provenance)
    trials = ", ".join(t["trial_name"] for t in grid)
    return (
        f"Sweep {name}: {len(grid)} trials ({trials}), gamma {settings.training.gamma:g}, preset "
        f"{settings.training.preset}, features from {detector}.\n\n"
        "Per epoch (nested runs): val/loss, val/bpp (val/bpp_base, val/bpp_enh), val/psnr, val/D_x, val/D_s, "
        "val/rdn_y1_given_y2, val/rdn_y2_given_y1, lr. After `dvcm-pipeline evaluate`: eval/kodak_bpp, "
        "eval/kodak_psnr, eval/kodak_ms_ssim, eval/coco_bpp_base, eval/coco_map50, eval/coco_s_snr. "
        "Compare the trials with the runs table (columns: metrics) or select them and press Compare."
    )


def start_tracking(
    uri: str, name: str, state: dict[str, Any], settings: SweepSettings, data: SweepData, grid: list[dict[str, Any]]
) -> dict[str, Any]:
    """The sweep's MLflow parent run (resumed when it still exists); returns the params every trial shares."""
    prov = data.yolo_provenance
    common_params = {
        "preset": settings.training.preset,
        "dataset_digest": tracking.text_digest(json.dumps(data.info, sort_keys=True)),
        "yolo_weights_sha256": prov.get("weights_sha256"),
        "yolo_weights": prov.get("weights"),
        "yolo_random_weights": prov.get("random_weights"),
        "yolo_cfg_sha256": prov.get("cfg_sha256"),
        "code_version": tracking.code_version(),
        "shards": str(data.shards),
    }
    state["parent_run_id"] = tracking.start_parent_run(
        uri,
        name,
        {**common_params, "trials": len(grid), "gamma": settings.training.gamma},
        state.get("parent_run_id"),
        description=describe(name, grid, settings, data),
    )
    state["tracking_uri"] = uri
    return common_params


def plan_trials(
    grid: list[dict[str, Any]], ctx: SweepContext, settings: SweepSettings, data: SweepData
) -> list[TrialConfig]:
    """The trials still to train (a finished trial whose checkpoint exists is skipped); fills the table rows."""
    todo = []
    for t in grid:
        row = TrialRow(t["trial_name"], epochs=int(t.get("epochs", settings.training.epochs)))
        ctx.rows[t["trial_name"]] = row
        done = ctx.state["trials"].get(t["trial_name"], {})
        if (
            done.get("status") == "finished"
            and done.get("final_checkpoint")
            and storage.is_file(done["final_checkpoint"])
        ):
            row.state, row.epoch, row.note = "FINISHED", int(done.get("epochs", 0)), "done earlier (skipped)"
            continue
        ctx.state["trials"].setdefault(t["trial_name"], {})["status"] = "pending"
        todo.append(t)
    injected = {t["trial_name"]: faults.from_env(ctx.sweep_dir, t["trial_name"], t["lmbda"]) for t in todo}
    return trial_configs(
        todo, settings, data.shards, storage.join(ctx.sweep_dir, "train"), data.yolo_provenance, injected
    )


def run_sweep(
    name: str,
    grid: list[dict[str, Any]],
    settings: SweepSettings,
    storage_root: str | Path,
    tracking_uri: str | None,
    resume: bool,
    address: str | None = None,
    show: bool = True,
) -> dict[str, Any]:
    """Check everything, then train every unfinished trial of ``grid``; returns the sweep record.

    ``settings`` come from :func:`pipeline.training.settings.resolve`. All bad input is refused
    here, before any training. ``storage_root`` and the shards are local folders or fsspec URLs
    (see :mod:`pipeline.infra.storage`).
    """
    from pipeline.infra.ray_runtime import init_ray
    from pipeline.training.grid import check_name

    check_name(name)
    data = check_data(settings, storage_root)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_reachable(uri)
    sweep_dir = storage.join(storage.resolve(storage_root), name)
    state = open_record(name, sweep_dir, resume, settings, data)

    init_ray(address)
    r = settings.resources
    check_placement(r.workers_per_trial, r.cpus_per_worker, r.gpus_per_worker, r.use_gpu)
    common_params = start_tracking(uri, name, state, settings, data, grid)
    storage.makedirs(sweep_dir)
    write_state(sweep_dir, state)

    ctx = SweepContext(uri, state["parent_run_id"], sweep_dir, state, common_params)
    todo = plan_trials(grid, ctx, settings, data)
    write_state(sweep_dir, state)
    if todo:
        _run_tune(todo, ctx, settings.resources, name, show)
    status = (
        "FAILED"
        if any(ctx.state["trials"].get(t["trial_name"], {}).get("status") != "finished" for t in grid)
        else "FINISHED"
    )
    tracking.end_run(uri, state["parent_run_id"], status)
    if show:
        from rich.console import Console

        con = Console()
        con.print(render_table(ctx.rows, f"sweep {name}: {status.lower()}", notes=False))
        for line in trial_notes(ctx.rows):  # checkpoint paths whole, on one line each
            con.print(line, soft_wrap=True, highlight=False)
    return ctx.state


USER_ERROR_PREFIXES = ("pipeline.infra.errors.UserError: ", "UserError: ")


def failure_summary(state: dict[str, Any], failed: list[str]) -> str:
    """Why the ``failed`` trials failed, in one line: a clear error of ours (a damaged shard, say) that one of them
    met is what the user has to fix, so it leads, without the suggestion to resume (which cannot help); otherwise
    the first trial's reason."""
    reasons = {n: str(state["trials"].get(n, {}).get("reason") or "") for n in failed}
    for name, reason in reasons.items():
        for prefix in USER_ERROR_PREFIXES:
            if prefix in reason:
                return f"trial {name} stopped: {reason.split(prefix, 1)[1]}"
    first = next((f"{n}: {r}" for n, r in reasons.items() if r), "")
    return f"the first failure: {first}; " if first else ""


def _run_tune(todo: list[TrialConfig], ctx: SweepContext, resources: Resources, name: str, show: bool) -> None:
    """Run the trials with Ray Tune under a live table."""
    import ray
    from ray import tune

    t0 = time.perf_counter()
    total_cpu = ray.cluster_resources().get("CPU", 1)
    need = resources.workers_per_trial * resources.cpus_per_worker
    concurrent = resources.max_concurrent_trials or max(1, int(total_cpu // max(need, 1e-9)))

    # The Tune trial only drives a TorchTrainer; the workers hold the CPUs/GPUs.
    # (Ray refuses an all-zero bundle, hence one byte of memory.)
    trainable = tune.with_resources(trial_trainable, {"cpu": 0, "memory": 1})
    tune_path, tune_fs = storage.ray_storage(storage.join(ctx.sweep_dir, "tune"))
    # Our table replaces Tune's console output; Tune's newer output engine prints its experiment box
    # and paths even at verbose=0, the classic one honours it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([c.to_dict() for c in todo])},
        tune_config=tune.TuneConfig(max_concurrent_trials=int(concurrent), reuse_actors=False),
        run_config=tune.RunConfig(
            name=f"tune-{int(time.time())}",
            storage_path=tune_path,
            storage_filesystem=tune_fs,
            callbacks=[make_tune_callback(ctx)],
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
        ),
    )
    if not show:
        tuner.fit()
        return
    if not is_terminal():  # a log: plain lines instead of the live table
        with LogTicker(lambda: sweep_status_line(name, ctx.rows, t0)):
            tuner.fit()
        return
    from rich.live import Live

    stop = threading.Event()
    # transient: the final table (with the sweep's outcome) is printed once the sweep ends
    with Live(render_table(ctx.rows, f"sweep {name}"), refresh_per_second=2, transient=True) as live:

        def refresh() -> None:
            while not stop.wait(0.5):
                live.update(render_table(ctx.rows, f"sweep {name}"))

        th = threading.Thread(target=refresh, daemon=True)
        th.start()
        try:
            tuner.fit()
        finally:
            stop.set()
            th.join()


def sweep_status_line(name: str, rows: dict[str, TrialRow], t0: float) -> str:
    """One plain line for a log: trials finished of total, the running ones with their epoch, elapsed time."""
    done = sum(r.state in ("FINISHED", "FAILED") for r in rows.values())
    running = [f"{r.name} epoch {r.epoch}/{r.epochs}" for r in rows.values() if r.state == "RUNNING"]
    failed = sum(r.state == "FAILED" for r in rows.values())
    return (
        f"sweep {name}: {done}/{len(rows)} trials done{f' ({failed} failed)' if failed else ''}"
        f"{'; running ' + ', '.join(running) if running else ''}; {fmt_elapsed(time.perf_counter() - t0)}"
    )
