"""The bundled mini YOLOv3s (plain and photographic world): each ships whole, matches its provenance, and
``--yolo-weights mini`` or ``mini-photographic`` selects it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dvcm.yolo import build_yolov3
from dvcm.zoo import (
    MINI_DETECTOR,
    MINI_DETECTORS,
    RANDOM_DETECTOR,
    WORLD_STYLE_DETECTORS,
    bundled_detector,
    detector_name,
    mini_detector,
    mini_detector_dir,
)
from pipeline.infra.errors import UserError
from pipeline.infra.yolo_files import yolo_files


@pytest.mark.parametrize("name", list(MINI_DETECTORS))
def test_each_bundled_detector_is_small_whole_named_and_sees(name: str) -> None:
    weights, cfg, provenance = mini_detector(name)
    assert weights.stat().st_size <= 8 * 2**20
    yolo = build_yolov3(weights, cfg=cfg)
    assert yolo.num_classes == 8 and yolo.front.out_channels == round(256 * provenance["settings"]["width"])
    assert provenance["name"].startswith("mini YOLOv3 (width") and "synthetic world" in provenance["name"]
    for key in ("world_seed", "data_digest", "command", "code_version", "test_map50", "random_weights_test_map50"):
        assert key in provenance
    assert provenance["test_map50"] > 10 * provenance["random_weights_test_map50"] + 0.2  # a detector that sees
    assert WORLD_STYLE_DETECTORS[provenance.get("world_style", "plain")] == name  # trained on its style's world
    assert bundled_detector(build_yolov3(weights, cfg=cfg).provenance) == name


@pytest.mark.parametrize("name", list(MINI_DETECTORS))
def test_yolo_weights_mini_selects_it_with_its_cfg(name: str) -> None:
    weights, cfg, _ = mini_detector(name)
    assert yolo_files(name, None) == (str(weights), str(cfg))
    assert yolo_files(name, cfg) == (str(weights), str(cfg))
    with pytest.raises(UserError, match="brings its own cfg"):
        yolo_files(name, Path(__file__))


def test_a_damaged_bundle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dvcm.errors import DarknetWeightsError

    copy = tmp_path / "mini_yolov3"
    copy.mkdir()
    for f in mini_detector_dir().iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    meta = json.loads((copy / "detector.json").read_text())
    (copy / "detector.weights").write_bytes((copy / "detector.weights").read_bytes()[:-4] + b"\0\0\0\0")
    monkeypatch.setattr("dvcm.zoo.mini_detector_dir", lambda name=MINI_DETECTOR: copy)
    with pytest.raises(DarknetWeightsError, match="does not match the sha256"):
        mini_detector()
    assert meta["weights_sha256"]


def test_yolo_weights_random_is_the_seeded_network() -> None:
    assert yolo_files(RANDOM_DETECTOR, None) == (None, None)


def test_every_output_names_the_detector_from_its_provenance() -> None:
    weights, cfg, provenance = mini_detector()
    mini = build_yolov3(weights, cfg=cfg)
    assert detector_name(mini.provenance) == provenance["name"]
    assert provenance["name"] == "mini YOLOv3 (width 0.125, 8 classes) trained on the synthetic world"
    assert (
        detector_name({"random_weights": True, "weights_sha256": provenance["weights_sha256"]})
        == "random-weight YOLOv3"
    )
    assert detector_name({"weights_sha256": "0" * 64}) == "YOLOv3"
    assert (
        detector_name({"weights_sha256": "0" * 64, "cfg": "/nets/yolov3-tiny-world.cfg"})
        == "YOLOv3 (yolov3-tiny-world.cfg)"
    )


@pytest.mark.slow  # over 5 s: a subprocess or a real job (the fast tier stays near a minute)
def test_every_zoo_checkpoint_carries_its_provenance_and_loads_by_name() -> None:
    from dvcm.checkpoint import load_checkpoint
    from dvcm.registry import config_text
    from dvcm.zoo import codec_zoo, codec_zoo_dir

    entries = codec_zoo()
    models = {e["model"] for e in entries.values()}
    assert models == {"proposed", "choi2022", "bmshj2018"} and len({e["lmbda"] for e in entries.values()}) >= 4
    for name, e in entries.items():
        for key in ("command", "seed", "data_digest", "code_version", "sha256", "lmbda", "gamma", "detector"):
            assert e.get(key) is not None, (name, key)
        assert e["seed"] == 0 and e["detector"]["weights_sha256"] == mini_detector()[2]["weights_sha256"]
        model, meta = load_checkpoint(f"zoo:{name}")
        assert meta["model"] == e["model"] and config_text(e["model"], model.config) == e["config"]
    shipped = sum(p.stat().st_size for p in codec_zoo_dir().iterdir()) + sum(
        p.stat().st_size for p in mini_detector_dir().iterdir()
    )
    assert shipped <= 20 * 2**20


def test_an_unknown_zoo_name_is_refused_naming_the_known_ones() -> None:
    from dvcm.errors import CheckpointError
    from dvcm.zoo import zoo_checkpoint

    with pytest.raises(CheckpointError, match=r"no checkpoint zoo:proposed-l9 in the zoo; known: zoo:"):
        zoo_checkpoint("zoo:proposed-l9")


def test_a_published_file_decodes_with_its_zoo_checkpoint_to_the_same_pixels() -> None:
    import torch

    from dvcm.checkpoint import load_checkpoint
    from tests.data.make_zoo_bitstream import HERE, decoded

    expected = torch.load(HERE / "zoo_bitstream.pt", weights_only=True)
    model, _ = load_checkpoint(expected["checkpoint"])
    got = decoded(model, (HERE / "zoo_bitstream.dvcm").read_bytes())
    # the same 8-bit pixels (one level of rounding apart at most, as another CPU's float sums may give)
    assert (got["x_hat"].int() - expected["x_hat"].int()).abs().max() <= 1
    assert (got["x_hat"] != expected["x_hat"]).float().mean() < 1e-3
    assert torch.allclose(got["s_hat"].float(), expected["s_hat"].float(), atol=2e-3, rtol=1e-3)


def test_the_zoo_fits_the_plain_detector_only_and_a_study_takes_its_style_s_detector(tmp_path: Path) -> None:
    """The zoo's codecs were trained on the plain detector's s: the quickstart fine-tunes them only on its shards
    (mini-photographic's would be refused by every checkpoint); a study takes the bundled detector of its style."""
    from dvcm.errors import DarknetWeightsError
    from dvcm.zoo import codec_zoo_fits as zoo_fits
    from pipeline.workflows.reproduce import detector_stage

    for name in MINI_DETECTORS:
        weights, cfg, _ = mini_detector(name)
        yolo = build_yolov3(weights, cfg=cfg)
        assert zoo_fits(yolo.provenance) == (name == MINI_DETECTOR)
    assert not zoo_fits({})
    for style, name in WORLD_STYLE_DETECTORS.items():
        weights, cfg, _ = mini_detector(name)
        assert detector_stage(tmp_path, False, "sqlite:///unused.db", None, None, style) == (str(weights), str(cfg))
    with pytest.raises(DarknetWeightsError, match="no bundled detector 'glossy'; known: mini, mini-photographic"):
        mini_detector("glossy")
