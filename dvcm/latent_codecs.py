"""The two hyperprior layouts of a scalable codec's latents, as latent codecs.

A scalable codec has a base latent y1 (for the machine) and an enhancement latent y2 (with y1, for
the image). How their scales are coded is the configuration's H; each layout is one module with
the same methods, composed from CompressAI's ``HyperLatentCodec`` (h_a, EntropyBottleneck, h_s)
and ``GaussianConditionalLatentCodec``, as ``compressai/latent_codecs/hyperprior.py`` composes one
hyperprior. The codec chooses its layout once, at construction (:func:`latent_codec`).

``PerLatentHyperpriors`` (H = 2, one hyperprior per latent)::

    y1 ──► hyper1: h_a ─► ẑ1 ─► h_s ─► σ1 ──► coder1 ─► ŷ1      base layer:        [ẑ1, ŷ1]
    y2 ──► hyper2: h_a ─► ẑ2 ─► h_s ─► σ2 ──► coder2 ─► ŷ2      enhancement layer: [ẑ2, ŷ2]

``SharedHyperprior`` (H = 1, one hyperprior over both, its ẑ in the base layer)::

    (y1, y2) ──► hyper: h_a ─► ẑ ─► h_s ─► σ = (σ1 | σ2)       base layer:        [ẑ, ŷ1]
    y1, σ1 ──► coder1 ─► ŷ1                                     enhancement layer: [ŷ2]
    y2, σ2 ──► coder2 ─► ŷ2

Either way the base layer alone decodes ŷ1; decoding the enhancement layer takes what the base
decode returned (:class:`BaseLatent`: with the shared layout, σ2 comes from the base layer's ẑ).

Under autocast (AMP) the latent codecs run in float32, the entropy models and the hyperprior
transforms h_a/h_s with them: the likelihoods, and so the rate terms, would otherwise lose most
of their bits in bf16. The analysis and synthesis transforms around them stay in bf16.

Decoding never lets CompressAI's rANS decoder read past a string: each string is checked and
zero-padded for the symbols asked of it first (:func:`dvcm.limits.padded_rans_string`), so a
crafted file decodes to garbage or is refused, and never crashes the process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck
from compressai.latent_codecs import GaussianConditionalLatentCodec, HyperLatentCodec
from compressai.models.utils import conv, deconv
from torch import Tensor

from dvcm.errors import ConfigError
from dvcm.limits import check_latent, padded_rans_string


class Lambda(nn.Module):
    """A parameter-free function as a layer, so transforms stay plain ``nn.Sequential``s."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _abs(x: Tensor) -> Tensor:
    return torch.abs(x)


class Float64WhenEval(nn.Module):
    """Run the wrapped module in float64 outside training.

    The hyper-synthesis h_s predicts the scales whose *indexes* select the rANS tables: the
    encoder and the decoder must get identical indexes, or the whole decode is corrupted.
    float32 convolutions differ in their last bits between thread counts and devices, often
    enough to flip an index somewhere in a large image; in float64 those differences are far
    below the spacing of the scale table. h_s works at 1/64 resolution, so this is cheap.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self.module(x)
        params = {k: v.double() for k, v in self.module.state_dict(keep_vars=True).items()}
        out = torch.func.functional_call(self.module, params, (x.double(),))
        return out.to(x.dtype)


def hyper_analysis(M: int, N: int) -> nn.Sequential:
    """h_a of Ballé 2018 (on |y|), latent M channels -> z with N channels at 1/4 the size."""
    return nn.Sequential(
        Lambda(_abs),
        conv(M, N, stride=1, kernel_size=3),
        nn.ReLU(inplace=True),
        conv(N, N),
        nn.ReLU(inplace=True),
        conv(N, N),
    )


def hyper_synthesis(M: int, N: int) -> nn.Module:
    """h_s of Ballé 2018: ẑ -> scales of the M latent channels (float64 at coding time)."""
    return Float64WhenEval(
        nn.Sequential(
            deconv(N, N),
            nn.ReLU(inplace=True),
            deconv(N, N),
            nn.ReLU(inplace=True),
            conv(N, M, stride=1, kernel_size=3),
            nn.ReLU(inplace=True),
        )
    )


def hyperprior(M: int, N: int) -> HyperLatentCodec:
    """A whole scale hyperprior side branch (h_a, EntropyBottleneck, h_s) as one CompressAI module."""
    return HyperLatentCodec(EntropyBottleneck(N), hyper_analysis(M, N), hyper_synthesis(M, N))


def scale_coder() -> GaussianConditionalLatentCodec:
    """A zero-mean Gaussian conditional coder of a latent, given its scales."""
    return GaussianConditionalLatentCodec(chunks=("scales",))


def _area(hw: tuple[int, int]) -> int:
    return int(hw[0]) * int(hw[1])


def _safe(string: bytes, channels: int, hw: tuple[int, int], what: str) -> list[list[bytes]]:
    """One string in CompressAI's ``[[string]]`` layout, padded so that decoding ``channels``×``hw``
    symbols cannot read past it."""
    return [[padded_rans_string(string, channels * _area(hw), what)]]


@contextlib.contextmanager
def _float32(t: Tensor) -> Iterator[None]:
    """Autocast off on ``t``'s device: what runs inside runs in the dtype of its inputs (float32)."""
    with torch.autocast(t.device.type, enabled=False):
        yield


class BaseLatent(NamedTuple):
    """What decoding the base layer gives: ŷ1, and what the enhancement decoder needs from it
    (the scales of ŷ2 when the hyperprior is shared, else None)."""

    y1_hat: Tensor
    enhancement_scales: Tensor | None = None


def compress_hyper(hyper: HyperLatentCodec, y: Tensor, name: str) -> dict[str, Any]:
    """``hyper.compress(y)``, after refusing a hyper-latent the entropy bottleneck could not code: z = h_a(y) less
    its medians must be finite and within ±2^20 (damaged h_a weights give finite but huge z, on which CompressAI's
    bypass coder never returns)."""
    with torch.no_grad():
        z = hyper.h_a(y)
        medians = hyper.entropy_bottleneck._get_medians().detach().reshape(1, -1, 1, 1)
        check_latent(z - medians, name)
    return hyper.compress(y)


class ScalableLatentCodec(nn.Module):
    """The common interface of the two layouts (see the module docstring)."""

    hyperpriors: int  # the configuration's H
    segment_counts: tuple[int, int]  # rANS strings in the base and in the enhancement layer

    def forward(self, y1: Tensor, y2: Tensor) -> dict[str, Any]:
        """Training/quantised pass: ``{"y_hat": (ŷ1, ŷ2), "likelihoods": {...}}``."""
        raise NotImplementedError

    def compress(self, y1: Tensor, y2: Tensor) -> tuple[list[bytes], list[bytes]]:
        """The base layer's strings and the enhancement layer's, for one latent pair (batch size 1)."""
        raise NotImplementedError

    def scales(self, y1: Tensor, y2: Tensor) -> tuple[Tensor, Tensor]:
        """(σ1, σ2): the scales the codec's own entropy model gives ŷ1 and ŷ2 (from the quantised ẑ, in eval
        mode as when coding); what its zero-mean Gaussian conditionals code them with."""
        raise NotImplementedError

    def decompress_base(self, strings: list[bytes], y_hw: tuple[int, int], z_hw: tuple[int, int]) -> BaseLatent:
        """ŷ1 from the base layer's strings alone."""
        raise NotImplementedError

    def decompress_enhancement(
        self, strings: list[bytes], y_hw: tuple[int, int], z_hw: tuple[int, int], base: BaseLatent
    ) -> Tensor:
        """ŷ2 from the enhancement layer's strings, given the base layer's decode."""
        raise NotImplementedError


class PerLatentHyperpriors(ScalableLatentCodec):
    """H = 2: a hyperprior for y1 (its ẑ1 in the base layer) and one for y2 (ẑ2 in the enhancement layer)."""

    hyperpriors = 2
    segment_counts = (2, 2)

    def __init__(self, M1: int, M2: int, N: int) -> None:
        super().__init__()
        self.N, self.M1, self.M2 = N, M1, M2
        self.hyper1 = hyperprior(M1, N)
        self.hyper2 = hyperprior(M2, N)
        self.coder1 = scale_coder()
        self.coder2 = scale_coder()

    def forward(self, y1: Tensor, y2: Tensor) -> dict[str, Any]:
        with _float32(y1):
            y1, y2 = y1.float(), y2.float()
            h1, h2 = self.hyper1(y1), self.hyper2(y2)
            c1, c2 = self.coder1(y1, h1["params"]), self.coder2(y2, h2["params"])
        likelihoods = {
            "y1": c1["likelihoods"]["y"],
            "z1": h1["likelihoods"]["z"],
            "y2": c2["likelihoods"]["y"],
            "z2": h2["likelihoods"]["z"],
        }
        return {"y_hat": (c1["y_hat"], c2["y_hat"]), "likelihoods": likelihoods}

    def compress(self, y1: Tensor, y2: Tensor) -> tuple[list[bytes], list[bytes]]:
        h1, h2 = compress_hyper(self.hyper1, y1, "z1"), compress_hyper(self.hyper2, y2, "z2")
        c1, c2 = self.coder1.compress(y1, h1["params"]), self.coder2.compress(y2, h2["params"])
        return [h1["strings"][0][0], c1["strings"][0][0]], [h2["strings"][0][0], c2["strings"][0][0]]

    def scales(self, y1: Tensor, y2: Tensor) -> tuple[Tensor, Tensor]:
        with _float32(y1):
            return self.hyper1(y1.float())["params"], self.hyper2(y2.float())["params"]

    def decompress_base(self, strings: list[bytes], y_hw: tuple[int, int], z_hw: tuple[int, int]) -> BaseLatent:
        z1_str, y1_str = strings
        scales1 = self.hyper1.decompress(_safe(z1_str, self.N, z_hw, "ẑ1"), z_hw)["params"]
        return BaseLatent(self.coder1.decompress(_safe(y1_str, self.M1, y_hw, "ŷ1"), y_hw, scales1)["y_hat"])

    def decompress_enhancement(
        self, strings: list[bytes], y_hw: tuple[int, int], z_hw: tuple[int, int], base: BaseLatent
    ) -> Tensor:
        z2_str, y2_str = strings
        scales2 = self.hyper2.decompress(_safe(z2_str, self.N, z_hw, "ẑ2"), z_hw)["params"]
        return self.coder2.decompress(_safe(y2_str, self.M2, y_hw, "ŷ2"), y_hw, scales2)["y_hat"]


class SharedHyperprior(ScalableLatentCodec):
    """H = 1: one hyperprior over (y1, y2); its ẑ travels in the base layer and gives the scales of both."""

    hyperpriors = 1
    segment_counts = (2, 1)

    def __init__(self, M1: int, M2: int, N: int) -> None:
        super().__init__()
        self.N, self.M1, self.M2 = N, M1, M2
        self.hyper = hyperprior(M1 + M2, N)
        self.coder1 = scale_coder()
        self.coder2 = scale_coder()

    def _split(self, scales: Tensor) -> tuple[Tensor, Tensor]:
        scales1, scales2 = scales.split([self.M1, self.M2], dim=1)
        return scales1, scales2

    def forward(self, y1: Tensor, y2: Tensor) -> dict[str, Any]:
        with _float32(y1):
            y1, y2 = y1.float(), y2.float()
            hy = self.hyper(torch.cat([y1, y2], dim=1))
            scales1, scales2 = self._split(hy["params"])
            c1, c2 = self.coder1(y1, scales1), self.coder2(y2, scales2)
        likelihoods = {"y1": c1["likelihoods"]["y"], "y2": c2["likelihoods"]["y"], "z": hy["likelihoods"]["z"]}
        return {"y_hat": (c1["y_hat"], c2["y_hat"]), "likelihoods": likelihoods}

    def compress(self, y1: Tensor, y2: Tensor) -> tuple[list[bytes], list[bytes]]:
        hy = compress_hyper(self.hyper, torch.cat([y1, y2], dim=1), "z")
        scales1, scales2 = self._split(hy["params"])
        c1, c2 = self.coder1.compress(y1, scales1), self.coder2.compress(y2, scales2)
        return [hy["strings"][0][0], c1["strings"][0][0]], [c2["strings"][0][0]]

    def scales(self, y1: Tensor, y2: Tensor) -> tuple[Tensor, Tensor]:
        with _float32(y1):
            return self._split(self.hyper(torch.cat([y1.float(), y2.float()], dim=1))["params"])

    def decompress_base(self, strings: list[bytes], y_hw: tuple[int, int], z_hw: tuple[int, int]) -> BaseLatent:
        z_str, y1_str = strings
        scales1, scales2 = self._split(self.hyper.decompress(_safe(z_str, self.N, z_hw, "ẑ"), z_hw)["params"])
        return BaseLatent(self.coder1.decompress(_safe(y1_str, self.M1, y_hw, "ŷ1"), y_hw, scales1)["y_hat"], scales2)

    def decompress_enhancement(
        self, strings: list[bytes], y_hw: tuple[int, int], z_hw: tuple[int, int], base: BaseLatent
    ) -> Tensor:
        (y2_str,) = strings
        return self.coder2.decompress(_safe(y2_str, self.M2, y_hw, "ŷ2"), y_hw, base.enhancement_scales)["y_hat"]


LAYOUTS: dict[int, type[ScalableLatentCodec]] = {2: PerLatentHyperpriors, 1: SharedHyperprior}


def latent_codec(H: int, M1: int, M2: int, N: int) -> ScalableLatentCodec:
    """The layout of configuration H: 2 -> :class:`PerLatentHyperpriors`, 1 -> :class:`SharedHyperprior`."""
    if H not in LAYOUTS:
        raise ConfigError(f"H must be 1 or 2 (hyperprior blocks), got {H}")
    return LAYOUTS[H](M1, M2, N)
