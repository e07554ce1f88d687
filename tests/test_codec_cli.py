"""The codec commands as a user runs them: real processes, real files, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dvcm.checkpoint import save_checkpoint
from dvcm.registry import build
from dvcm.yolo import build_yolov3
from tests.synthetic import natural_image

pytestmark = pytest.mark.slow  # integration: real Ray, MLflow, Chromium or subprocess CLIs


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True)


def assert_user_error(res: subprocess.CompletedProcess, pattern: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and pattern in lines[0], res.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    yolo = build_yolov3(seed=0)
    torch.manual_seed(0)
    model = build("proposed", front=yolo.front, yolo_provenance=yolo.provenance, N=16, M1=8, M2=16, H=2)
    save_checkpoint(root / "ckpt.pt", model)
    other = build("choi2022", front=yolo.front, yolo_provenance=yolo.provenance, N=16, M1=16, M2=8, H=1)
    save_checkpoint(root / "other.pt", other)
    img = (natural_image(0, 75, 101).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(img).save(root / "img.png")
    return root


def test_compress_then_decompress_both_ways(files):
    res = cli("compress", str(files / "img.png"), "-o", str(files / "img.dvcm"), "--checkpoint", str(files / "ckpt.pt"))
    assert res.returncode == 0, res.stderr
    assert "bpp" in res.stdout and "base" in res.stdout
    res = cli(
        "decompress", str(files / "img.dvcm"), "-o", str(files / "out.png"), "--checkpoint", str(files / "ckpt.pt")
    )
    assert res.returncode == 0, res.stderr
    assert Image.open(files / "out.png").size == (101, 75)
    # A machine gets only the base layer: cut the file and decode it alone.
    from dvcm.bitstream import base_layer

    (files / "base.dvcm").write_bytes(base_layer((files / "img.dvcm").read_bytes()))
    res = cli("decompress", str(files / "base.dvcm"), "--base-only", "-o", str(files / "machine"),
              "--checkpoint", str(files / "ckpt.pt"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    s_hat = np.load(files / "machine.npy")
    assert s_hat.shape == (256, 10, 13)
    det = json.loads((files / "machine.detections.json").read_text())
    assert det["image_hw"] == [75, 101] and det["yolo"]["random_weights"] is True
    assert "random-weight YOLOv3" in det["yolo"]["note"] and "random-weight YOLOv3" in res.stdout
    # The whole image needs the enhancement layer.
    res = cli(
        "decompress", str(files / "base.dvcm"), "-o", str(files / "x.png"), "--checkpoint", str(files / "ckpt.pt")
    )
    assert_user_error(res, "base layer only")


def test_cli_errors_are_one_line(files):
    ck = str(files / "ckpt.pt")
    assert_user_error(cli("compress", str(files / "nope.png"), "-o", str(files / "a.dvcm"), "--checkpoint", ck),
                      "image not found")  # fmt: skip
    (files / "bad.png").write_bytes(b"\x89PNG not really")
    assert_user_error(cli("compress", str(files / "bad.png"), "-o", str(files / "a.dvcm"), "--checkpoint", ck),
                      "cannot read")  # fmt: skip
    (files / "bad.pt").write_bytes(b"garbage")
    assert_user_error(cli("compress", str(files / "img.png"), "-o", str(files / "a.dvcm"), "--checkpoint",
                          str(files / "bad.pt")), "not a loadable dvcm checkpoint")  # fmt: skip
    assert_user_error(cli("decompress", str(files / "missing.dvcm"), "-o", str(files / "x.png"), "--checkpoint", ck),
                      "bitstream not found")  # fmt: skip
    res = cli("compress", str(files / "img.png"), "-o", str(files / "b.dvcm"), "--checkpoint", ck)
    assert res.returncode == 0, res.stderr
    assert_user_error(cli("decompress", str(files / "b.dvcm"), "-o", str(files / "x.png"), "--checkpoint",
                          str(files / "other.pt")), "coded by proposed")  # fmt: skip
    assert not (files / "x.png").exists()


def test_the_demo_codes_an_unseen_scene_with_the_zoo_codec_and_finds_objects_from_the_base_layer(tmp_path) -> None:
    """Issue 28: the demo showed an untrained codec (6.62 dB). Now: PSNR above 30 dB, detections from the base layer
    alone next to those on the original, both images written with their boxes; --untrained keeps the format demo."""
    import re

    res = cli("demo", "--out", str(tmp_path / "d"))
    assert res.returncode == 0, res.stderr
    psnr = float(re.search(r"both layers decoded: PSNR (\d+\.\d+) dB", res.stdout).group(1))
    base = re.search(r"base layer: +(.+)", res.stdout).group(1)
    assert psnr > 30 and base != "none" and re.search(r"original: +\w", res.stdout), res.stdout
    assert re.search(r"base layer (\d\.\d+) bpp .* enhancement (\d\.\d+) bpp", res.stdout)
    for name in ("proposed.dvcm", "original_detections.png", "base_layer_detections.png"):
        assert (tmp_path / "d" / name).is_file()
    assert Image.open(tmp_path / "d" / "base_layer_detections.png").size == (512, 512)
    untrained = cli("demo", "--untrained", "--out", str(tmp_path / "u"))
    assert untrained.returncode == 0 and "the codec is untrained" in untrained.stdout
    assert_user_error(cli("demo", "--out", str(tmp_path / "d" / "proposed.dvcm")), "is a file; give a folder")
