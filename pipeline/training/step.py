"""One training step, the only one: the training loop and every benchmark call it, so that a
benchmark measures what training runs.

A step is CompressAI's net/aux pattern: forward (bf16 autocast under AMP, the loss in fp32),
the rate–distortion loss, its backward, gradient clipping, the net optimizer; then the aux loss
of the EntropyBottleneck quantiles, its own backward and optimizer. Under DDP the aux backward
is not seen by DDP's reducer, so the quantile gradients are averaged over ranks here.

Nothing here synchronises with the device except the finite-loss check (one flag per step, so
that a diverged step never reaches the weights); the returned terms stay on the device and are
summed there (:class:`MetricSums`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

METRIC_KEYS = (
    "loss",
    "bpp",
    "bpp_y1",
    "bpp_z1",
    "bpp_y2",
    "bpp_z2",
    "bpp_z",
    "bpp_base",
    "bpp_enh",
    "D_x",
    "D_s",
    "psnr",
)


def to_float(out: Any) -> Any:
    """Cast autocast outputs back to fp32 before the loss (likelihoods in bf16 lose bits)."""
    if isinstance(out, Tensor) and out.is_floating_point():
        return out.float()
    if isinstance(out, dict):
        return {k: to_float(v) for k, v in out.items()}
    return out


def aux_parameters(model: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    """Names and tensors of the trainable EntropyBottleneck quantiles (the aux loss's parameters)."""
    named = [(n, p) for n, p in model.named_parameters() if n.endswith(".quantiles") and p.requires_grad]
    return [n for n, _ in named], [p for _, p in named]


def train_step(
    model: nn.Module,
    forward: Callable[..., Any],
    criterion: Callable[[Any, Tensor], dict[str, Tensor]],
    net_opt: torch.optim.Optimizer,
    aux_opt: torch.optim.Optimizer,
    inputs: Sequence[Tensor],
    *,
    clip_max_norm: float = 1.0,
    aux_params: Sequence[nn.Parameter] = (),
    world: int = 1,
    use_amp: bool = False,
    poison: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """One step on ``inputs`` (``forward(*inputs)``; the target is ``inputs[0]``); returns the loss
    terms and ``aux_loss``, detached, on the device.

    ``model`` is the bare module (its ``aux_loss`` and parameters), ``forward`` the module to call
    (the DDP wrapper, or the model itself). ``poison`` is test-only fault injection.
    """
    x = inputs[0]
    net_opt.zero_grad(set_to_none=True)
    aux_opt.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp):
        out = forward(*inputs)
    terms = criterion(to_float(out), x)
    loss = poison(terms["loss"]) if poison is not None else terms["loss"]
    if not bool(torch.isfinite(loss)):
        raise FloatingPointError(f"non-finite loss {float(loss)}")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
    net_opt.step()
    aux_loss = model.aux_loss()
    aux_loss.backward()
    if world > 1:  # DDP did not see this backward: average the quantile gradients by hand
        import torch.distributed as dist

        for p in aux_params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world
    aux_opt.step()
    metrics = {k: v.detach() for k, v in terms.items() if isinstance(v, Tensor) and v.dim() == 0}
    metrics["aux_loss"] = aux_loss.detach()
    return metrics


class MetricSums:
    """Per-key sums of scalar tensors, kept on the device (no synchronisation until :meth:`mean`)."""

    def __init__(self, keys: Sequence[str], device: torch.device) -> None:
        self.keys = list(keys)
        self.device = device
        self.sums = torch.zeros(len(self.keys), dtype=torch.float64, device=device)
        self.present = torch.zeros(len(self.keys), dtype=torch.float64, device=device)
        self.count = 0

    def add(self, terms: dict[str, Tensor]) -> None:
        for i, k in enumerate(self.keys):
            if k in terms:
                self.sums[i] += terms[k].to(torch.float64)
                self.present[i] = 1.0
        self.count += 1

    def mean(self, world: int = 1) -> dict[str, float]:
        """Mean over every rank's batches: one collective, one copy to the host.

        The tensor lives on this rank's device (so NCCL can carry it on GPUs) and has the same
        shape on every rank, even one without batches.
        """
        t = torch.cat(
            [self.sums, self.present, torch.tensor([float(self.count)], dtype=torch.float64, device=self.device)]
        )
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        host = t.cpu().tolist()
        n = host[-1]
        if n == 0:
            return {}
        k = len(self.keys)
        return {key: host[i] / n for i, key in enumerate(self.keys) if host[k + i] > 0}
