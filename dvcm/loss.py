"""Paper Eq. 2: L = R(ŷ1) + R(ẑ1) + R(ŷ2) + R(ẑ2) + λ·D_x + γ·D_s.

With ``gamma_mode="scaled"`` the feature term's weight is λ·γ instead of γ, that is
L = R + λ·(D_x + γ·D_s): both distortions are traded against the rate by one λ, so a λ sweep
moves the base layer's rate too (:func:`feature_weight`).

Rates are in bits per pixel of x; D_x is the MSE on the 0-255 scale (as CompressAI's
``RateDistortionLoss``: 255²·MSE on [0,1] images); D_s is the MSE between s and ŝ after
normalising each channel of s by the dataset's standard deviation (``dataset.json``), so
that γ means the same whatever the feature extractor.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

# Which layer each likelihood key travels in (H=1 has a shared z in the base layer; a single-layer codec's y and z
# travel in its only layer, the base layer).
BASE_KEYS = ("y1", "z1", "z", "y")
ENHANCEMENT_KEYS = ("y2", "z2")


def bits_per_pixel(likelihoods: Tensor, num_pixels: int) -> Tensor:
    """Estimated rate of one latent in bits per pixel, from its likelihoods."""
    return torch.log(likelihoods).sum() / (-math.log(2) * num_pixels)


GAMMA_MODES = ("fixed", "scaled")


def feature_weight(lmbda: float, gamma: float, mode: str = "fixed") -> float:
    """The weight on D_s: γ (``fixed``, the paper's Eq. 2) or λ·γ (``scaled``: L = R + λ·(D_x + γ·D_s))."""
    if mode == "fixed":
        return float(gamma)
    if mode == "scaled":
        return float(lmbda) * float(gamma)
    raise ValueError(f"gamma mode must be one of {', '.join(GAMMA_MODES)}, got {mode!r}")


class ScalableRDLoss(nn.Module):
    """Eq. 2 with every rate term reported separately.

    ``gamma`` is the weight on D_s as it enters the loss (:func:`feature_weight` of the sweep's γ).
    Returns a dict with ``loss``, ``bpp`` (total), ``bpp_<key>`` for every latent, ``bpp_base``,
    ``bpp_enh``, ``D_x`` (0-255 MSE), ``D_s`` (normalised feature MSE) and ``psnr`` (dB).
    """

    def __init__(self, lmbda: float, gamma: float, s_mean: Tensor | None = None, s_std: Tensor | None = None) -> None:
        super().__init__()
        if lmbda <= 0:
            raise ValueError(f"lambda must be > 0, got {lmbda}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.lmbda = float(lmbda)
        self.gamma = float(gamma)
        std = torch.ones(1) if s_std is None else torch.as_tensor(s_std, dtype=torch.float32).clamp_min(1e-8)
        # The mean cancels in s - ŝ; it is kept for completeness of the normalisation.
        mean = torch.zeros(1) if s_mean is None else torch.as_tensor(s_mean, dtype=torch.float32)
        self.register_buffer("s_mean", mean.reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("s_std", std.reshape(1, -1, 1, 1), persistent=False)

    def forward(self, out: dict[str, Any], x: Tensor) -> dict[str, Tensor]:
        n, _, h, w = x.shape
        num_pixels = n * h * w
        result: dict[str, Tensor] = {}
        for key, lik in out["likelihoods"].items():
            result[f"bpp_{key}"] = bits_per_pixel(lik, num_pixels)
        zero = x.new_zeros(())
        result["bpp_base"] = sum((result[f"bpp_{k}"] for k in BASE_KEYS if f"bpp_{k}" in result), zero)
        result["bpp_enh"] = sum((result[f"bpp_{k}"] for k in ENHANCEMENT_KEYS if f"bpp_{k}" in result), zero)
        result["bpp"] = result["bpp_base"] + result["bpp_enh"]
        mse = torch.mean((out["x_hat"] - x) ** 2)
        result["D_x"] = 255.0**2 * mse
        result["D_s"] = torch.mean(((out["s_hat"] - out["s"]) / self.s_std) ** 2)
        result["loss"] = result["bpp"] + self.lmbda * result["D_x"] + self.gamma * result["D_s"]
        with torch.no_grad():
            mse_clamped = torch.mean((out["x_hat"].clamp(0, 1) - x) ** 2).clamp_min(1e-10)
            result["psnr"] = -10 * torch.log10(mse_clamped)
        return result
