"""``dvcm-pipeline sweep``: a grid of (model, configuration, λ) trials run in parallel by Ray Tune.

Each Tune trial drives one Ray Train ``TorchTrainer`` (see :mod:`pipeline.training.train`). The CLI
process is the only MLflow writer: a :class:`MlflowTrialLogger` Tune callback turns each trial
into a nested run under the sweep's parent run and logs every epoch's metrics as they arrive,
while :class:`LiveTable` shows each trial's state, epoch and loss.

Resume: ``<storage>/<sweep>/sweep.json`` records every trial that finished (final checkpoint
written and logged). ``--resume`` skips those and relaunches the others under the same Ray
Train run name, and Ray Train restores each from its latest per-epoch checkpoint. A record of
our own, rather than ``Tuner.restore``, is used because it survives code changes and a grid
edited between runs (add a λ, resume), and ``Tuner.restore`` of function trainables would
restart unfinished trials from scratch anyway (the checkpoints live in Ray Train's storage).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.training import presets
from pipeline.infra import storage
from pipeline.infra import tracking
from pipeline.infra.errors import UserError

STATE_FILE = "sweep.json"
_STATE_LOCK = threading.Lock()
KILL_ENV = "DVCM_TEST_KILL_AT_EPOCH"  # test-only: kill rank 0's process once at the start of this epoch
NAN_ENV = "DVCM_TEST_NAN_LAMBDA"  # test-only: the trial whose λ equals this gets a NaN loss (a failure for good)


# --------------------------------------------------------------------------------------------
# Grid
# --------------------------------------------------------------------------------------------
def parse_config(text: str) -> tuple[int, int, int]:
    """``"64,192,2"`` -> (M1, M2, H), a bad one raises ``UserError``."""
    from dvcm.errors import DvcmError
    from dvcm.models import parse_config as parse

    try:
        return parse(str(text))
    except DvcmError as exc:
        raise UserError(str(exc)) from None


def parse_list(text: str | None, sep: str = ",") -> list[str]:
    """Split a flag value, dropping empty items."""
    return [t.strip() for t in (text or "").split(sep) if t.strip()]


def parse_lambdas(values: list[Any]) -> list[float]:
    """λ values as floats; each must be a finite number > 0."""
    out = []
    for v in values:
        try:
            lam = float(v)
        except (TypeError, ValueError):
            raise UserError(f"lambda {v!r} is not a number; write e.g. --lambdas 0.0018,0.0067") from None
        if not math.isfinite(lam) or lam <= 0:
            raise UserError(f"lambda must be > 0, got {v!r}; write e.g. --lambdas 0.0018,0.0067")
        out.append(lam)
    if not out:
        raise UserError("no lambda given; write e.g. --lambdas 0.0018,0.0067")
    return out


def check_models(models: list[str]) -> list[str]:
    """Every model name must be registered in ``dvcm.models``."""
    from dvcm.models import MODEL_NAMES

    if not models:
        raise UserError(f"no model given; choose from {', '.join(MODEL_NAMES)}")
    for m in models:
        if m not in MODEL_NAMES:
            raise UserError(f"unknown model {m!r}; choose from {', '.join(MODEL_NAMES)}")
    return models


def trial_name(model: str, m1: int, m2: int, h: int, lmbda: float) -> str:
    """``proposed-64-192-2-l0.0067``: model, configuration and λ, as in MLflow and Ray storage."""
    return f"{model}-{m1}-{m2}-{h}-l{lmbda:g}"


def build_grid(
    models: list[str], configs: list[str] | dict[str, list[str]], lambdas: list[float]
) -> list[dict[str, Any]]:
    """One trial per (model, configuration, λ); ``configs`` may be per model (a mapping)."""
    grid = []
    for model in check_models(models):
        cfgs = configs.get(model) if isinstance(configs, dict) else configs
        if not cfgs:
            raise UserError(f"no configuration given for model {model!r}; add it to --configs (M1,M2,H)")
        for text in cfgs:
            m1, m2, h = parse_config(text)
            for lam in lambdas:
                grid.append({"trial_name": trial_name(model, m1, m2, h, lam), "model": model,
                             "M1": m1, "M2": m2, "H": h, "lmbda": lam})
    names = [t["trial_name"] for t in grid]
    if len(set(names)) != len(names):
        raise UserError("the grid repeats a (model, configuration, lambda) trial; remove the duplicate")
    return grid


SPEC_KEYS = {
    "name", "preset", "models", "configs", "lambdas", "gamma", "N", "crop", "batch_size", "epochs",
    "steps_per_epoch", "val_steps", "max_lr_drops", "lr", "aux_lr", "lr_patience", "lr_factor",
    "clip_max_norm", "precision", "seed", "loader_workers", "shuffle_buffer", "shards", "yolo_weights",
    "workers_per_trial", "cpus_per_worker", "gpus_per_worker", "use_gpu", "max_concurrent_trials",
    "max_failures", "storage", "tracking_uri",
}


def load_spec(path: Path) -> dict[str, Any]:
    """Read a sweep spec (YAML); unknown keys are refused so that typos do not pass silently."""
    import yaml

    if not path.is_file():
        raise UserError(f"sweep spec {path} not found; pass an existing YAML file to --spec")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"sweep spec {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise UserError(f"sweep spec {path} must be a mapping of settings")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise UserError(f"sweep spec {path} has unknown keys {unknown}; known keys: {', '.join(sorted(SPEC_KEYS))}")
    return spec


# --------------------------------------------------------------------------------------------
# Checks before training
# --------------------------------------------------------------------------------------------
def check_shards(root: str, yolo_provenance: dict[str, Any]) -> dict[str, Any]:
    """``dataset.json`` must exist, list samples in train and val, and match the YOLO front; returns it."""
    from pipeline.data import shards as shard_reader

    shards = storage.local_path(root)
    if shards is None:  # remote storage: the reader itself says what is missing
        info = shard_reader.read_dataset_info(root)
        shard_reader.check_provenance(info, yolo_provenance)
        return info
    if not shards.is_dir():
        raise UserError(f"shard folder {shards} does not exist; run `dvcm-pipeline prepare ... --out {shards}` first")
    if not (shards / "dataset.json").is_file():
        raise UserError(f"{shards} has no dataset.json; it is not a prepared shard folder (run `dvcm-pipeline prepare`)")
    if not any(shards.rglob("*.tar")):
        raise UserError(f"{shards} holds no .tar shards; run `dvcm-pipeline prepare` again")
    info = shard_reader.read_dataset_info(root)
    shard_reader.check_provenance(info, yolo_provenance)
    for split in ("train", "val"):
        if not shard_reader.shard_urls(root, split):
            raise UserError(f"split {split!r} of {root} holds no samples; prepare more frames (training needs train and val)")
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
# Sweep state (resume)
# --------------------------------------------------------------------------------------------
# Settings that change what a trial learns: a resumed sweep must keep them. Resources (CPUs and GPUs
# per worker, concurrent trials) may change; the number of DDP workers may not (it scales the batch).
FLOAT_KEYS = ("gamma", "lr", "aux_lr", "lr_factor", "clip_max_norm")
INT_KEYS = ("N", "crop", "batch_size", "epochs", "steps_per_epoch", "val_steps", "max_lr_drops", "lr_patience", "seed",
            "shuffle_buffer", "yolo_seed", "workers_per_trial")
TRAINING_KEYS = ("preset", "precision", *FLOAT_KEYS, *INT_KEYS)


def training_settings(settings: dict[str, Any], data: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a resumed sweep must not change: :data:`TRAINING_KEYS` as numbers (a YAML ``1e-4`` is a
    string), plus ``data`` (the digest of the shards and the YOLOv3 weights the trials were trained on)."""
    out: dict[str, Any] = {}
    for k in TRAINING_KEYS:
        v = settings.get(k)
        try:
            out[k] = float(v) if k in FLOAT_KEYS else int(v) if k in INT_KEYS else v
        except (TypeError, ValueError):
            out[k] = v  # reported by the checks that follow
    return {**out, **(data or {})}


def check_resume_settings(name: str, state: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to resume a sweep with other training settings (``now``: :func:`training_settings`) than it started with."""
    before = state.get("training_settings")
    if before is None:  # a record written before training settings were kept
        return
    now = json.loads(json.dumps(now))
    changed = [f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in dict.fromkeys([*before, *now]) if before.get(k) != now.get(k)]
    if changed:
        raise UserError(f"sweep {name!r} was started with other training settings ({'; '.join(changed)}); "
                        "resume it with the same settings, or pass --name for a new sweep")


def read_state(sweep_dir: str | Path) -> dict[str, Any] | None:
    """The sweep record (``sweep_dir`` a local folder or a URL), or None when the sweep never started."""
    path = storage.join(sweep_dir, STATE_FILE)
    if not storage.is_file(path):
        return None
    return json.loads(storage.read_text(path))


def write_state(sweep_dir: str | Path, state: dict[str, Any]) -> None:
    """Write the sweep record atomically (an upload of the whole file on object stores)."""
    from pipeline.infra.atomic import atomic_write_json

    atomic_write_json(storage.join(sweep_dir, STATE_FILE), state)


# --------------------------------------------------------------------------------------------
# Live progress and MLflow, fed by Tune results (runs in the CLI process)
# --------------------------------------------------------------------------------------------
@dataclass
class TrialRow:
    """What the live table shows for one trial."""

    name: str
    state: str = "PENDING"
    epoch: int = 0
    epochs: int = 0
    train_loss: float = float("nan")
    val_loss: float = float("nan")
    bpp: float = float("nan")
    psnr: float = float("nan")
    note: str = ""


@dataclass
class SweepContext:
    """Everything the Tune callback needs: tracking URI, parent run, state file, table rows."""

    tracking_uri: str
    parent_run_id: str
    sweep_dir: str
    state: dict[str, Any]
    common_params: dict[str, Any]
    rows: dict[str, TrialRow] = field(default_factory=dict)

    def save(self) -> None:
        with _STATE_LOCK:  # module level: Tune pickles its callbacks, a lock does not pickle
            write_state(self.sweep_dir, self.state)


def render_table(rows: dict[str, TrialRow], title: str, width: int | None = None):  # -> rich renderable
    """A rich table of the trials, then one line per trial note (checkpoint path or error).

    ``width``: the terminal's columns (default: the console's).
    """
    from rich import get_console
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def fmt(v: float, spec: str) -> str:
        return "-" if v != v else format(v, spec)

    cells = {r.name: {"trial": r.name, "state": r.state, "epoch": f"{r.epoch}/{r.epochs}", "loss": fmt(r.train_loss, ".4g"),
                      "val loss": fmt(r.val_loss, ".4g"), "val bpp": fmt(r.bpp, ".3g"), "val PSNR": fmt(r.psnr, ".2f")}
             for r in rows.values()}
    columns = ["trial", "state", "epoch", "loss", "val loss", "val bpp", "val PSNR"]
    widths = {c: max([len(c), *(len(row[c]) for row in cells.values())]) for c in columns}
    # Nothing is ever cut: on a narrow terminal the least read columns are left out instead, in this order.
    for optional in ("loss", "val loss", "epoch"):
        if sum(widths[c] for c in columns) + 3 * len(columns) + 1 <= (width or get_console().width):
            break
        columns.remove(optional)
    table = Table(title=title)
    for c in columns:
        table.add_column(c, no_wrap=True, min_width=widths[c], justify="left" if c in ("trial", "state") else "right")
    for row in cells.values():
        table.add_row(*(row[c] for c in columns))
    notes = [Text(f"{r.name}: {r.note}", overflow="fold") for r in rows.values() if r.note]
    return Group(table, *notes)


def make_tune_callback(ctx: SweepContext):  # -> ray.tune.Callback
    """The Tune callback that logs to MLflow and updates the table (import of ray deferred)."""
    from ray import tune

    class MlflowTrialLogger(tune.Callback):
        """Nested MLflow run per trial; per-epoch metrics; artifacts and status at the end."""

        def _run_id(self, trial) -> str:
            name = trial.config["trial"]["trial_name"]
            entry = ctx.state["trials"].setdefault(name, {})
            if not entry.get("run_id"):
                cfg = trial.config["trial"]
                params = {**ctx.common_params, **{k: cfg[k] for k in ("model", "N", "M1", "M2", "H", "lmbda", "gamma")},
                          "config": f"{cfg['M1']},{cfg['M2']},{cfg['H']}", "trial": name,
                          **{k: cfg.get(k) for k in ("crop", "batch_size", "epochs", "steps_per_epoch", "lr",
                                                     "workers_per_trial", "precision", "preset")}}
                tags = {"model": cfg["model"], "config": f"{cfg['M1']},{cfg['M2']},{cfg['H']}",
                        "lambda": f"{cfg['lmbda']:g}", "gamma": f"{cfg['gamma']:g}"}
                entry["run_id"] = tracking.start_trial_run(ctx.tracking_uri, ctx.parent_run_id, name, tags, params)
                tracking.log_dict(ctx.tracking_uri, entry["run_id"], dict(trial.config["trial"]), "config/resolved_config.json")
                ctx.save()
            return entry["run_id"]

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            self._run_id(trial)
            ctx.rows[trial.config["trial"]["trial_name"]].state = "RUNNING"

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            name = trial.config["trial"]["trial_name"]
            run_id = self._run_id(trial)
            epoch = int(result.get("epoch", 0))
            metrics = {k: v for k, v in result.items() if "/" in k or k in ("lr", "lr_drops")}
            tracking.log_metrics(ctx.tracking_uri, run_id, metrics, step=epoch)
            row = ctx.rows[name]
            row.state, row.epoch = "RUNNING", epoch
            row.train_loss = float(result.get("train/loss", float("nan")))
            row.val_loss = float(result.get("val/loss", float("nan")))
            row.bpp = float(result.get("val/bpp", float("nan")))
            row.psnr = float(result.get("val/psnr", float("nan")))
            if result.get("trial_done"):  # not "done": Tune reserves it and would kill the trial at once
                self._finish(trial, result)

        def _finish(self, trial, result: dict[str, Any]) -> None:
            name = trial.config["trial"]["trial_name"]
            run_id = self._run_id(trial)
            ckpt_dir = result.get("checkpoint_path")  # a path on the Ray storage filesystem
            final = (storage.join(storage.from_ray_path(ctx.sweep_dir, ckpt_dir), result["final_checkpoint"])
                     if ckpt_dir else None)
            if final is None or not storage.is_file(final):
                ctx.rows[name].note = "final checkpoint missing"
                return
            _log_checkpoint(ctx.tracking_uri, run_id, final)
            entry = ctx.state["trials"][name]
            entry.update({"status": "finished", "final_checkpoint": str(final), "epochs": int(result["epoch"]),
                          "finished_at": time.time()})
            tracking.end_run(ctx.tracking_uri, run_id, "FINISHED")
            ctx.rows[name].state = "FINISHED"
            ctx.rows[name].note = str(final)
            ctx.save()

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            name = trial.config["trial"]["trial_name"]
            reason = _trial_error(trial)
            tracking.end_run(ctx.tracking_uri, self._run_id(trial), "FAILED", reason=reason)
            ctx.state["trials"][name].update({"status": "failed", "reason": reason})
            ctx.rows[name].state, ctx.rows[name].note = "FAILED", reason
            ctx.save()

    return MlflowTrialLogger()


def _log_checkpoint(uri: str, run_id: str, final: str) -> None:
    """Log the final checkpoint as the run's ``checkpoint`` artifact (fetched first from remote storage)."""
    local = storage.local_path(final)
    if local is not None:
        tracking.log_artifact(uri, run_id, local, "checkpoint")
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dvcm-ckpt-") as tmp:
        tracking.log_artifact(uri, run_id, storage.download(final, Path(tmp) / storage.name(final)), "checkpoint")


def _trial_error(trial) -> str:
    """One line saying why a trial failed (the last line of its error file)."""
    text = ""
    path = getattr(trial, "error_file", None) or ""
    try:
        if path and os.path.isfile(path):
            text = Path(path).read_text()
    except OSError:
        pass
    text = text or str(getattr(trial, "error_msg", "") or "unknown error")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):  # the innermost "XxxError: message" line
        if "Error" in ln.split(":")[0] or "Exception" in ln.split(":")[0]:
            return ln[:500]
    return (lines[-1] if lines else "unknown error")[:500]


# --------------------------------------------------------------------------------------------
# Running a sweep
# --------------------------------------------------------------------------------------------
def run_sweep(
    name: str,
    grid: list[dict[str, Any]],
    settings: dict[str, Any],
    storage_root: str | Path,
    tracking_uri: str | None,
    resume: bool,
    address: str | None = None,
    show: bool = True,
) -> dict[str, Any]:
    """Check everything, then train every unfinished trial of ``grid``; returns the sweep record.

    ``settings`` are the resolved training settings (preset + flags). All bad input is refused
    here, before any training. ``storage_root`` and ``settings["shards"]`` are local folders or
    fsspec URLs (see :mod:`pipeline.infra.storage`).
    """
    from dvcm.yolo import build_yolov3

    from pipeline.infra.ray_runtime import init_ray

    if settings["precision"] not in ("fp32", "amp"):
        raise UserError(f"--precision must be fp32 or amp, got {settings['precision']!r}")
    if settings["precision"] == "amp" and not settings["use_gpu"]:
        raise UserError("--precision amp needs GPUs (autocast on CUDA); pass --use-gpu or use --precision fp32")
    for key in ("epochs", "steps_per_epoch", "val_steps", "batch_size", "max_lr_drops", "workers_per_trial"):
        if int(settings[key]) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {settings[key]}")
    if int(settings["crop"]) < 128 or int(settings["crop"]) % 64:
        raise UserError(f"--crop must be a multiple of 64 and at least 128 (small crops do not generalise), got {settings['crop']}")
    if float(settings["gamma"]) < 0:
        raise UserError(f"--gamma must be >= 0, got {settings['gamma']}")
    storage.check(settings["shards"])
    storage.check(storage_root)
    shards = storage.resolve(settings["shards"])
    yolo = build_yolov3(settings.get("yolo_weights"), seed=int(settings["yolo_seed"]))
    provenance = dict(yolo.provenance)
    info = check_shards(shards, provenance)

    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_reachable(uri)

    sweep_dir = storage.join(storage.resolve(storage_root), name)
    state = read_state(sweep_dir)
    if state is not None and not resume:
        raise UserError(f"sweep {name!r} already exists in {sweep_dir}; pass --resume to continue it or --name for a new one")
    if state is None:
        state = {"name": name, "trials": {}, "parent_run_id": None}
    # the data: every shard's sha256 and the feature statistics (not the tool version or the run's counts)
    data = {k: info.get(k) for k in ("splits", "s_mean", "s_std")}
    trained_on = training_settings(settings, {"shards_digest": tracking.text_digest(json.dumps(data, sort_keys=True)),
                                              "yolo_weights_sha256": provenance.get("weights_sha256")})
    check_resume_settings(name, state, trained_on)
    state["training_settings"] = trained_on

    init_ray(address)
    workers, cpus, gpus = int(settings["workers_per_trial"]), float(settings["cpus_per_worker"]), float(settings["gpus_per_worker"])
    check_placement(workers, cpus, gpus, bool(settings["use_gpu"]))

    common_params = {
        "preset": settings["preset"], "dataset_digest": tracking.text_digest(json.dumps(info, sort_keys=True)),
        "yolo_weights_sha256": provenance.get("weights_sha256"), "yolo_weights": provenance.get("weights"),
        "yolo_random_weights": provenance.get("random_weights"), "code_version": tracking.code_version(),
        "shards": str(shards),
    }
    state["parent_run_id"] = tracking.start_parent_run(
        uri, name, {**common_params, "trials": len(grid), "gamma": settings["gamma"]}, state.get("parent_run_id"))
    state["tracking_uri"] = uri
    storage.makedirs(sweep_dir)
    write_state(sweep_dir, state)

    ctx = SweepContext(uri, state["parent_run_id"], sweep_dir, state, common_params)
    todo: list[dict[str, Any]] = []
    kill_at = os.environ.get(KILL_ENV)
    nan_lambda = float(os.environ[NAN_ENV]) if os.environ.get(NAN_ENV) else None
    for t in grid:
        row = TrialRow(t["trial_name"], epochs=int(settings["epochs"]))
        ctx.rows[t["trial_name"]] = row
        done = state["trials"].get(t["trial_name"], {})
        if done.get("status") == "finished" and done.get("final_checkpoint") and storage.is_file(done["final_checkpoint"]):
            row.state, row.epoch, row.note = "FINISHED", int(done.get("epochs", 0)), "done earlier (skipped)"
            continue
        state["trials"].setdefault(t["trial_name"], {})["status"] = "pending"
        todo.append({**settings, **t, "shards": shards, "storage_path": storage.join(sweep_dir, "train"),
                     "yolo_provenance": provenance, "test_kill_at_epoch": int(kill_at) if kill_at else 0,
                     "test_kill_marker": _kill_marker(sweep_dir, t["trial_name"]),
                     "test_nan_loss": nan_lambda is not None and math.isclose(nan_lambda, t["lmbda"])})
    write_state(sweep_dir, state)

    if todo:
        _run_tune(todo, ctx, settings, workers, cpus, gpus, name, show)
    status = "FAILED" if any(ctx.state["trials"].get(t["trial_name"], {}).get("status") != "finished" for t in grid) else "FINISHED"
    tracking.end_run(uri, state["parent_run_id"], status)
    if show:
        from rich.console import Console

        Console().print(render_table(ctx.rows, f"sweep {name}: {status.lower()}"))
    return ctx.state


def _kill_marker(sweep_dir: str, trial: str) -> str:
    """Test-only (``KILL_ENV``): the local file that says rank 0 was killed once (a temp folder for remote storage)."""
    import tempfile

    local = storage.local_path(sweep_dir)
    folder = local if local is not None else Path(tempfile.gettempdir()) / "dvcm-test-markers" / storage.name(sweep_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f".killed-{trial}")


def _run_tune(todo: list[dict[str, Any]], ctx: SweepContext, settings: dict[str, Any], workers: int,
              cpus: float, gpus: float, name: str, show: bool) -> None:
    """Run the trials with Ray Tune under a live table."""
    import ray
    from ray import tune

    total_cpu = ray.cluster_resources().get("CPU", 1)
    concurrent = settings.get("max_concurrent_trials") or max(1, int(total_cpu // max(workers * cpus, 1e-9)))
    from pipeline.training.train import trial_trainable

    # The Tune trial only drives a TorchTrainer; the workers hold the CPUs/GPUs.
    # (Ray refuses an all-zero bundle, hence one byte of memory.)
    trainable = tune.with_resources(trial_trainable, {"cpu": 0, "memory": 1})
    tune_path, tune_fs = storage.ray_storage(storage.join(ctx.sweep_dir, "tune"))
    # Our table replaces Tune's console output; Tune's newer output engine prints its experiment box
    # and paths even at verbose=0, the classic one honours it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(todo)},
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


# --------------------------------------------------------------------------------------------
# Command line (the option types are shared with `dvcm-pipeline train`)
# --------------------------------------------------------------------------------------------
ShardsOpt = Annotated[str | None, typer.Option("--shards", help="Prepared shard folder or fsspec URL (s3://bucket/shards).")]
PresetOpt = Annotated[str | None, typer.Option("--preset", help="tiny (CPU smoke run) or paper (256 crops, batch 16, N=192).")]
GammaOpt = Annotated[float | None, typer.Option("--gamma", help=f"Feature-loss weight on normalised s (default {presets.DEFAULT_GAMMA}).")]
NOpt = Annotated[int | None, typer.Option("--N", help="Channels N of the transforms.")]
CropOpt = Annotated[int | None, typer.Option("--crop", help="Training crop size (multiple of 64, >= 128).")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Batch size per worker.")]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", help="Maximum number of epochs.")]
StepsOpt = Annotated[int | None, typer.Option("--steps-per-epoch", help="Training steps per epoch.")]
ValStepsOpt = Annotated[int | None, typer.Option("--val-steps", help="Validation batches per epoch.")]
LrDropsOpt = Annotated[int | None, typer.Option("--max-lr-drops", help="Stop after this many ReduceLROnPlateau reductions.")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Adam learning rate of the net (default 1e-4).")]
PrecisionOpt = Annotated[str | None, typer.Option("--precision", help="fp32, or amp (bf16 autocast; GPU only, refused on CPU).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed of the initial weights and of the crops (the random YOLOv3 has --yolo-seed).")]
UseGpuOpt = Annotated[bool, typer.Option("--use-gpu/--no-gpu", help="Train on GPUs (NCCL) instead of CPUs (gloo).")]
WorkersOpt = Annotated[int | None, typer.Option("--workers-per-trial", help="DDP workers per trial (default 1).")]
GpusOpt = Annotated[float | None, typer.Option("--gpus-per-worker", help="GPUs per worker with --use-gpu (default 1).")]
CpusOpt = Annotated[float | None, typer.Option("--cpus-per-worker", help="CPUs per worker (default 1); also its torch threads.")]
ConcurrentOpt = Annotated[int | None, typer.Option("--max-concurrent-trials", help="Trials at once (default: what the cluster fits).")]
FailuresOpt = Annotated[int | None, typer.Option("--max-failures", help="Worker-failure restarts per trial (default 2).")]
LoaderWorkersOpt = Annotated[int | None, typer.Option("--loader-workers", help="Data-loader processes per worker.")]
YoloSeedOpt = Annotated[int | None, typer.Option("--yolo-seed", help="Seed of the random YOLOv3 when no --yolo-weights (as in prepare).")]
YoloOpt = Annotated[Path | None, typer.Option("--yolo-weights", help="Darknet yolov3.weights (default: seeded random YOLOv3).")]
StorageOpt = Annotated[str | None, typer.Option("--storage", help="Folder or fsspec URL (s3://bucket/runs) for checkpoints and sweep records (default ./dvcm_runs).")]
TrackingOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow URI (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db).")]
AddressOpt = Annotated[str | None, typer.Option("--address", help="Ray cluster address (default RAY_ADDRESS or a local Ray).")]

RESOURCE_DEFAULTS: dict[str, Any] = {"workers_per_trial": 1, "cpus_per_worker": 1.0, "gpus_per_worker": 1.0,
                                     "max_failures": 2, "max_concurrent_trials": None, "use_gpu": False}


def resolve_settings(preset: str | None, spec: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Preset < spec file < explicit flags."""
    merged = {**{k: v for k, v in spec.items() if k not in ("models", "configs", "lambdas", "name")},
              **{k: v for k, v in flags.items() if v is not None}}
    settings = presets.resolve(preset or merged.pop("preset", None) or "tiny", merged)
    for k, v in RESOURCE_DEFAULTS.items():
        settings.setdefault(k, v)
    if not settings["use_gpu"]:
        settings["gpus_per_worker"] = 0.0
    if not settings.get("shards"):
        raise UserError("no shards given; pass --shards DIR (a folder written by `dvcm-pipeline prepare`)")
    return settings


def sweep_command(
    shards: ShardsOpt = None,
    model: Annotated[str | None, typer.Option("--model", help="Models, comma separated: proposed,choi2022.")] = None,
    lambdas: Annotated[str | None, typer.Option("--lambdas", help="λ values, comma separated, each > 0.")] = None,
    configs: Annotated[str | None, typer.Option("--configs", help="Configurations M1,M2,H separated by ':' (64,192,2:64,128,1).")] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="Sweep spec YAML (e.g. jobs/paper_sweep.yaml); flags override it.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Sweep name (MLflow parent run, storage folder).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted sweep; finished trials are skipped.")] = False,
    preset: PresetOpt = None, gamma: GammaOpt = None, n: NOpt = None, crop: CropOpt = None, batch_size: BatchOpt = None,
    epochs: EpochsOpt = None, steps_per_epoch: StepsOpt = None, val_steps: ValStepsOpt = None,
    max_lr_drops: LrDropsOpt = None, lr: LrOpt = None, precision: PrecisionOpt = None, seed: SeedOpt = None,
    use_gpu: UseGpuOpt = False, workers_per_trial: WorkersOpt = None, gpus_per_worker: GpusOpt = None,
    cpus_per_worker: CpusOpt = None, max_concurrent_trials: ConcurrentOpt = None, max_failures: FailuresOpt = None,
    loader_workers: LoaderWorkersOpt = None, yolo_weights: YoloOpt = None, yolo_seed: YoloSeedOpt = None,
    storage_root: StorageOpt = None,
    tracking_uri: TrackingOpt = None, address: AddressOpt = None,
) -> None:
    """Train every (model, configuration, λ) trial in parallel (Ray Tune) with DDP per trial (Ray Train)."""
    spec_d = load_spec(spec) if spec else {}
    flags = {"shards": shards, "gamma": gamma, "N": n, "crop": crop, "batch_size": batch_size, "epochs": epochs,
             "steps_per_epoch": steps_per_epoch, "val_steps": val_steps, "max_lr_drops": max_lr_drops, "lr": lr,
             "precision": precision, "seed": seed, "use_gpu": use_gpu or None, "workers_per_trial": workers_per_trial,
             "gpus_per_worker": gpus_per_worker, "cpus_per_worker": cpus_per_worker,
             "max_concurrent_trials": max_concurrent_trials, "max_failures": max_failures,
             "loader_workers": loader_workers, "yolo_weights": str(yolo_weights) if yolo_weights else None,
             "yolo_seed": yolo_seed}
    settings = resolve_settings(preset, spec_d, flags)
    models = parse_list(model) if model else list(spec_d.get("models") or ["proposed"])
    if configs:
        cfgs: list[str] | dict[str, list[str]] = parse_list(configs, ":")
    elif spec_d.get("configs"):
        raw = spec_d["configs"]
        cfgs = {k: [str(c) for c in v] for k, v in raw.items()} if isinstance(raw, dict) else [str(c) for c in raw]
    else:
        cfgs = [",".join(map(str, c)) for c in settings["configs"]]
    lams = parse_lambdas(parse_list(lambdas) if lambdas else list(spec_d.get("lambdas") or []))
    grid = build_grid(models, cfgs, lams)
    settings.pop("configs", None)
    sweep_name = name or spec_d.get("name") or f"sweep-{'_'.join(models)}-{len(grid)}trials"
    storage_dir = storage_root or str(spec_d.get("storage") or "dvcm_runs")
    state = run_sweep(sweep_name, grid, settings, storage_dir, tracking_uri or spec_d.get("tracking_uri"), resume, address)
    failed = [n_ for n_, t in state["trials"].items() if t.get("status") != "finished"]
    if failed:
        raise UserError(f"{len(failed)} of {len(grid)} trials did not finish ({', '.join(failed)}); see MLflow, then rerun with --resume")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add ``sweep``."""
    app.command("sweep")(sweep_command)
