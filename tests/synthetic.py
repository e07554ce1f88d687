"""Small natural-looking test images made in memory (smooth fields, edges, texture, noise)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def natural_image(seed: int, h: int, w: int) -> torch.Tensor:
    """A deterministic RGB image [3,h,w] in [0,1] with structure at several scales."""
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(3, h, w)
    for scale in (4, 16, 64):  # coarse to fine smooth random fields
        coarse = torch.rand(1, 3, max(2, h // scale), max(2, w // scale), generator=g)
        img += F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0] / scale**0.5
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for _ in range(4):  # flat shapes with sharp edges
        cy, cx = (torch.rand(2, generator=g) * torch.tensor([h, w])).tolist()
        r = float(torch.rand(1, generator=g)) * min(h, w) / 3 + 4
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
        img[:, mask] = torch.rand(3, 1, generator=g)
    img += 0.02 * torch.randn(3, h, w, generator=g)
    img -= img.amin(dim=(1, 2), keepdim=True)
    return (img / img.amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)).clamp(0, 1)
