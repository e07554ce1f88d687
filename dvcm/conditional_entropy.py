"""A learned estimate of Rdn(ŷi | ŷj) = 1 − H(ŷi | ŷj) / H(ŷi) that can read 1 (the paper's k-means estimator,
:mod:`dvcm.redundancy`, reads at most log2 K / H(ŷi)).

Both entropies start from the codec's own entropy model: ŷi coded by a zero-mean Gaussian of the scales σi
its hyperprior gives (what the file spends on ŷi, the side information ẑ not counted). H(ŷi | ŷj) is a
conditional model with that side information plus ŷj: a small network reads the co-located 3×3
neighbourhood of ŷj and log σi and predicts, per element of ŷi, a mean μ and a scale σi·exp(δ), scored with
CompressAI's ``GaussianConditional`` likelihood of the integer ŷi (its scale and likelihood bounds)::

    (ŷj, log σi) ──► conv3×3 ─ ReLU ─ conv3×3 ─ ReLU ─ conv1×1 ──► (μ', δ)     (last layer zero at start)
    ŷj ──────────► conv1×1 (linear, zero at start) ──────────────► + μ'  = μ
    bits(ŷi | ŷj) = −log2 P(ŷi; N(μ, σi·exp(δ)))

It starts as the codec's own model (μ = 0, δ = 0) and the linear path can copy ŷj into μ, so Rdn(ŷ | ŷ)
reaches 1. H(ŷi) is the same network fitted the same way with ŷj replaced by a constant: what the codec's
side information alone gives it. (Measured on ``zoo:proposed-l0.0932``: against the codec's own H(ŷ1) the
network gained 9 % on ŷ1 from independent noise, from its better use of σ1 and a learned mean, which is no
information about ŷ1 in the noise; the reference of the same capacity takes that gain out.) Both are fitted
on one set of images and scored in bits on another (:func:`learned_redundancy`), with a 95 % bootstrap
interval over the held-out images; the codec's own H(ŷi) and the Rdn against it are reported beside them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from compressai.entropy_models import GaussianConditional
from torch import Tensor

from dvcm.errors import DvcmError

DEFAULT_STEPS = 400
CHECK_EVERY = 25  # steps between two measurements on the images kept aside
DEFAULT_HIDDEN = 64
MIN_BITS = 1e-3  # bits per element of ŷi below which H(ŷi) counts as zero and Rdn is undefined (NaN)


class ConditionalScaleModel(nn.Module):
    """p(ŷi | ŷj, σi): a mean and a scale correction per element of ŷi (see the module docstring)."""

    def __init__(self, channels_i: int, channels_j: int, hidden: int = DEFAULT_HIDDEN) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels_j + channels_i, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 2 * channels_i, 1),
        )
        self.copy = nn.Conv2d(channels_j, channels_i, 1, bias=False)
        for layer in (self.net[-1], self.copy):
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        self.gaussian = GaussianConditional(None)

    def forward(self, y_j: Tensor, sigma_i: Tensor) -> tuple[Tensor, Tensor]:
        log_sigma = torch.log(self.gaussian.lower_bound_scale(sigma_i))
        mu, delta = self.net(torch.cat([y_j, log_sigma], dim=1)).chunk(2, dim=1)
        return mu + self.copy(y_j), torch.exp(log_sigma + delta.clamp(-20, 20))

    def bits(self, y_i: Tensor, y_j: Tensor, sigma_i: Tensor) -> Tensor:
        """Bits of every element of the integer ŷi under the conditional model."""
        mu, sigma = self(y_j, sigma_i)
        return gaussian_bits(self.gaussian, y_i, sigma, mu)


def gaussian_bits(gaussian: GaussianConditional, y: Tensor, sigma: Tensor, mu: Tensor | None = None) -> Tensor:
    """−log2 of the probability of the integer ``y`` under N(μ, σ), with CompressAI's scale and likelihood bounds."""
    return -torch.log2(gaussian.likelihood_lower_bound(gaussian._likelihood(y, sigma, mu)))


def _by_shape(indexes: Sequence[int], maps: Sequence[Tensor]) -> list[list[int]]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in indexes:
        groups.setdefault(tuple(maps[i].shape), []).append(i)
    return list(groups.values())


def fit_conditional(
    y_i: Sequence[Tensor],
    sigma_i: Sequence[Tensor],
    y_j: Sequence[Tensor],
    train: Sequence[int],
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    batch: int = 8,
    hidden: int = DEFAULT_HIDDEN,
) -> ConditionalScaleModel:
    """Fit the conditional model on the images ``train`` (maps [1, M, h, w] per image) by minimising bits.

    A quarter of ``train`` (at least one image) is kept aside: every ``CHECK_EVERY`` steps the bits on it are
    measured and the weights that gave the fewest are kept (from the start, which is the codec's own model). So a
    ŷj that carries nothing about ŷi (noise) cannot be fitted into an apparent gain, which would read below 0 on
    held-out images (measured with 24 images of 16×16: −0.29 without this check)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(list(train)).tolist()
    n_val = max(1, len(order) // 4) if len(order) > 1 else 0
    val, fit = order[:n_val], order[n_val:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConditionalScaleModel(y_i[0].shape[1], y_j[0].shape[1], hidden)
        groups = _by_shape(fit, y_i)
        weights = np.array([len(g) for g in groups], dtype=float)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

        def val_bits() -> float:
            with torch.no_grad():
                return sum(float(model.bits(y_i[k], y_j[k], sigma_i[k]).sum()) for k in val)

        best, best_state = (val_bits(), copy.deepcopy(model.state_dict())) if val else (math.inf, None)
        for step in range(1, steps + 1):
            group = groups[rng.choice(len(groups), p=weights / weights.sum())]
            pick = rng.choice(group, size=min(batch, len(group)), replace=False)
            yi, yj, si = (torch.cat([m[k] for k in pick]) for m in (y_i, y_j, sigma_i))
            opt.zero_grad(set_to_none=True)
            loss = model.bits(yi, yj, si).mean()
            loss.backward()
            opt.step()
            sched.step()
            if val and (step % CHECK_EVERY == 0 or step == steps):
                bits = val_bits()
                if bits < best:
                    best, best_state = bits, copy.deepcopy(model.state_dict())
        if best_state is not None:
            model.load_state_dict(best_state)
    return model.eval()


def image_interval(bits: np.ndarray, cond_bits: np.ndarray, seed: int, resamples: int = 1000) -> tuple[float, float]:
    """95 % percentile interval of 1 − Σ cond_bits / Σ bits over resamples of the held-out images."""
    rng = np.random.default_rng(seed + 2)
    idx = rng.integers(0, len(bits), size=(resamples, len(bits)))
    ratios = 1.0 - cond_bits[idx].sum(axis=1) / np.maximum(bits[idx].sum(axis=1), 1e-12)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


@torch.no_grad()
def learned_redundancy(
    y_i: Sequence[Tensor],
    sigma_i: Sequence[Tensor],
    y_j: Sequence[Tensor],
    holdout: float = 0.5,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
) -> dict[str, Any]:
    """Rdn(ŷi | ŷj) from per-image maps: fitted on one part of the images, scored on the others (``holdout``).

    Returns ``rdn``, ``ci95``, ``H_i`` and ``H_i_given_j`` in bits per spatial position (fiber) on the held-out
    images, ``H_i_train``/``H_i_given_j_train`` on the fitted ones (in-sample), ``rdn_in_sample``, and the
    image counts."""
    n = len(y_i)
    if n < 2 or len(y_j) != n or len(sigma_i) != n:
        raise DvcmError(f"the learned redundancy needs two or more images with both latents, got {n}")
    for a, b in zip(y_i, y_j):
        if a.shape[-2:] != b.shape[-2:]:
            raise DvcmError(f"latents are on different grids: {tuple(a.shape)} vs {tuple(b.shape)}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, round(n * holdout)))
    test, train = sorted(order[:n_test].tolist()), sorted(order[n_test:].tolist())
    constant = [torch.zeros_like(y[:, :1]) for y in y_i]  # ŷj replaced by a constant: the reference H(ŷi)
    with torch.enable_grad():
        model = fit_conditional(y_i, sigma_i, y_j, train, steps=steps, seed=seed)
        reference = fit_conditional(y_i, sigma_i, constant, train, steps=steps, seed=seed)

    per_channel = torch.zeros(y_i[0].shape[1], dtype=torch.float64)

    def score(images: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        own, alone, cond, fibers = [], [], [], 0
        for k in images:
            own.append(float(gaussian_bits(model.gaussian, y_i[k], sigma_i[k]).sum()))
            ref_bits = reference.bits(y_i[k], constant[k], sigma_i[k])
            if images is test:
                per_channel.add_(ref_bits.sum(dim=(0, 2, 3)).double())
            alone.append(float(ref_bits.sum()))
            cond.append(float(model.bits(y_i[k], y_j[k], sigma_i[k]).sum()))
            fibers += y_i[k].shape[-1] * y_i[k].shape[-2]
        return np.array(own), np.array(alone), np.array(cond), fibers

    def ratio(cond_bits: float, bits: float, n: int) -> float:
        return float(1.0 - cond_bits / bits) if bits > MIN_BITS * y_i[0].shape[1] * n else math.nan

    own, alone, cond, fibers = score(test)
    own_in, alone_in, cond_in, fibers_in = score(train)
    rdn = ratio(cond.sum(), alone.sum(), fibers)
    low, high = image_interval(alone, cond, seed) if math.isfinite(rdn) and len(test) > 1 else (math.nan, math.nan)
    return {
        "rdn": rdn,
        "ci95": [low, high],
        "H_i": float(alone.sum() / fibers),
        "H_i_given_j": float(cond.sum() / fibers),
        "H_i_codec": float(own.sum() / fibers),
        "rdn_vs_codec": ratio(cond.sum(), own.sum(), fibers),
        "rdn_in_sample": ratio(cond_in.sum(), alone_in.sum(), fibers_in),
        "H_i_per_channel": (per_channel / fibers).tolist(),  # the reference's held-out bits per fiber, by channel
        "H_i_train": float(alone_in.sum() / fibers_in),
        "H_i_given_j_train": float(cond_in.sum() / fibers_in),
        "train_images": len(train),
        "test_images": len(test),
        "fibers": fibers,
        "steps": steps,
    }


@torch.no_grad()
def codec_maps(model: nn.Module, images: Sequence[Tensor]) -> dict[str, list[Tensor]]:
    """Per image ([3,H,W] or [1,3,H,W] in [0,1]): ŷ1, ŷ2 and their scales σ1, σ2 on the CPU, the model in eval
    mode (put back in its previous mode)."""
    was_training = model.training
    model.eval()
    out: dict[str, list[Tensor]] = {"y1_hat": [], "y2_hat": [], "sigma1": [], "sigma2": []}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        for x in images:
            maps = model.latents_and_scales((x if x.dim() == 4 else x.unsqueeze(0)).to(device))
            for key in out:
                out[key].append(maps[key].float().cpu())
    finally:
        model.train(was_training)
    if not out["y1_hat"]:
        raise DvcmError("no images given for the redundancy estimate")
    return out


def model_learned_redundancy(
    model: nn.Module, images: Sequence[Tensor], steps: int = DEFAULT_STEPS, seed: int = 0, holdout: float = 0.5
) -> dict[str, Any]:
    """Rdn(ŷ1|ŷ2) and Rdn(ŷ2|ŷ1) of a two-layer codec with the learned estimator, over ``images``."""
    maps = codec_maps(model, images)
    r12 = learned_redundancy(maps["y1_hat"], maps["sigma1"], maps["y2_hat"], holdout, steps, seed)
    r21 = learned_redundancy(maps["y2_hat"], maps["sigma2"], maps["y1_hat"], holdout, steps, seed)
    return {
        "estimator": "learned",
        "rdn_y1_given_y2": r12["rdn"],
        "rdn_y2_given_y1": r21["rdn"],
        "rdn_y1_given_y2_ci95": r12["ci95"],
        "rdn_y2_given_y1_ci95": r21["ci95"],
        "rdn_y1_given_y2_in_sample": r12["rdn_in_sample"],
        "rdn_y2_given_y1_in_sample": r21["rdn_in_sample"],
        "rdn_y1_given_y2_vs_codec": r12["rdn_vs_codec"],
        "rdn_y2_given_y1_vs_codec": r21["rdn_vs_codec"],
        "H_y1": r12["H_i"],
        "H_y2": r21["H_i"],
        "H_y1_codec": r12["H_i_codec"],
        "H_y2_codec": r21["H_i_codec"],
        "images": len(maps["y1_hat"]),
        "train_images": r12["train_images"],
        "test_images": r12["test_images"],
        "fibers": r12["fibers"],
        "steps": steps,
    }


def independent_noise(maps: Sequence[Tensor], seed: int) -> list[Tensor]:
    """Integer noise of the same shape and per-channel spread as ``maps``, independent of them."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.cat([m.flatten(2) for m in maps], dim=2).std(dim=2, keepdim=True).clamp_min(1.0)[..., None]
    return [torch.round(torch.randn(m.shape, generator=g) * spread) for m in maps]


def sanity_checks(
    y: Sequence[Tensor], sigma: Sequence[Tensor], steps: int = DEFAULT_STEPS, seed: int = 0, copied: float = 0.5
) -> list[dict[str, Any]]:
    """The learned estimator on a latent whose answer is known: Rdn(ŷ|ŷ) = 1, Rdn(ŷ|independent noise) = 0, and
    Rdn(ŷ|ŷ with the first ``copied`` of its channels and noise elsewhere) ≥ those channels' share of the bits
    (more where the other channels share information with them)."""
    noise = independent_noise(y, seed + 7)
    k = max(1, round(copied * y[0].shape[1]))
    partial = [torch.cat([a[:, :k], b[:, k:]], dim=1) for a, b in zip(y, noise)]
    rows = []
    for check, given, truth in (
        ("Rdn(ŷ|ŷ)", y, "1"),
        ("Rdn(ŷ|noise)", noise, "0"),
        (f"Rdn(ŷ|{k} of {y[0].shape[1]} channels of ŷ)", partial, None),
    ):
        r = learned_redundancy(y, sigma, given, steps=steps, seed=seed)
        if truth is None:
            share = sum(r["H_i_per_channel"][:k]) / max(sum(r["H_i_per_channel"]), 1e-12)
            truth = f"≥ {share:.3f}"
        rows.append({"check": check, "truth": truth, "rdn": r["rdn"], "ci95": r["ci95"]})
    return rows
