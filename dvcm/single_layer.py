"""bmshj2018: the single-layer scale hyperprior of Ballé et al. 2018, on the same base as the scalable codecs.

The learned answer to "what does scalability cost?": the same transforms, GDN, hyperprior and entropy
models as ``proposed`` and ``choi2022``, one latent, trained on the same shards with L = R + λ·D_x::

    x ──► g_a ──► y ──► hyper: h_a ─► ẑ ─► h_s ─► σ ──► coder ─► ŷ ──► g_s ──► x̂
                                                  the file's only layer: [ẑ, ŷ]
    machine:  x̂ ──► V_front ──► ŝ ──► V_back       (the whole YOLOv3 runs on the decoded image)

The transforms are CompressAI's ``ScaleHyperprior`` (``compressai/models/google.py``) with Table 1's
widths: g_a = ``image_analysis(M, N)``, g_s = ``pixel_synthesis(M, N)``; the hyperprior branch is the
scalable codecs' own (``dvcm.latent_codecs.hyperprior``: h_s in float64 at coding time, so that encoder
and decoder select the same rANS tables). The codec keeps the :class:`~dvcm.models.ScalableCodec` interface
with one layer: the file's base layer holds [ẑ, ŷ] and its enhancement layer is empty, so a machine's rate
is the whole rate, and its ŝ is V_front(x̂).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from compressai.registry import register_model
from torch import Tensor

from dvcm.latent_codecs import (
    BaseLatent,
    ScalableLatentCodec,
    _float32,
    _safe,
    compress_hyper,
    hyperprior,
    scale_coder,
)
from dvcm.models import C_S, ScalableCodec, image_analysis, pixel_synthesis


class SingleHyperprior(ScalableLatentCodec):
    """One latent y with its own hyperprior, all of it in the base layer (the enhancement layer is empty)."""

    hyperpriors = 1
    segment_counts = (2, 0)

    def __init__(self, M: int, N: int) -> None:
        super().__init__()
        self.N, self.M1, self.M2 = N, M, 0
        self.hyper = hyperprior(M, N)
        self.coder = scale_coder()

    def forward(self, y1: Tensor, y2: Tensor) -> dict:
        with _float32(y1):
            y = y1.float()
            hy = self.hyper(y)
            c = self.coder(y, hy["params"])
        return {"y_hat": (c["y_hat"], y2), "likelihoods": {"y": c["likelihoods"]["y"], "z": hy["likelihoods"]["z"]}}

    def compress(self, y1: Tensor, y2: Tensor) -> tuple[list[bytes], list[bytes]]:
        hy = compress_hyper(self.hyper, y1, "z")
        c = self.coder.compress(y1, hy["params"])
        return [hy["strings"][0][0], c["strings"][0][0]], []

    def scales(self, y1: Tensor, y2: Tensor) -> tuple[Tensor, Tensor]:
        with _float32(y1):
            return self.hyper(y1.float())["params"], y2

    def decompress_base(self, strings: list[bytes], y_hw: tuple[int, int], z_hw: tuple[int, int]) -> BaseLatent:
        z_str, y_str = strings
        scales = self.hyper.decompress(_safe(z_str, self.N, z_hw, "ẑ"), z_hw)["params"]
        return BaseLatent(self.coder.decompress(_safe(y_str, self.M1, y_hw, "ŷ"), y_hw, scales)["y_hat"])

    def decompress_enhancement(
        self, strings: list[bytes], y_hw: tuple[int, int], z_hw: tuple[int, int], base: BaseLatent
    ) -> Tensor:
        return base.y1_hat.new_zeros((base.y1_hat.shape[0], 0, *y_hw))


@register_model("dvcm-bmshj2018")
class Bmshj2018Codec(ScalableCodec):
    """Ballé et al. 2018 scale hyperprior, single layer: configuration (M,) with N; machines run YOLOv3 on x̂."""

    name = "bmshj2018"
    layers = 1

    def __init__(self, N: int = 192, M: int = 192, front: nn.Module | None = None, C_s: int | None = None) -> None:
        super().__init__(N=N, M1=M, M2=0, H=1, front=front, C_s=C_s)
        self.M = int(M)
        self.g_a = image_analysis(M, N)
        self.g_s = pixel_synthesis(M, N)

    def make_latent_codec(self) -> ScalableLatentCodec:
        return SingleHyperprior(self.M1, self.N)

    @property
    def config(self) -> dict[str, int]:
        """N, M, and C_s when it is not standard YOLOv3's 256 (the front that gives the machine its ŝ)."""
        return {"N": self.N, "M": self.M, **({"C_s": self.C_s} if self.C_s != C_S else {})}

    def analysis(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        y = self.g_a(x)
        return y, y.new_zeros((y.shape[0], 0, *y.shape[-2:]))

    def synthesize_pixels(self, y1_hat: Tensor, y2_hat: Tensor) -> Tensor:
        return self.g_s(y1_hat)

    def machine_features(self, y1_hat: Tensor, x_hat: Tensor | None, hw: tuple[int, int]) -> Tensor:
        """ŝ = V_front(x̂): the machine decodes the image (its only layer) and runs the whole YOLOv3 on it.
        No gradient flows through it: the loss of a single-layer codec has no feature term."""
        if x_hat is None:
            x_hat = self.synthesize_pixels(y1_hat, y1_hat[:, :0])[..., : hw[0], : hw[1]]
        with torch.no_grad():
            return self.front(x_hat.clamp(0, 1))
