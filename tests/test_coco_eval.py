"""mAP path (pipeline.evaluation.coco) on a small COCO-format fixture, with real pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dvcm.yolo import detections_to_coco
from pipeline.evaluation.coco import evaluate, evaluate_per_class, load_coco, results_as_ground_truth
from pipeline.infra.errors import UserError

IMAGES = [
    {"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
    {"id": 2, "file_name": "b.jpg", "width": 500, "height": 400},
]
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
# Four 100x100 boxes (area 10^4: "medium" in COCO's ranges), two per image.
BOXES = [
    (1, 1, [10, 10, 100, 100]),
    (1, 3, [300, 200, 100, 100]),
    (2, 1, [50, 50, 100, 100]),
    (2, 3, [250, 150, 100, 100]),
]


def _write_fixture(path: Path) -> Path:
    anns = [
        {"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for i, (im, c, b) in enumerate(BOXES)
    ]
    path.write_text(json.dumps({"images": IMAGES, "annotations": anns, "categories": CATEGORIES}))
    return path


def _dets(shift: dict[int, float]) -> list[dict]:
    """One detection per GT box; box k is shifted right by shift[k] pixels, scores descend with k."""
    return [
        {"image_id": im, "category_id": c, "bbox": [b[0] + shift.get(k, 0.0), b[1], b[2], b[3]], "score": 0.9 - 0.1 * k}
        for k, (im, c, b) in enumerate(BOXES)
    ]


def test_ground_truth_as_detections_is_perfect(tmp_path: Path) -> None:
    gt = load_coco(_write_fixture(tmp_path / "ann.json"))
    stats = evaluate(gt, _dets({}), [1, 2])
    assert stats["AP50"] == pytest.approx(1.0)
    assert stats["AP"] == pytest.approx(1.0)


def test_shifted_boxes_give_hand_computed_map(tmp_path: Path) -> None:
    """Hand computation.

    Boxes 2 and 3 (the two lowest scores) are shifted 50 px right: IoU = 50*100 / (150*100) = 1/3,
    below every COCO threshold, so they are false positives and their GT boxes are missed.
    Boxes 0 and 1 (highest scores) are exact. Per category one GT of two is found first,
    so precision is 1 up to recall 0.5 and there is nothing beyond. COCO's 101-point
    interpolation counts recall thresholds 0.00..0.50 = 51 of 101 points: AP = 51/101 at
    every IoU threshold, hence AP50 = AP75 = AP = 51/101 ≈ 0.50495.

    Then a 20 px shift on box 2 (IoU = 80/120 = 2/3) is a hit at IoU 0.5 but a miss at 0.75:
    AP50 becomes 1 for category "person" (boxes 0 and 2) while "car" stays at 51/101.
    """
    gt = load_coco(_write_fixture(tmp_path / "ann.json"))
    stats = evaluate(gt, _dets({2: 50.0, 3: 50.0}), [1, 2])
    assert stats["AP50"] == pytest.approx(51 / 101, abs=1e-6)
    assert stats["AP75"] == pytest.approx(51 / 101, abs=1e-6)
    assert stats["AR100"] == pytest.approx(0.5, abs=1e-6)

    stats = evaluate(gt, _dets({2: 20.0, 3: 50.0}), [1, 2])
    assert stats["AP50"] == pytest.approx((1.0 + 51 / 101) / 2, abs=1e-6)
    assert stats["AP75"] == pytest.approx(51 / 101, abs=1e-6)


def test_boxes_map_back_to_original_size() -> None:
    """512x512 detector input → a 640x480 original: x scales by 1.25, y by 0.9375; label 2 is COCO id 3."""
    det = {
        "boxes": torch.tensor([[128.0, 256.0, 256.0, 512.0]]),
        "scores": torch.tensor([0.8]),
        "labels": torch.tensor([2]),
    }
    (r,) = detections_to_coco(det, 7, scale_xy=(640 / 512, 480 / 512))
    assert r["category_id"] == 3 and r["image_id"] == 7
    assert r["bbox"] == pytest.approx([160.0, 240.0, 160.0, 240.0])


def test_uncompressed_reference_mode(tmp_path: Path) -> None:
    """The detector's own detections as GT: the same detections score 1, dropped ones lower recall."""
    dets = _dets({})
    gt = results_as_ground_truth(dets, IMAGES, CATEGORIES, score_thres=0.5)
    # all four scores (0.9..0.6) pass 0.5: a perfect match
    assert evaluate(gt, dets, [1, 2])["AP50"] == pytest.approx(1.0)
    # dropping the two lowest-scoring detections halves the recall in each category
    assert evaluate(gt, dets[:2], [1, 2])["AP50"] == pytest.approx(51 / 101, abs=1e-6)
    assert evaluate(gt, [], [1, 2])["AP50"] == 0.0


def test_uncompressed_reference_caps_at_cocoeval_max_dets() -> None:
    """150 tied detections in one image/category: COCOeval scores only 100, so the reference keeps
    the same 100 (its stable ranking) and the detections against themselves still give AP = 1."""
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [float(3 * k % 600), float(k % 400), 20.0, 20.0], "score": 0.3}
        for k in range(150)
    ]
    gt = results_as_ground_truth(dets, IMAGES, CATEGORIES, score_thres=0.25)
    assert len(gt.getAnnIds()) == 100
    assert evaluate(gt, dets, [1, 2])["AP50"] == pytest.approx(1.0)


def test_bad_annotation_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_coco(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_coco(bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(UserError, match="lacks"):
        load_coco(bad)


def test_per_class_ap_follows_the_hand_computation(tmp_path: Path) -> None:
    """The second case of the hand computation above: box 2 ("person") shifted 20 px is a hit at IoU 0.5 only,
    box 3 ("car") shifted 50 px is a miss. Per class: person AP50 1, car AP50 51/101; their mean is mAP@0.5."""
    gt = load_coco(_write_fixture(tmp_path / "ann.json"))
    stats, per_class = evaluate_per_class(gt, _dets({2: 20.0, 3: 50.0}), [1, 2])
    by_name = {c["name"]: c for c in per_class}
    assert [c["category_id"] for c in per_class] == [1, 3]
    assert by_name["person"]["ap50"] == pytest.approx(1.0)
    assert by_name["car"]["ap50"] == pytest.approx(51 / 101, abs=1e-6)
    assert stats["AP50"] == pytest.approx((1.0 + 51 / 101) / 2, abs=1e-6)
    assert stats["AP"] == pytest.approx(sum(c["ap"] for c in per_class) / 2, abs=1e-6)
    # no detections: every class with ground truth at 0; a class without any box in the images: None
    assert [c["ap50"] for c in evaluate_per_class(gt, [], [1, 2])[1]] == [0.0, 0.0]
    data = json.loads((tmp_path / "ann.json").read_text())
    data["categories"].append({"id": 18, "name": "dog"})
    (tmp_path / "dog.json").write_text(json.dumps(data))
    _, per_class = evaluate_per_class(load_coco(tmp_path / "dog.json"), _dets({}), [1, 2])
    assert [(c["name"], c["ap50"]) for c in per_class] == [("person", 1.0), ("car", 1.0), ("dog", None)]
