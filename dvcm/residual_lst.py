"""choi2022 with a residual latent-space transform: the baseline given the capacity of proposed's feature path.

Choi & Bajić's LST maps the base latent ŷ1 to ŝ. With the paper's layer plan (``g_s1``: three deconvolutions,
about 70 k parameters at N = 32) a capacity limit there would look like what the miniature measures: choi2022's
D_s barely moves while its base rate doubles. A public reimplementation of Choi & Bajić uses residual blocks in
the LST; the DCC paper's own LST details are lost from its text. This codec is the same choi2022 (one g_a, ŷ split
into (ŷ1, ŷ2), x̂ = g_s(ŷ1, ŷ2)) whose LST is CompressAI's residual blocks (``compressai.layers``), sized so that
LST ≈ proposed's g_a1 + g_s1 (the whole of proposed's feature path)::

    ŝ = LST(ŷ1):  deconv5s1 N, IGDN, ResidualBlock(N) × blocks, ResidualBlockUpsample(N, ×2), conv3x3 C_s

It is an ablation row of the study (``reproduce --models choi2022rlst``), not one of its default models.
"""

from __future__ import annotations

import torch.nn as nn
from compressai.layers import GDN, ResidualBlock, ResidualBlockUpsample, conv3x3
from compressai.models.utils import deconv

from dvcm.models import Choi2022Codec

LST_BLOCKS = 1  # at N = 32, C_s = 32: 130 k parameters; proposed's g_a1 + g_s1: 127 k; the paper's LST plan: 70 k


def residual_lst(M1: int, N: int, C_s: int, blocks: int = LST_BLOCKS) -> nn.Sequential:
    """ŷ1 (H/16) -> ŝ (C_s channels, H/8) through residual blocks."""
    return nn.Sequential(
        deconv(M1, N, stride=1),
        GDN(N, inverse=True),
        *(ResidualBlock(N, N) for _ in range(blocks)),
        ResidualBlockUpsample(N, N, 2),
        conv3x3(N, C_s),
    )


class Choi2022ResidualLSTCodec(Choi2022Codec):
    """choi2022 whose latent-space transform is residual (module docstring)."""

    name = "choi2022rlst"

    @staticmethod
    def latent_space_transform(M1: int, N: int, C_s: int) -> nn.Module:
        return residual_lst(M1, N, C_s)
