"""The stages every study runs, shared by the quickstart and ``reproduce``: prepare, sweep, evaluate.

Each stage takes one :class:`StudyContext` (where the study writes, where it tracks, which detector, which Ray) and
what is its own; the workflows (:mod:`pipeline.workflows.quickstart`, :mod:`pipeline.workflows.reproduce`) only
choose the data, the trials and the figures.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.infra.errors import UserError


def default_tracking_uri(out: Path) -> str:
    """An SQLite store inside the study's folder (so a new ``--out`` is a fresh start)."""
    return f"sqlite:///{(out / 'mlflow.db').resolve()}"


def mlflow_ui_command(tracking_uri: str) -> str:
    """The exact command that opens the runs of ``tracking_uri`` in the MLflow UI."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser (the tracking server is its own UI)"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def _console() -> Any:
    from rich.console import Console

    return Console()


@dataclass
class StudyContext:
    """What every stage of a study works with."""

    out: Path  # everything the study writes lands here
    uri: str  # MLflow tracking URI (resolved)
    weights: str | None  # the detector's files, absolute (None: the seeded random-weight YOLOv3)
    cfg: str | None
    address: str | None = None  # a Ray cluster to join (None: RAY_ADDRESS, else a local Ray)
    num_cpus: int | None = None  # CPUs of a local Ray (None: all)
    progress: bool = True
    con: Any = field(default_factory=_console)  # a rich Console

    @classmethod
    def open(
        cls,
        out: Path,
        tracking_uri: str | None,
        weights: str | None,
        cfg: str | None,
        address: str | None = None,
        num_cpus: int | None = None,
        progress: bool = True,
    ) -> StudyContext:
        """The study's folder made absolute, and its tracking URI: the flag, else ``MLFLOW_TRACKING_URI``, else an
        SQLite store inside the folder."""
        from pipeline.infra import tracking

        out = Path(out).expanduser().resolve()
        uri = tracking.resolve_tracking_uri(
            tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(out)
        )
        return cls(out, uri, weights, cfg, address, num_cpus, progress)

    @property
    def shards(self) -> Path:
        return self.out / "shards"


def prepare_stage(ctx: StudyContext, listing: Any, frames: int, shard_size: int) -> Path:
    """Clips of ``listing`` (:func:`pipeline.data.sources.list_source`) into ``out/shards`` with the detector's front
    (Ray tasks); a rerun keeps the finished shards and their feature encoding."""
    from pipeline.data.feature_encoding import DEFAULT_ENCODING
    from pipeline.data.prepare import recorded_encoding, run_prepare
    from pipeline.infra.ray_runtime import init_ray

    init_ray(ctx.address, ctx.num_cpus)
    rep = run_prepare(
        listing,
        ctx.shards,
        yolo_weights=ctx.weights,
        yolo_cfg=ctx.cfg,
        frames=frames,
        shard_size=shard_size,
        use_ray=True,
        address=ctx.address,
        num_cpus=ctx.num_cpus,
        progress=ctx.progress,
        feature_encoding=recorded_encoding(ctx.shards) or DEFAULT_ENCODING,
    )
    ctx.con.print(f"shards in {ctx.shards}: {rep.shards_written} written, {rep.shards_skipped} already finished")
    return ctx.shards


def sweep_stage(
    ctx: StudyContext,
    name: str,
    grid: list[dict[str, Any]],
    settings: Any,
    changed: Callable[[str], str],
    rerun: str,
) -> dict[str, Any]:
    """The trials of ``grid`` as sweep ``name`` in ``out/runs`` (Ray Tune + Ray Train), resuming the sweep that is
    there; returns its record once every trial of ``grid`` finished.

    ``changed(changes)`` is the one line when the folder holds the sweep trained with other settings (``changes``:
    which, old -> new); ``rerun`` says what to do after a failed trial."""
    from pipeline.training.settings import SettingsChangedError
    from pipeline.training.sweep import failure_summary, run_sweep
    from pipeline.training.sweep_state import read_state

    storage = ctx.out / "runs"
    try:
        state = run_sweep(
            name,
            grid,
            settings,
            storage,
            ctx.uri,
            resume=read_state(storage / name) is not None,
            address=ctx.address,
            show=ctx.progress,
        )
    except SettingsChangedError as e:  # the sweep's advice (--name) is no option of a study
        raise UserError(changed(e.changes)) from None
    failed = [t["trial_name"] for t in grid if state["trials"].get(t["trial_name"], {}).get("status") != "finished"]
    if failed:
        why = failure_summary(state, failed)
        if why.startswith("trial "):
            raise UserError(f"trials {', '.join(failed)} did not finish; {why}")
        raise UserError(f"trials {', '.join(failed)} did not finish; {why}{rerun}")
    return state


@dataclass(frozen=True)
class RedundancySettings:
    """How ``evaluate`` estimates Rdn(ŷ1|ŷ2) and Rdn(ŷ2|ŷ1) for each trial (:mod:`pipeline.evaluation.job`)."""

    images: int
    k: int
    fibers: int
    learned_steps: int


def evaluate_stage(
    ctx: StudyContext,
    eval_dir: Path,
    run_ids: list[str],
    sample: Any,
    anchors: list[str],
    reference: str,
    redundancy: RedundancySettings,
) -> dict[str, Any]:
    """The trials of ``run_ids`` from real bitstreams on the sample's COCO-like (or COCO) and Kodak images, beside
    ``anchors`` (Ray tasks), into ``eval_dir``; returns the job's summary and prints its notices."""
    from pipeline.evaluation.job import Job, run_job
    from pipeline.evaluation.targets import coco_items, folder_items, resolve_targets
    from pipeline.evaluation.tasks import Settings

    targets = resolve_targets([], run_ids, None, False, ctx.uri, eval_dir / ".downloads")
    items, gt = coco_items(sample.coco_root, sample.coco_annotations, None)
    job = Job(
        targets=targets,
        out=eval_dir,
        settings=Settings(yolo_weights=ctx.weights, yolo_seed=0, yolo_cfg=ctx.cfg),
        coco=(items, gt, sample.coco_annotations),
        kodak=folder_items(sample.kodak_root),
        reference=reference,
        anchors=list(anchors),
        bd_reference="choi2022,bmshj2018",
        tracking_uri=ctx.uri,
        redundancy_images=redundancy.images,
        redundancy_k=redundancy.k,
        redundancy_fibers=redundancy.fibers,
        redundancy_learned_steps=redundancy.learned_steps,
    )
    summary = run_job(job, progress=ctx.progress)
    for line in summary["notices"]:
        ctx.con.print(line)
    return summary
