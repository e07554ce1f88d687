"""``dvcm-pipeline train-detector``: the mini YOLOv3 trained on the synthetic world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.detector.job import CFG_NAME, WEIGHTS_NAME, DetectorSettings, parse_sizes, train_detector

_DEFAULTS = DetectorSettings()


def train_detector_command(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for detector.cfg, detector.weights, detector.json and Ray's run.")
    ] = Path("detector"),
    world_seed: Annotated[
        int, typer.Option(help="Seed of the synthetic world the detector learns (its train and val splits).")
    ] = _DEFAULTS.world_seed,
    test_world_seed: Annotated[
        int, typer.Option(help="Seed of the unseen world whose test split gives the final mAP.")
    ] = _DEFAULTS.test_world_seed,
    world_style: Annotated[
        str,
        typer.Option(
            help="How the world's backgrounds look: plain, or photographic (they cost what photos cost to code)."
        ),
    ] = _DEFAULTS.world_style,
    width: Annotated[
        float, typer.Option(help="Width multiplier of YOLOv3's filters (C_s = 256 x width).")
    ] = _DEFAULTS.width,
    steps: Annotated[int, typer.Option(help="Training steps (the schedule's length).")] = _DEFAULTS.steps,
    batch_size: Annotated[int, typer.Option(help="Scenes per step and worker.")] = _DEFAULTS.batch_size,
    sizes: Annotated[
        str, typer.Option(help="Square training sizes in pixels, one per step in turn at random (multi-scale).")
    ] = ",".join(map(str, _DEFAULTS.sizes)),
    lr: Annotated[float, typer.Option(help="Peak learning rate (Adam; warm-up, then cosine).")] = _DEFAULTS.lr,
    eval_every: Annotated[int, typer.Option(help="Steps between held-out mAP evaluations.")] = _DEFAULTS.eval_every,
    val_images: Annotated[int, typer.Option(help="Validation scenes per evaluation.")] = _DEFAULTS.val_images,
    test_images: Annotated[
        int, typer.Option(help="Test scenes of the unseen world for the final score.")
    ] = _DEFAULTS.test_images,
    workers: Annotated[int, typer.Option(help="Ray Train workers (DDP on gloo).")] = _DEFAULTS.workers,
    threads: Annotated[int, typer.Option(help="CPU threads (and Ray CPUs) per worker.")] = _DEFAULTS.threads,
    seed: Annotated[int, typer.Option(help="Seed of the initial weights.")] = _DEFAULTS.seed,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
    ] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: a local Ray).")] = None,
) -> None:
    """Train the mini YOLOv3 on the synthetic world; a stopped run resumes when the same command is rerun."""
    settings = DetectorSettings(
        world_seed=world_seed,
        test_world_seed=test_world_seed,
        world_style=world_style,
        width=width,
        steps=steps,
        batch_size=batch_size,
        sizes=parse_sizes(sizes),
        lr=lr,
        eval_every=eval_every,
        val_images=val_images,
        test_images=test_images,
        workers=workers,
        threads=threads,
        seed=seed,
    )
    p = train_detector(out, settings, tracking_uri, address)
    typer.echo(
        f"{p['name']}: test mAP@0.5 {p['test_map50']:.3f} on {p['test_images']} scenes of world "
        f"{p['test_world_seed']} (the same network with random weights: {p['random_weights_test_map50']:.3f})"
    )
    for who, st in p["s_statistics_on_test"].items():
        typer.echo(
            f"s = V_front(x), {who.replace('_', ' ')}: per-channel std {st['std_min']:.3g} .. {st['std_median']:.3g} "
            f"(median) .. {st['std_max']:.3g} over {st['channels']} channels, median |mean| "
            f"{st['mean_abs_median']:.3g}, {st['dead_channels']} dead"
        )
    typer.echo(
        f"wrote {out / CFG_NAME} and {out / WEIGHTS_NAME} (sha256 {p['weights_sha256'][:12]}); "
        f"use them with --yolo-cfg {out / CFG_NAME} --yolo-weights {out / WEIGHTS_NAME}"
    )
