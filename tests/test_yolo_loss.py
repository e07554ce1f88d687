"""The YOLOv3 loss and anchor fitting of ``dvcm.yolo_loss``, checked against the decoder that reads the heads."""

from __future__ import annotations

import math

import torch

from dvcm.yolo import ANCHORS, HEAD_MASKS, HEAD_STRIDES, decode_detections
from dvcm.yolo_loss import fit_anchors, yolov3_loss

HW = (128, 160)
CLASSES = 3


def _heads(fill: float = -9.0) -> list[torch.Tensor]:
    """Raw heads of a 128x160 input whose every objectness and class logit is ``fill``."""
    out = []
    for stride in HEAD_STRIDES:
        h, w = math.ceil(HW[0] / stride), math.ceil(HW[1] / stride)
        t = torch.zeros(1, 3, 5 + CLASSES, h, w)
        t[:, :, 4:] = fill
        out.append(t)
    return out


def _encode(heads: list[torch.Tensor], box: tuple[float, float, float, float], cls: int) -> None:
    """Write into ``heads`` the logits that decode exactly to ``box`` (xyxy) of class ``cls``, at the anchor
    the loss makes responsible (best centred IoU), as the inverse of the decoder's formulas."""
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    ious = [min(bw, aw) * min(bh, ah) / (bw * bh + aw * ah - min(bw, aw) * min(bh, ah)) for aw, ah in ANCHORS]
    best = max(range(9), key=ious.__getitem__)
    k = next(i for i, m in enumerate(HEAD_MASKS) if best in m)
    slot, stride = HEAD_MASKS[k].index(best), HEAD_STRIDES[k]
    cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
    gi, gj = int(cx), int(cy)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    t = heads[k][0, slot]
    t[0, gj, gi], t[1, gj, gi] = logit(cx - gi), logit(cy - gj)
    t[2, gj, gi], t[3, gj, gi] = math.log(bw / ANCHORS[best][0]), math.log(bh / ANCHORS[best][1])
    t[4, gj, gi] = 9.0
    t[5 + cls, gj, gi] = 9.0


def _flat(heads: list[torch.Tensor]) -> list[torch.Tensor]:
    return [h.reshape(1, -1, *h.shape[-2:]) for h in heads]


def test_the_heads_that_decode_to_the_ground_truth_have_the_lowest_loss() -> None:
    boxes = [((20.0, 30.0, 52.0, 90.0), 1), ((90.0, 10.0, 150.0, 120.0), 2), ((5.0, 100.0, 17.0, 112.0), 0)]
    heads = _heads()
    for box, cls in boxes:
        _encode(heads, box, cls)
    targets = [torch.tensor([[cls, *box] for box, cls in boxes])]
    (det,) = decode_detections(_flat(heads), HW, conf_thres=0.5)
    assert sorted(det["labels"].tolist()) == [0, 1, 2]
    for box, cls in boxes:  # the decoder reads back each box from where the loss puts its target
        found = det["boxes"][det["labels"] == cls][0]
        assert torch.allclose(found, torch.tensor(box), atol=1e-3)
    best = yolov3_loss(_flat(heads), targets, ANCHORS, HW)
    # moving any responsible prediction, or hiding an object, costs more
    for k, cls_shift in ((0, 0.5), (2, 0.4), (4, -18.0)):
        worse = [h.clone() for h in heads]
        for h in worse:
            confident = h[:, :, 4] > 0
            h[:, :, k][confident] += cls_shift
        assert yolov3_loss(_flat(worse), targets, ANCHORS, HW)["loss"] > best["loss"]
    anchors = sum(h.shape[1] * h.shape[-1] * h.shape[-2] for h in heads)
    assert float(best["obj"]) < anchors * math.log1p(math.exp(-9.0)) * 1.01  # every anchor right at logit ±9
    assert float(best["cls"]) < 3 * CLASSES * math.log1p(math.exp(-9.0)) * 1.01


def test_an_image_without_objects_has_only_the_objectness_term() -> None:
    heads = _flat(_heads(fill=0.0))
    out = yolov3_loss(heads, [torch.zeros(0, 5)], ANCHORS, HW)
    assert float(out["box"]) == 0.0 and float(out["cls"]) == 0.0
    cells = sum(h.shape[-1] * h.shape[-2] * 3 for h in heads)
    assert math.isclose(float(out["obj"]), cells * math.log(2), rel_tol=1e-5)  # BCE(0 logit, 0) per anchor


def test_confident_predictions_that_fit_a_box_are_ignored_not_punished() -> None:
    box = (40.0, 40.0, 80.0, 80.0)
    heads = _heads(fill=-9.0)
    _encode(heads, box, 0)
    targets = [torch.tensor([[0, *box]])]
    base = float(yolov3_loss(_flat(heads), targets, ANCHORS, HW, ignore_thresh=0.5)["obj"])
    # a second, non-responsible anchor of the same head predicting the same box with high objectness
    k = next(i for i, h in enumerate(heads) if (h[0, :, 4] > 0).any())
    slot = int((heads[k][0, :, 4] > 0).nonzero()[0, 0])
    other = (slot + 1) % 3
    heads[k][0, other] = heads[k][0, slot]
    heads[k][0, other, 2:4] += torch.log(
        torch.tensor(ANCHORS[HEAD_MASKS[k][slot]], dtype=torch.float32)
        / torch.tensor(ANCHORS[HEAD_MASKS[k][other]], dtype=torch.float32)
    ).view(2, 1, 1)
    ignored = float(yolov3_loss(_flat(heads), targets, ANCHORS, HW, ignore_thresh=0.5)["obj"])
    punished = float(yolov3_loss(_flat(heads), targets, ANCHORS, HW, ignore_thresh=1.01)["obj"])
    assert math.isclose(ignored, base, abs_tol=1e-3) and punished > base + 5


def test_anchors_are_fitted_to_the_box_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[12.0, 14.0], [40.0, 30.0], [90.0, 120.0]])
    wh = torch.cat([c * (1 + 0.05 * torch.randn(200, 2, generator=gen)) for c in centres])
    fitted = torch.tensor(fit_anchors(wh, k=3), dtype=torch.float32)
    assert torch.allclose(fitted, centres, rtol=0.05)
