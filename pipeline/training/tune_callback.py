"""The Ray Tune callback of a sweep (runs in the CLI process, the only MLflow writer): a nested MLflow
run per trial, per-epoch metrics, the final checkpoint as an artifact, and the live table's rows."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvcm.loss import feature_weight
from dvcm.registry import codec_spec
from pipeline.infra import storage, tracking
from pipeline.training.live_table import TrialRow
from pipeline.training.sweep_state import _STATE_LOCK, write_state


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
                spec = codec_spec(cfg["model"])
                hyper = [h.name for h in spec.hyperparameters]
                weight_s = feature_weight(cfg["lmbda"], cfg["gamma"], cfg["gamma_mode"]) if spec.feature_loss else 0.0
                params = {
                    **ctx.common_params,
                    **{k: cfg[k] for k in ("model", "N", *hyper, "lmbda", "gamma")},
                    "gamma_mode": cfg["gamma_mode"],
                    "feature_weight": weight_s,
                    "config": spec.text(cfg),
                    "trial": name,
                    **{
                        k: cfg.get(k)
                        for k in (
                            "crop",
                            "batch_size",
                            "epochs",
                            "steps_per_epoch",
                            "lr",
                            "workers_per_trial",
                            "precision",
                            "preset",
                            "seed",
                            "init_checkpoint",
                        )
                    },
                }
                tags = {
                    "model": cfg["model"],
                    "config": spec.text(cfg),
                    "lambda": f"{cfg['lmbda']:g}",
                    "gamma": f"{cfg['gamma']:g}",
                }
                entry["run_id"] = tracking.start_trial_run(ctx.tracking_uri, ctx.parent_run_id, name, tags, params)
                tracking.log_dict(
                    ctx.tracking_uri, entry["run_id"], dict(trial.config["trial"]), "config/resolved_config.json"
                )
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
            final = (
                storage.join(storage.from_ray_path(ctx.sweep_dir, ckpt_dir), result["final_checkpoint"])
                if ckpt_dir
                else None
            )
            if final is None or not storage.is_file(final):
                ctx.rows[name].note = "final checkpoint missing"
                return
            _log_checkpoint(ctx.tracking_uri, run_id, final)
            entry = ctx.state["trials"][name]
            entry.update(
                {
                    "status": "finished",
                    "final_checkpoint": str(final),
                    "epochs": int(result["epoch"]),
                    "finished_at": time.time(),
                }
            )
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
