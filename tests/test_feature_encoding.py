"""Feature encodings of the shards: round trips, shards written before encodings had names, an unknown
encoding, and a training step on image-only shards (``prepare --features none``)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.feature_encoding import FEATURE_ENCODINGS, decode_features, encode_features
from pipeline.data.prepare import run_prepare
from pipeline.data.shards import make_loader, read_dataset_info
from pipeline.data.sources import list_source
from pipeline.infra.errors import UserError

OLD_SHARDS = Path(__file__).parent / "data" / "shards_v1"


def _features(seed: int = 0) -> np.ndarray:
    """Leaky-ReLU-like features [32, 12, 20] with channels of different scales."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((32, 12, 20)).astype(np.float32) * rng.uniform(0.05, 8.0, (32, 1, 1)).astype(np.float32)
    return np.where(s > 0, s, 0.1 * s).astype(np.float32)


@pytest.mark.parametrize("encoding", FEATURE_ENCODINGS)
def test_every_encoding_round_trips(encoding: str) -> None:
    s = _features()
    members = encode_features(s, encoding)
    back = decode_features(members)
    assert back.dtype == np.float32 and back.shape == s.shape
    if encoding.startswith("float16"):
        np.testing.assert_array_equal(back, s.astype(np.float16).astype(np.float32))
    else:  # per-channel min-max in 255 steps: at most half a step off, plus float32 rounding
        span = (s.max(axis=(1, 2)) - s.min(axis=(1, 2)))[:, None, None]
        assert np.all(np.abs(back - s) <= span / 255 * 0.5 + 1e-5 * np.abs(s).max())
    if encoding.endswith("-zstd"):  # the compressed encodings hold exactly what the plain ones hold, in fewer bytes
        plain = encode_features(s, encoding.removesuffix("-zstd"))
        np.testing.assert_array_equal(back, decode_features(plain))
        assert sum(map(len, members.values())) < sum(map(len, plain.values()))
    window = decode_features(members, window=(2, 3, 8))
    np.testing.assert_array_equal(window, back[:, 2:10, 3:11])


@pytest.mark.parametrize("encoding", ["float16", "uint8"])
def test_shards_written_before_encodings_had_names_still_read(encoding: str) -> None:
    """tests/data/shards_v1: written by dvcm at b252ed6 (format dvcm-shards/1, ``feature_dtype`` in dataset.json)."""
    root = OLD_SHARDS / encoding
    expected = json.loads((OLD_SHARDS / "expected.json").read_text())["decoded_s_sha256"][encoding]
    info = read_dataset_info(str(root))
    assert info["format"] == "dvcm-shards/1" and info["feature_encoding"] == encoding
    got = [
        hashlib.sha256(s[0].numpy().tobytes()).hexdigest()
        for _, s in make_loader(str(root), "train", crop=None, shuffle_buffer=0)
    ]
    assert got == [expected[k] for k in sorted(expected)]


def test_an_unknown_encoding_is_refused_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "shards"
    shutil.copytree(OLD_SHARDS / "float16", root)
    info = json.loads((root / "dataset.json").read_text())
    info["provenance"]["feature_encoding"] = "float8-lz9"
    (root / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(UserError) as err:
        make_loader(str(root), "train", crop=None)
    message = str(err.value)
    assert "\n" not in message and "'float8-lz9'" in message and "uint8-zstd" in message
    with pytest.raises(UserError, match="not supported"):
        encode_features(_features(), "float8-lz9")


def test_a_training_step_runs_on_image_only_shards(tmp_path: Path, yolo) -> None:
    """``--features none``: samples hold no s, the statistics are still computed, and the training worker computes
    the s that stored shards hold (V_front of the whole frame, cut to the crop), then trains on it."""
    from dvcm.loss import ScalableRDLoss
    from dvcm.registry import build
    from dvcm.train_utils import configure_optimizers
    from pipeline.training.loop import batch_on_device
    from pipeline.training.step import train_step

    src = tmp_path / "images"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(src / f"f{i}.png")
    Image.fromarray(rng.integers(0, 255, (72, 80, 3), dtype=np.uint8)).save(src / "f3.png")  # another size
    listing = list_source("folder", str(src), "all", None, 0.0)
    kw = {"use_ray": False, "progress": False, "front": yolo.front, "yolo_provenance": dict(yolo.provenance)}
    none = run_prepare(listing, tmp_path / "none", feature_encoding="none", **kw)
    stored = run_prepare(listing, tmp_path / "f16", feature_encoding="float16", **kw)
    assert none.info["provenance"]["feature_encoding"] == "none"
    # the statistics of s as computed, against those of s stored in float16
    np.testing.assert_allclose(none.info["s_mean"], stored.info["s_mean"], rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(none.info["s_std"], stored.info["s_std"], rtol=1e-2, atol=1e-3)
    assert (tmp_path / "none" / "train" / "shard-000000.tar").stat().st_size < (
        tmp_path / "f16" / "train" / "shard-000000.tar"
    ).stat().st_size / 2

    cpu = torch.device("cpu")
    # the same crops from both (the same seed): s computed on the worker equals s stored, to float16 rounding
    for batch in (4, 2):  # 4: frames of two sizes in one batch; 2 may be one size
        loaders = [
            make_loader(str(tmp_path / k), "train", crop=56, batch_size=batch, shuffle_buffer=0, seed=5)
            for k in ("none", "f16")
        ]
        batches = list(zip(*loaders))
        assert len(batches) == 4 // batch
        for (x, frames), (x16, s16) in batches:
            assert torch.equal(x, x16) and not isinstance(frames, torch.Tensor)
            x_dev, s = batch_on_device(x, frames, cpu, yolo.front)
            assert s.shape == s16.shape == (batch, 256, 7, 7)
            torch.testing.assert_close(s, s16, rtol=2e-3, atol=2e-3)
    # through a DataLoader worker process, as training reads with loader_workers > 0
    ((x_w, frames_w),) = make_loader(
        str(tmp_path / "none"), "train", crop=56, batch_size=4, shuffle_buffer=0, seed=5, num_workers=1
    )
    ((_, s16),) = make_loader(str(tmp_path / "f16"), "train", crop=56, batch_size=4, shuffle_buffer=0, seed=5)
    torch.testing.assert_close(batch_on_device(x_w, frames_w, cpu, yolo.front)[1], s16, rtol=2e-3, atol=2e-3)
    torch.manual_seed(0)
    model = build("proposed", front=yolo.front, N=8, M1=4, M2=8, H=2).train()
    mean, std = torch.tensor(none.info["s_mean"]), torch.tensor(none.info["s_std"])
    model.set_feature_stats(mean, std)
    net_opt, aux_opt = configure_optimizers(model, 1e-3, 1e-3)
    before = [p.detach().clone() for p in model.g_a1.parameters()]
    x, frames = next(iter(make_loader(str(tmp_path / "none"), "train", crop=64, batch_size=2, shuffle_buffer=0)))
    terms = train_step(
        model,
        model,
        ScalableRDLoss(0.01, 1.0, s_mean=mean, s_std=std),
        net_opt,
        aux_opt,
        batch_on_device(x, frames, cpu, model.front),
    )
    assert torch.isfinite(terms["loss"]) and float(terms["D_s"]) > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.g_a1.parameters()))


def test_a_folder_prepared_by_an_earlier_dvcm_resumes(tmp_path: Path, yolo) -> None:
    """A plan.json of format dvcm-shards/1 (``feature_dtype``), its sidecars' digests made from it, as an earlier
    dvcm wrote them: the same preparation, asked in today's words, skips every finished shard."""
    from pipeline.data.prepare import _canonical_digest, recorded_encoding

    src = tmp_path / "images"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(src / f"f{i}.png")
    listing = list_source("folder", str(src), "all", None, 0.0)
    kw = {
        "use_ray": False,
        "progress": False,
        "front": yolo.front,
        "yolo_provenance": dict(yolo.provenance),
        "shard_size": 2,
    }
    out = tmp_path / "shards"
    run_prepare(listing, out, feature_encoding="float16", **kw)
    plan = json.loads((out / "plan.json").read_text())
    legacy = {
        **{k: v for k, v in plan.items() if k != "feature_encoding"},
        "format": "dvcm-shards/1",
        "feature_dtype": "float16",
    }
    (out / "plan.json").write_text(json.dumps(legacy))
    for sidecar in out.glob("*/shard-*.json"):
        d = json.loads(sidecar.read_text())
        keys = [r["key"] for r in d["rows"]]
        d["plan_digest"] = _canonical_digest([_canonical_digest(legacy), d["split"], d["index"], keys])
        sidecar.write_text(json.dumps(d))
    tars = {p: p.read_bytes() for p in out.glob("*/shard-*.tar")}
    assert recorded_encoding(out) == "float16"
    with pytest.raises(UserError, match="another preparation"):  # today's default is another encoding
        run_prepare(listing, out, **kw)
    again = run_prepare(listing, out, feature_encoding="float16", **kw)
    assert again.shards_written == 0 and again.shards_skipped == 2
    assert {p: p.read_bytes() for p in out.glob("*/shard-*.tar")} == tars
    assert read_dataset_info(str(out))["feature_encoding"] == "float16"
