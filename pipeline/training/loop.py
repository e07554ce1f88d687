"""The per-worker training loop of one trial (rank r of a DDP group), in Ray Train's shape:
:func:`setup` builds everything, :func:`restore` continues from ``ray.train.get_checkpoint()``,
then each epoch :func:`train_epoch`, :func:`validate`, the LR schedule, and :func:`save_and_report`
(``ray.train.report`` with a checkpoint) until the validation plateau or the epoch limit.

- Adam on the net, a separate Adam on the aux loss (:mod:`pipeline.training.step`);
- ReduceLROnPlateau on the rank-averaged validation loss; the trial stops after ``max_lr_drops``
  reductions or ``epochs``;
- a checkpoint every epoch (model, both optimizers, scheduler, epoch, every RNG state, CUDA's
  too; ``torch.save``, read back with ``weights_only=True``); Ray Train's ``FailureConfig``
  restarts a dead worker from it;
- the final checkpoint through ``dvcm.checkpoint.save_checkpoint`` (entropy tables updated).

Devices: the model, its optimizers' states and every metric live on the worker's device; the
optimizer states are loaded after the model is there. Under AMP the transforms run in bf16 and
the entropy models in fp32 (``dvcm.latent_codecs``).
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dvcm.loss import feature_weight
from pipeline.training.ddp import rank_checksums, wrap_ddp
from pipeline.training.step import (
    METRIC_KEYS,
    MetricSums,
    aux_parameters,
    to_float,
    train_step,
)
from pipeline.training.trial import TrialConfig

FINAL_NAME = "final.pt"
STATE_NAME = "train_state.pt"


# --------------------------------------------------------------------------------------------
# RNG state in a checkpoint
# --------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """RNG states as tensors/lists only, so that ``torch.load(weights_only=True)`` reads them."""
    import numpy as np

    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            str(np_state[0]),
            torch.from_numpy(np_state[1].astype("int64")),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": [int(py_state[0]), list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state` (the CUDA states when both the checkpoint and this process have them)."""
    import numpy as np

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype("uint32"), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------------------------
# The worker's state
# --------------------------------------------------------------------------------------------
@dataclass
class Worker:
    """Everything one rank trains with."""

    trial: TrialConfig
    rank: int
    world: int
    device: torch.device
    model: nn.Module
    forward: nn.Module  # the DDP wrapper, or the model itself
    criterion: nn.Module
    net_opt: torch.optim.Optimizer
    aux_opt: torch.optim.Optimizer
    sched: Any
    aux_params: list[nn.Parameter] = field(default_factory=list)
    start_epoch: int = 1
    lr_drops: int = 0

    @property
    def use_amp(self) -> bool:
        return self.trial.training.precision == "amp" and self.device.type == "cuda"

    def loader(self, split: str, epoch: int, repeat: bool):  # -> ShardLoader
        from pipeline.data import shards as shard_reader

        t = self.trial.training
        return shard_reader.make_loader(
            t.shards,
            split=split,
            crop=t.crop,
            batch_size=t.batch_size,
            num_workers=t.loader_workers,
            shuffle_buffer=t.shuffle_buffer,
            seed=t.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world,
            yolo_provenance=self.trial.yolo_provenance,
            repeat=repeat,
            pin_memory=self.device.type == "cuda",
        )


def setup(trial: TrialConfig, rank: int, world: int, device: torch.device) -> Worker:
    """Build the codec (same initial weights on every rank), the loss, both optimizers and the schedule."""
    from dvcm.loss import ScalableRDLoss
    from dvcm.registry import build, codec_spec
    from dvcm.train_utils import configure_optimizers
    from dvcm.yolo import build_yolov3
    from pipeline.data import shards as shard_reader

    t = trial.training
    info = shard_reader.read_dataset_info(t.shards)
    s_mean, s_std = shard_reader.feature_stats(info)
    yolo = build_yolov3(t.yolo_weights, seed=t.yolo_seed, cfg=t.yolo_cfg)
    torch.manual_seed(t.seed)  # same initial weights on every rank
    model = build(trial.model, front=yolo.front, yolo_provenance=dict(yolo.provenance), N=t.N, **trial.config)
    model.set_feature_stats(s_mean, s_std)  # g_a1/g_s1 work on s normalised by the training set's statistics
    # a codec without a feature term (a single-layer one) trains on L = R + λ·D_x; its D_s is reported only
    weight_s = feature_weight(trial.lmbda, t.gamma, t.gamma_mode) if codec_spec(trial.model).feature_loss else 0.0
    criterion = ScalableRDLoss(trial.lmbda, weight_s, s_mean=s_mean, s_std=s_std)
    net_opt, aux_opt = configure_optimizers(model, t.lr, t.aux_lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(net_opt, "min", factor=t.lr_factor, patience=t.lr_patience)
    return Worker(trial, rank, world, device, model, model, criterion, net_opt, aux_opt, sched)


def place(w: Worker, state: dict[str, Any] | None) -> None:
    """Move the model and the loss to the device, then load the optimizer states (they follow the
    parameters' device only when loaded after the move), then wrap in DDP."""
    w.model.to(w.device)
    w.criterion.to(w.device)
    if state is not None:
        w.net_opt.load_state_dict(state["net_opt"])
        w.aux_opt.load_state_dict(state["aux_opt"])
        w.sched.load_state_dict(state["sched"])
    names, w.aux_params = aux_parameters(w.model)
    w.forward = wrap_ddp(w.model, names) if w.world > 1 else w.model


def read_state(checkpoint: Any) -> dict[str, Any] | None:
    """The training state of a Ray Train checkpoint (``None`` for a fresh start)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / STATE_NAME, map_location="cpu", weights_only=True)


def warm_start(w: Worker, path: str) -> None:
    """A fresh trial starts from the weights of another trial's final checkpoint (a neighbouring λ of the same
    model, configuration and front), with fresh optimizers and schedule."""
    from dvcm.checkpoint import load_checkpoint
    from dvcm.errors import CheckpointError
    from dvcm.zoo import ZOO_PREFIX, zoo_checkpoint
    from pipeline.infra import storage

    # zoo:NAME: the bundled checkpoint of this node's install (a driver's site-packages path may not exist here)
    local = zoo_checkpoint(path) if path.startswith(ZOO_PREFIX) else storage.local_path(path)
    if local is None or not local.is_file():
        raise CheckpointError(f"init checkpoint {path} is not a file on this node")
    start, meta = load_checkpoint(local, w.trial.yolo_provenance)
    if (meta.get("model"), start.config) != (w.trial.model, w.model.config):
        raise CheckpointError(
            f"init checkpoint {path} holds {meta.get('model')} {start.config}, not the trial's "
            f"{w.trial.model} {w.model.config}"
        )
    w.model.load_state_dict(start.state_dict())


def restore(w: Worker, state: dict[str, Any]) -> None:
    """Weights, RNG states, epoch and LR-drop count from a checkpoint's state (before :func:`place`)."""
    w.model.load_state_dict(state["model"])
    set_rng_state(state["rng"])
    w.start_epoch, w.lr_drops = int(state["epoch"]) + 1, int(state["lr_drops"])


# --------------------------------------------------------------------------------------------
# Epochs
# --------------------------------------------------------------------------------------------
def train_epoch(w: Worker, epoch: int) -> tuple[dict[str, float], dict[str, float]]:
    """``steps_per_epoch`` steps; returns the rank-averaged terms and {first_step_loss, samples_per_s}."""
    t = w.trial.training
    w.model.train()
    sums = MetricSums([*METRIC_KEYS, "aux_loss"], w.device)
    first_loss: torch.Tensor | None = None
    poison = w.trial.faults.poison if w.trial.faults else None
    t0 = time.perf_counter()
    for step, (x, s) in enumerate(w.loader("train", epoch, repeat=True)):
        if step >= t.steps_per_epoch:
            break
        inputs = batch_on_device(x, s, w.device, w.model.front)
        try:
            terms = train_step(
                w.model,
                w.forward,
                w.criterion,
                w.net_opt,
                w.aux_opt,
                inputs,
                clip_max_norm=t.clip_max_norm,
                aux_params=w.aux_params,
                world=w.world,
                use_amp=w.use_amp,
                poison=poison,
            )
        except FloatingPointError as exc:
            raise FloatingPointError(f"{exc} at epoch {epoch} step {step}") from None
        if first_loss is None:
            first_loss = terms["loss"]
        sums.add(terms)
    seconds = time.perf_counter() - t0
    extra = {
        "first_step_loss": float(first_loss) if first_loss is not None else float("nan"),
        "samples_per_s": sums.count * t.batch_size * w.world / max(seconds, 1e-9),
    }
    return sums.mean(w.world), extra


def validate(w: Worker) -> tuple[dict[str, float], list[torch.Tensor]]:
    """The same validation crops every epoch; returns the rank-averaged terms and up to 4 images (on the CPU)."""
    w.model.eval()
    sums = MetricSums(list(METRIC_KEYS), w.device)
    images: list[torch.Tensor] = []
    with torch.no_grad():
        for step, (x, s) in enumerate(w.loader("val", 0, repeat=False)):
            if step >= w.trial.training.val_steps:
                break
            inputs = batch_on_device(x, s, w.device, w.model.front)
            sums.add(w.criterion(to_float(w.model(*inputs)), inputs[0]))
            x = inputs[0]
            if len(images) < 4:
                images.extend(list(x[: 4 - len(images)].cpu()))
    val = sums.mean(w.world)
    if not val:
        raise RuntimeError("the validation split yielded no batch; prepare more validation frames")
    return val, images


def batch_on_device(
    x: torch.Tensor, s: Any, device: torch.device, front: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, s) on ``device``; from image-only shards (``prepare --features none``) s is computed here, by the
    model's frozen ``front`` on the whole frames, cut to each crop's window (:class:`FramesToFeaturize`)."""
    x = x.to(device, non_blocking=True)
    if isinstance(s, torch.Tensor):
        return x, s.to(device, non_blocking=True)
    return x, s.features(front, device)


def loss_shares(terms: dict[str, float], lmbda: float, weight_s: float) -> dict[str, float]:
    """Share of rate, λ·D_x and the feature term (``weight_s``·D_s) in the total loss (what steers the base layer)."""
    parts = {"rate": terms["bpp"], "dx": lmbda * terms["D_x"], "ds": weight_s * terms["D_s"]}
    total = sum(parts.values()) or 1.0
    return {f"share_{k}": v / total for k, v in parts.items()}


def redundancy_hook(model: nn.Module, images: list[torch.Tensor]) -> dict[str, float]:
    """Per-epoch redundancy Rdn(ŷ1|ŷ2), Rdn(ŷ2|ŷ1) from ``dvcm.redundancy`` (small K, few fibers).

    The model runs where it is; ``dvcm.redundancy`` brings the latents to the CPU for k-means.
    """
    from dvcm.redundancy import model_redundancy

    r = model_redundancy(model, images, K=4, num_fibers=512, steps=100)
    return {"rdn_y1_given_y2": float(r["rdn_y1_given_y2"]), "rdn_y2_given_y1": float(r["rdn_y2_given_y1"])}


def epoch_metrics(
    w: Worker,
    epoch: int,
    train: dict[str, float],
    extra: dict[str, float],
    val: dict[str, float],
    images: list[torch.Tensor],
    done: bool,
) -> dict[str, Any]:
    """What an epoch reports to Ray Train (and the sweep logs to MLflow)."""
    t = w.trial
    metrics: dict[str, Any] = {
        "epoch": epoch,
        "lr": w.net_opt.param_groups[0]["lr"],
        "lr_drops": w.lr_drops,
        "trial_done": int(done),
    }
    metrics.update({f"train/{k}": v for k, v in train.items()})
    metrics.update({f"val/{k}": v for k, v in val.items()})
    weight_s = w.criterion.gamma  # the weight on D_s as it entered the loss (0 for a codec without a feature term)
    metrics.update({f"train/{k}": v for k, v in loss_shares(train, t.lmbda, weight_s).items()})
    metrics.update({f"val/{k}": v for k, v in loss_shares(val, t.lmbda, weight_s).items()})
    metrics.update({f"train/{k}": v for k, v in extra.items()})
    metrics.update({f"ddp/param_checksum_rank{i}": v for i, v in enumerate(rank_checksums(w.model, w.rank, w.world))})
    if (
        w.rank == 0 and t.training.redundancy and images and getattr(w.model, "layers", 2) == 2
    ):  # Rdn(ŷ1|ŷ2): two latents
        metrics.update({f"val/{k}": v for k, v in redundancy_hook(w.model, images).items()})
    if done:
        metrics["final_checkpoint"] = FINAL_NAME
    return metrics


def save_and_report(w: Worker, epoch: int, metrics: dict[str, Any], val_loss: float, done: bool) -> None:
    """Rank 0 writes the epoch's checkpoint (and the final one when done); every rank reports."""
    import ray.train

    from dvcm.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if w.rank == 0:
            if done:
                save_checkpoint(
                    Path(tmp) / FINAL_NAME,
                    w.model,
                    extra={
                        "trial": w.trial.trial_name,
                        "lmbda": w.trial.lmbda,
                        "gamma": w.trial.training.gamma,
                        "gamma_mode": w.trial.training.gamma_mode,
                        "epochs": epoch,
                        "val_loss": val_loss,
                    },
                )
            torch.save(
                {
                    "model": w.model.state_dict(),
                    "net_opt": w.net_opt.state_dict(),
                    "aux_opt": w.aux_opt.state_dict(),
                    "sched": w.sched.state_dict(),
                    "epoch": epoch,
                    "lr_drops": w.lr_drops,
                    "rng": rng_state(),
                    "final_metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
                    if done
                    else {},
                },
                Path(tmp) / STATE_NAME,
            )
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


# --------------------------------------------------------------------------------------------
# The Ray Train entry point
# --------------------------------------------------------------------------------------------
def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train one trial on this worker; reports once per epoch. ``config``: :meth:`TrialConfig.to_dict`."""
    import ray.train
    import ray.train.torch

    trial = TrialConfig.from_dict(config)
    ctx = ray.train.get_context()
    torch.set_num_threads(max(1, int(trial.resources.cpus_per_worker)))
    w = setup(trial, ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    checkpoint = ray.train.get_checkpoint()
    state = read_state(checkpoint)
    if state is None and trial.init_checkpoint:
        warm_start(w, trial.init_checkpoint)
    if state is not None:
        restore(w, state)
        if state.get("final_metrics"):  # finished before the driver could record it: report it again
            with checkpoint.as_directory() as d:
                ray.train.report(
                    dict(state["final_metrics"]),
                    checkpoint=ray.train.Checkpoint.from_directory(d) if w.rank == 0 else None,
                )
            return
    place(w, state)

    t = trial.training
    for epoch in range(w.start_epoch, t.epochs + 1):
        if trial.faults:
            trial.faults.maybe_kill(epoch, w.rank)
        train, extra = train_epoch(w, epoch)
        val, images = validate(w)
        old_lr = w.net_opt.param_groups[0]["lr"]
        w.sched.step(val["loss"])
        w.lr_drops += int(w.net_opt.param_groups[0]["lr"] < old_lr)
        done = epoch >= t.epochs or w.lr_drops >= t.max_lr_drops
        save_and_report(w, epoch, epoch_metrics(w, epoch, train, extra, val, images, done), val["loss"], done)
        if done:
            break
