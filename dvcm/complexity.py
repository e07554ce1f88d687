"""Complexity of a scalable codec as the field reports it: parameters and kMAC per pixel of each part.

Counted by torch's own counter (``torch.utils.flop_counter.FlopCounterMode``) on one forward pass of
the whole model at 768×512 (the counter gives 2 FLOPs per multiply–accumulate of a convolution):

- ``front``: V_front, the detector's first layers that give s (computed on the encoder side);
- ``encoder``: the analysis transforms (g_a1 and g_a2, or g_a) and every hyper-analysis h_a;
- ``base_decoder``: what a machine runs on the base layer: its hyper-synthesis h_s and g_s1 (the LST
  of choi2022) -> ŝ;
- ``full_decoder``: every decoder transform: each h_s, g_s1 and g_s2 (ŝ and x̂).

A single-layer codec (``bmshj2018``) has g_a and g_s; its machine decodes x̂ and runs V_front on it, so its
``base_decoder`` is h_s, g_s and V_front.

Entropy coding itself (rANS) is not a tensor operation and is not counted.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

PARTS = ("front", "encoder", "base_decoder", "full_decoder")
HEIGHT, WIDTH = 512, 768


def part_modules(model: nn.Module) -> dict[str, list[str]]:
    """The submodule names of each part (see the module docstring)."""
    children = dict(model.named_children())
    codec = model.latent_codec  # type: ignore[attr-defined]
    names = dict(codec.named_children())
    base_hyper = ["latent_codec.hyper1"] if "hyper1" in names else ["latent_codec.hyper"]
    enhancement_hyper = ["latent_codec.hyper2"] if "hyper2" in names else []
    analyses = [n for n in ("g_a1", "g_a2", "g_a") if n in children]
    syntheses = [n for n in ("g_s1", "g_s2", "g_s") if n in children]
    machine = ["g_s1"] if "g_s1" in children else syntheses + ["front"]  # one layer: x̂, then V_front
    return {
        "front": ["front"],
        "encoder": analyses + [f"{h}.h_a" for h in base_hyper + enhancement_hyper],
        "base_decoder": [f"{h}.h_s" for h in base_hyper] + machine,
        "full_decoder": [f"{h}.h_s" for h in base_hyper + enhancement_hyper] + syntheses,
    }


def module_macs(model: nn.Module, height: int = HEIGHT, width: int = WIDTH) -> dict[str, float]:
    """Multiply–accumulates of every submodule (by its name in ``model``, ``""`` for the whole) in one
    forward pass of a random ``height``×``width`` image, in eval mode and without gradients."""
    param = next(model.parameters())
    x = torch.rand(1, 3, height, width, device=param.device)
    counter = FlopCounterMode(display=False, depth=None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    flops = counter.get_flop_counts()
    root = next(k for k in flops if k != "Global" and "." not in k)  # the model's class name
    out = {name[len(root) + 1 :]: sum(ops.values()) / 2 for name, ops in flops.items() if name.startswith(root + ".")}
    out[""] = sum(flops.get("Global", {}).values()) / 2
    return out


def codec_complexity(model: nn.Module, height: int = HEIGHT, width: int = WIDTH) -> dict[str, dict[str, float]]:
    """``{part: {"params": count, "kmac_per_pixel": thousands of MACs per input pixel}}`` for :data:`PARTS`."""
    macs = module_macs(model, height, width)
    if getattr(model, "layers", 2) == 1:  # its forward runs V_front twice: on x (s) and on x̂ (the machine's ŝ)
        macs["front"] = macs.get("front", 0.0) / 2
    out: dict[str, dict[str, float]] = {}
    for part, modules in part_modules(model).items():
        params = sum(p.numel() for m in modules for p in model.get_submodule(m).parameters())
        out[part] = {
            "params": float(params),
            "kmac_per_pixel": sum(macs.get(m, 0.0) for m in modules) / (height * width) / 1e3,
        }
    return out
