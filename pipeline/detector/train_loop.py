"""The Ray Train worker of ``train-detector``: Adam with warm-up and a cosine schedule over a fixed
number of steps, the YOLOv3 loss, held-out mAP@0.5 every ``eval_every`` steps, and a checkpoint
with every report (model, optimizer, step) from which a stopped run resumes."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

STATE_NAME = "detector_state.pt"


def build_network(config: dict[str, Any]) -> torch.nn.Module:
    """The narrow YOLOv3 of ``config`` (classes, width, anchors), seeded, with objectness biases at a
    low prior (sigmoid ≈ 0.01) so that the first steps are not spent unlearning 'object everywhere'."""
    from dvcm.yolo import YOLOv3, seed_weights, yolov3_layers

    model = YOLOv3(
        config["classes"],
        yolov3_layers(config["classes"], width=config["width"]),
        [tuple(a) for a in config["anchors"]],
    )
    seed_weights(model, config["seed"])
    with torch.no_grad():
        for layer in model.darknet_convs():
            if layer.bn is None:  # the three detection convs: 3 x (x, y, w, h, obj, classes...)
                bias = layer.conv.bias.view(3, -1)
                bias[:, 4] = -4.6
                bias[:, 5:] = -2.0
    return model


def learning_rate(step: int, config: dict[str, Any]) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5 % of ``lr`` at ``steps``."""
    base, warmup, total = config["lr"], config["warmup"], config["steps"]
    if step < warmup:
        return base * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train_detector_loop(config: dict[str, Any]) -> None:
    """Train until ``config['steps']``; reports loss parts, lr, seconds and (every ``eval_every``) val mAP."""
    import ray.train
    import ray.train.torch

    from dvcm.yolo_loss import yolov3_loss
    from pipeline.detector.world_batches import detection_map50, held_out_scenes, training_batch
    from pipeline.infra import tracking

    torch.set_num_threads(int(config["threads"]))
    torch.manual_seed(config["seed"])
    model = build_network(config)
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    step, seconds = 0, 0.0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_NAME, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds = int(state["step"]), float(state["seconds"])
    val = held_out_scenes(config["world_seed"], "val", config["val_images"], config["world_style"])
    uri, run_id = config["tracking_uri"], config["run_id"]
    net = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model  # DDP on gloo
    model.train()
    sums: dict[str, float] = {}
    while step < config["steps"]:
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        x, targets = training_batch(
            config["world_seed"], step * world + rank, config["batch_size"], config["sizes"], config["world_style"]
        )
        out = yolov3_loss(net(x), targets, model.anchors, tuple(x.shape[-2:]))
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        step += 1
        seconds += time.perf_counter() - t0
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        if step % config["log_every"] == 0 or step == config["steps"]:
            n = config["log_every"] if step % config["log_every"] == 0 else step % config["log_every"]
            metrics = {f"train/{k}": v / n for k, v in sums.items()}
            metrics.update(
                {"train/lr": learning_rate(step - 1, config), "train/seconds": seconds, "progress/step": step}
            )
            sums = {}
            if rank == 0 and (step % config["eval_every"] == 0 or step == config["steps"]):
                metrics.update({f"val/{k}": v for k, v in detection_map50(model, val).items()})
            if rank == 0:
                tracking.log_metrics(uri, run_id, metrics, step)
            with tempfile.TemporaryDirectory() as tmp:
                if rank == 0:  # the ranks hold the same weights (DDP); one of them saves
                    torch.save(
                        {
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "step": step,
                            "seconds": seconds,
                        },
                        Path(tmp) / STATE_NAME,
                    )
                ray.train.report(
                    {k: float(v) for k, v in metrics.items()},
                    checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None,
                )
