"""``dvcm-pipeline quickstart``: the whole workflow on the embedded sample set."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from dvcm.zoo import MINI_DETECTOR
from pipeline.cli.options import YOLO_WEIGHTS_HELP, YoloCfgOpt
from pipeline.evaluation.anchors import ANCHOR_LIST
from pipeline.training.grid import parse_list
from pipeline.workflows.quickstart import DEFAULT_LAMBDAS, DEFAULT_OUT, run_quickstart


def quickstart_command(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for everything (data, shards, runs, eval, mlflow.db).")
    ] = DEFAULT_OUT,
    yolo_weights: Annotated[
        Path | None, typer.Option("--yolo-weights", help=f"{YOLO_WEIGHTS_HELP} (default: mini).")
    ] = Path(MINI_DETECTOR),
    yolo_cfg: YoloCfgOpt = None,
    lambdas: Annotated[
        str, typer.Option("--lambdas", help="Two or more λ, comma separated (each model gets all).")
    ] = DEFAULT_LAMBDAS,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Epochs per trial (default: 3 from the zoo, 4 from scratch).")
    ] = None,
    steps_per_epoch: Annotated[
        int | None,
        typer.Option(
            "--steps-per-epoch", help="Training steps per epoch (default: 100 from the zoo, 200 from scratch)."
        ),
    ] = None,
    val_steps: Annotated[
        int | None, typer.Option("--val-steps", help="Validation batches per epoch (default: the mini preset's).")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option("--lr", help="Adam learning rate of the trials (default: 1e-4 from the zoo, 1e-3 from scratch)."),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            help="Seed of the trials' crops and order (and of their initial weights when they train from scratch; the random YOLOv3 keeps seed 0).",
        ),
    ] = 0,
    gamma: Annotated[
        float | None,
        typer.Option(
            "--gamma", help="Feature-loss weight γ, one for every trial as in the paper (default: the zoo's)."
        ),
    ] = None,
    gamma_mode: Annotated[
        str | None,
        typer.Option(
            "--gamma-mode",
            help="fixed (L = R + λ·D_x + γ·D_s) or scaled (L = R + λ·(D_x + γ·D_s)); default: the zoo's.",
        ),
    ] = None,
    anchors: Annotated[
        str, typer.Option("--anchors", help=f"Anchors to evaluate where installed ({ANCHOR_LIST}) or 'none'.")
    ] = ANCHOR_LIST,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri", help="MLflow URI (default MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db)."
        ),
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address (default RAY_ADDRESS or a local Ray).")
    ] = None,
    num_cpus: Annotated[
        int | None, typer.Option("--num-cpus", help="CPUs of the local Ray instance (default: all).")
    ] = None,
) -> None:
    """Prepare, sweep, evaluate and report on the embedded sample set: the whole workflow in one command."""
    t0 = time.perf_counter()
    names = [] if anchors.strip() == "none" else parse_list(anchors)
    run_quickstart(
        out,
        str(yolo_weights) if yolo_weights else None,
        parse_list(lambdas),
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        val_steps=val_steps,
        lr=lr,
        gamma=gamma,
        gamma_mode=gamma_mode,
        seed=seed,
        anchors=names,
        tracking_uri=tracking_uri,
        address=address,
        num_cpus=num_cpus,
        yolo_cfg=str(yolo_cfg) if yolo_cfg else None,
    )
    typer.echo(f"quickstart finished in {time.perf_counter() - t0:.0f} s")
