"""The YOLOv3 training loss (Redmon & Farhadi 2018, Sec. 2), for the three raw heads of ``dvcm.yolo.YOLOv3``.

Per ground-truth box, the one anchor (of the nine) whose shape fits it best by IoU of
centred boxes is responsible, in the grid cell of the box centre at that anchor's head::

    box:        BCE(sigmoid(t_xy), centre offset in the cell) + ½·(t_wh − log(wh / anchor))²,
                both weighted by 2 − w·h / image area (small boxes count more)
    objectness: BCE(t_o, 1) for responsible anchors; BCE(t_o, 0) for the others, except those whose
                predicted box overlaps some ground truth by more than ``ignore_thresh`` (ignored)
    class:      BCE(t_c, one-hot) for responsible anchors (independent logistic classifiers)

Terms are summed over anchors and divided by the batch size. No installed library has it:
torchvision's detection losses are those of Faster R-CNN, RetinaNet, FCOS and SSD, and the
YOLO packages (ultralytics and the like) are not installed here and bring their own model graphs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from dvcm.yolo import HEAD_MASKS, HEAD_STRIDES


def _centred_iou(wh: Tensor, anchors: Tensor) -> Tensor:
    """IoU of boxes [N,2] and anchors [A,2] placed on the same centre: [N,A]."""
    inter = torch.min(wh[:, None, 0], anchors[None, :, 0]) * torch.min(wh[:, None, 1], anchors[None, :, 1])
    return inter / (wh[:, None].prod(-1) + anchors[None].prod(-1) - inter)


def yolov3_loss(
    heads: Sequence[Tensor],
    targets: Sequence[Tensor],
    anchors: Sequence[tuple[int, int]],
    input_hw: tuple[int, int],
    ignore_thresh: float = 0.5,
) -> dict[str, Tensor]:
    """The loss of one batch: ``loss`` and its parts ``box``, ``obj``, ``cls`` (each already / batch size).

    ``heads`` are ``YOLOv3.back``'s outputs (strides 32, 16, 8); ``targets`` hold per image a tensor
    [n, 5] of (class index, x1, y1, x2, y2) in input pixels; ``anchors`` are the network's nine (w, h).
    """
    device = heads[0].device
    batch = heads[0].shape[0]
    height, width = input_hw
    anchor_wh = torch.tensor(anchors, dtype=torch.float32, device=device)
    gt = (
        torch.cat(
            [
                torch.cat(
                    [
                        torch.full((len(t), 1), i, dtype=torch.float32, device=device),
                        t.to(device=device, dtype=torch.float32).reshape(-1, 5),
                    ],
                    1,
                )
                for i, t in enumerate(targets)
            ]
        )
        if targets
        else torch.zeros(0, 6, device=device)
    )
    image_of, cls_of, boxes = gt[:, 0].long(), gt[:, 1].long(), gt[:, 2:6]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp_min(1.0)
    best_anchor = _centred_iou(wh, anchor_wh).argmax(1) if len(gt) else torch.zeros(0, dtype=torch.long, device=device)
    scale = 2.0 - wh.prod(1) / (height * width)

    box_loss = obj_loss = cls_loss = heads[0].new_zeros((), dtype=torch.float32)
    for head, stride, mask in zip(heads, HEAD_STRIDES, HEAD_MASKS):
        b, c, h, w = head.shape
        num_classes = c // 3 - 5
        t = head.float().view(b, 3, c // 3, h, w).permute(0, 1, 3, 4, 2)  # [B,3,h,w,5+C]
        head_anchors = anchor_wh[list(mask)]
        obj_target = torch.zeros(t.shape[:4], device=device)
        obj_weight = torch.ones_like(obj_target)

        # predicted boxes of every anchor, to ignore confident non-responsible ones that already fit a box
        with torch.no_grad():
            gy, gx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
            pcx = (gx + torch.sigmoid(t[..., 0])) * stride
            pcy = (gy + torch.sigmoid(t[..., 1])) * stride
            pwh = torch.exp(t[..., 2:4].clamp(max=8)) * head_anchors.view(1, 3, 1, 1, 2)
            pred = torch.stack(
                (pcx - pwh[..., 0] / 2, pcy - pwh[..., 1] / 2, pcx + pwh[..., 0] / 2, pcy + pwh[..., 1] / 2), -1
            )
            for i in range(b):
                own = boxes[image_of == i]
                if len(own):
                    best_iou = box_iou(pred[i].reshape(-1, 4), own).max(1).values.view(3, h, w)
                    obj_weight[i][best_iou > ignore_thresh] = 0.0

        mine = torch.isin(best_anchor, torch.tensor(mask, device=device))
        if mine.any():
            bi, slot = image_of[mine], best_anchor[mine] - mask[0]
            gi = (centre[mine, 0] / stride).long().clamp(0, w - 1)
            gj = (centre[mine, 1] / stride).long().clamp(0, h - 1)
            p = t[bi, slot, gj, gi]  # [n, 5+C]
            weight = scale[mine]
            offset = (centre[mine] / stride - torch.stack((gi, gj), 1)).clamp(0, 1)
            log_wh = torch.log(wh[mine] / head_anchors[slot])
            xy = F.binary_cross_entropy_with_logits(p[:, :2], offset, reduction="none").sum(1)
            wh_err = 0.5 * ((p[:, 2:4] - log_wh) ** 2).sum(1)
            box_loss = box_loss + (weight * (xy + wh_err)).sum()
            onehot = F.one_hot(cls_of[mine], num_classes).float()
            cls_loss = cls_loss + F.binary_cross_entropy_with_logits(p[:, 5:], onehot, reduction="sum")
            obj_target[bi, slot, gj, gi] = 1.0
            obj_weight[bi, slot, gj, gi] = 1.0
        obj_loss = obj_loss + F.binary_cross_entropy_with_logits(t[..., 4], obj_target, obj_weight, reduction="sum")

    parts = {"box": box_loss / batch, "obj": obj_loss / batch, "cls": cls_loss / batch}
    return {"loss": parts["box"] + parts["obj"] + parts["cls"], **parts}


def fit_anchors(wh: Tensor, k: int = 9, iters: int = 100, seed: int = 0) -> list[tuple[int, int]]:
    """k anchors (w, h) from box sizes [N, 2] by k-means with 1 − IoU as the distance (YOLOv2, Sec. 2),
    sorted by area, as darknet's ``detector calc_anchors`` computes them."""
    wh = wh.float().clamp_min(1.0)
    if len(wh) < k:
        raise ValueError(f"fitting {k} anchors needs at least {k} boxes, got {len(wh)}")
    generator = torch.Generator().manual_seed(seed)
    centres = wh[torch.randperm(len(wh), generator=generator)[:k]].clone()
    for _ in range(iters):
        assign = _centred_iou(wh, centres).argmax(1)
        new = torch.stack([wh[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
        if torch.equal(new, centres):
            break
        centres = new
    order = centres.prod(1).argsort()
    return [(max(1, round(float(w))), max(1, round(float(h)))) for w, h in centres[order]]
