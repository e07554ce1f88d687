"""``bench train``: training samples/s of the proposed codec against CompressAI's ScaleHyperprior,
the loader's headroom, and CPU DDP layouts, all through :func:`pipeline.training.step.train_step`,
the step that training runs."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.data.shards import FramesToFeaturize
from pipeline.infra.errors import UserError
from pipeline.training.ddp import wrap_ddp
from pipeline.training.loop import batch_on_device
from pipeline.training.step import aux_parameters, train_step


def _train_steps_per_s(model, loss_fn, batches, steps: int, warmup: int = 1) -> float:  # noqa: ANN001
    """Samples/s of full training steps (forward, loss, backward, net and aux updates)."""
    import torch

    from dvcm.train_utils import configure_optimizers

    net_opt, aux_opt = configure_optimizers(model, 1e-4, 1e-3)
    model.train()
    n = 0
    for i in range(warmup + steps):
        if i == warmup:
            t0, n = time.perf_counter(), 0
        args = batches[i % len(batches)]
        if len(args) > 1 and not isinstance(args[1], torch.Tensor):  # image-only shards: s computed in the step
            args = batch_on_device(args[0], args[1], args[0].device, model.front)
        train_step(model, model, loss_fn, net_opt, aux_opt, args)
        n += args[0].shape[0]
    if args[0].is_cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def _loader_samples_per_s(shards: str, crop: int, batch_size: int, batches: int) -> float:
    """Samples/s of the shard reader in this process (after one batch of warm-up)."""
    from pipeline.data import shards as shard_reader

    loader = shard_reader.make_loader(
        shards,
        split="train",
        crop=crop,
        batch_size=batch_size,
        num_workers=0,
        shuffle_buffer=16,
        seed=0,
        epoch=1,
        repeat=True,
    )
    it, n = iter(loader), 0
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        n += next(it)[0].shape[0]
    return n / (time.perf_counter() - t0)


def _ddp_bench_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: DDP steps of the proposed codec on synthetic batches; reports samples/s."""
    import ray.train
    import ray.train.torch
    import torch

    from dvcm.loss import ScalableRDLoss
    from dvcm.registry import build
    from dvcm.train_utils import configure_optimizers

    torch.set_num_threads(int(config["threads"]))
    ctx = ray.train.get_context()
    world = ctx.get_world_size()
    torch.manual_seed(0)
    model = build("proposed", front=torch.nn.Identity(), N=config["N"], M1=64, M2=192, H=2)
    aux_names, aux_params = aux_parameters(model)
    ddp = wrap_ddp(model, aux_names, bool(config["find_unused"])) if world > 1 else model
    net_opt, aux_opt = configure_optimizers(model, 1e-4, 1e-3)
    crit = ScalableRDLoss(0.0067, 1.0)
    b, c = int(config["batch"]), int(config["crop"])
    x, s = torch.rand(b, 3, c, c), torch.randn(b, 256, c // 8, c // 8)
    n, t0 = 0, 0.0
    for i in range(1 + int(config["steps"])):
        if i == 1:
            t0, n = time.perf_counter(), 0
        train_step(model, ddp, crit, net_opt, aux_opt, (x, s), aux_params=aux_params, world=world)
        n += b
    rate = n * world / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:  # Ray Train V2 hands back metrics with a checkpoint
        (Path(tmp) / "bench.json").write_text(f'{{"samples_per_s": {rate}}}')
        ray.train.report(
            {"samples_per_s": rate},
            checkpoint=ray.train.Checkpoint.from_directory(tmp) if ctx.get_world_rank() == 0 else None,
        )


def run_train_bench(
    batch_size: int = 4,
    crop: int = 256,
    steps: int = 3,
    shards: str | None = None,
    ddp_n: int = 64,
    ddp_crop: int = 128,
    address: str | None = None,
    n: int = 192,
    device: str = "cpu",
) -> None:
    """Training samples/s: proposed (64,192,2) vs CompressAI ScaleHyperprior(N,320) on ``device``; loader headroom;
    CPU DDP layouts."""
    import torch
    from compressai.losses import RateDistortionLoss
    from compressai.models import ScaleHyperprior
    from rich.console import Console
    from rich.table import Table

    from dvcm.loss import ScalableRDLoss
    from dvcm.registry import build
    from dvcm.yolo import build_yolov3

    console = Console()
    torch.manual_seed(0)
    yolo = build_yolov3(None, seed=0)
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda needs a GPU and this machine has none; use --device cpu")
    x = torch.rand(batch_size, 3, crop, crop, device=device)
    yolo.to(device)
    with torch.no_grad():
        s = yolo.front(x)  # precomputed, as the shards hold it
    proposed = build("proposed", front=yolo.front, N=n, M1=64, M2=192, H=2).to(device)
    hyper = ScaleHyperprior(N=n, M=320).to(device)
    rows = []
    with console.status(f"timing proposed (64,192,2) and ScaleHyperprior({n},320) training steps on {device}"):
        sp = _train_steps_per_s(proposed, ScalableRDLoss(0.0067, 1.0).to(device), [(x, s)], steps)
        # image-only shards (prepare --features none): V_front of each whole frame, Vimeo-shaped around the crop
        # (448x256 at 256 crops), cut to the crop
        frames = torch.randint(0, 256, (batch_size, crop, crop * 7 // 4, 3), dtype=torch.uint8)
        cells = crop // 8
        fly = FramesToFeaturize(list(frames), [(0, 0, cells, cells)] * batch_size)
        sp_fly = _train_steps_per_s(proposed, ScalableRDLoss(0.0067, 1.0).to(device), [(x, fly)], steps)
        hl = RateDistortionLoss(lmbda=0.0067)
        sh = _train_steps_per_s(hyper, lambda out, xx: hl(out, xx), [(x,)], steps)
    rows.append((f"train step on {device}: proposed (64,192,2), N={n}", sp, ""))
    rows.append(
        (
            f"train step on {device}: the same, s computed in the step from {crop * 7 // 4}x{crop} frames "
            "(--features none)",
            sp_fly,
            f"stored s / computed s = {sp / sp_fly:.2f}",
        )
    )
    rows.append(
        (
            f"train step on {device}: CompressAI ScaleHyperprior (bmshj2018-hyperprior), N={n} M=320",
            sh,
            f"proposed/hyperprior = {sp / sh:.2f}",
        )
    )
    x, s = x.cpu(), s.cpu()

    if shards is not None:
        ls = _loader_samples_per_s(shards, crop, batch_size, max(steps * 3, 5))
        rows.append(("loader (1 process, no workers)", ls, f"loader/step consumption = {ls / sp:.1f}x"))

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.infra.ray_runtime import init_ray, train_logging_config

    init_ray(address)
    bench_dir = tempfile.mkdtemp(prefix="dvcm-bench-train-")
    ddp = {}
    for workers, threads, unused in ((1, 2, False), (2, 1, False), (2, 1, True)):
        with console.status(f"DDP on CPU: {workers} worker(s) x {threads} thread(s), find_unused_parameters={unused}"):
            trainer = TorchTrainer(
                _ddp_bench_loop,
                train_loop_config={
                    "threads": threads,
                    "N": ddp_n,
                    "batch": batch_size,
                    "crop": ddp_crop,
                    "steps": steps,
                    "find_unused": unused,
                },
                torch_config=TorchConfig(backend="gloo"),
                scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": threads}),
                run_config=RunConfig(
                    name=f"bench-ddp-{workers}x{threads}-{int(unused)}-{int(time.time())}",
                    storage_path=bench_dir,
                    logging_config=train_logging_config(),
                ),
            )
            with trainer.fit().checkpoint.as_directory() as d:
                ddp[(workers, threads, unused)] = json.loads((Path(d) / "bench.json").read_text())["samples_per_s"]
    what = f"N={ddp_n}, {ddp_crop} crops, batch {batch_size}/worker"
    rows.append((f"DDP CPU 1 worker x 2 threads ({what})", ddp[(1, 2, False)], ""))
    rows.append(
        (
            f"DDP CPU 2 workers x 1 thread ({what})",
            ddp[(2, 1, False)],
            f"2x1 / 1x2 = {ddp[(2, 1, False)] / ddp[(1, 2, False)]:.2f}",
        )
    )
    rows.append(
        (
            f"DDP CPU 2 workers x 1 thread, find_unused_parameters=True ({what})",
            ddp[(2, 1, True)],
            f"without / with the unused-parameter search = {ddp[(2, 1, False)] / ddp[(2, 1, True)]:.2f}",
        )
    )

    table = Table(title=f"bench train: samples/s, batch {batch_size}, {crop}x{crop} crops, {steps} timed steps")
    table.add_column("measurement")
    table.add_column("samples/s", justify="right")
    table.add_column("ratio")
    for name, v, ratio in rows:
        table.add_row(name, f"{v:.2f}", ratio)
    console.print(table)
