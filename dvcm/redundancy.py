"""Redundancy between two latents, Rdn(y_i | y_j) = 1 − H(y_i | y_j) / H(y_i) (paper Sec. 5).

Estimator (as DESIGN.md describes it):

1. Split each latent [B, M, h, w] into 1×1×M *fibers* (one vector per spatial position);
   both latents must share the spatial grid.
2. Cluster the fibers of y_j into K clusters with k-means (``scipy.cluster.vq.kmeans2``,
   k-means++ seeding).
3. H(y_i) is the cross-entropy, in bits per fiber, of the quantised fibers of y_i under a
   CompressAI ``EntropyBottleneck`` (factorised over the M channels) fitted to them;
   H(y_i | y_j) ≈ Σ_k p(k)·H(y_i | cluster k) with one bottleneck fitted per cluster.

To keep small clusters from scoring themselves on the samples they were fitted to (which
would pass for redundancy), every bottleneck is fitted on one half of the fibers and scored
on the other half. The K per-cluster bottlenecks are fitted together as one bottleneck with
K·M channels (cluster k in channels k·M..k·M+M−1, padded rows masked), so the cost is that
of two small fits whatever K is.

Rdn ≈ 1 when y_j determines y_i, ≈ 0 when they are independent; estimation noise can give
small negative values, which are reported as they are, with a 95 % interval: a bootstrap over
the held-out fibers of their bit costs under the fitted bottlenecks (1000 resamples, no refit, so it
measures the scoring noise of the estimate, not that of k-means or of the fits). An interval that
reaches below 0 holds values no entropy can give (``impossible``): the estimate cannot be told from 0.
When the whole interval lies below 0 (``biased``), the estimate is the estimator's bias (too few fibers
per cluster overstate H(y_i | y_j)), not a measurement of information. (The interval cannot pass 1:
conditional bits are never negative.)
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from compressai.entropy_models import EntropyBottleneck
from scipy.cluster.vq import kmeans2
from torch import Tensor

from dvcm.errors import DvcmError

DEFAULT_K = 4  # with every fiber of a few images (bench redundancy): larger K overfits its clusters
DEFAULT_FIBERS = 6144  # every fiber of 4 images of 768x512
DEFAULT_STEPS = 200
MIN_BITS = 1e-3  # bits per fiber below which H(y_i) counts as zero and Rdn is undefined (NaN)
SMALL_FIT = 1 << 20  # values per fit step below which one thread is used


def fibers(y: Tensor) -> Tensor:
    """[B, M, h, w] → [B·h·w, M] (one row per spatial position)."""
    if y.dim() != 4:
        raise DvcmError(f"a latent must be [B, M, h, w], got shape {tuple(y.shape)}")
    return y.detach().permute(0, 2, 3, 1).reshape(-1, y.shape[1]).to(torch.float32)


def _fit_bits(
    train: Tensor, train_mask: Tensor, test: Tensor, test_mask: Tensor, steps: int, seed: int
) -> tuple[Tensor, Tensor]:
    """Fit one EntropyBottleneck on ``train`` rows [n, C] (mask [n, C]) and return the bits of each rounded
    ``test`` value [m, C] and of each ``train`` value (in-sample), 0 where masked."""
    with _few_threads(train.numel()):
        return _fit_bits_inner(train, train_mask, test, test_mask, steps, seed)


@contextlib.contextmanager
def _few_threads(numel: int) -> Iterator[None]:
    """Small fits run on one thread: hundreds of tiny steps lose more to thread hand-offs
    (and to oversubscription next to other workers) than they gain from parallelism."""
    prev = torch.get_num_threads()
    if numel < SMALL_FIT:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _fit_bits_inner(
    train: Tensor, train_mask: Tensor, test: Tensor, test_mask: Tensor, steps: int, seed: int
) -> tuple[Tensor, Tensor]:
    with torch.random.fork_rng(devices=[]):  # seeded here without touching the caller's RNG (training)
        torch.manual_seed(seed)
        return _fit_bits_seeded(train, train_mask, test, test_mask, steps)


def _fit_bits_seeded(
    train: Tensor, train_mask: Tensor, test: Tensor, test_mask: Tensor, steps: int
) -> tuple[Tensor, Tensor]:
    eb = EntropyBottleneck(train.shape[1])
    params = [p for n, p in eb.named_parameters() if not n.endswith("quantiles")]
    opt = torch.optim.Adam(params, lr=2e-2)
    denom = train_mask.sum().clamp_min(1.0)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        _, lik = eb(train, training=True)
        loss = -(torch.log2(lik) * train_mask).sum() / denom
        loss.backward()
        opt.step()
    with torch.no_grad():

        def bits(values: Tensor, mask: Tensor) -> Tensor:
            # Likelihood of the integer values themselves (CompressAI's quantisation grid).
            lik, _, _ = eb._likelihood(torch.round(values).t().unsqueeze(1))
            return -torch.log2(eb.likelihood_lower_bound(lik).squeeze(1).t()) * mask

        return bits(test, test_mask), bits(train, train_mask)


def _split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    half = max(1, n // 2)
    return perm[:half], perm[half:] if n > 1 else perm[:half]


def redundancy(
    y_i: Tensor,
    y_j: Tensor,
    K: int = DEFAULT_K,
    num_fibers: int | None = DEFAULT_FIBERS,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
) -> dict[str, Any]:
    """Rdn(y_i | y_j) for two latents on the same spatial grid (any number of channels each).

    ``num_fibers`` caps the fibers sampled (None: all). Returns ``rdn``, ``H_i`` and
    ``H_i_given_j`` (bits per fiber on held-out fibers), ``K`` and ``fibers`` used.
    """
    fi, fj = fibers(y_i), fibers(y_j)
    if fi.shape[0] != fj.shape[0]:
        raise DvcmError(f"latents are on different grids: {tuple(y_i.shape)} vs {tuple(y_j.shape)}")
    if K < 1:
        raise DvcmError(f"K must be at least 1, got {K}")
    rng = np.random.default_rng(seed)
    n = fi.shape[0]
    if num_fibers is not None and n > num_fibers:
        keep = torch.from_numpy(rng.choice(n, size=num_fibers, replace=False))
        fi, fj = fi[keep], fj[keep]
        n = num_fibers
    K = min(K, n)
    if bool((torch.round(fi) == torch.round(fi[:1])).all()):
        # y_i takes one value everywhere: it carries no information, Rdn is undefined.
        return {
            "rdn": math.nan,
            "H_i": 0.0,
            "H_i_given_j": 0.0,
            "rdn_in_sample": math.nan,
            "H_i_train": 0.0,
            "H_i_given_j_train": 0.0,
            "K": K,
            "fibers": n,
        }
    # k-means++ cannot seed more clusters than y_j has distinct fibers (a collapsed latent has one).
    K = min(K, int(torch.unique(fj, dim=0).shape[0]))
    with warnings.catch_warnings():
        # An empty cluster is harmless here: its bottleneck simply gets no fibers.
        warnings.filterwarnings("ignore", message="One of the clusters is empty")
        _, labels = kmeans2(fj.detach().double().cpu().numpy(), K, minit="++", seed=seed)
    fit_idx, test_idx = _split(n, rng)

    # H(y_i): one bottleneck over all fibers.
    ones_fit = torch.ones_like(fi[fit_idx])
    bits, bits_in = _fit_bits(fi[fit_idx], ones_fit, fi[test_idx], torch.ones_like(fi[test_idx]), steps, seed)
    h_i = float(bits.sum() / len(test_idx))
    h_i_in = float(bits_in.sum() / len(fit_idx))

    # H(y_i | y_j): K bottlenecks side by side, one per cluster of y_j.
    M = fi.shape[1]
    lab = torch.from_numpy(labels)
    fit_lab, test_lab = lab[fit_idx], lab[test_idx]

    def stack(rows: Tensor, row_lab: Tensor) -> tuple[Tensor, Tensor]:
        counts = torch.bincount(row_lab, minlength=K)
        n_max = max(int(counts.max()), 1)
        data = torch.zeros(n_max, K * M)
        mask = torch.zeros(n_max, K * M)
        for k in range(K):
            sel = rows[row_lab == k]
            data[: len(sel), k * M : (k + 1) * M] = sel
            mask[: len(sel), k * M : (k + 1) * M] = 1.0
        return data, mask

    fit_data, fit_mask = stack(fi[fit_idx], fit_lab)
    test_data, test_mask = stack(fi[test_idx], test_lab)
    cond_bits, cond_bits_in = _fit_bits(fit_data, fit_mask, test_data, test_mask, steps, seed + 1)
    h_cond = float(cond_bits.sum() / len(test_idx))  # Σ_k p(k)·H(y_i | k) with p(k) = n_k / n
    h_cond_in = float(cond_bits_in.sum() / len(fit_idx))  # in-sample: scored on the fibers it was fitted to
    # A latent that carries (almost) nothing, e.g. all zeros from an untrained codec, has no
    # redundancy to measure: report NaN rather than a meaningless ratio of two tiny numbers.
    rdn = 1.0 - h_cond / h_i if h_i > MIN_BITS else math.nan
    # Per held-out fiber: its bits alone and given its cluster (back from the cluster blocks to fiber order).
    per_fiber = bits.sum(dim=1)
    per_fiber_cond = torch.zeros(len(test_idx))
    for k in range(K):
        where = torch.nonzero(test_lab == k).flatten()
        per_fiber_cond[where] = cond_bits[: len(where), k * M : (k + 1) * M].sum(dim=1)
    low, high = (
        bootstrap_interval(per_fiber.numpy(), per_fiber_cond.numpy(), seed) if h_i > MIN_BITS else (math.nan,) * 2
    )
    return {
        "rdn": rdn,
        "H_i": h_i,
        "H_i_given_j": h_cond,
        "rdn_in_sample": 1.0 - h_cond_in / h_i_in if h_i_in > MIN_BITS else math.nan,
        "H_i_train": h_i_in,
        "H_i_given_j_train": h_cond_in,
        "K": K,
        "fibers": n,
        "ci95": [low, high],
        "impossible": bool(low < 0),
        "biased": bool(high < 0),
    }


def ceiling(K: int, h_i: float, h_j: float) -> float:
    """The most the k-means estimator can read: a cluster index carries at most min(log2 K, H(y_j)) bits, so
    Rdn(y_i | y_j) ≤ min(log2 K, H(y_j)) / H(y_i) (and ≤ 1)."""
    if not (h_i > MIN_BITS):
        return math.nan
    return float(min(1.0, min(math.log2(max(K, 1)), max(h_j, 0.0)) / h_i))


def bootstrap_interval(
    bits: np.ndarray, cond_bits: np.ndarray, seed: int, resamples: int = 1000
) -> tuple[float, float]:
    """95 % percentile interval of 1 − mean(cond_bits)/mean(bits) over resamples of the fibers (pairs kept)."""
    rng = np.random.default_rng(seed + 2)
    idx = rng.integers(0, len(bits), size=(resamples, len(bits)))
    ratios = 1.0 - cond_bits[idx].mean(axis=1) / np.maximum(bits[idx].mean(axis=1), 1e-12)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


@torch.no_grad()
def _latents(model: torch.nn.Module, images: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    ys1, ys2 = [], []
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for x in images:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        out = model(x.to(device))  # the model where it is (a GPU in training); the estimate on the CPU
        ys1.append(fibers(out["y1_hat"]).cpu())
        ys2.append(fibers(out["y2_hat"]).cpu())
    if not ys1:
        raise DvcmError("no images given for the redundancy estimate")
    return torch.cat(ys1), torch.cat(ys2)


def model_redundancy(
    model: torch.nn.Module,
    images: Iterable[Tensor],
    K: int = DEFAULT_K,
    num_fibers: int | None = DEFAULT_FIBERS,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
) -> dict[str, Any]:
    """Rdn(ŷ1|ŷ2) and Rdn(ŷ2|ŷ1) of a codec over a set of images ([3,H,W] or [1,3,H,W] in [0,1]).

    The model runs in eval mode (quantised latents) and is put back in its previous mode.
    """
    was_training = model.training
    model.eval()
    try:
        f1, f2 = _latents(model, images)
    finally:
        model.train(was_training)
    y1, y2 = f1.t()[None, :, :, None], f2.t()[None, :, :, None]  # back to [1, M, n, 1]
    r12 = redundancy(y1, y2, K=K, num_fibers=num_fibers, seed=seed, steps=steps)
    r21 = redundancy(y2, y1, K=K, num_fibers=num_fibers, seed=seed, steps=steps)
    return {
        "estimator": "kmeans",
        "rdn_y1_given_y2": r12["rdn"],
        "rdn_y2_given_y1": r21["rdn"],
        "rdn_y1_given_y2_in_sample": r12["rdn_in_sample"],
        "rdn_y2_given_y1_in_sample": r21["rdn_in_sample"],
        "rdn_y1_given_y2_ceiling": ceiling(r12["K"], r12["H_i"], r21["H_i"]),
        "rdn_y2_given_y1_ceiling": ceiling(r21["K"], r21["H_i"], r12["H_i"]),
        "rdn_y1_given_y2_ci95": r12.get("ci95"),
        "rdn_y2_given_y1_ci95": r21.get("ci95"),
        "impossible": [name for name, r in (("rdn_y1_given_y2", r12), ("rdn_y2_given_y1", r21)) if r.get("impossible")],
        "biased": [name for name, r in (("rdn_y1_given_y2", r12), ("rdn_y2_given_y1", r21)) if r.get("biased")],
        "H_y1": r12["H_i"],
        "H_y2": r21["H_i"],
        "K": r12["K"],
        "fibers": r12["fibers"],
    }


def sanity_checks(
    y: Tensor, K: int = DEFAULT_K, num_fibers: int | None = DEFAULT_FIBERS, seed: int = 0, copied: float = 0.5
) -> list[dict[str, Any]]:
    """The k-means estimator on a latent whose answer is known (``y``: [1, M, n, 1], its fibers), with its ceiling:
    Rdn(ŷ|ŷ) = 1, Rdn(ŷ|independent noise) = 0, and Rdn(ŷ|ŷ with the first ``copied`` of its channels and noise
    elsewhere) ≥ those channels' share of the bits. It reports what it reads: it cannot read above its ceiling."""
    g = torch.Generator().manual_seed(seed + 7)
    spread = y.std(dim=2, keepdim=True).clamp_min(1.0)
    noise = torch.round(torch.randn(y.shape, generator=g) * spread)
    k = max(1, round(copied * y.shape[1]))
    partial = torch.cat([y[:, :k], noise[:, k:]], dim=1)
    alone = redundancy(y, y, K=1, num_fibers=num_fibers, seed=seed)  # K 1: H(ŷ) and, per channel, nothing else
    rows = []
    for check, given, truth in (
        ("Rdn(ŷ|ŷ)", y, "1"),
        ("Rdn(ŷ|noise)", noise, "0"),
        (f"Rdn(ŷ|{k} of {y.shape[1]} channels of ŷ)", partial, None),
    ):
        r = redundancy(y, given, K=K, num_fibers=num_fibers, seed=seed)
        if truth is None:
            part = redundancy(y[:, :k], y[:, :k], K=1, num_fibers=num_fibers, seed=seed)["H_i"]
            truth = f"≥ {part / max(alone['H_i'], 1e-12):.3f}"
        rows.append(
            {
                "check": check,
                "truth": truth,
                "rdn": r["rdn"],
                "ci95": r.get("ci95", [math.nan, math.nan]),
                "ceiling": ceiling(r["K"], r["H_i"], r["H_i"] if given is y else math.inf),
            }
        )
    return rows
