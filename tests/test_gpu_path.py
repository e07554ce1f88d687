"""The GPU path, as far as a CPU can show it (tests/test_gpu.py runs the rest where CUDA exists).

Tensors on the ``meta`` device do not raise on cross-device arithmetic, so they cannot stand in
for CUDA; they can show *where* a result lives, which is what several of the GPU bugs were about.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.infra.errors import UserError
from pipeline.training.ddp import backends_by_device, collective_backend, param_checksum
from pipeline.training.settings import resolve
from pipeline.training.step import MetricSums


def test_gpu_backend_carries_cpu_tensors_too() -> None:
    # bug 3: with backend "nccl" alone, all_reduce of a CPU tensor raises on every multi-worker GPU trial
    assert set(backends_by_device(collective_backend(use_gpu=True))) == {"cpu", "cuda"}
    assert backends_by_device(collective_backend(use_gpu=True))["cuda"] == "nccl"
    assert backends_by_device("nccl") == {"cuda": "nccl"}  # what the GPU trials used before: no CPU backend
    assert collective_backend(use_gpu=False) == "gloo"


def test_device_qualified_backend_string_reduces_cpu_tensors() -> None:
    # the "device:backend" form that the GPU backend uses is one torch.distributed accepts
    import torch.distributed as dist

    cpu_part = next(f"cpu:{b}" for d, b in backends_by_device(collective_backend(use_gpu=True)).items() if d == "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(cpu_part, init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            t = torch.arange(3, dtype=torch.float64)
            dist.all_reduce(t)
            assert t.tolist() == [0.0, 1.0, 2.0]
        finally:
            dist.destroy_process_group()


def test_param_checksum_lives_on_the_parameters_device() -> None:
    # bug 1: the checksum added CUDA tensors into a CPU float64 tensor, then copied it to the host
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).to("meta")
    assert param_checksum(model).device.type == "meta"
    cpu = nn.Linear(3, 4)
    assert param_checksum(cpu).device.type == "cpu" and param_checksum(cpu).dtype == torch.float64


def test_metric_sums_stay_on_the_device_until_the_mean() -> None:
    sums = MetricSums(["loss", "bpp"], torch.device("meta"))
    sums.add({"loss": torch.ones((), device="meta"), "bpp": torch.ones((), device="meta")})
    assert sums.sums.device.type == "meta" and sums.count == 1
    cpu = MetricSums(["loss", "bpp", "D_s"], torch.device("cpu"))
    cpu.add({"loss": torch.tensor(2.0), "bpp": torch.tensor(1.0)})
    cpu.add({"loss": torch.tensor(4.0), "bpp": torch.tensor(3.0)})
    assert cpu.mean() == {"loss": 3.0, "bpp": 2.0}  # D_s never reported: left out


def test_optimizer_state_is_loaded_after_the_model_is_on_its_device() -> None:
    # bug 4: the Adam states were loaded before model.to(device), so they stayed on the CPU (Adam casts
    # its state to each parameter's device when loaded). The meta device cannot show this (moving a
    # module there replaces its parameters), so the order of the two calls is what is checked.
    from pipeline.training.loop import Worker, place

    events: list[str] = []

    class Tracked(nn.Linear):
        def to(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            events.append("model.to")
            return super().to(*args, **kwargs)

    class TrackedAdam(torch.optim.Adam):
        def load_state_dict(self, state_dict):  # noqa: ANN001, ANN202
            events.append("optimizer.load_state_dict")
            return super().load_state_dict(state_dict)

    model = nn.Linear(3, 2)
    net_opt, aux_opt = torch.optim.Adam(model.parameters()), torch.optim.Adam([nn.Parameter(torch.zeros(1))])
    model(torch.ones(1, 3)).sum().backward()
    net_opt.step()
    state = {
        "net_opt": net_opt.state_dict(),
        "aux_opt": aux_opt.state_dict(),
        "sched": torch.optim.lr_scheduler.ReduceLROnPlateau(net_opt).state_dict(),
    }
    fresh = Tracked(3, 2)
    opt = TrackedAdam(fresh.parameters())
    w = Worker(
        trial=None,
        rank=0,
        world=1,
        device=torch.device("cpu"),
        model=fresh,
        forward=fresh,  # type: ignore[arg-type]
        criterion=nn.Identity(),
        net_opt=opt,
        aux_opt=TrackedAdam([nn.Parameter(torch.zeros(1))]),
        sched=torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
    )
    place(w, state)
    assert events[0] == "model.to" and events.count("optimizer.load_state_dict") == 2
    assert all(v.device == p.device for p, s in w.net_opt.state.items() for v in s.values() if v.dim() > 0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"use_gpu": True, "workers_per_trial": 2, "gpus_per_worker": 0.5}, "two NCCL ranks on one GPU"),
        ({"use_gpu": True, "gpus_per_worker": 0.0}, "--gpus-per-worker must be > 0"),
        ({"precision": "amp"}, "--precision amp needs GPUs"),
    ],
)
def test_gpu_layouts_nccl_cannot_run_are_refused_in_one_line(flags: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        resolve("tiny", {}, {"shards": "s", **flags})
    assert "\n" not in str(info.value)
    resolve("tiny", {}, {"shards": "s", "use_gpu": True, "workers_per_trial": 2, "gpus_per_worker": 1.0})
    resolve("tiny", {}, {"shards": "s", "use_gpu": True, "workers_per_trial": 1, "gpus_per_worker": 0.5})


def test_rng_state_without_cuda_has_no_cuda_entry_and_restores(tmp_path: Path) -> None:
    from pipeline.training.loop import rng_state, set_rng_state

    state = rng_state()
    assert "cuda" not in state or torch.cuda.is_available()
    torch.save(state, tmp_path / "s.pt")
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True))


@pytest.mark.slow
def test_gpu_requests_on_a_cluster_without_gpus_are_refused(tiny_shards: Path, tmp_path: Path, ray_local: None) -> None:
    import ray

    from pipeline.data.prepare import run_prepare
    from pipeline.data.sources import vimeo90k

    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this Ray cluster has GPUs")
    from pipeline.data.sample_data import generate_sample

    sample = generate_sample(tmp_path / "data", train_sequences=1, val_sequences=1)
    with pytest.raises(UserError, match="asks for GPUs but the Ray cluster has 0"):
        run_prepare(
            vimeo90k(sample.vimeo_root, frames=1),
            tmp_path / "out",
            frames=1,
            shard_size=2,
            use_ray=True,
            num_gpus_per_worker=0.5,
            progress=False,
        )
    from pipeline.training.sweep import check_placement

    with pytest.raises(UserError, match="GPUs but the Ray cluster has 0"):
        check_placement(1, 1.0, 0.5, True)
