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


def test_the_ceiling_is_what_a_cluster_index_can_carry() -> None:
    from dvcm.redundancy import ceiling

    assert ceiling(4, 10.0, 40.0) == pytest.approx(0.2)  # log2 4 = 2 bits of 10
    assert ceiling(64, 10.0, 3.0) == pytest.approx(0.3)  # y_j has only 3 bits to give
    assert ceiling(1024, 5.0, 40.0) == 1.0 and math.isnan(ceiling(4, 0.0, 1.0))


@pytest.mark.slow  # 15 s: 4096 fibers, K 4, six fits
def test_the_paper_estimator_cannot_read_self_redundancy_above_its_ceiling() -> None:
    """A latent of 10 independent channels (about 2 bits each): Rdn(ŷ|ŷ) is 1, K 4 reads at most 2/H(ŷ)."""
    from dvcm.redundancy import ceiling, sanity_checks

    g = torch.Generator().manual_seed(3)
    y = _as_latent(torch.round(torch.randn(4096, 10, generator=g) * 1.5))
    rows = {r["check"]: r for r in sanity_checks(y, K=4, num_fibers=4096)}
    own = redundancy(y, y, K=4, num_fibers=4096)
    top = ceiling(4, own["H_i"], own["H_i"])
    assert own["H_i"] > 15 and top < 0.15
    assert rows["Rdn(ŷ|ŷ)"]["rdn"] <= top + 0.02 and rows["Rdn(ŷ|ŷ)"]["ceiling"] == pytest.approx(top, rel=0.05)
    assert abs(rows["Rdn(ŷ|noise)"]["rdn"]) < 0.05


def _maps(seed: int, images: int = 48, channels: int = 6, size: int = 16) -> tuple[list, list, list]:
    """Per image: ŷ (integers of spread 2), the scales of a codec that knows only the spread, and independent noise."""
    g = torch.Generator().manual_seed(seed)
    y = [torch.round(torch.randn(1, channels, size, size, generator=g) * 2) for _ in range(images)]
    sigma = [torch.full_like(m, 2.0) for m in y]
    noise = [torch.round(torch.randn(m.shape, generator=g) * 2) for m in y]
    return y, sigma, noise


@pytest.mark.slow
def test_the_learned_estimator_reads_one_for_itself_and_zero_for_noise_on_held_out_images() -> None:
    from dvcm.conditional_entropy import learned_redundancy

    y, sigma, noise = _maps(0)
    own = learned_redundancy(y, sigma, y, steps=200)
    assert own["rdn"] >= 0.9 and own["ci95"][0] <= own["rdn"] <= own["ci95"][1]
    assert own["train_images"] + own["test_images"] == 48 and own["H_i"] > 5
    indep = learned_redundancy(y, sigma, noise, steps=200)
    assert abs(indep["rdn"]) <= 0.05
    # half the channels given: their share of the bits, here about half
    half = learned_redundancy(y, sigma, [torch.cat([a[:, :3], b[:, 3:]], 1) for a, b in zip(y, noise)], steps=200)
    share = sum(half["H_i_per_channel"][:3]) / sum(half["H_i_per_channel"])
    assert half["rdn"] == pytest.approx(share, abs=0.08)


def test_the_learned_estimator_refuses_what_it_cannot_measure() -> None:
    from dvcm.conditional_entropy import learned_redundancy

    y, sigma, _ = _maps(1, images=2)
    with pytest.raises(DvcmError, match="two or more images"):
        learned_redundancy(y[:1], sigma[:1], y[:1])
    with pytest.raises(DvcmError, match="different grids"):
        learned_redundancy(y, sigma, [m[..., :8] for m in y])


@pytest.mark.slow
def test_on_the_zoo_codecs_own_latents_the_learned_estimator_passes_its_two_checks() -> None:
    """zoo:proposed-l0.0932 on 256 unseen world scenes at 512x512 (the paper's 256 images): Rdn(ŷ|ŷ) ≥ 0.9 and
    |Rdn(ŷ|noise)| ≤ 0.05 on held-out images, for ŷ1 and ŷ2."""
    from dvcm.checkpoint import load_checkpoint
    from dvcm.conditional_entropy import codec_maps, independent_noise, learned_redundancy
    from pipeline.data.world import render_world_scene, split_seed

    model, _ = load_checkpoint("zoo:proposed-l0.0932")
    world = split_seed(0, "test")
    xs = [
        torch.from_numpy(render_world_scene(world, 1_000_000 + n, (512, 512)).image).permute(2, 0, 1).float() / 255
        for n in range(256)
    ]
    maps = codec_maps(model, xs)
    for y, sigma in ((maps["y1_hat"], maps["sigma1"]), (maps["y2_hat"], maps["sigma2"])):
        assert learned_redundancy(y, sigma, y)["rdn"] >= 0.9
        assert abs(learned_redundancy(y, sigma, independent_noise(y, 7))["rdn"]) <= 0.05
