"""The CompressAI optimizer pattern: the net optimizer for the transforms, a separate one for
the EntropyBottleneck quantiles (the aux loss)."""

from __future__ import annotations

import torch
import torch.nn as nn


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(net, aux) parameters: aux are the ``.quantiles`` of the EntropyBottlenecks; frozen ones are left out."""
    net, aux = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (aux if name.endswith(".quantiles") else net).append(p)
    return net, aux


def configure_optimizers(
    model: nn.Module, lr: float = 1e-4, aux_lr: float = 1e-3
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for the net (paper: lr 1e-4), Adam for the aux loss (CompressAI: lr 1e-3)."""
    net, aux = split_parameters(model)
    return torch.optim.Adam(net, lr=lr), torch.optim.Adam(aux, lr=aux_lr)
