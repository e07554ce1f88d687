"""A sweep's settings, typed: what each trial trains with (:class:`TrainingSettings`) and what it
runs on (:class:`Resources`), resolved in one place (:func:`resolve`).

Precedence, lowest first::

    COMMON  <  PRESETS[preset]  <  the sweep spec (YAML)  <  flags given on the command line

A value of ``None`` means "not given". Every value is cast to its field's type and checked here,
once, so that the training workers never cast again. Fields whose metadata carries ``resume``
change what a trial learns: ``sweep --resume`` refuses to continue with other values
(:func:`resume_record`). Resources may change between runs, except the number of DDP workers
(it scales the batch).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.infra.errors import UserError
from pipeline.infra.yolo_files import yolo_files

# Default feature-loss weight. D_s is the MSE of s normalised per channel by dataset.json's
# statistics (so a D_s of 1 means "no better than predicting the mean"), D_x is the 0-255 MSE.
# See the report of issue 4 for the measurement behind this value.
DEFAULT_GAMMA = 1.0

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        # Crops of 128x128 (not smaller: transforms trained on tiny maps fail on whole images).
        "N": 32,
        "crop": 128,
        "batch_size": 2,
        "epochs": 2,
        "steps_per_epoch": 4,
        "val_steps": 2,
        "max_lr_drops": 2,
        "lr_patience": 1,
        "loader_workers": 0,
        "shuffle_buffer": 16,
    },
    "mini": {
        # The miniature study on CPUs (`dvcm-pipeline reproduce`): N 192 / 6, 128 crops, batch 8; epochs of 200
        # steps, the LR divided by 10 after one epoch without a better validation loss, a stop at the second drop.
        "N": 32,
        "crop": 128,
        "batch_size": 8,
        "epochs": 60,
        "steps_per_epoch": 200,
        "val_steps": 8,
        "max_lr_drops": 2,
        "lr_patience": 1,
        "loader_workers": 0,
        "shuffle_buffer": 64,
    },
    "paper": {
        "N": 192,
        "crop": 256,
        "batch_size": 16,
        "epochs": 300,
        "steps_per_epoch": 5000,
        "val_steps": 200,
        "max_lr_drops": 3,
        "lr_patience": 10,
        "loader_workers": 4,
        "shuffle_buffer": 2000,
    },
}

# Settings that do not depend on the preset.
COMMON: dict[str, Any] = {
    "gamma": DEFAULT_GAMMA,
    "gamma_mode": "fixed",  # the paper's Eq. 2; "scaled": L = R + λ·(D_x + γ·D_s) (dvcm.loss.feature_weight)
    "lr": 1e-4,
    "aux_lr": 1e-3,
    "clip_max_norm": 1.0,
    "lr_factor": 0.1,  # CompressAI examples/train.py: ReduceLROnPlateau(factor=0.1)
    "precision": "fp32",
    "seed": 0,
    "yolo_seed": 0,
}

# Settings added after sweeps were first recorded, with the value those sweeps trained with.
LEGACY_SETTINGS: dict[str, Any] = {"gamma_mode": "fixed"}

RESUME = {"resume": True}  # field metadata: a resumed sweep must keep this value


@dataclass(frozen=True)
class TrainingSettings:
    """What every trial of a sweep trains with (λ and the configuration are per trial)."""

    shards: str
    preset: str = field(metadata=RESUME)
    precision: str = field(metadata=RESUME)
    gamma: float = field(metadata=RESUME)
    gamma_mode: str = field(metadata=RESUME)
    lr: float = field(metadata=RESUME)
    aux_lr: float = field(metadata=RESUME)
    lr_factor: float = field(metadata=RESUME)
    clip_max_norm: float = field(metadata=RESUME)
    N: int = field(metadata=RESUME)
    crop: int = field(metadata=RESUME)
    batch_size: int = field(metadata=RESUME)
    epochs: int = field(metadata=RESUME)
    steps_per_epoch: int = field(metadata=RESUME)
    val_steps: int = field(metadata=RESUME)
    max_lr_drops: int = field(metadata=RESUME)
    lr_patience: int = field(metadata=RESUME)
    seed: int = field(metadata=RESUME)
    shuffle_buffer: int = field(metadata=RESUME)
    yolo_seed: int = field(metadata=RESUME)
    loader_workers: int = 0
    yolo_weights: str | None = None
    yolo_cfg: str | None = None  # a Darknet .cfg of the YOLOv3 family (None: standard yolov3.cfg)
    redundancy: bool = True  # the per-epoch Rdn(ŷ1|ŷ2), Rdn(ŷ2|ŷ1) on rank 0


@dataclass(frozen=True)
class Resources:
    """What each trial runs on. Only ``workers_per_trial`` is fixed for a resumed sweep."""

    workers_per_trial: int = field(default=1, metadata=RESUME)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    use_gpu: bool = False
    max_concurrent_trials: int | None = None
    max_failures: int = 2


@dataclass(frozen=True)
class SweepSettings:
    """The resolved settings of a sweep (each codec's default configurations per preset are in ``dvcm.registry``)."""

    training: TrainingSettings
    resources: Resources

    def as_dict(self) -> dict[str, Any]:
        """Training and resource settings as one flat mapping (what MLflow and the trial config show)."""
        return {**dataclasses.asdict(self.training), **dataclasses.asdict(self.resources)}


GRID_KEYS = ("models", "configs", "lambdas", "name", "storage", "tracking_uri")  # spec keys that are not settings
SETTING_KEYS = frozenset(f.name for cls in (TrainingSettings, Resources) for f in dataclasses.fields(cls))


def _cast(name: str, kind: str, value: Any) -> Any:
    """``value`` as the field's type (``kind`` is its annotation); a one-line error when it is not one."""
    if value is None and "None" in kind:
        return None
    base = kind.split("|")[0].strip()
    try:
        if base == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if base == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) else int(value)
        if base == "float":
            out = float(value)
            if not math.isfinite(out):
                raise ValueError(value)
            return out
        return str(value)
    except (TypeError, ValueError):
        raise UserError(
            f"--{name.replace('_', '-')} must be {'an integer' if base == 'int' else 'a ' + base}, got {value!r}"
        ) from None


def _build(cls: type, values: dict[str, Any]) -> Any:
    return cls(
        **{f.name: _cast(f.name, str(f.type), values[f.name]) for f in dataclasses.fields(cls) if f.name in values}
    )


def resolve(preset: str | None, spec: dict[str, Any], flags: dict[str, Any]) -> SweepSettings:
    """The sweep's settings: ``COMMON`` < ``PRESETS[preset]`` < ``spec`` < ``flags`` (``None`` = not given).

    ``preset`` (a flag) wins over the spec's; the default preset is ``tiny``. Every value is cast
    and checked here; a bad one is refused in one line before anything starts.
    """
    given = {
        **{k: v for k, v in spec.items() if k not in GRID_KEYS},
        **{k: v for k, v in flags.items() if v is not None},
    }
    name = preset or given.pop("preset", None) or "tiny"
    given.pop("preset", None)
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    unknown = sorted(set(given) - SETTING_KEYS)
    if unknown:
        raise UserError(f"unknown settings {unknown}; known: {', '.join(sorted(SETTING_KEYS))}")
    values = {**COMMON, **PRESETS[name], "preset": name, **given}
    if not values.get("shards"):
        raise UserError("no shards given; pass --shards DIR (a folder written by `dvcm-pipeline prepare`)")
    resources = _build(Resources, values)
    if not resources.use_gpu:
        resources = dataclasses.replace(resources, gpus_per_worker=0.0)
    training = _build(TrainingSettings, values)
    weights, cfg = yolo_files(training.yolo_weights, training.yolo_cfg)  # absolute: Ray Train workers build the YOLO
    training = dataclasses.replace(training, yolo_weights=weights, yolo_cfg=cfg)
    settings = SweepSettings(training, resources)
    check(settings)
    return settings


def check(settings: SweepSettings) -> None:
    """Refuse, in one line, settings that could never train (before Ray or MLflow start)."""
    t, r = settings.training, settings.resources
    if t.precision not in ("fp32", "amp"):
        raise UserError(f"--precision must be fp32 or amp, got {t.precision!r}")
    if t.precision == "amp" and not r.use_gpu:
        raise UserError("--precision amp needs GPUs (autocast on CUDA); pass --use-gpu or use --precision fp32")
    for key in ("epochs", "steps_per_epoch", "val_steps", "batch_size", "max_lr_drops", "N"):
        if getattr(t, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(t, key)}")
    for key in ("seed", "yolo_seed", "loader_workers", "lr_patience", "shuffle_buffer"):  # buffer 0 or 1: no shuffle
        if getattr(t, key) < 0:
            raise UserError(f"--{key.replace('_', '-')} must be 0 or more, got {getattr(t, key)}")
    for key in ("lr", "aux_lr", "clip_max_norm"):
        if not getattr(t, key) > 0:
            raise UserError(f"--{key.replace('_', '-')} must be > 0, got {getattr(t, key):g}")
    if not 0 < t.lr_factor < 1:
        raise UserError(f"--lr-factor must be between 0 and 1, got {t.lr_factor:g}")
    if r.workers_per_trial < 1:
        raise UserError(f"--workers-per-trial must be at least 1, got {r.workers_per_trial}")
    if r.max_concurrent_trials is not None and r.max_concurrent_trials < 1:
        raise UserError(f"--max-concurrent-trials must be at least 1, got {r.max_concurrent_trials}")
    if not r.cpus_per_worker > 0 or r.max_failures < 0:
        raise UserError(
            f"--cpus-per-worker must be > 0 and --max-failures 0 or more, got {r.cpus_per_worker:g} and {r.max_failures}"
        )
    if t.crop < 128 or t.crop % 64:
        raise UserError(
            f"--crop must be a multiple of 64 and at least 128 (small crops do not generalise), got {t.crop}"
        )
    if t.gamma < 0:
        raise UserError(f"--gamma must be >= 0, got {t.gamma}")
    from dvcm.loss import GAMMA_MODES

    if t.gamma_mode not in GAMMA_MODES:
        raise UserError(f"--gamma-mode must be one of {', '.join(GAMMA_MODES)}, got {t.gamma_mode!r}")
    check_gpu_layout(r)


def check_gpu_layout(r: Resources) -> None:
    """Refuse GPU layouts that NCCL cannot run: two ranks of one trial may not share a GPU."""
    if not r.use_gpu:
        return
    if r.gpus_per_worker <= 0:
        raise UserError(f"--gpus-per-worker must be > 0 with --use-gpu, got {r.gpus_per_worker:g}")
    if r.workers_per_trial > 1 and r.gpus_per_worker < 1:
        raise UserError(
            f"--workers-per-trial {r.workers_per_trial} with --gpus-per-worker {r.gpus_per_worker:g} could put two NCCL "
            "ranks on one GPU, which NCCL refuses; give each worker a whole GPU (--gpus-per-worker 1) or train "
            "with --workers-per-trial 1 (fractional GPUs then share a GPU between trials)"
        )


def resume_record(settings: SweepSettings, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a resumed sweep must not change: every ``resume`` field, plus ``data`` (the digests of the
    shards and of the YOLOv3 weights and cfg the trials were trained on)."""
    out = {
        f.name: getattr(obj, f.name)
        for obj in (settings.training, settings.resources)
        for f in dataclasses.fields(obj)
        if f.metadata.get("resume")
    }
    return {**out, **(data or {})}


class SettingsChangedError(UserError):
    """A sweep is resumed with other training settings than it started with; ``changes`` says which."""

    def __init__(self, message: str, changes: str) -> None:
        super().__init__(message)
        self.changes = changes

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable (Ray) with both arguments
        return type(self), (self.args[0], self.changes)


def check_resume_settings(name: str, state: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to resume a sweep with other training settings (``now``: :func:`resume_record`) than it started with."""
    before = state.get("training_settings")
    if before is None:  # a record written before training settings were kept
        return
    before = {**LEGACY_SETTINGS, **before}  # records written before a setting existed had its old behaviour
    now = json.loads(json.dumps(now))
    changed = [
        f"{k} {before.get(k)!r} -> {now.get(k)!r}"
        for k in dict.fromkeys([*before, *now])
        if before.get(k) != now.get(k)
    ]
    if changed:
        raise SettingsChangedError(
            f"sweep {name!r} was started with other training settings ({'; '.join(changed)}); "
            "resume it with the same settings, or pass --name for a new sweep",
            "; ".join(changed),
        )
