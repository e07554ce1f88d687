"""``dvcm-pipeline sweep`` and ``train`` (a sweep of one trial): flags -> settings -> :func:`run_sweep`.

The option types are shared by both commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dvcm.registry import CODECS
from pipeline.cli.options import YoloCfgOpt, YoloWeightsOpt
from pipeline.infra.errors import UserError
from pipeline.training.grid import build_grid, load_spec, parse_lambdas, parse_list
from pipeline.training.settings import DEFAULT_GAMMA, resolve
from pipeline.training.sweep import failure_summary, run_sweep

MODEL_HELP = ", ".join(CODECS)
CONFIG_HELP = "; ".join(f"{name}: {spec.config_form}" for name, spec in CODECS.items())
ShardsOpt = Annotated[
    str | None, typer.Option("--shards", help="Prepared shard folder or fsspec URL (s3://bucket/shards).")
]
PresetOpt = Annotated[
    str | None, typer.Option("--preset", help="tiny (CPU smoke run) or paper (256 crops, batch 16, N=192).")
]
GammaOpt = Annotated[
    float | None, typer.Option("--gamma", help=f"Feature-loss weight on normalised s (default {DEFAULT_GAMMA}).")
]
GammaModeOpt = Annotated[
    str | None,
    typer.Option(
        "--gamma-mode",
        help="fixed: L = R + λ·D_x + γ·D_s (the paper's Eq. 2, default); scaled: L = R + λ·(D_x + γ·D_s), so λ moves the base layer's rate too.",
    ),
]
NOpt = Annotated[int | None, typer.Option("--N", help="Channels N of the transforms.")]
CropOpt = Annotated[int | None, typer.Option("--crop", help="Training crop size (multiple of 64, >= 128).")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Batch size per worker.")]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", help="Maximum number of epochs.")]
StepsOpt = Annotated[int | None, typer.Option("--steps-per-epoch", help="Training steps per epoch.")]
ValStepsOpt = Annotated[int | None, typer.Option("--val-steps", help="Validation batches per epoch.")]
LrDropsOpt = Annotated[
    int | None, typer.Option("--max-lr-drops", help="Stop after this many ReduceLROnPlateau reductions.")
]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Adam learning rate of the net (default 1e-4).")]
PrecisionOpt = Annotated[
    str | None, typer.Option("--precision", help="fp32, or amp (bf16 autocast; GPU only, refused on CPU).")
]
SeedOpt = Annotated[
    int | None,
    typer.Option("--seed", help="Seed of the initial weights and of the crops (the random YOLOv3 has --yolo-seed)."),
]
UseGpuOpt = Annotated[bool, typer.Option("--use-gpu/--no-gpu", help="Train on GPUs (NCCL) instead of CPUs (gloo).")]
WorkersOpt = Annotated[int | None, typer.Option("--workers-per-trial", help="DDP workers per trial (default 1).")]
GpusOpt = Annotated[float | None, typer.Option("--gpus-per-worker", help="GPUs per worker with --use-gpu (default 1).")]
CpusOpt = Annotated[
    float | None, typer.Option("--cpus-per-worker", help="CPUs per worker (default 1); also its torch threads.")
]
ConcurrentOpt = Annotated[
    int | None, typer.Option("--max-concurrent-trials", help="Trials at once (default: what the cluster fits).")
]
FailuresOpt = Annotated[
    int | None, typer.Option("--max-failures", help="Worker-failure restarts per trial (default 2).")
]
LoaderWorkersOpt = Annotated[int | None, typer.Option("--loader-workers", help="Data-loader processes per worker.")]
YoloSeedOpt = Annotated[
    int | None, typer.Option("--yolo-seed", help="Seed of the random YOLOv3 when no --yolo-weights (as in prepare).")
]
YoloOpt = YoloWeightsOpt
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Folder or fsspec URL (s3://bucket/runs) for checkpoints and sweep records (default ./dvcm_runs).",
    ),
]
TrackingOpt = Annotated[
    str | None, typer.Option("--tracking-uri", help="MLflow URI (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db).")
]
AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address (default RAY_ADDRESS or a local Ray).")
]


def _flags(**given: Any) -> dict[str, Any]:
    """Command-line settings as a mapping (``None``: not given; ``--use-gpu`` off is not given)."""
    flags = {"N": given.pop("n", None), **given}
    flags["use_gpu"] = flags.get("use_gpu") or None
    for key in ("yolo_weights", "yolo_cfg"):
        if flags.get(key) is not None:
            flags[key] = str(flags[key])
    return flags


def train_command(
    shards: ShardsOpt = None,
    model: Annotated[str, typer.Option("--model", help=f"One of {MODEL_HELP}.")] = "proposed",
    config: Annotated[
        str | None,
        typer.Option("--config", help=f"Configuration ({CONFIG_HELP}; default: the codec's for the preset)."),
    ] = None,
    lmbda: Annotated[float, typer.Option("--lmbda", "--lambda", help="Rate-distortion trade-off λ (> 0).")] = 0.0067,
    name: Annotated[str | None, typer.Option("--name", help="Run name (default: the trial name).")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")
    ] = False,
    preset: PresetOpt = None,
    gamma: GammaOpt = None,
    gamma_mode: GammaModeOpt = None,
    n: NOpt = None,
    crop: CropOpt = None,
    batch_size: BatchOpt = None,
    epochs: EpochsOpt = None,
    steps_per_epoch: StepsOpt = None,
    val_steps: ValStepsOpt = None,
    max_lr_drops: LrDropsOpt = None,
    lr: LrOpt = None,
    precision: PrecisionOpt = None,
    seed: SeedOpt = None,
    use_gpu: UseGpuOpt = False,
    workers_per_trial: WorkersOpt = None,
    gpus_per_worker: GpusOpt = None,
    cpus_per_worker: CpusOpt = None,
    max_failures: FailuresOpt = None,
    loader_workers: LoaderWorkersOpt = None,
    yolo_weights: YoloOpt = None,
    yolo_cfg: YoloCfgOpt = None,
    yolo_seed: YoloSeedOpt = None,
    storage_root: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    address: AddressOpt = None,
) -> None:
    """Train one (model, configuration, λ) trial with Ray Train DDP; logs to MLflow."""
    settings = resolve(
        preset,
        {},
        _flags(
            shards=shards,
            gamma=gamma,
            gamma_mode=gamma_mode,
            n=n,
            crop=crop,
            batch_size=batch_size,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            val_steps=val_steps,
            max_lr_drops=max_lr_drops,
            lr=lr,
            precision=precision,
            seed=seed,
            use_gpu=use_gpu,
            workers_per_trial=workers_per_trial,
            gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
            max_failures=max_failures,
            loader_workers=loader_workers,
            yolo_weights=yolo_weights,
            yolo_cfg=yolo_cfg,
            yolo_seed=yolo_seed,
        ),
    )
    grid = build_grid([model], [config] if config else None, parse_lambdas([lmbda]), settings.training.preset)[:1]
    state = run_sweep(
        name or grid[0]["trial_name"], grid, settings, storage_root or "dvcm_runs", tracking_uri, resume, address
    )
    entry = state["trials"][grid[0]["trial_name"]]
    if entry.get("status") != "finished":
        raise UserError(f"trial {grid[0]['trial_name']} failed: {entry.get('reason', 'see MLflow')}")


def sweep_command(
    shards: ShardsOpt = None,
    model: Annotated[str | None, typer.Option("--model", help=f"Models, comma separated, of {MODEL_HELP}.")] = None,
    lambdas: Annotated[str | None, typer.Option("--lambdas", help="λ values, comma separated, each > 0.")] = None,
    configs: Annotated[
        str | None,
        typer.Option(
            "--configs",
            help=f"Configurations separated by ':' (64,192,2:64,128,1), each of every --model ({CONFIG_HELP}); default: each codec's for the preset; a spec may give them per model.",
        ),
    ] = None,
    spec: Annotated[
        Path | None, typer.Option("--spec", help="Sweep spec YAML (e.g. jobs/paper_sweep.yaml); flags override it.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Sweep name (MLflow parent run, storage folder).")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted sweep; finished trials are skipped.")
    ] = False,
    preset: PresetOpt = None,
    gamma: GammaOpt = None,
    gamma_mode: GammaModeOpt = None,
    n: NOpt = None,
    crop: CropOpt = None,
    batch_size: BatchOpt = None,
    epochs: EpochsOpt = None,
    steps_per_epoch: StepsOpt = None,
    val_steps: ValStepsOpt = None,
    max_lr_drops: LrDropsOpt = None,
    lr: LrOpt = None,
    precision: PrecisionOpt = None,
    seed: SeedOpt = None,
    use_gpu: UseGpuOpt = False,
    workers_per_trial: WorkersOpt = None,
    gpus_per_worker: GpusOpt = None,
    cpus_per_worker: CpusOpt = None,
    max_concurrent_trials: ConcurrentOpt = None,
    max_failures: FailuresOpt = None,
    loader_workers: LoaderWorkersOpt = None,
    yolo_weights: YoloOpt = None,
    yolo_cfg: YoloCfgOpt = None,
    yolo_seed: YoloSeedOpt = None,
    storage_root: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    address: AddressOpt = None,
) -> None:
    """Train every (model, configuration, λ) trial in parallel (Ray Tune) with DDP per trial (Ray Train)."""
    spec_d = load_spec(spec) if spec else {}
    settings = resolve(
        preset,
        spec_d,
        _flags(
            shards=shards,
            gamma=gamma,
            gamma_mode=gamma_mode,
            n=n,
            crop=crop,
            batch_size=batch_size,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            val_steps=val_steps,
            max_lr_drops=max_lr_drops,
            lr=lr,
            precision=precision,
            seed=seed,
            use_gpu=use_gpu,
            workers_per_trial=workers_per_trial,
            gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
            max_concurrent_trials=max_concurrent_trials,
            max_failures=max_failures,
            loader_workers=loader_workers,
            yolo_weights=yolo_weights,
            yolo_cfg=yolo_cfg,
            yolo_seed=yolo_seed,
        ),
    )
    models = parse_list(model) if model else list(spec_d.get("models") or ["proposed"])
    if configs:
        cfgs: list[str] | dict[str, list[str]] | None = parse_list(configs, ":")
    elif spec_d.get("configs"):
        raw = spec_d["configs"]
        cfgs = {k: [str(c) for c in v] for k, v in raw.items()} if isinstance(raw, dict) else [str(c) for c in raw]
    else:
        cfgs = None  # each model's default configurations of the preset (dvcm.registry)
    lams = parse_lambdas(parse_list(lambdas) if lambdas else list(spec_d.get("lambdas") or []))
    grid = build_grid(models, cfgs, lams, settings.training.preset)
    sweep_name = name or spec_d.get("name") or f"sweep-{'_'.join(models)}-{len(grid)}trials"
    storage_dir = storage_root or str(spec_d.get("storage") or "dvcm_runs")
    state = run_sweep(
        sweep_name, grid, settings, storage_dir, tracking_uri or spec_d.get("tracking_uri"), resume, address
    )
    failed = [n_ for n_, t in state["trials"].items() if t.get("status") != "finished"]
    if failed:
        why = failure_summary(state, failed)
        if why.startswith("trial "):  # a clear error of ours: fix it first, resuming alone cannot help
            raise UserError(f"{len(failed)} of {len(grid)} trials did not finish; {why}")
        raise UserError(
            f"{len(failed)} of {len(grid)} trials did not finish ({', '.join(failed)}); {why}see MLflow, then rerun "
            "with --resume"
        )
