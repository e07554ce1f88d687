"""What the detector learns from: batches of world scenes with their boxes, anchors fitted to the
world's boxes, and mAP@0.5 against the world's ground truth (pycocotools)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.data.world import (
    DEFAULT_WORLD_STYLE,
    WORLD_CLASSES,
    WorldScene,
    coco_annotations,
    coco_dataset,
    render_world_scene,
    split_seed,
)

EVAL_SIZES: tuple[tuple[int, int], ...] = ((640, 480), (480, 640), (640, 480))
"""(width, height) of held-out scenes, in turn: the COCO-like images' sizes."""


def training_size(step: int, sizes: Sequence[int]) -> int:
    """The square training size of ``step`` (multi-scale training, as YOLOv3's ``random=1``); a function
    of the step alone, so a resumed run sees the same batches."""
    return int(sizes[int(np.random.default_rng([step, 7]).integers(len(sizes)))])


def scene_targets(scene: WorldScene) -> Tensor:
    """[n, 5] (class index 0..7, x1, y1, x2, y2) in pixels: the loss's targets of one scene."""
    boxes = scene.boxes
    labels = scene.category_ids - 1
    xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1)
    return torch.from_numpy(np.concatenate([labels[:, None], xyxy], 1).astype(np.float32)).reshape(-1, 5)


def to_tensor(images: Sequence[np.ndarray]) -> Tensor:
    """uint8 H×W×3 images -> float [B, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)


def training_batch(
    world_seed: int, step: int, batch: int, sizes: Sequence[int], style: str = DEFAULT_WORLD_STYLE
) -> tuple[Tensor, list[Tensor]]:
    """Batch ``step`` of the world's train split: scenes step·B .. step·B + B − 1 at one size."""
    seed, size = split_seed(world_seed, "train"), training_size(step, sizes)
    scenes = [render_world_scene(seed, step * batch + i, (size, size), style) for i in range(batch)]
    return to_tensor([s.image for s in scenes]), [scene_targets(s) for s in scenes]


def training_box_sizes(world_seed: int, scenes: int, sizes: Sequence[int], style: str = DEFAULT_WORLD_STYLE) -> Tensor:
    """(w, h) of every box of ``scenes`` training scenes at the training sizes: what the anchors are fitted to."""
    seed = split_seed(world_seed, "train")
    wh = [render_world_scene(seed, 10**8 + n, (sizes[n % len(sizes)],) * 2, style).boxes[:, 2:] for n in range(scenes)]
    return torch.from_numpy(np.concatenate(wh).astype(np.float32))


def held_out_scenes(world_seed: int, split: str, count: int, style: str = DEFAULT_WORLD_STYLE) -> list[WorldScene]:
    """Scenes 0..count-1 of ``split`` at the COCO-like sizes."""
    seed = split_seed(world_seed, split)
    return [render_world_scene(seed, n, EVAL_SIZES[n % len(EVAL_SIZES)], style) for n in range(count)]


def world_digest(world_seed: int, count: int = 8, style: str = DEFAULT_WORLD_STYLE) -> str:
    """sha256 over the first ``count`` scenes of each split (pixels and boxes): names the data a detector saw."""
    key = f"world:{world_seed}" if style == DEFAULT_WORLD_STYLE else f"world:{world_seed}:{style}"
    h = hashlib.sha256(key.encode())
    for split in ("train", "val", "test"):
        for scene in held_out_scenes(world_seed, split, count, style):
            h.update(scene.image.tobytes())
            h.update(scene.boxes.tobytes())
    return h.hexdigest()


@torch.no_grad()
def detection_map50(yolo: torch.nn.Module, scenes: Sequence[WorldScene]) -> dict[str, float]:
    """COCO mAP@0.5 (and AP) of ``yolo`` on ``scenes`` against their ground truth, with pycocotools."""
    from dvcm.yolo import decode_detections
    from pipeline.evaluation.coco import coco_from_dict, evaluate

    images, annotations, results = [], [], []
    was_training = yolo.training
    yolo.eval()
    for n, scene in enumerate(scenes):
        h, w = scene.image.shape[:2]
        images.append({"id": n + 1, "file_name": f"{n:06d}.png", "width": w, "height": h})
        annotations += coco_annotations(scene, n + 1, len(annotations) + 1)
        (det,) = decode_detections(yolo(to_tensor([scene.image])), (h, w), anchors=yolo.anchors)
        for (x1, y1, x2, y2), score, label in zip(
            det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()
        ):
            if label < len(WORLD_CLASSES):
                results.append(
                    {
                        "image_id": n + 1,
                        "category_id": WORLD_CLASSES[label][0],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": score,
                    }
                )
    yolo.train(was_training)
    stats = evaluate(
        coco_from_dict(coco_dataset(images, annotations, "held-out world scenes")), results, [i["id"] for i in images]
    )
    return {"map50": stats["AP50"], "map": stats["AP"]}


@torch.no_grad()
def feature_statistics(yolo: torch.nn.Module, scenes: Sequence[WorldScene]) -> dict[str, float]:
    """Per-channel mean and std of s = V_front(x) over ``scenes``, summarised across channels: how far the
    front's features are from a shallow random projection (a seeded random front's std is near 0.015)."""
    s = torch.cat([yolo.front(to_tensor([scene.image])).flatten(2) for scene in scenes], 2)[0].double()  # [C, N]
    mean, std = s.mean(1), s.std(1)
    q = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    std_min, std_median, std_max = torch.quantile(std, q).tolist()
    return {
        "channels": int(s.shape[0]),
        "std_min": std_min,
        "std_median": std_median,
        "std_max": std_max,
        "mean_abs_median": float(mean.abs().median()),
        "mean_of_means": float(mean.mean()),
        "dead_channels": int((std < 1e-6).sum()),
    }
