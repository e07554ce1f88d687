"""The shard reader: recomputation check, aligned crops, rank/worker splits, provenance, errors.

Shards are prepared in this process (no Ray) from a small generated Vimeo-shaped sample.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.feature_encoding import decode_features
from pipeline.data.prepare import run_prepare
from pipeline.data.sample_data import generate_sample
from pipeline.data.shards import (
    ChannelStats,
    check_provenance,
    feature_stats,
    make_loader,
    read_dataset_info,
    shard_urls,
)
from pipeline.data.sources import list_source
from pipeline.infra.errors import UserError

SIZE = (256, 192)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, yolo) -> Path:
    parts = generate_sample(
        tmp_path_factory.mktemp("sample"),
        train_sequences=2,
        val_sequences=1,
        frame_size=SIZE,
        coco_images=0,
        kodak_images=0,
    )
    out = tmp_path_factory.mktemp("shards") / "vimeo"
    listing = list_source("vimeo90k", parts.vimeo_root, 3)  # frames 1, 4, 7: 6 train, 3 val
    run_prepare(
        listing,
        out,
        shard_size=2,
        use_ray=False,
        front=yolo.front,
        feature_encoding="float16",
        yolo_provenance=dict(yolo.provenance),
        progress=False,
    )  # float16: the windows compare to 2e-3
    return out


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.numpy().tobytes()).hexdigest()


def test_stored_features_equal_front_of_decoded_image(prepared: Path, yolo) -> None:
    with tarfile.open(prepared / "train" / "shard-000001.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    keys = sorted({name.split(".", 1)[0] for name in members})
    assert len(keys) == 2
    for key in keys:
        img = np.asarray(Image.open(io.BytesIO(members[f"{key}.png"])).convert("RGB"))
        x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            s = yolo.front(x)[0].numpy()
        stored = decode_features({"s.npy": members[f"{key}.s.npy"]})
        assert stored.shape == s.shape == (256, SIZE[1] // 8, SIZE[0] // 8)
        np.testing.assert_allclose(stored, s, rtol=2e-3, atol=1e-5)
        meta = json.loads(members[f"{key}.json"])
        assert meta["width"] == SIZE[0] and meta["height"] == SIZE[1] and meta["frame"] in (1, 4, 7)


def test_crop_windows_match_front_of_the_image_window(prepared: Path, yolo) -> None:
    loader = make_loader(str(prepared), "train", crop=128, batch_size=3, shuffle_buffer=4, seed=3)
    x, s = next(iter(loader))
    assert x.shape == (3, 3, 128, 128) and s.shape == (3, 256, 16, 16)
    assert x.dtype == s.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    with torch.no_grad():
        s_crop = yolo.front(x)
    inner = (slice(None), slice(None), slice(4, 12), slice(4, 12))  # away from the receptive-field border
    np.testing.assert_allclose(s[inner].numpy(), s_crop[inner].numpy(), rtol=2e-3, atol=1e-5)
    # a window shifted by one feature cell would not match
    assert not torch.allclose(s[:, :, 4:12, 5:13], s_crop[:, :, 4:12, 4:12], rtol=2e-3, atol=1e-5)


def test_whole_frames_and_determinism(prepared: Path) -> None:
    frames = list(make_loader(str(prepared), "val", crop=None, shuffle_buffer=0))
    assert len(frames) == 3 and all(x.shape == (1, 3, SIZE[1], SIZE[0]) for x, _ in frames)
    a = [_digest(x) for x, _ in make_loader(str(prepared), "train", crop=64, batch_size=2, seed=5)]
    b = [_digest(x) for x, _ in make_loader(str(prepared), "train", crop=64, batch_size=2, seed=5)]
    c = [_digest(x) for x, _ in make_loader(str(prepared), "train", crop=64, batch_size=2, seed=6)]
    assert a == b and a != c and len(a) == 3


@pytest.mark.parametrize("split,shards", [("train", 3), ("val", 2)])
def test_ranks_get_disjoint_data_covering_the_split(prepared: Path, split: str, shards: int) -> None:
    assert len(shard_urls(str(prepared), split)) == shards
    everything = {_digest(x) for x, _ in make_loader(str(prepared), split, crop=None)}
    world = 3  # val has fewer shards than ranks: the split falls back to samples
    per_rank = [
        {_digest(x) for x, _ in make_loader(str(prepared), split, crop=None, rank=r, world_size=world)}
        for r in range(world)
    ]
    assert all(per_rank)
    assert set().union(*per_rank) == everything
    assert sum(len(p) for p in per_rank) == len(everything)


def test_loader_workers_split_shards(prepared: Path) -> None:
    single = sorted(_digest(x) for x, _ in make_loader(str(prepared), "train", crop=None))
    workers = sorted(_digest(x) for x, _ in make_loader(str(prepared), "train", crop=None, num_workers=2))
    assert single == workers and len(single) == 6


def test_repeat_goes_on_with_new_epochs(prepared: Path) -> None:
    it = iter(make_loader(str(prepared), "val", crop=64, batch_size=1, repeat=True, shuffle_buffer=8))
    batches = [next(it) for _ in range(7)]
    assert len(batches) == 7


def test_provenance_is_checked(prepared: Path, yolo) -> None:
    info = read_dataset_info(str(prepared))
    check_provenance(info, yolo.provenance)
    make_loader(str(prepared), "train", yolo_provenance=yolo.provenance, crop=64)
    other = {**yolo.provenance, "weights_sha256": "ab" * 32}
    with pytest.raises(UserError) as err:
        make_loader(str(prepared), "train", yolo_provenance=other)
    msg = str(err.value)
    assert yolo.provenance["weights_sha256"] in msg and "ab" * 32 in msg and "12" in msg
    with pytest.raises(UserError, match="split layer 12.*split layer 13"):
        check_provenance(info, {**yolo.provenance, "split_layer": 13})


def test_feature_stats_and_info_errors(prepared: Path, tmp_path: Path) -> None:
    mean, std = feature_stats(read_dataset_info(str(prepared)))
    assert mean.shape == std.shape == (256,) and mean.dtype == torch.float32 and bool((std > 0).all())
    with pytest.raises(UserError, match="not a prepared dataset"):
        read_dataset_info(str(tmp_path / "missing"))
    (tmp_path / "dataset.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        read_dataset_info(str(tmp_path))
    (tmp_path / "dataset.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a JSON object"):
        read_dataset_info(str(tmp_path))
    with pytest.raises(UserError, match="no split 'test'"):
        shard_urls(str(prepared), "test")
    with pytest.raises(UserError, match="multiple of 8"):
        make_loader(str(prepared), crop=100)


def test_channel_stats_merge_is_exact() -> None:
    rng = np.random.default_rng(0)
    frames = [rng.normal(3.0, 0.02, (4, 5, 6 + i)) for i in range(5)]
    left, right = ChannelStats(4), ChannelStats(4)
    for f in frames[:2]:
        left.update(f)
    for f in frames[2:]:
        right.update(f)
    left.merge(right)
    flat = np.concatenate([f.reshape(4, -1) for f in frames], axis=1)
    np.testing.assert_allclose(left.mean, flat.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(left.std, flat.std(axis=1), rtol=1e-9)
    assert left.n == flat.shape[1]
    restored = ChannelStats.from_dict(json.loads(json.dumps(left.to_dict())))
    assert np.array_equal(restored.mean, left.mean) and np.array_equal(restored.m2, left.m2)


# ------------------------------------------------------------------ damaged shards (issue 28, defects 3 and 5)
def _copy(prepared: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(prepared, tmp_path / "copy"))


def test_every_shard_is_checked_against_the_size_and_sha256_dataset_json_records(
    prepared: Path, tmp_path: Path
) -> None:
    from pipeline.data.shards import check_shard_files

    info = read_dataset_info(str(prepared))
    assert check_shard_files(str(prepared), info).endswith("checked by size and sha256")
    copy = _copy(prepared, tmp_path)
    shard = copy / "train" / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF  # one flipped byte, same size
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"shard train/shard-000000\.tar does not have the sha256"):
        check_shard_files(str(copy), info)
    assert "size (too large to hash)" in check_shard_files(str(copy), info, verify=False)  # sizes alone: same size
    shard.write_bytes(bytes(data[:-1024]))  # truncated at a tar block
    with pytest.raises(UserError, match=r"shard train/shard-000000\.tar is \d+ bytes, dataset.json records"):
        check_shard_files(str(copy), info, verify=False)
    shard.unlink()
    with pytest.raises(UserError, match="is missing"):
        check_shard_files(str(copy), info)


@pytest.mark.parametrize("damage", [{"s_std": 0.0}, {"s_std": float("nan")}, {"s_mean": None}])
def test_feature_statistics_that_would_blow_up_the_loss_are_refused(prepared: Path, damage: dict) -> None:
    info = read_dataset_info(str(prepared))
    key, value = next(iter(damage.items()))
    info[key] = None if value is None else [value] + info[key][1:]
    with pytest.raises(UserError, match="s_mean and s_std"):
        feature_stats(info)


def test_a_damaged_sample_is_one_line_that_names_its_shard() -> None:
    from pipeline.data.shards import _decode_sample

    def npy(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    png = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(png, format="PNG")
    s8 = np.zeros((4, 8, 8), np.uint8)
    good_range = np.tile(np.array([[0.0, 1.0]], np.float32), (4, 1))
    base = {"__key__": "k1", "__url__": "train/shard-000003.tar", "png": png.getvalue(), "s.npy": npy(s8)}
    rng = __import__("random").Random(0)
    x, s = _decode_sample({**base, "s_range.npy": npy(good_range)}, None, rng)  # the control
    assert s.shape == (4, 8, 8) and np.isfinite(s).all()
    cases = {
        "lacks its s_range.npy member": base,
        "s_range.npy is damaged": {**base, "s_range.npy": npy(np.full((4, 2), np.nan, np.float32))},
        "lacks its png member": {k: v for k, v in base.items() if k != "png"},
        "its png does not decode": {**base, "png": png.getvalue()[:40], "s_range.npy": npy(good_range)},
        "the image needs (8, 8)": {**base, "s.npy": npy(np.zeros((4, 5, 8), np.float16))},
        "not finite": {**base, "s.npy": npy(np.full((4, 8, 8), np.inf, np.float16))},
    }
    for message, sample in cases.items():
        with pytest.raises(UserError, match=re.escape(message)) as info:
            _decode_sample(sample, None, rng)
        assert "shard-000003.tar" in str(info.value) and "\n" not in str(info.value)
