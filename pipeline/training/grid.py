"""A sweep's grid: one trial per (model, configuration M1,M2,H, λ), and the sweep spec (YAML) that can give it."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.infra.errors import UserError
from pipeline.training.settings import GRID_KEYS, SETTING_KEYS


def model_config(model: str, text: str) -> dict[str, int]:
    """``"64,192,2"`` -> {M1: 64, M2: 192, H: 2}: the codec's hyperparameters (``dvcm.registry``); a bad one raises
    ``UserError``."""
    from dvcm.errors import DvcmError
    from dvcm.registry import codec_spec

    try:
        return codec_spec(model).parse(str(text))
    except DvcmError as exc:
        raise UserError(str(exc)) from None


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(name: str, what: str = "--name") -> str:
    """A sweep's or a run's name is a folder under --storage: letters, digits, '.', '_' and '-', no path."""
    if not NAME_PATTERN.fullmatch(str(name)) or ".." in str(name):
        raise UserError(
            f"{what} {name!r} is not a plain name (letters, digits, '.', '_' and '-', starting with a letter or a "
            "digit, at most 128): it names a folder under --storage and may not leave it"
        )
    return name


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
    """Every model name must be registered in ``dvcm.registry``."""
    from dvcm.registry import MODEL_NAMES

    if not models:
        raise UserError(f"no model given; choose from {', '.join(MODEL_NAMES)}")
    for m in models:
        if m not in MODEL_NAMES:
            raise UserError(f"unknown model {m!r}; choose from {', '.join(MODEL_NAMES)}")
    return models


def trial_name(
    model: str, config: Mapping[str, int], lmbda: float, seed: int | None = None, gamma: float | None = None
) -> str:
    """``proposed-64-192-2-l0.0067``: model, configuration (its hyperparameters in order) and λ, as in MLflow and
    Ray storage; ``-g3`` names a trial's own γ (a γ grid) and ``-s1`` ends the name of a trial with its own seed (a
    sweep over seeds)."""
    from dvcm.registry import codec_spec

    values = "-".join(str(config[h.name]) for h in codec_spec(model).hyperparameters)
    return (
        f"{model}-{values}-l{lmbda:g}"
        + (f"-g{gamma:g}" if gamma is not None else "")
        + (f"-s{seed}" if seed is not None else "")
    )


def build_grid(
    models: list[str], configs: list[str] | dict[str, list[str]] | None, lambdas: list[float], preset: str = "tiny"
) -> list[dict[str, Any]]:
    """One trial per (model, configuration, λ); ``configs`` may be per model (a mapping); a model without one
    trains its registered default configurations of ``preset`` (``dvcm.registry``)."""
    from dvcm.errors import DvcmError
    from dvcm.registry import codec_spec

    grid = []
    for model in check_models(models):
        cfgs = configs.get(model) if isinstance(configs, dict) else configs
        if isinstance(configs, dict) and not cfgs:
            raise UserError(
                f"no configuration given for model {model!r}; add it to configs ({codec_spec(model).config_form})"
            )
        if not cfgs:
            try:
                cfgs = list(codec_spec(model).defaults(preset))
            except DvcmError as exc:
                raise UserError(f"{exc} (--configs)") from None
        for text in cfgs:
            config = model_config(model, text)
            for lam in lambdas:
                grid.append(
                    {"trial_name": trial_name(model, config, lam), "model": model, "config": config, "lmbda": lam}
                )
    names = [t["trial_name"] for t in grid]
    if len(set(names)) != len(names):
        raise UserError("the grid repeats a (model, configuration, lambda) trial; remove the duplicate")
    return grid


SPEC_KEYS = frozenset({"preset", *GRID_KEYS, *SETTING_KEYS})


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
