"""Sanity of the Rdn estimator (dvcm.redundancy): self ≈ 1, independent ≈ 0, half-duplicate between."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dvcm.errors import DvcmError
from dvcm.redundancy import model_redundancy, redundancy

M, N = 8, 1024


def _as_latent(f: torch.Tensor) -> torch.Tensor:
    """[n, M] fibers → a [1, M, n, 1] latent."""
    return f.t()[None, :, :, None].contiguous()


@pytest.fixture(scope="module")
def latents() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    patterns = torch.randint(-6, 7, (8, M), generator=g).float()  # y_j takes 8 fiber values
    y_j = patterns[torch.randint(0, 8, (N,), generator=g)]
    indep = torch.round(torch.randn(N, M, generator=g) * 3)
    half = torch.cat([y_j[:, : M // 2], indep[:, M // 2 :]], dim=1)
    return {"y_j": _as_latent(y_j), "indep": _as_latent(indep), "half": _as_latent(half)}


def test_self_redundancy_is_one(latents) -> None:
    r = redundancy(latents["y_j"], latents["y_j"], K=8, steps=150)
    assert r["rdn"] == pytest.approx(1.0, abs=0.02)
    assert r["H_i"] > 10.0  # y_j itself carries information


def test_independent_latents_are_near_zero(latents) -> None:
    r = redundancy(latents["indep"], latents["y_j"], K=8, steps=150)
    assert abs(r["rdn"]) < 0.05


def test_half_duplicate_lands_between(latents) -> None:
    r = redundancy(latents["half"], latents["y_j"], K=8, steps=150)
    # half the channels are a function of y_j: roughly their share of H(y_i) is removed
    assert 0.2 < r["rdn"] < 0.8


def test_constant_latent_has_undefined_redundancy() -> None:
    """An all-zero latent (an untrained codec's) carries no information: Rdn is NaN, not 1."""
    zeros = torch.zeros(1, 4, 16, 16)
    assert math.isnan(redundancy(zeros, zeros, K=4, steps=50)["rdn"])


def test_grids_must_match() -> None:
    with pytest.raises(DvcmError, match="different grids"):
        redundancy(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 5))


class _Toy(torch.nn.Module):
    """Exposes the codec's forward outputs used by model_redundancy: y2 copies y1 exactly."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y1 = torch.round(torch.nn.functional.avg_pool2d(x, 4) * 3)
        return {"y1_hat": y1, "y2_hat": y1.clone()}


def test_model_redundancy_keys_and_mode() -> None:
    model = _Toy().train()
    imgs = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    r = model_redundancy(model, imgs, K=16, num_fibers=256, steps=100)
    assert model.training  # mode restored
    assert set(r) >= {"rdn_y1_given_y2", "rdn_y2_given_y1"}
    assert r["rdn_y1_given_y2"] > 0.5 and r["rdn_y2_given_y1"] > 0.5


def test_the_interval_brackets_the_estimate_and_flags_impossible_values(latents) -> None:
    from dvcm.redundancy import bootstrap_interval

    own = redundancy(latents["y_j"], latents["y_j"], K=8, steps=150)
    low, high = own["ci95"]
    assert low <= own["rdn"] <= high and high - low < 0.05 and not own["impossible"] and not own["biased"]
    indep = redundancy(latents["indep"], latents["y_j"], K=8, steps=150)
    low, high = indep["ci95"]
    # the truth is 0; K fits on few fibers each overstate H(y_i|y_j), so the estimate falls below 0, where no
    # entropy can go: flagged (the interval measures the scoring noise only, and need not reach the truth)
    assert low <= indep["rdn"] <= high and low < 0 and indep["impossible"] and indep["biased"] == (high < 0)
    # the interval itself: resampling pairs of a constant ratio gives that ratio; a wider spread, a wider interval
    bits = np.full(400, 10.0)
    assert bootstrap_interval(bits, bits * 0.25, seed=0) == pytest.approx((0.75, 0.75))
    rng = np.random.default_rng(0)
    noisy = bits * rng.uniform(0.0, 0.5, 400)
    low, high = bootstrap_interval(bits, noisy, seed=0)
    assert low < 1 - noisy.mean() / 10 < high and high - low > 0.01
