"""Standard-codec anchors (pipeline.evaluation.anchors): real encoders, real decoders, byte accounting."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluation.anchors import ANCHORS, available_anchors
from pipeline.infra.errors import UserError


def _image(w: int = 70, h: int = 46) -> Image.Image:
    """A smooth image with an edge (odd-ish size to exercise padding/cropping)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 / w, yy * 255 / h, ((xx > w // 2) * 200 + 30) * np.ones_like(xx)], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def _psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


CODECS, NOTICES = available_anchors()


def test_every_anchor_is_either_available_or_reported() -> None:
    assert len(CODECS) + len(NOTICES) == len(ANCHORS)
    assert "jpeg" in {c.name for c in CODECS}  # Pillow always has JPEG
    for line in NOTICES:
        assert "\n" not in line and "skipped" in line


@pytest.mark.parametrize("codec", CODECS, ids=[c.name for c in CODECS])
def test_encoder_round_trip(codec) -> None:
    img = _image()
    q = codec.params[len(codec.params) // 2]
    enc = codec.encode(img, q)
    assert enc.decoded.size == img.size and enc.decoded.mode == "RGB"
    assert _psnr(img, enc.decoded) > 20.0
    assert 0 < enc.codestream_bytes <= enc.file_bytes
    if codec.name in ("jpeg", "webp", "avif"):  # containers: headers are counted apart
        assert enc.container_bytes > 0 and enc.codestream_bytes < enc.file_bytes
    else:  # raw Annex-B streams
        assert enc.container_bytes == 0
    # a coarser parameter costs fewer bytes
    lo = codec.encode(img, codec.params[0])
    assert lo.codestream_bytes < codec.encode(img, codec.params[-1]).codestream_bytes


def test_missing_encoders_are_reported_not_crashed(tmp_path: Path, monkeypatch) -> None:
    """An ffmpeg without libx265/libvvenc (a real executable that lists no encoders)."""
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\necho 'Encoders:'\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setitem(os.environ, "IMAGEIO_FFMPEG_EXE", str(fake))
    codecs, notices = available_anchors(["jpeg", "hevc", "vvc"])
    assert [c.name for c in codecs] == ["jpeg"]
    assert len(notices) == 2 and all("skipped" in n and "encoder" in n for n in notices)


def test_unknown_anchor_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown anchor"):
        available_anchors(["jpeg2000x"])


def test_anchor_params_refuse_unknown_codecs():
    from pipeline.evaluation.anchors import parse_anchor_params
    from pipeline.infra.errors import UserError

    assert parse_anchor_params("jpeg=10,40;hevc=37") == {"jpeg": (10, 40), "hevc": (37,)}
    with pytest.raises(UserError, match="unknown codecs"):
        parse_anchor_params("jpg=10")
