"""Codecs of any C_s: the proposed and Choi codecs take the channel count of s from a narrow YOLOv3 front."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dvcm.bitstream import compress, decode, decode_base
from dvcm.checkpoint import load_checkpoint, save_checkpoint
from dvcm.errors import CheckpointError, ConfigError
from dvcm.registry import build
from dvcm.yolo import YoloFront, YOLOv3, seed_weights, yolov3_layers

SMALL = {"N": 8, "M1": 4, "M2": 8}


def _narrow_front(width: float = 0.25) -> YoloFront:
    model = seed_weights(YOLOv3(8, yolov3_layers(8, width=width)), seed=3)
    return model.front


@pytest.mark.parametrize(("name", "hyper"), [("proposed", 2), ("choi2022", 1)])
def test_a_codec_takes_c_s_from_a_narrow_front_and_codes_real_bytes(name: str, hyper: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build(name, front=_narrow_front(), H=hyper, **SMALL).eval()
    assert model.C_s == 64 and model.config["C_s"] == 64
    x = torch.rand(1, 3, 70, 90)
    out = model(x)
    assert out["s"].shape == out["s_hat"].shape == (1, 64, 9, 12)

    model.update(force=True)
    ckpt = tmp_path / "narrow.pt"
    save_checkpoint(ckpt, model)
    loaded, meta = load_checkpoint(ckpt)
    assert meta["config"]["C_s"] == 64 and loaded.C_s == 64
    assert loaded.fingerprint == model.fingerprint
    data = compress(model, x)
    assert torch.equal(decode(loaded, data), decode(model, data))
    assert decode_base(loaded, data).shape == (1, 64, 9, 12)


def test_standard_width_config_has_no_c_s_key() -> None:
    """Format 1 files name N, M1, M2, H only; a 256-channel codec keeps that configuration and fingerprint."""
    model = build("proposed", **SMALL, H=2)
    assert model.C_s == 256 and "C_s" not in model.config


def test_a_checkpoint_for_another_c_s_is_refused_in_one_line(tmp_path: Path) -> None:
    model = build("proposed", front=_narrow_front(), H=2, **SMALL)
    ckpt = tmp_path / "narrow.pt"
    save_checkpoint(ckpt, model)
    with pytest.raises(CheckpointError, match=r"C_s = 64 channels, but the YOLO front in use gives 256") as err:
        load_checkpoint(ckpt, yolo_provenance={"feature_channels": 256})
    assert "\n" not in str(err.value)


def test_a_front_that_contradicts_c_s_and_stats_of_another_width_are_refused() -> None:
    with pytest.raises(ConfigError, match="gives s with 64 channels, the codec is configured for C_s = 256"):
        build("proposed", front=_narrow_front(), C_s=256, H=2, **SMALL)
    model = build("choi2022", front=_narrow_front(), H=1, **SMALL)
    with pytest.raises(ConfigError, match="256 channels, the codec's s has C_s = 64"):
        model.set_feature_stats(torch.zeros(256), torch.ones(256))
