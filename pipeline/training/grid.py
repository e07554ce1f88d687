"""A sweep's grid: one trial per (model, configuration M1,M2,H, λ), and the sweep spec (YAML) that can give it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.infra.errors import UserError
from pipeline.training.settings import GRID_KEYS, SETTING_KEYS


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


def trial_name(model: str, m1: int, m2: int, h: int, lmbda: float, seed: int | None = None) -> str:
    """``proposed-64-192-2-l0.0067``: model, configuration and λ, as in MLflow and Ray storage; ``-s1`` ends the
    name of a trial with its own seed (a sweep over seeds)."""
    return f"{model}-{m1}-{m2}-{h}-l{lmbda:g}" + (f"-s{seed}" if seed is not None else "")


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
