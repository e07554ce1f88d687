"""Training presets: ``tiny`` (CPU smoke runs) and ``paper`` (the paper's setting).

A preset fills every training setting the user did not give; explicit flags always win.
"""

from __future__ import annotations

from typing import Any

from pipeline.infra.errors import UserError

# Default feature-loss weight. D_s is the MSE of s normalised per channel by dataset.json's
# statistics (so a D_s of 1 means "no better than predicting the mean"), D_x is the 0-255 MSE.
# See pipeline/train.py and the report of issue 4 for the measurement behind this value.
DEFAULT_GAMMA = 1.0

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        # Crops of 128x128 (not smaller: transforms trained on tiny maps fail on whole images).
        "N": 32,
        "configs": [(16, 32, 2)],
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
    "paper": {
        "N": 192,
        "configs": [(64, 192, 2), (64, 128, 2), (64, 128, 1), (128, 64, 1)],
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
    "lr": 1e-4,
    "aux_lr": 1e-3,
    "clip_max_norm": 1.0,
    "lr_factor": 0.1,  # CompressAI examples/train.py: ReduceLROnPlateau(factor=0.1)
    "precision": "fp32",
    "seed": 0,
    "yolo_seed": 0,
}


def resolve(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Preset values, then ``COMMON``, then every override that is not ``None``."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out = {**COMMON, **PRESETS[preset], "preset": preset}
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out
