"""One training trial: the Ray Train ``TorchTrainer`` loop, the ``train`` command, ``bench train``.

A trial is one (model, configuration, λ). ``trial_trainable`` (a Ray Tune function trainable)
launches a ``TorchTrainer`` whose workers run :func:`train_loop_per_worker`:

- DDP through ``ray.train.torch.prepare_model`` (gloo on CPU, NCCL on GPU) with
  ``find_unused_parameters`` (the EntropyBottleneck quantiles take no part in the forward);
- Adam (lr 1e-4) on the net, a separate Adam on the aux loss of the *unwrapped* module, whose
  quantile gradients are averaged over ranks by hand (DDP does not see that backward);
- gradient clipping, ReduceLROnPlateau on the rank-averaged validation loss, stop after
  ``max_lr_drops`` reductions or ``epochs``;
- a Ray Train checkpoint every epoch (model, both optimizers, scheduler, epoch, RNG states;
  ``torch.save``, read back with ``weights_only=True``); ``FailureConfig`` restarts from it;
- the final checkpoint through ``dvcm.checkpoint.save_checkpoint`` (entropy tables updated).

``--precision amp`` is refused without GPUs (a clear error before training), rather than a
silent fallback: a sweep asked for AMP should not quietly produce fp32 numbers.
"""

from __future__ import annotations

import json
import os
import random
import signal
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.training import sweep as sweep_mod

FINAL_NAME = "final.pt"
STATE_NAME = "train_state.pt"
METRIC_KEYS = ("loss", "bpp", "bpp_y1", "bpp_z1", "bpp_y2", "bpp_z2", "bpp_z", "bpp_base", "bpp_enh",
               "D_x", "D_s", "psnr")


# --------------------------------------------------------------------------------------------
# Helpers used inside workers
# --------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """RNG states as tensors/lists only, so that ``torch.load(weights_only=True)`` reads them."""
    import numpy as np
    import torch

    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [str(np_state[0]), torch.from_numpy(np_state[1].astype("int64")), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [int(py_state[0]), list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype("uint32"), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def param_checksum(model) -> float:  # noqa: ANN001 - nn.Module
    """A float64 checksum of every parameter (position weighted): equal on ranks iff weights agree."""
    import torch

    total = torch.zeros((), dtype=torch.float64)
    for i, (_, p) in enumerate(sorted(model.named_parameters())):
        total += (i + 1) * p.detach().double().sum() + p.detach().double().abs().sum()
    return float(total)


def loss_shares(terms: dict[str, float], lmbda: float, gamma: float) -> dict[str, float]:
    """Share of rate, λ·D_x and γ·D_s in the total loss (what steers the base layer)."""
    parts = {"rate": terms["bpp"], "dx": lmbda * terms["D_x"], "ds": gamma * terms["D_s"]}
    total = sum(parts.values()) or 1.0
    return {f"share_{k}": v / total for k, v in parts.items()}


def wrap_ddp(model, aux_names: list[str]):  # noqa: ANN001, ANN201 - nn.Module in, DDP module out
    """DDP via ``ray.train.torch.prepare_model``, with the EntropyBottleneck quantiles left out.

    The quantiles are trained by the aux loss in a second backward that DDP's reducer must not
    see (it would all-reduce gradients it never expected); the training loop averages their
    gradients across ranks itself. ``find_unused_parameters`` stays on for models whose
    forward skips a trainable submodule.
    """
    import ray.train.torch
    from torch.nn.parallel import DistributedDataParallel

    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, aux_names)
    return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})


def redundancy_hook(model, images) -> dict[str, float]:  # noqa: ANN001
    """Per-epoch redundancy Rdn(ŷ1|ŷ2), Rdn(ŷ2|ŷ1) from ``dvcm.redundancy`` (small K, few fibers)."""
    from dvcm.redundancy import model_redundancy

    r = model_redundancy(model, images, K=4, num_fibers=512, steps=100)
    return {"rdn_y1_given_y2": float(r["rdn_y1_given_y2"]), "rdn_y2_given_y1": float(r["rdn_y2_given_y1"])}


# --------------------------------------------------------------------------------------------
# The per-worker loop
# --------------------------------------------------------------------------------------------
def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train one trial on this worker (rank r of a DDP group); reports once per epoch."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from dvcm.checkpoint import save_checkpoint
    from dvcm.loss import ScalableRDLoss
    from dvcm.models import build
    from dvcm.train_utils import configure_optimizers
    from dvcm.yolo import build_yolov3
    from pipeline.data import shards as shard_reader

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    device = ray.train.torch.get_device()
    use_amp = config["precision"] == "amp" and device.type == "cuda"

    info = shard_reader.read_dataset_info(config["shards"])
    s_mean, s_std = shard_reader.feature_stats(info)
    yolo = build_yolov3(config.get("yolo_weights"), seed=int(config["yolo_seed"]))
    torch.manual_seed(int(config["seed"]))  # same initial weights on every rank
    model = build(config["model"], front=yolo.front, yolo_provenance=dict(yolo.provenance),
                  N=int(config["N"]), M1=int(config["M1"]), M2=int(config["M2"]), H=int(config["H"]))
    model.set_feature_stats(s_mean, s_std)  # g_a1/g_s1 work on s normalised by the training set's statistics
    criterion = ScalableRDLoss(float(config["lmbda"]), float(config["gamma"]), s_mean=s_mean, s_std=s_std).to(device)
    net_opt, aux_opt = configure_optimizers(model, float(config["lr"]), float(config["aux_lr"]))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        net_opt, "min", factor=float(config["lr_factor"]), patience=int(config["lr_patience"]))

    start_epoch, lr_drops = 1, 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / STATE_NAME, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        net_opt.load_state_dict(state["net_opt"])
        aux_opt.load_state_dict(state["aux_opt"])
        sched.load_state_dict(state["sched"])
        set_rng_state(state["rng"])
        start_epoch, lr_drops = int(state["epoch"]) + 1, int(state["lr_drops"])
        if state.get("final_metrics"):  # finished before the driver could record it: report it again
            with ckpt.as_directory() as d:
                ray.train.report(dict(state["final_metrics"]),
                                 checkpoint=ray.train.Checkpoint.from_directory(d) if rank == 0 else None)
            return
    model.to(device)
    aux_names = [n for n, p in model.named_parameters() if n.endswith(".quantiles") and p.requires_grad]
    aux_params = [p for n, p in model.named_parameters() if n in set(aux_names)]
    ddp = wrap_ddp(model, aux_names) if world > 1 else model

    def loader(split: str, epoch: int, repeat: bool):
        return shard_reader.make_loader(
            config["shards"], split=split, crop=int(config["crop"]), batch_size=int(config["batch_size"]),
            num_workers=int(config["loader_workers"]), shuffle_buffer=int(config["shuffle_buffer"]),
            seed=int(config["seed"]), epoch=epoch, rank=rank, world_size=world,
            yolo_provenance=config["yolo_provenance"], repeat=repeat)

    keys = sorted({*METRIC_KEYS, "aux_loss"})

    def reduce_mean(sums: dict[str, float], count: int) -> dict[str, float]:
        """Mean over all ranks' batches; the same tensor shape on every rank, even one without batches."""
        t = torch.tensor([sums.get(k, 0.0) for k in keys] + [float(k in sums) for k in keys] + [float(count)],
                         dtype=torch.float64)
        if world > 1:
            dist.all_reduce(t)
        n, present = t[-1].item(), t[len(keys):-1]
        if n == 0:
            return {}
        return {k: t[i].item() / n for i, k in enumerate(keys) if present[i] > 0}

    epoch = start_epoch
    while epoch <= int(config["epochs"]):
        if config.get("test_kill_at_epoch") == epoch and rank == 0 and not os.path.exists(config["test_kill_marker"]):
            Path(config["test_kill_marker"]).write_text(f"killed at epoch {epoch}\n")
            os.kill(os.getpid(), signal.SIGKILL)  # test-only fault injection: the process dies for real

        model.train()
        sums: dict[str, float] = {}
        count, t0, first_loss = 0, time.perf_counter(), float("nan")
        for step, (x, s) in enumerate(loader("train", epoch, repeat=True)):
            if step >= int(config["steps_per_epoch"]):
                break
            x, s = x.to(device), s.to(device)
            net_opt.zero_grad(set_to_none=True)
            aux_opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = ddp(x, s)
            out = _to_float(out)
            terms = criterion(out, x)
            if config.get("test_nan_loss"):  # test-only (sweep.NAN_ENV): a NaN loss, as a diverged run gives
                terms["loss"] = terms["loss"] * float("nan")
            if not torch.isfinite(terms["loss"]):
                raise FloatingPointError(f"non-finite loss {terms['loss'].item()} at epoch {epoch} step {step}")
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(config["clip_max_norm"]))
            net_opt.step()
            aux_loss = model.aux_loss()
            aux_loss.backward()
            if world > 1:  # DDP did not see this backward: average the quantile gradients by hand
                for p in aux_params:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= world
            aux_opt.step()
            if step == 0:
                first_loss = terms["loss"].item()
            for k in METRIC_KEYS:
                if k in terms:
                    sums[k] = sums.get(k, 0.0) + terms[k].item()
            sums["aux_loss"] = sums.get("aux_loss", 0.0) + aux_loss.item()
            count += 1
        train_time = time.perf_counter() - t0
        train = reduce_mean(sums, count)

        model.eval()
        vsums: dict[str, float] = {}
        vcount, val_images = 0, []
        with torch.no_grad():
            for step, (x, s) in enumerate(loader("val", 0, repeat=False)):  # the same crops every epoch
                if step >= int(config["val_steps"]):
                    break
                x, s = x.to(device), s.to(device)
                terms = criterion(_to_float(model(x, s)), x)
                for k in METRIC_KEYS:
                    if k in terms:
                        vsums[k] = vsums.get(k, 0.0) + terms[k].item()
                vcount += 1
                if len(val_images) < 4:
                    val_images.extend(list(x[: 4 - len(val_images)].cpu()))
        val = reduce_mean(vsums, vcount)
        if not val:
            raise RuntimeError("the validation split yielded no batch; prepare more validation frames")

        old_lr = net_opt.param_groups[0]["lr"]
        sched.step(val["loss"])
        new_lr = net_opt.param_groups[0]["lr"]
        lr_drops += int(new_lr < old_lr)
        done = epoch >= int(config["epochs"]) or lr_drops >= int(config["max_lr_drops"])

        metrics: dict[str, Any] = {"epoch": epoch, "lr": new_lr, "lr_drops": lr_drops, "trial_done": int(done)}
        metrics.update({f"train/{k}": v for k, v in train.items()})
        metrics.update({f"val/{k}": v for k, v in val.items()})
        metrics.update({f"train/{k}": v for k, v in loss_shares(train, config["lmbda"], config["gamma"]).items()})
        metrics.update({f"val/{k}": v for k, v in loss_shares(val, config["lmbda"], config["gamma"]).items()})
        metrics["train/first_step_loss"] = first_loss
        metrics["train/samples_per_s"] = count * int(config["batch_size"]) * world / max(train_time, 1e-9)
        checksums = torch.zeros(world, dtype=torch.float64)
        checksums[rank] = param_checksum(model)
        if world > 1:
            dist.all_reduce(checksums)
        metrics.update({f"ddp/param_checksum_rank{i}": checksums[i].item() for i in range(world)})
        if rank == 0 and config.get("redundancy", True) and val_images:
            metrics.update({f"val/{k}": v for k, v in redundancy_hook(model, val_images).items()})

        if done:
            metrics["final_checkpoint"] = FINAL_NAME
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                if done:
                    save_checkpoint(Path(tmp) / FINAL_NAME, model, extra={
                        "trial": config["trial_name"], "lmbda": float(config["lmbda"]),
                        "gamma": float(config["gamma"]), "epochs": epoch, "val_loss": val["loss"]})
                torch.save({"model": model.state_dict(), "net_opt": net_opt.state_dict(),
                            "aux_opt": aux_opt.state_dict(), "sched": sched.state_dict(), "epoch": epoch,
                            "lr_drops": lr_drops, "rng": rng_state(),
                            "final_metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
                            if done else {}}, Path(tmp) / STATE_NAME)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if done:
            break
        epoch += 1


def _to_float(out: dict[str, Any]) -> dict[str, Any]:
    """Cast autocast outputs back to fp32 before the loss (likelihoods in bf16 lose bits)."""
    import torch

    def cast(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.float()
        if isinstance(v, dict):
            return {k: cast(x) for k, x in v.items()}
        return v

    return cast(out)


# --------------------------------------------------------------------------------------------
# The Tune trial: one TorchTrainer
# --------------------------------------------------------------------------------------------
def trial_trainable(tune_config: dict[str, Any]) -> None:
    """Ray Tune function trainable: run one trial's ``TorchTrainer`` and forward its reports to Tune."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.infra import storage

    config = tune_config["trial"]
    storage_path, storage_fs = storage.ray_storage(config["storage_path"])
    use_gpu = bool(config["use_gpu"])
    resources = {"CPU": float(config["cpus_per_worker"])}
    if use_gpu:
        resources["GPU"] = float(config["gpus_per_worker"])
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=int(config["workers_per_trial"]), use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=config["trial_name"],
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=int(config["max_failures"])),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
            # Ray Train's INFO lines (every report with all its metrics, every checkpoint path) would
            # bury the sweep's own table; they stay in Ray's log files (ray-train-sys-*.log).
            logging_config=LoggingConfig(log_level=os.environ.get("DVCM_RAY_TRAIN_LOG_LEVEL", "WARNING")),
        ),
    )
    trainer.fit()


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------
S = sweep_mod


def train_command(
    shards: S.ShardsOpt = None,
    model: Annotated[str, typer.Option("--model", help="proposed or choi2022.")] = "proposed",
    config: Annotated[str | None, typer.Option("--config", help="Configuration M1,M2,H (default: the preset's).")] = None,
    lmbda: Annotated[float, typer.Option("--lmbda", "--lambda", help="Rate-distortion trade-off λ (> 0).")] = 0.0067,
    name: Annotated[str | None, typer.Option("--name", help="Run name (default: the trial name).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")] = False,
    preset: S.PresetOpt = None, gamma: S.GammaOpt = None, n: S.NOpt = None, crop: S.CropOpt = None,
    batch_size: S.BatchOpt = None, epochs: S.EpochsOpt = None, steps_per_epoch: S.StepsOpt = None,
    val_steps: S.ValStepsOpt = None, max_lr_drops: S.LrDropsOpt = None, lr: S.LrOpt = None,
    precision: S.PrecisionOpt = None, seed: S.SeedOpt = None, use_gpu: S.UseGpuOpt = False,
    workers_per_trial: S.WorkersOpt = None, gpus_per_worker: S.GpusOpt = None, cpus_per_worker: S.CpusOpt = None,
    max_failures: S.FailuresOpt = None, loader_workers: S.LoaderWorkersOpt = None, yolo_weights: S.YoloOpt = None,
    yolo_seed: S.YoloSeedOpt = None, storage_root: S.StorageOpt = None, tracking_uri: S.TrackingOpt = None, address: S.AddressOpt = None,
) -> None:
    """Train one (model, configuration, λ) trial with Ray Train DDP; logs to MLflow."""
    flags = {"shards": shards, "gamma": gamma, "N": n, "crop": crop, "batch_size": batch_size, "epochs": epochs,
             "steps_per_epoch": steps_per_epoch, "val_steps": val_steps, "max_lr_drops": max_lr_drops, "lr": lr,
             "precision": precision, "seed": seed, "use_gpu": use_gpu or None, "workers_per_trial": workers_per_trial,
             "gpus_per_worker": gpus_per_worker, "cpus_per_worker": cpus_per_worker, "max_failures": max_failures,
             "loader_workers": loader_workers, "yolo_weights": str(yolo_weights) if yolo_weights else None,
             "yolo_seed": yolo_seed}
    settings = S.resolve_settings(preset, {}, flags)
    cfg = config or ",".join(map(str, settings.pop("configs")[0]))
    settings.pop("configs", None)
    grid = S.build_grid([model], [cfg], S.parse_lambdas([lmbda]))
    state = S.run_sweep(name or grid[0]["trial_name"], grid, settings, storage_root or "dvcm_runs", tracking_uri,
                        resume, address)
    entry = state["trials"][grid[0]["trial_name"]]
    if entry.get("status") != "finished":
        raise S.UserError(f"trial {grid[0]['trial_name']} failed: {entry.get('reason', 'see MLflow')}")


# --------------------------------------------------------------------------------------------
# bench train
# --------------------------------------------------------------------------------------------
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
        net_opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        out = model(*args)
        loss_fn(out, args[0])["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        net_opt.step()
        model.aux_loss().backward()
        aux_opt.step()
        n += args[0].shape[0]
    return n / (time.perf_counter() - t0)


def _ddp_bench_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: DDP steps of the proposed codec on synthetic batches; reports samples/s."""
    import ray.train
    import ray.train.torch
    import torch

    from dvcm.loss import ScalableRDLoss
    from dvcm.models import build

    torch.set_num_threads(int(config["threads"]))
    ctx = ray.train.get_context()
    world = ctx.get_world_size()
    torch.manual_seed(0)
    model = build("proposed", front=torch.nn.Identity(), N=config["N"], M1=64, M2=192, H=2)
    aux_names = [n for n, p in model.named_parameters() if n.endswith(".quantiles")]
    ddp = wrap_ddp(model, aux_names) if world > 1 else model
    from dvcm.train_utils import configure_optimizers

    net_opt, aux_opt = configure_optimizers(model, 1e-4, 1e-3)
    crit = ScalableRDLoss(0.0067, 1.0)
    b, c = int(config["batch"]), int(config["crop"])
    x, s = torch.rand(b, 3, c, c), torch.randn(b, 256, c // 8, c // 8)
    n, t0 = 0, 0.0
    for i in range(1 + int(config["steps"])):
        if i == 1:
            t0, n = time.perf_counter(), 0
        net_opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        crit(ddp(x, s), x)["loss"].backward()
        net_opt.step()
        model.aux_loss().backward()
        aux_opt.step()
        n += b
    rate = n * world / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:  # Ray Train V2 hands back metrics with a checkpoint
        (Path(tmp) / "bench.json").write_text(f'{{"samples_per_s": {rate}}}')
        ray.train.report({"samples_per_s": rate},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp) if ctx.get_world_rank() == 0 else None)


def bench_train_command(
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch of both codecs.")] = 4,
    crop: Annotated[int, typer.Option("--crop", help="Crop size.")] = 256,
    steps: Annotated[int, typer.Option("--steps", help="Timed steps per measurement (after 1 warm-up).")] = 3,
    shards: Annotated[str | None, typer.Option("--shards", help="Prepared shards (folder or URL) for the loader measurement.")] = None,
    ddp_n: Annotated[int, typer.Option("--ddp-N", help="N of the codec in the DDP measurement.")] = 64,
    ddp_crop: Annotated[int, typer.Option("--ddp-crop", help="Crop of the DDP measurement.")] = 128,
    address: S.AddressOpt = None,
) -> None:
    """Training samples/s: proposed (64,192,2) vs CompressAI ScaleHyperprior(192,320); loader headroom; CPU DDP layouts."""
    import torch
    from compressai.losses import RateDistortionLoss
    from compressai.models import ScaleHyperprior
    from rich.console import Console
    from rich.table import Table

    from dvcm.loss import ScalableRDLoss
    from dvcm.models import build
    from dvcm.yolo import build_yolov3

    console = Console()
    torch.manual_seed(0)
    yolo = build_yolov3(None, seed=0)
    x = torch.rand(batch_size, 3, crop, crop)
    with torch.no_grad():
        s = yolo.front(x)  # precomputed, as the shards hold it
    proposed = build("proposed", front=yolo.front, N=192, M1=64, M2=192, H=2)
    hyper = ScaleHyperprior(N=192, M=320)
    rows = []
    with console.status("timing proposed (64,192,2) and ScaleHyperprior(192,320) training steps"):
        sp = _train_steps_per_s(proposed, ScalableRDLoss(0.0067, 1.0), [(x, s)], steps)
        hl = RateDistortionLoss(lmbda=0.0067)
        sh = _train_steps_per_s(hyper, lambda out, xx: hl(out, xx), [(x,)], steps)
    rows.append(("train step: proposed (64,192,2), N=192", sp, ""))
    rows.append(("train step: CompressAI ScaleHyperprior (bmshj2018-hyperprior), N=192 M=320", sh, f"proposed/hyperprior = {sp / sh:.2f}"))

    if shards is not None:
        from pipeline.data import shards as shard_reader

        loader = shard_reader.make_loader(shards, split="train", crop=crop, batch_size=batch_size, num_workers=0,
                                          shuffle_buffer=16, seed=0, epoch=1, repeat=True)
        it, n = iter(loader), 0
        next(it)
        t0 = time.perf_counter()
        for _ in range(max(steps * 3, 5)):
            n += next(it)[0].shape[0]
        ls = n / (time.perf_counter() - t0)
        rows.append(("loader (1 process, no workers)", ls, f"loader/step consumption = {ls / sp:.1f}x"))

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.infra.ray_runtime import init_ray

    init_ray(address)
    bench_dir = tempfile.mkdtemp(prefix="dvcm-bench-train-")
    ddp = {}
    for workers, threads in ((1, 2), (2, 1)):
        with console.status(f"DDP on CPU: {workers} worker(s) x {threads} thread(s)"):
            trainer = TorchTrainer(
                _ddp_bench_loop,
                train_loop_config={"threads": threads, "N": ddp_n, "batch": batch_size, "crop": ddp_crop, "steps": steps},
                torch_config=TorchConfig(backend="gloo"),
                scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": threads}),
                run_config=RunConfig(name=f"bench-ddp-{workers}x{threads}-{int(time.time())}", storage_path=bench_dir),
            )
            with trainer.fit().checkpoint.as_directory() as d:
                ddp[(workers, threads)] = json.loads((Path(d) / "bench.json").read_text())["samples_per_s"]
    rows.append((f"DDP CPU 1 worker x 2 threads (N={ddp_n}, {ddp_crop} crops, batch {batch_size}/worker)", ddp[(1, 2)], ""))
    rows.append((f"DDP CPU 2 workers x 1 thread (N={ddp_n}, {ddp_crop} crops, batch {batch_size}/worker)", ddp[(2, 1)],
                 f"2x1 / 1x2 = {ddp[(2, 1)] / ddp[(1, 2)]:.2f}"))

    table = Table(title=f"bench train: samples/s, batch {batch_size}, {crop}x{crop} crops, {steps} timed steps")
    table.add_column("measurement")
    table.add_column("samples/s", justify="right")
    table.add_column("ratio")
    for name, v, ratio in rows:
        table.add_row(name, f"{v:.2f}", ratio)
    console.print(table)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add ``train`` and ``bench train``."""
    app.command("train")(train_command)
    bench.command("train")(bench_train_command)
