"""YOLOv3 split at layer 12: architecture, Darknet .weights IO, decoding (random-weight YOLOv3 only)."""

from __future__ import annotations

import copy
import math
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from dvcm.errors import DarknetWeightsError
from dvcm.yolo import (
    COCO80_TO_COCO91,
    YOLOv3,
    build_yolov3,
    darknet_bytes,
    darknet_float_count,
    decode_detections,
    detections_to_coco,
    freeze,
    load_darknet_weights,
    save_darknet_weights,
    seed_weights,
    yolov3_layers,
)
from dvcm.yolo_layers import ConvSpec, RouteSpec, ShortcutSpec, UpsampleSpec, YoloSpec

REPO = Path(__file__).resolve().parents[1]


class Built:
    model: YOLOv3
    warnings: list[warnings.WarningMessage]


@pytest.fixture(scope="module")
def built() -> Built:
    """One seeded random-weight YOLOv3 (62M params) for the whole module."""
    out = Built()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out.model = build_yolov3(seed=0)
    out.warnings = list(caught)
    return out


@pytest.fixture(scope="module")
def yolo(built: Built) -> YOLOv3:
    return built.model


def _outputs(model: YOLOv3, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    with torch.no_grad():
        s = model.front(x)
        return s, model.back(s)


# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------


def _bn(c_in: int, c_out: int, k: int) -> int:
    """Floats of a BN conv: beta, gamma, mean, var (4*c_out) + OIHW weights."""
    return 4 * c_out + c_in * c_out * k * k


def _biased(c_in: int, c_out: int, k: int) -> int:
    """Floats of a detection conv: bias (c_out) + OIHW weights."""
    return c_out + c_in * c_out * k * k


def _residual(blocks: int, c: int) -> int:
    """Darknet residual blocks: 1x1 c->c/2, 3x3 c/2->c (the shortcut has no weights)."""
    return blocks * (_bn(c, c // 2, 1) + _bn(c // 2, c, 3))


def test_float_count_matches_published_yolov3_weights(yolo: YOLOv3) -> None:
    darknet53 = (  # layers 0..74
        _bn(3, 32, 3)
        + _bn(32, 64, 3)
        + _residual(1, 64)
        + _bn(64, 128, 3)
        + _residual(2, 128)
        + _bn(128, 256, 3)
        + _residual(8, 256)
        + _bn(256, 512, 3)
        + _residual(8, 512)
        + _bn(512, 1024, 3)
        + _residual(4, 1024)
    )
    head32 = 3 * (_bn(1024, 512, 1) + _bn(512, 1024, 3)) + _biased(1024, 255, 1)  # layers 75..82
    # 83 route 79 (512 ch) -> 84 conv 256 -> 85 upsample -> 86 route [85, 61]: 256 + 512 = 768 ch
    head16 = _bn(512, 256, 1) + _bn(768, 256, 1) + _bn(256, 512, 3) + 2 * (_bn(512, 256, 1) + _bn(256, 512, 3))
    head16 += _biased(512, 255, 1)  # layers 83..94
    # 95 route 91 (256 ch) -> 96 conv 128 -> 97 upsample -> 98 route [97, 36]: 128 + 256 = 384 ch
    head8 = _bn(256, 128, 1) + _bn(384, 128, 1) + _bn(128, 256, 3) + 2 * (_bn(256, 128, 1) + _bn(128, 256, 3))
    head8 += _biased(256, 255, 1)  # layers 95..106
    # yolov3.weights is 248,007,048 bytes: a 20-byte header (3 int32 + int64 seen), then float32s.
    published = (248_007_048 - 20) // 4
    assert published == 62_001_757
    assert darknet53 + head32 + head16 + head8 == published
    assert darknet_float_count(yolo) == published
    # The same count from the torch modules: parameters + BN running mean/var.
    stats = sum(b.numel() for n, b in yolo.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert sum(p.numel() for p in yolo.parameters()) + stats == published


def test_layer_list_is_yolov3_cfg() -> None:
    layers = yolov3_layers()
    assert len(layers) == 107  # layers 0..106
    assert sum(isinstance(spec, ConvSpec) for spec in layers) == 75
    assert layers[12] == ConvSpec(256, 3, 2)
    assert isinstance(layers[36], ShortcutSpec) and isinstance(layers[61], ShortcutSpec)
    assert [i for i, spec in enumerate(layers) if isinstance(spec, YoloSpec)] == [82, 94, 106]
    assert layers[83] == RouteSpec((79,)) and layers[86] == RouteSpec((85, 61))
    assert layers[95] == RouteSpec((91,)) and layers[98] == RouteSpec((97, 36))
    assert layers[85] == UpsampleSpec(match=61) and layers[97] == UpsampleSpec(match=36)
    assert [spec.mask for spec in layers if isinstance(spec, YoloSpec)] == [(6, 7, 8), (3, 4, 5), (0, 1, 2)]


@pytest.mark.parametrize("hw", [(64, 96), (97, 131), (375, 500), (17, 9), (8, 8)])
def test_front_output_shape(yolo: YOLOv3, hw: tuple[int, int]) -> None:
    h, w = hw
    with torch.no_grad():
        s = yolo.front(torch.rand(1, 3, h, w))
    assert s.shape == (1, 256, math.ceil(h / 8), math.ceil(w / 8))
    assert torch.isfinite(s).all()


@pytest.mark.parametrize("hw", [(97, 131), (64, 96), (40, 72)])
def test_back_on_odd_sizes_returns_three_heads(yolo: YOLOv3, hw: tuple[int, int]) -> None:
    h, w = hw
    x = torch.rand(1, 3, h, w)
    _, heads = _outputs(yolo, x)
    assert [tuple(t.shape) for t in heads] == [
        (1, 255, math.ceil(h / stride), math.ceil(w / stride)) for stride in (32, 16, 8)
    ]
    with torch.no_grad():
        full = yolo(x)
    assert all(torch.equal(a, b) for a, b in zip(full, heads))  # forward == back(front(x))


def test_seeded_front_feature_scale(yolo: YOLOv3) -> None:
    """DESIGN.md: s from a seeded random front has a standard deviation near 0.015."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        s = yolo.front(torch.rand(2, 3, 128, 128, generator=gen))
    assert 0.005 < s.std().item() < 0.05


def test_freeze_keeps_front_in_eval_without_grads(yolo: YOLOv3) -> None:
    front = freeze(copy.deepcopy(yolo.front))
    assert freeze(front) is front
    head = nn.Conv2d(256, 4, 1)
    parent = nn.ModuleDict({"front": front, "head": head})
    parent.train()
    assert head.training
    assert not front.training and not any(m.training for m in front.modules())
    assert all(not p.requires_grad for p in front.parameters())
    x = torch.rand(1, 3, 32, 32)
    stats_before = copy.deepcopy(front.module.convs["12"].bn.state_dict())
    head(front(x)).sum().backward()
    assert head.weight.grad is not None
    assert all(p.grad is None for p in front.parameters())
    stats_after = front.module.convs["12"].bn.state_dict()
    assert all(torch.equal(stats_before[k], stats_after[k]) for k in stats_before)  # BN stayed in eval


# --------------------------------------------------------------------------------------------
# Seeds and provenance
# --------------------------------------------------------------------------------------------


def test_seeded_build_warns_and_records_provenance(built: Built) -> None:
    messages = [str(w.message) for w in built.warnings]
    assert any("seeded random weights (seed 0)" in m and "--yolo-weights" in m for m in messages)
    prov = built.model.provenance
    assert prov["weights"] == "seeded-random:0" and prov["random_weights"] is True and prov["split_layer"] == 12
    assert not built.model.training


@pytest.mark.slow  # over 5 s: a subprocess or a real job (the fast tier stays near a minute)
def test_seeded_build_is_deterministic_across_processes(yolo: YOLOv3) -> None:
    code = (
        "import warnings; warnings.simplefilter('ignore');"
        "from dvcm.yolo import build_yolov3; print(build_yolov3(seed=0).provenance['weights_sha256'])"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == yolo.provenance["weights_sha256"]


# --------------------------------------------------------------------------------------------
# Darknet .weights IO
# --------------------------------------------------------------------------------------------


@pytest.mark.slow  # over 5 s: a subprocess or a real job (the fast tier stays near a minute)
def test_darknet_round_trip_both_header_variants(yolo: YOLOv3, tmp_path: Path) -> None:
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    s_ref, heads_ref = _outputs(yolo, x)

    # Variant 0.2.0 (default header): int64 seen, 20-byte header; built from the file.
    new = save_darknet_weights(yolo, tmp_path / "v020.weights")
    with new.open("rb") as f:
        assert struct.unpack("<iiiq", f.read(20)) == (0, 2, 0, 0)
    assert new.stat().st_size == 20 + 4 * darknet_float_count(yolo)
    other = build_yolov3(new)
    assert other.provenance["weights"] == str(new) and other.provenance["random_weights"] is False
    # the seeded digest is that of this file (hashed from the file here, from the tensors there)
    assert other.provenance["weights_sha256"] == yolo.provenance["weights_sha256"]
    s, heads = _outputs(other, x)
    assert torch.equal(s, s_ref) and all(torch.equal(a, b) for a, b in zip(heads, heads_ref))
    new.unlink()

    # Variant 0.1.0: int32 seen, 16-byte header; read into a model re-seeded with another seed.
    seed_weights(other, 1)
    pairs = zip(other.darknet_convs(), yolo.darknet_convs())
    assert all(not torch.equal(a.conv.weight, b.conv.weight) for a, b in pairs)  # another seed, other weights
    s_other, _ = _outputs(other, x)
    assert not torch.equal(s_other, s_ref)
    old = save_darknet_weights(yolo, tmp_path / "v010.weights", version=(0, 1, 0), seen=1234)
    with old.open("rb") as f:
        assert struct.unpack("<iiii", f.read(16)) == (0, 1, 0, 1234)
    assert old.stat().st_size == 16 + 4 * darknet_float_count(yolo)
    assert darknet_bytes(yolo, version=(0, 1, 0), seen=1234) == old.read_bytes()
    header = load_darknet_weights(other, old)
    assert (header.major, header.minor, header.revision, header.seen) == (0, 1, 0, 1234)
    s, heads = _outputs(other, x)
    assert torch.equal(s, s_ref) and all(torch.equal(a, b) for a, b in zip(heads, heads_ref))
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files


def _sparse_weights_file(path: Path, header: bytes, floats: int, extra_bytes: int = 0) -> Path:
    """A .weights-shaped file of the right size without writing 248 MB (sparse zeros)."""
    with path.open("wb") as f:
        f.write(header)
        f.truncate(len(header) + 4 * floats + extra_bytes)
    return path


def test_darknet_bad_files_are_refused_with_both_counts(yolo: YOLOv3, tmp_path: Path) -> None:
    expected = darknet_float_count(yolo)
    header = struct.pack("<iiiq", 0, 2, 0, 0)
    cases = {
        "truncated": (_sparse_weights_file(tmp_path / "t.weights", header, expected - 100), expected - 100),
        "extra": (_sparse_weights_file(tmp_path / "e.weights", header, expected + 7), expected + 7),
        "tiny": (_sparse_weights_file(tmp_path / "s.weights", header, 1000), 1000),
        # the file a 20-byte-header reader sees if seen was written as int32 with version 0.2.0
        "wrong_seen_width": (_sparse_weights_file(tmp_path / "w.weights", header[:16], expected), expected - 1),
    }
    before = yolo.front.convs["0"].conv.weight.clone()
    for name, (path, found) in cases.items():
        with pytest.raises(DarknetWeightsError) as err:
            load_darknet_weights(yolo, path)
        message = str(err.value)
        assert "\n" not in message, name
        assert f"expects {expected:,} floats" in message and f"holds {found:,} floats" in message, (name, message)
    stray = _sparse_weights_file(tmp_path / "x.weights", header, expected, extra_bytes=2)
    with pytest.raises(DarknetWeightsError, match=r"holds 62,001,757 floats plus 2 stray bytes"):
        load_darknet_weights(yolo, stray)
    assert torch.equal(before, yolo.front.convs["0"].conv.weight)  # nothing was half-loaded


@pytest.mark.parametrize(
    "header",
    [
        struct.pack("<iiiq", -1, 2, 0, 0),
        struct.pack("<iiiq", 0, 5000, 0, 0),
        struct.pack("<iiiq", 7, 0, -3, 0),
        b"\x00\x00\x00\x00\x02\x00",  # shorter than any header
        struct.pack("<iii", 0, 2, 0) + b"\x01\x02",  # header cut inside `seen`
        b"",
    ],
)
def test_darknet_bad_headers_are_refused(yolo: YOLOv3, tmp_path: Path, header: bytes) -> None:
    path = tmp_path / "bad.weights"
    path.write_bytes(header)
    with pytest.raises(DarknetWeightsError) as err:
        load_darknet_weights(yolo, path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DarknetWeightsError, match="does not exist"):
        build_yolov3(tmp_path / "nope.weights")


def test_writing_an_invalid_version_is_refused(yolo: YOLOv3, tmp_path: Path) -> None:
    with pytest.raises(DarknetWeightsError):
        save_darknet_weights(yolo, tmp_path / "v.weights", version=(-1, 0, 0))
    with pytest.raises(DarknetWeightsError, match="int32"):
        darknet_bytes(yolo, version=(0, 1, 0), seen=2**31)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------

NEG = -30.0  # logit whose sigmoid is ~1e-13


def _empty_heads(h: int, w: int, num_classes: int = 80) -> list[torch.Tensor]:
    return [torch.full((1, 3 * (5 + num_classes), math.ceil(h / s), math.ceil(w / s)), NEG) for s in (32, 16, 8)]


def _put(
    heads: list[torch.Tensor],
    head: int,
    anchor: int,
    gy: int,
    gx: int,
    t: list[float],
    obj: float,
    cls: int,
    cls_logit: float = 8.0,
) -> None:
    """Write logits for one anchor: tx, ty, tw, th, objectness, one class."""
    base = anchor * 85
    heads[head][0, base : base + 4, gy, gx] = torch.tensor(t)
    heads[head][0, base + 4, gy, gx] = obj
    heads[head][0, base + 5 + cls, gy, gx] = cls_logit


def test_decode_recovers_a_known_box() -> None:
    heads = _empty_heads(64, 96)
    # stride-8 head (anchors 0,1,2); anchor 1 is (16, 30); cell (gy=3, gx=5); sigmoid(0) = 0.5
    # -> centre ((5 + 0.5) * 8, (3 + 0.5) * 8) = (44, 28); size (16 * 2, 30 * 1) = (32, 30)
    _put(heads, 2, 1, 3, 5, [0.0, 0.0, math.log(2.0), 0.0], obj=6.0, cls=7)
    # stride-32 head, anchor 8 = (373, 326): a huge box that must be clipped to the 96x64 input
    _put(heads, 0, 2, 1, 2, [0.0, 0.0, 0.0, 0.0], obj=4.0, cls=0)
    det = decode_detections(heads, (64, 96))
    assert len(det) == 1
    boxes, scores, labels = det[0]["boxes"], det[0]["scores"], det[0]["labels"]
    assert labels.tolist() == [7, 0]
    torch.testing.assert_close(boxes[0], torch.tensor([28.0, 13.0, 60.0, 43.0]))
    torch.testing.assert_close(boxes[1], torch.tensor([0.0, 0.0, 96.0, 64.0]))
    expected = torch.sigmoid(torch.tensor([6.0, 4.0])) * torch.sigmoid(torch.tensor(8.0))
    torch.testing.assert_close(scores, expected)


def test_class_wise_nms_removes_duplicates_of_one_class_only() -> None:
    heads = _empty_heads(64, 96)
    same_box = {0: (10, 13), 1: (16, 30), 2: (33, 23)}  # anchors of the stride-8 head
    for anchor, obj, cls in ((1, 6.0, 7), (0, 3.0, 7), (2, 2.0, 9)):
        aw, ah = same_box[anchor]
        _put(heads, 2, anchor, 3, 5, [0.0, 0.0, math.log(32 / aw), math.log(30 / ah)], obj=obj, cls=cls)
    det = decode_detections(heads, (64, 96), nms_iou=0.5)[0]
    assert det["labels"].tolist() == [7, 9]  # the weaker class-7 duplicate is gone, class 9 stays
    assert torch.allclose(det["boxes"][0], det["boxes"][1])
    torch.testing.assert_close(det["scores"][0], torch.sigmoid(torch.tensor(6.0)) * torch.sigmoid(torch.tensor(8.0)))
    # sigmoid(2) * sigmoid(8) = 0.88 < 0.9: a stricter threshold drops the class-9 box; max_det caps the count.
    assert decode_detections(heads, (64, 96), conf_thres=0.9)[0]["labels"].tolist() == [7]
    assert len(decode_detections(heads, (64, 96), max_det=1)[0]["labels"]) == 1


def test_decode_with_no_detections_and_real_heads(yolo: YOLOv3) -> None:
    empty = decode_detections(_empty_heads(97, 131), (97, 131))[0]
    assert empty["boxes"].shape == (0, 4) and empty["scores"].shape == (0,) and empty["labels"].shape == (0,)
    # random-weight YOLOv3 on an odd size: shapes and ranges only (detections are meaningless)
    _, heads = _outputs(yolo, torch.rand(2, 3, 97, 131))
    dets = decode_detections(heads, (97, 131), max_det=50)
    assert len(dets) == 2
    for d in dets:
        assert len(d["boxes"]) <= 50
        assert (d["boxes"][:, 0::2] >= 0).all() and (d["boxes"][:, 0::2] <= 131).all()
        assert (d["boxes"][:, 1::2] >= 0).all() and (d["boxes"][:, 1::2] <= 97).all()
        assert ((d["labels"] >= 0) & (d["labels"] < 80)).all()
    with pytest.raises(ValueError):
        decode_detections(heads, (64, 96))


def test_coco_category_mapping() -> None:
    ranges = [(1, 11), (13, 25), (27, 28), (31, 44), (46, 65), (67, 67), (70, 70), (72, 82), (84, 90)]
    expected = [i for lo, hi in ranges for i in range(lo, hi + 1)]
    assert COCO80_TO_COCO91 == expected
    assert len(COCO80_TO_COCO91) == 80 and len(set(COCO80_TO_COCO91)) == 80
    assert COCO80_TO_COCO91[0] == 1 and COCO80_TO_COCO91[79] == 90  # person ... toothbrush


def test_detections_to_coco_maps_back_to_original_size() -> None:
    det = {
        "boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0]]),
        "scores": torch.tensor([0.75]),
        "labels": torch.tensor([11]),  # 12th YOLO class = stop sign = COCO id 13
    }
    out = detections_to_coco(det, image_id=42, scale_xy=(2.0, 0.5))
    assert out == [{"image_id": 42, "category_id": 13, "bbox": [20.0, 10.0, 80.0, 20.0], "score": 0.75}]
