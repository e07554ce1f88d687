"""``dvcm-pipeline reproduce``: the paper's study in miniature (see :mod:`pipeline.workflows.reproduce`)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.options import YoloCfgOpt
from pipeline.evaluation.anchors import ANCHOR_LIST
from pipeline.training.grid import parse_lambdas, parse_list
from pipeline.workflows.reproduce import PRESETS, RealData, run_reproduce


def _seeds(text: str) -> list[int]:
    try:
        return [int(v) for v in parse_list(text)]
    except ValueError:
        raise typer.BadParameter(f"--seeds {text!r}: write integers such as 0,1") from None


def _gammas(text: str) -> list[float]:
    """``--gammas 0.3,1,3`` as numbers (checked by the study: distinct, >= 0)."""
    try:
        return [float(v) for v in parse_list(text)]
    except ValueError:
        raise typer.BadParameter(f"--gammas {text!r}: write numbers such as 0.3,1,3") from None


def _trunk(text: str) -> tuple[float, float] | None:
    """``--trunk 0.0932,100`` as (λ, γ); ``none`` for rounds of λ (checked by the study: λ > 0, γ >= 0)."""
    if text.strip().lower() == "none":
        return None
    try:
        lam, gamma = (float(v) for v in parse_list(text))
    except ValueError:
        raise typer.BadParameter(f"--trunk {text!r}: write λ,γ such as 0.0932,100, or none") from None
    return lam, gamma


def _models(preset: str, text: str | None) -> dict[str, dict[str, str]] | None:
    """``--models``: the configurations of the models named (the study's, or an ablation row's), as a preset
    override."""
    if text is None or preset not in PRESETS:
        return None
    from dvcm.registry import CODECS

    training = PRESETS[preset].training_preset  # every codec, ablation rows included, at its preset default
    known = {name: spec.defaults(training)[0] for name, spec in CODECS.items() if training in spec.presets}
    chosen = parse_list(text)
    unknown = [m for m in chosen if m not in known]
    if unknown or not chosen:
        raise typer.BadParameter(f"--models {text!r}: choose among {', '.join(known)}")
    return {"configs": {m: known[m] for m in chosen}}


def reproduce_command(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for everything: data, shards, runs, eval, findings, mlflow.db.")
    ] = Path("dvcm-reproduce"),
    preset: Annotated[str, typer.Option("--preset", help=f"Study preset: {', '.join(PRESETS)}.")] = "mini",
    budget_minutes: Annotated[
        float | None,
        typer.Option(
            "--budget-minutes",
            help="Wall time the study may take; the training's epoch caps follow from it (default: the preset's, 60 for mini, 400 for mini-photographic).",
        ),
    ] = None,
    lambdas: Annotated[
        str | None,
        typer.Option("--lambdas", help="λ values, comma separated (default: the paper's 0.0018,0.0067,0.025,0.0932)."),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds",
            help="Seeds of the trials' weights and crops (default: the preset's, 0,1 for mini, 0,1,2 for mini-photographic).",
        ),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(
            "--models",
            help="The study's models, comma separated (default: every model of the preset: proposed, choi2022, bmshj2018).",
        ),
    ] = None,
    gamma: Annotated[
        float | None,
        typer.Option("--gamma", help="Weight γ of the feature distortion D_s (one per study, as in the paper)."),
    ] = None,
    gammas: Annotated[
        str | None,
        typer.Option(
            "--gammas",
            help="A γ grid, comma separated (e.g. 0.3,1,3): every λ trains each γ, and each model's curve is the upper hull of its (λ, γ) points (the paper-faithful curve under Eq. 2).",
        ),
    ] = None,
    trunk: Annotated[
        str | None,
        typer.Option(
            "--trunk",
            help="λ,γ of one trunk per model and seed, trained from scratch first; every trial then starts from its trunk. none: rounds of λ, each from the λ below (default: the preset's).",
        ),
    ] = None,
    gamma_mode: Annotated[
        str | None,
        typer.Option(
            "--gamma-mode",
            help="fixed: L = R + λ·D_x + γ·D_s (the paper's Eq. 2); scaled: L = R + λ·(D_x + γ·D_s), so λ moves the base layer too (default: the preset's).",
        ),
    ] = None,
    train_detector: Annotated[
        bool, typer.Option("--train-detector", help="Train the mini YOLOv3 now instead of using the bundled one.")
    ] = False,
    world_style: Annotated[
        str | None,
        typer.Option(
            "--world-style",
            help="How the synthetic world looks: plain, or photographic (images that cost what photos cost to code; with its bundled detector, mini-photographic).",
        ),
    ] = None,
    anchors: Annotated[
        str, typer.Option("--anchors", help=f"Anchors to evaluate where installed ({ANCHOR_LIST}) or 'none'.")
    ] = ANCHOR_LIST,
    steps_per_epoch: Annotated[
        int | None, typer.Option("--steps-per-epoch", help="Training steps per epoch (default: the preset's).")
    ] = None,
    val_steps: Annotated[
        int | None, typer.Option("--val-steps", help="Validation batches per epoch (default: the preset's).")
    ] = None,
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
    plan_only: Annotated[
        bool, typer.Option("--plan-only", help="Print the plan (and, with --preset paper, the data found) and stop.")
    ] = False,
    vimeo: Annotated[
        Path | None,
        typer.Option(
            "--vimeo", help="--preset paper: Vimeo-90K's vimeo_septuplet folder (sequences/, sep_trainlist.txt)."
        ),
    ] = None,
    coco: Annotated[
        Path | None, typer.Option("--coco", help="--preset paper: COCO 2014's val2014 image folder.")
    ] = None,
    coco_annotations: Annotated[
        Path | None, typer.Option("--coco-annotations", help="--preset paper: instances_val2014.json.")
    ] = None,
    kodak: Annotated[Path | None, typer.Option("--kodak", help="--preset paper: the Kodak image folder.")] = None,
    yolo_weights: Annotated[
        Path | None, typer.Option("--yolo-weights", help="--preset paper: Darknet yolov3.weights.")
    ] = None,
    yolo_cfg: YoloCfgOpt = None,
    use_gpu: Annotated[
        bool | None,
        typer.Option(
            "--use-gpu/--no-gpu",
            help="Train on GPUs (NCCL) instead of CPUs (gloo) (default: GPUs for --preset paper, CPUs for mini).",
        ),
    ] = None,
    workers_per_trial: Annotated[
        int | None, typer.Option("--workers-per-trial", help="DDP workers per trial (default 1).")
    ] = None,
    gpus_per_worker: Annotated[
        float | None, typer.Option("--gpus-per-worker", help="GPUs per worker with --use-gpu (default 1).")
    ] = None,
) -> None:
    """Run the paper's experiment in miniature (or, with --preset paper, on your data and GPUs) and write its
    findings next to the paper's (a rerun resumes)."""
    names = [] if anchors.strip() == "none" else parse_list(anchors)
    data = None
    if preset == "paper" or any(v is not None for v in (vimeo, coco, coco_annotations, kodak)):
        data = RealData.from_options(vimeo, coco, coco_annotations, kodak)
    if use_gpu is None:
        use_gpu = preset == "paper"
    flags = {
        "steps_per_epoch": steps_per_epoch,
        "val_steps": val_steps,
        "use_gpu": use_gpu or None,
        "workers_per_trial": workers_per_trial,
        "gpus_per_worker": gpus_per_worker,
    }
    run_reproduce(
        out,
        preset,
        budget_minutes,
        parse_lambdas(parse_list(lambdas)) if lambdas else None,
        _seeds(seeds) if seeds is not None else None,
        gamma,
        gamma_mode,
        train_detector,
        names,
        tracking_uri,
        address,
        num_cpus,
        settings_flags={k: v for k, v in flags.items() if v is not None},
        preset_overrides={
            **(_models(preset, models) or {}),
            **({"world_style": world_style} if world_style else {}),
            **({"gammas": tuple(_gammas(gammas))} if gammas else {}),
            **({"trunk": _trunk(trunk)} if trunk else {}),
        },
        command=_command_line(ctx),
        data=data,
        yolo_weights=str(yolo_weights) if yolo_weights else None,
        yolo_cfg=str(yolo_cfg) if yolo_cfg else None,
        plan_only=plan_only,
    )


def _command_line(ctx: typer.Context) -> str:
    """The command as given (its options that differ from their defaults), for the findings' provenance."""
    words = ["dvcm-pipeline", "reproduce"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default or not param.opts:
            continue
        words += [param.opts[0]] if param.is_flag else [param.opts[0], str(value)]
    return shlex.join(words)
