"""``--yolo-cfg PATH``: on every command that takes ``--yolo-weights``, recorded by prepare, checked
where the shards are used, and a missing file refused in one line.

The network is a narrow YOLOv3 (8 classes, width 0.125: C_s = 32) written with
:func:`dvcm.darknet_cfg.write_cfg`, with seeded weights saved as a Darknet ``.weights`` file.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from pipeline.infra.errors import UserError

NARROW_CHANNELS = 32  # 256 x 0.125


def _app() -> typer.Typer:
    from pipeline.cli import app

    return app


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command of the app (typer's click commands), nested groups (``bench ...``) included,
    with its path of names."""
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a group
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def _options(cmd: Any) -> set[str]:
    return {opt for p in cmd.params for opt in p.opts}


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cfg, weights) of the narrow network."""
    from dvcm.darknet_cfg import YOLOV3_NET, YOLOV3_YOLO_TRAINING, DarknetCfg, write_cfg
    from dvcm.yolo import ANCHORS, build_yolov3, save_darknet_weights, yolov3_layers

    root = tmp_path_factory.mktemp("narrow")
    cfg = root / "narrow.cfg"
    cfg.write_text(
        write_cfg(
            DarknetCfg(
                yolov3_layers(num_classes=8, width=0.125),
                8,
                ANCHORS,
                list(YOLOV3_NET),
                [list(YOLOV3_YOLO_TRAINING) for _ in range(3)],
            )
        )
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = build_yolov3(None, seed=5, cfg=cfg)
    assert model.front.out_channels == NARROW_CHANNELS
    return cfg, save_darknet_weights(model, root / "narrow.weights")


@pytest.fixture(scope="module")
def vimeo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Vimeo-shaped tree of 2 sequences of 64x64 frames."""
    from pipeline.data.sample_data import generate_sample

    return generate_sample(
        tmp_path_factory.mktemp("sample"),
        train_sequences=1,
        val_sequences=1,
        frame_size=(64, 64),
        coco_images=0,
        kodak_images=0,
    ).vimeo_root


@pytest.fixture(scope="module")
def narrow_shards(narrow: tuple[Path, Path], vimeo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tree prepared in this process (no Ray) with the narrow network."""
    from pipeline.data.prepare import run_prepare
    from pipeline.data.sources import list_source

    cfg, weights = narrow
    out = tmp_path_factory.mktemp("shards")
    run_prepare(
        list_source("vimeo90k", vimeo, "middle"),
        out,
        str(weights),
        frames="middle",
        shard_size=4,
        use_ray=False,
        progress=False,
        yolo_cfg=str(cfg),
    )
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the option is everywhere


def test_every_command_with_yolo_weights_takes_yolo_cfg() -> None:
    group = typer.main.get_command(_app())
    with_weights = [path for path, cmd in _commands(group) if "--yolo-weights" in _options(cmd)]
    # the enumeration finds the commands known today (a new one is checked without being listed here)
    assert {("prepare",), ("train",), ("sweep",), ("evaluate",), ("decompress",), ("quickstart",)} <= set(with_weights)
    runner = CliRunner()
    for path in with_weights:
        result = runner.invoke(_app(), [*path, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
        assert result.exit_code == 0, result.output
        assert "--yolo-cfg" in result.output and "standard yolov3.cfg" in result.output, (path, result.output)


# ---------------------------------------------------------------- prepare records the network


def test_prepare_records_the_cfg_and_the_feature_channels(narrow: tuple[Path, Path], narrow_shards: Path) -> None:
    from pipeline.data.shards import make_loader

    cfg, weights = narrow
    info = json.loads((narrow_shards / "dataset.json").read_text())
    yolo = info["provenance"]["yolo"]
    assert yolo["feature_channels"] == NARROW_CHANNELS and yolo["cfg_sha256"] == _sha256(cfg)
    assert yolo["weights_sha256"] == _sha256(weights) and yolo["random_weights"] is False
    assert len(info["s_mean"]) == len(info["s_std"]) == NARROW_CHANNELS
    x, s = next(iter(make_loader(str(narrow_shards), "train", crop=None, batch_size=1)))
    assert s.shape[1] == NARROW_CHANNELS and x.shape[-2:] == (64, 64)


def test_prepare_without_a_cfg_records_256_channels_and_no_cfg(vimeo: Path, tmp_path: Path, yolo) -> None:
    from pipeline.data.prepare import run_prepare
    from pipeline.data.sources import list_source

    rep = run_prepare(
        list_source("vimeo90k", vimeo, "middle"),
        tmp_path / "o",
        frames="middle",
        use_ray=False,
        progress=False,
        front=yolo.front,
        yolo_provenance=dict(yolo.provenance),
    )
    prov = rep.info["provenance"]["yolo"]
    assert prov["feature_channels"] == 256 and prov["cfg_sha256"] is None and prov["cfg"] is None


@pytest.mark.slow
def test_prepare_cli_takes_a_relative_cfg_and_records_it_absolute(
    narrow: tuple[Path, Path], vimeo: Path, tmp_path: Path, ray_local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, weights = narrow
    monkeypatch.chdir(cfg.parent)
    result = CliRunner().invoke(
        _app(),
        [
            "prepare",
            "--dataset",
            "vimeo90k",
            "--root",
            str(vimeo),
            "--frames",
            "middle",
            "--out",
            str(tmp_path / "o"),
            "--yolo-weights",
            weights.name,
            "--yolo-cfg",
            cfg.name,
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    yolo = json.loads((tmp_path / "o" / "dataset.json").read_text())["provenance"]["yolo"]
    assert yolo["feature_channels"] == NARROW_CHANNELS and yolo["cfg_sha256"] == _sha256(cfg)
    assert yolo["cfg"] == str(cfg.resolve()) and yolo["weights"] == str(weights.resolve())


# ---------------------------------------------------------------- the shards are checked where they are used


def test_shards_of_another_width_are_refused_naming_both_channel_counts(narrow_shards: Path, tmp_path: Path) -> None:
    from pipeline.training.settings import resolve
    from pipeline.training.sweep import check_data

    settings = resolve("tiny", {}, {"shards": str(narrow_shards)})  # standard seeded YOLOv3: C_s 256
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(UserError) as err:
            check_data(settings, tmp_path / "runs")
    message = str(err.value)
    assert "\n" not in message and "32 channels" in message and "gives 256" in message
    assert "--yolo-weights/--yolo-cfg" in message and "prepare again" in message


def test_the_same_network_passes_and_an_old_dataset_json_means_256(
    narrow: tuple[Path, Path], narrow_shards: Path, tmp_path: Path
) -> None:
    from dvcm.yolo import build_yolov3
    from pipeline.data.shards import check_provenance
    from pipeline.training.settings import resolve
    from pipeline.training.sweep import SweepData, check_shards

    cfg, weights = narrow
    settings = resolve("tiny", {}, {"shards": str(narrow_shards), "yolo_weights": str(weights), "yolo_cfg": str(cfg)})
    assert settings.training.yolo_cfg == str(cfg.resolve())
    t = settings.training
    provenance = dict(build_yolov3(t.yolo_weights, seed=t.yolo_seed, cfg=t.yolo_cfg).provenance)
    # the shards' 64x64 frames hold no training crop (check_data refuses them for training): their provenance only
    data = SweepData(str(narrow_shards), check_shards(str(narrow_shards), provenance), provenance)
    assert data.yolo_provenance["feature_channels"] == NARROW_CHANNELS
    # a dataset.json written before feature_channels was recorded: standard YOLOv3's 256
    info = json.loads((narrow_shards / "dataset.json").read_text())
    for key in ("feature_channels", "cfg", "cfg_sha256"):
        del info["provenance"]["yolo"][key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        standard = dict(build_yolov3(None, seed=0).provenance)
    info["provenance"]["yolo"]["weights_sha256"] = standard["weights_sha256"]
    check_provenance(info, standard)
    with pytest.raises(UserError, match="have 256 channels, but the YOLO front in use gives 32"):
        check_provenance(info, data.yolo_provenance)


def test_a_sweep_resumes_only_with_the_same_cfg(narrow: tuple[Path, Path], narrow_shards: Path, tmp_path: Path) -> None:
    from pipeline.training.settings import resolve
    from pipeline.training.sweep import SweepData, open_record
    from pipeline.training.sweep_state import write_state

    cfg, weights = narrow
    settings = resolve("tiny", {}, {"shards": str(narrow_shards), "yolo_weights": str(weights), "yolo_cfg": str(cfg)})
    info = json.loads((narrow_shards / "dataset.json").read_text())
    prov = {"weights_sha256": _sha256(weights), "cfg_sha256": _sha256(cfg)}
    state = open_record("s", str(tmp_path), False, settings, SweepData(str(narrow_shards), info, prov))
    assert state["training_settings"]["yolo_cfg_sha256"] == _sha256(cfg)
    write_state(str(tmp_path), state)
    open_record("s", str(tmp_path), True, settings, SweepData(str(narrow_shards), info, prov))
    with pytest.raises(UserError, match="yolo_cfg_sha256"):
        open_record(
            "s", str(tmp_path), True, settings, SweepData(str(narrow_shards), info, {**prov, "cfg_sha256": "0" * 64})
        )


# ---------------------------------------------------------------- evaluate and decompress build the same network


def test_evaluate_and_decompress_build_the_network_of_the_cfg(narrow: tuple[Path, Path]) -> None:
    from pipeline.codec.files import resolve_yolo
    from pipeline.evaluation.tasks import Settings, detector

    cfg, weights = narrow
    yolo = detector(Settings(yolo_weights=str(weights), yolo_cfg=str(cfg)))
    assert yolo.front.out_channels == NARROW_CHANNELS and yolo.num_classes == 8
    again = resolve_yolo(dict(yolo.provenance), weights, cfg)
    assert again.provenance["weights_sha256"] == yolo.provenance["weights_sha256"]
    # a checkpoint trained with a cfg: decoding without one is refused in one line, naming the flag
    with pytest.raises(UserError, match=f"the YOLO cfg {cfg}; pass it with --yolo-cfg"):
        resolve_yolo(dict(yolo.provenance), weights, None)


# ---------------------------------------------------------------- a missing cfg: one line


@pytest.mark.slow  # over 5 s: a subprocess or a real job (the fast tier stays near a minute)
def test_a_missing_cfg_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("dvcm-pipeline")
    proc = subprocess.run(
        [
            str(exe),
            "prepare",
            "--dataset",
            "sample",
            "--root",
            str(tmp_path / "sample"),
            "--out",
            str(tmp_path / "o"),
            "--yolo-cfg",
            str(tmp_path / "nope.cfg"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert f"--yolo-cfg {tmp_path / 'nope.cfg'} does not exist" in proc.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "sample").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--shards", "s"],
        ["sweep", "--shards", "s"],
        ["evaluate", "--checkpoint", "c.pt"],
        ["quickstart", "--yolo-weights", "random"],  # its default, the mini detector, brings its own cfg (tested below)
    ],
)
def test_every_stage_refuses_a_missing_cfg_before_starting(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    extra = ["--out", str(tmp_path / "q")] if command[0] in ("quickstart", "evaluate") else []
    result = CliRunner().invoke(_app(), [*command, *extra, "--yolo-cfg", "missing.cfg"])
    assert isinstance(result.exception, UserError), result.output + repr(result.exception)
    message = str(result.exception)
    assert "\n" not in message and message.startswith("--yolo-cfg missing.cfg does not exist")


def test_decompress_refuses_a_missing_cfg() -> None:
    from pipeline.codec.files import resolve_yolo

    with pytest.raises(UserError, match="^--yolo-cfg missing.cfg does not exist"):
        resolve_yolo({}, None, Path("missing.cfg"))


def test_the_quickstart_detector_brings_its_own_cfg(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["quickstart", "--out", str(tmp_path / "q"), "--yolo-cfg", "other.cfg"])
    assert isinstance(result.exception, UserError) and "--yolo-weights mini brings its own cfg" in str(result.exception)
