"""DDP for a trial's workers: the collective backend, the model wrapper, the ranks' weight checksum.

One rule: a collective carries tensors on the device of the tensors it summarises, and the
process group has a backend for every device type it may see (``cpu:gloo,cuda:nccl`` on GPUs:
NCCL alone cannot all-reduce a CPU tensor).
"""

from __future__ import annotations

import torch
from torch import nn


def collective_backend(use_gpu: bool) -> str:
    """The ``torch.distributed`` backend of a trial: gloo on CPUs; on GPUs NCCL for CUDA tensors and
    gloo for any CPU tensor (Ray Train passes the string to ``init_process_group``)."""
    return "cpu:gloo,cuda:nccl" if use_gpu else "gloo"


def backends_by_device(backend: str) -> dict[str, str]:
    """``"cpu:gloo,cuda:nccl"`` -> {"cpu": "gloo", "cuda": "nccl"}; a plain name serves what it can
    (gloo: CPU and CUDA tensors; nccl: CUDA tensors only)."""
    if ":" not in backend:
        return {"cpu": backend, "cuda": backend} if backend == "gloo" else {"cuda": backend}
    return dict(part.split(":", 1) for part in backend.split(","))


def wrap_ddp(model: nn.Module, aux_names: list[str], find_unused_parameters: bool = False) -> nn.Module:
    """DDP via ``ray.train.torch.prepare_model``, with the EntropyBottleneck quantiles left out.

    The quantiles are trained by the aux loss in a second backward that DDP's reducer must not
    see (it would all-reduce gradients it never expected); the training step averages their
    gradients across ranks itself. They were the only parameters the forward pass does not use,
    so without them DDP needs no search for unused parameters (``find_unused_parameters``, an
    extra autograd traversal every step; ``bench train`` measures both).
    """
    import ray.train.torch
    from torch.nn.parallel import DistributedDataParallel

    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, aux_names)
    return ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": find_unused_parameters}
    )


def param_checksum(model: nn.Module) -> torch.Tensor:
    """A float64 checksum of every parameter (position weighted), on the parameters' device:
    equal on every rank iff the weights agree."""
    params = sorted(model.named_parameters())
    total = torch.zeros((), dtype=torch.float64, device=params[0][1].device if params else "cpu")
    for i, (_, p) in enumerate(params):
        d = p.detach().double()
        total += (i + 1) * d.sum() + d.abs().sum()
    return total


def rank_checksums(model: nn.Module, rank: int, world: int) -> list[float]:
    """Every rank's :func:`param_checksum`, gathered with one collective on the model's device."""
    mine = param_checksum(model)
    all_ranks = torch.zeros(world, dtype=torch.float64, device=mine.device)
    all_ranks[rank] = mine
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(all_ranks)
    return all_ranks.cpu().tolist()
