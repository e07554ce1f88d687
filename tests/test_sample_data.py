"""The deterministic sample generator: layout, determinism, COCO validity (the world's 8 classes), image content."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.sample_data import generate_sample
from pipeline.data.world import WORLD_CLASSES

SMALL = dict(train_sequences=2, val_sequences=1, frame_size=(96, 64), coco_images=3, kodak_images=4)


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory):
    return generate_sample(tmp_path_factory.mktemp("a"), seed=0, **SMALL)


def test_same_seed_same_bytes_other_seed_differs(sample, tmp_path: Path) -> None:
    again = generate_sample(tmp_path / "b", seed=0, **SMALL)
    assert _tree_digest(sample.root) == _tree_digest(again.root)
    other = generate_sample(tmp_path / "c", seed=1, **SMALL)
    a, c = _tree_digest(sample.root), _tree_digest(other.root)
    assert (
        a.keys() == c.keys()
        and a["vimeo_septuplet/sequences/00001/0001/im1.png"] != c["vimeo_septuplet/sequences/00001/0001/im1.png"]
    )


def test_reused_when_complete(sample) -> None:
    frame = sample.vimeo_root / "sequences" / "00001" / "0001" / "im1.png"
    before = frame.stat().st_mtime_ns
    assert generate_sample(sample.root, seed=0, **SMALL) == sample
    assert frame.stat().st_mtime_ns == before


def test_vimeo_layout_and_default_frame_size(sample, tmp_path: Path) -> None:
    root = sample.vimeo_root
    assert (root / "sep_trainlist.txt").read_text().split() == ["00001/0001", "00001/0002"]
    assert (root / "sep_testlist.txt").read_text().split() == ["00001/0003"]
    for seq in ("00001/0001", "00001/0002", "00001/0003"):
        names = sorted(p.name for p in (root / "sequences" / seq).iterdir())
        assert names == [f"im{i}.png" for i in range(1, 8)]
    assert Image.open(root / "sequences/00001/0001/im1.png").size == (96, 64)
    full = generate_sample(tmp_path / "full", train_sequences=1, val_sequences=1, coco_images=0, kodak_images=0)
    with Image.open(full.vimeo_root / "sequences/00001/0001/im4.png") as im:
        assert im.size == (448, 256) and im.mode == "RGB"


def test_frames_move_like_a_video(sample) -> None:
    seq = sample.vimeo_root / "sequences" / "00001" / "0002"
    a, b = (np.asarray(Image.open(seq / f"im{i}.png"), np.float32) for i in (1, 2))
    diff = np.abs(a - b).mean()
    assert 0.5 < diff < 40  # consecutive frames differ, but not like unrelated images


def test_images_look_natural(sample) -> None:
    img = np.asarray(Image.open(sample.kodak_root / "kodim01.png"), np.float32)
    assert img.shape == (512, 768, 3)
    assert img.std() > 10  # not flat
    fine = np.abs(np.diff(img, axis=1)).mean()
    assert 0.5 < fine < 30  # texture and noise, yet mostly smooth
    assert len(np.unique(img.reshape(-1, 3)[::7], axis=0)) > 1000
    assert Image.open(sample.kodak_root / "kodim04.png").size == (512, 768)


def test_coco_annotations_load_with_pycocotools(sample) -> None:
    from pycocotools.coco import COCO

    coco = COCO(str(sample.coco_annotations))
    valid = {cid for cid, _ in WORLD_CLASSES}
    assert valid == set(range(1, 9)) and set(coco.getCatIds()) == valid
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) >= 3
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        path = sample.coco_root / "val2014" / info["file_name"]
        assert info["file_name"] == f"COCO_val2014_{img_id:012d}.jpg"
        with Image.open(path) as im:
            assert im.size == (info["width"], info["height"]) and im.format == "JPEG"
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            x, y, w, h = ann["bbox"]
            assert ann["category_id"] in valid and w > 0 and h > 0
            assert x >= 0 and y >= 0 and x + w <= info["width"] + 0.01 and y + h <= info["height"] + 0.01
