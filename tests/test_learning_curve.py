"""``bench learning-curve``: a run trains with the sweep's loop and is scored as ``evaluate`` scores; a rerun keeps
what it finished; the plateau reading."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

from pipeline.bench.learning_curve import CurveData, CurveRun, jpeg_psnr_at, plateau_step, run_learning_curve
from pipeline.infra.errors import UserError


def test_plateau_step_is_the_first_step_after_which_the_value_never_rises_by_more_than_the_tolerance() -> None:
    points = [{"step": s, "psnr": v} for s, v in [(1, 20.0), (2, 25.0), (3, 25.05), (4, 25.3), (5, 25.35)]]
    assert plateau_step(points, "psnr", 0.1) == 4  # from step 2 it still rises by 0.35, from 4 by 0.05
    assert plateau_step(points, "psnr", 0.5) == 2
    rising = [{"step": s, "psnr": float(s)} for s in range(1, 5)]
    assert plateau_step(rising, "psnr", 0.1) is None  # still rising at its last step: not read as a plateau


def test_jpeg_psnr_at_interpolates_in_log_bpp_and_refuses_to_extrapolate() -> None:
    curve = [{"bpp": 0.1, "psnr": 25.0}, {"bpp": 1.0, "psnr": 35.0}]
    assert jpeg_psnr_at(curve, math.sqrt(0.1)) == pytest.approx(30.0)
    assert jpeg_psnr_at(curve, 0.05) is None and jpeg_psnr_at(curve, 2.0) is None


def test_a_folder_that_is_no_study_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a reproduce study folder") as err:
        CurveData.of_study(tmp_path, "random")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_a_learning_curve_trains_scores_and_resumes(tmp_path: Path, tiny_shards: Path) -> None:
    from pipeline.data.sample_data import generate_sample

    study = tmp_path / "study"
    shutil.copytree(tiny_shards, study / "shards")
    generate_sample(study / "data", train_sequences=2, val_sequences=1)  # the same world as tiny_shards: its images
    data = CurveData.of_study(study, "random")
    run = CurveRun("proposed", 1e-3, 0.0932, 1.0, steps=4, every=2, preset="tiny")
    out, plot = tmp_path / "curve.json", tmp_path / "curve.png"
    kept = tmp_path / "kept"
    with pytest.warns(UserWarning, match="seeded random weights"):
        doc = run_learning_curve(
            data, [run], coco_images=2, kodak_images=1, json_file=out, plot_file=plot, threads=1, keep=kept
        )
    assert [f.name for f in kept.iterdir()] == [f"{run.key}.pt"]  # the last checkpoint, to warm-start others from
    entry = doc["runs"][run.key]
    assert entry["complete"] and [p["step"] for p in entry["points"]] == [2, 4]
    for p in entry["points"]:
        assert math.isfinite(p["psnr"]) and p["bpp"] > 0 and p["bpp_base"] > 0 and 0 <= p["map50"] <= 1
        assert math.isfinite(p["val_loss"]) and p["train_seconds"] > 0
    assert len(doc["jpeg"]) > 3 and plot.stat().st_size > 10_000
    assert json.loads(out.read_text())["runs"][run.key]["points"] == entry["points"]

    # a rerun with the same file keeps the finished run: the same points, not trained again
    again = run_learning_curve(data, [run], coco_images=2, kodak_images=1, json_file=out, plot_file=plot, threads=1)
    assert again["runs"][run.key]["points"] == entry["points"]
    # one bench at a time per --json
    from pipeline.bench.learning_curve import _json_lock, start_step

    with _json_lock(out), pytest.raises(UserError, match="another bench learning-curve is writing --json"):
        run_learning_curve(data, [run], coco_images=2, kodak_images=1, json_file=out, plot_file=plot, threads=1)
    # a run warm-started from a kept checkpoint is drawn from where that run ended
    from_kept = dataclasses.replace(run, init=str(kept / f"{run.key}.pt"))
    assert start_step(again, {"run": dataclasses.asdict(from_kept)}) == 4

    # a warm start, as the study's later rounds: the weights of a checkpoint of the same model and configuration
    import warnings

    from dvcm.checkpoint import save_checkpoint
    from dvcm.errors import CheckpointError
    from dvcm.registry import build
    from dvcm.yolo import build_yolov3

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yolo = build_yolov3(seed=0)
    for name in ("proposed", "choi2022"):
        model = build(name, front=yolo.front, yolo_provenance=dict(yolo.provenance), N=32, M1=16, M2=32, H=2)
        save_checkpoint(tmp_path / f"{name}.pt", model)
    warm = dataclasses.replace(run, init=str(tmp_path / "proposed.pt"))
    doc = run_learning_curve(data, [warm], coco_images=2, kodak_images=1, json_file=out, plot_file=plot, threads=1)
    assert warm.key == f"{run.key}-from-proposed" and doc["runs"][warm.key]["complete"] and run.key in doc["runs"]
    other = dataclasses.replace(run, init=str(tmp_path / "choi2022.pt"))
    with pytest.raises(CheckpointError, match="holds choi2022"):
        run_learning_curve(data, [other], coco_images=2, kodak_images=1, json_file=out, plot_file=plot, threads=1)
