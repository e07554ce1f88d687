"""The evaluate job end to end: a tiny checkpoint on sample data, real Ray tasks, a real MLflow server.

Also every bad input the job must refuse with one line (CLI subprocess, exit code 2), and an
undecodable image that is skipped and counted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from pipeline.evaluation.job import Job, run_job
from pipeline.evaluation.targets import Target, coco_items, folder_items
from pipeline.evaluation.tasks import Settings, feature_psnr, feature_snr

pytestmark = pytest.mark.slow  # integration: real Ray, MLflow, Chromium or subprocess CLIs

CLI = [sys.executable, "-m", "pipeline.cli"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory):
    from pipeline.data.sample_data import generate_sample

    return generate_sample(
        tmp_path_factory.mktemp("evdata"), train_sequences=1, val_sequences=1, coco_images=2, kodak_images=1
    )


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dvcm.checkpoint import save_checkpoint
    from dvcm.registry import build
    from dvcm.yolo import build_yolov3

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yolo = build_yolov3(seed=0)
    torch.manual_seed(0)
    model = build("proposed", front=yolo.front, yolo_provenance=dict(yolo.provenance), N=16, M1=8, M2=8, H=2)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, extra={"lmbda": 0.0067, "epoch": 1})
    return path


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parent.parent
    e = {**os.environ, "PYTHONPATH": str(root), **(env or {})}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=e, cwd=root, timeout=300)


def _assert_one_line_error(res: subprocess.CompletedProcess, needle: str) -> None:
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_end_to_end_into_mlflow(sample, tiny_ckpt: Path, tmp_path: Path, ray_local, mlflow_uri: str) -> None:
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.infra import tracking

    # A finished trial run holding the checkpoint, as a sweep leaves it, with a training history.
    c = MlflowClient(mlflow_uri)
    run = c.create_run(
        tracking.experiment_id(mlflow_uri),
        run_name="proposed-8-8-2-l0.0067",
        tags={tracking.TAG_TRIAL: "proposed-8-8-2-l0.0067"},
    )
    rid = run.info.run_id
    c.log_artifact(rid, str(tiny_ckpt), "checkpoint")
    for epoch, r in enumerate([0.30, 0.22]):
        tracking.log_metrics(mlflow_uri, rid, {"val/rdn_y1_given_y2": r, "val/rdn_y2_given_y1": r / 2}, step=epoch)
    c.set_terminated(rid)

    out = tmp_path / "eval"
    args = [
        "evaluate",
        "--run",
        rid,
        "--tracking-uri",
        mlflow_uri,
        "--coco-root",
        str(sample.coco_root),
        "--kodak-root",
        str(sample.kodak_root),
        "--out",
        str(out),
        "--anchors",
        "jpeg",
        "--anchor-params",
        "jpeg=10,60",
        "--reference-detections",
        "uncompressed",
        "--conf-thres",
        "0.05",
        "--redundancy-fibers",
        "256",
        "--redundancy-images",
        "2",
        "--redundancy-learned-steps",
        "20",
        "--chunk-size",
        "1",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    assert "random-weight YOLOv3" in res.output

    results = json.loads((out / rid / "results.json").read_text())
    assert results["schema"] == "dvcm-eval/1" and results["detector"] == "random-weight YOLOv3"
    assert results["label"] == "proposed (8,8,2) λ=0.0067"
    (coco_pt,) = results["datasets"]["coco"]["points"]
    (kodak_pt,) = results["datasets"]["kodak"]["points"]
    rows = results["per_image"]
    assert (
        len([r for r in rows if r["dataset"] == "coco"]) == 2 and len([r for r in rows if r["dataset"] == "kodak"]) == 1
    )
    # rates are real file bytes: base bpp over 512x512, and bpp = base + enhancement on Kodak
    for r in rows:
        assert r["bytes_base"] > 0 and r["bytes_header"] > 0
    coco_rows = [r for r in rows if r["dataset"] == "coco"]
    assert coco_pt["bpp_base"] == pytest.approx(sum(r["bytes_base"] for r in coco_rows) * 8 / (512 * 512) / 2)
    assert kodak_pt["bpp"] == pytest.approx(kodak_pt["bpp_base"] + kodak_pt["bpp_enh"])
    assert 0.0 <= coco_pt["map50"] <= 1.0 and set(coco_pt["coco_stats"]) >= {"AP", "AP50", "AR100"}
    assert coco_pt["map"] == coco_pt["coco_stats"]["AP"]  # mAP@[.5:.95]: one entry of the metric registry
    assert all(math.isfinite(r["s_psnr"]) for r in coco_rows)
    assert coco_pt["s_psnr"] == pytest.approx(sum(r["s_psnr"] for r in coco_rows) / 2)
    assert 0 < kodak_pt["psnr"] < 100 and 0 < kodak_pt["ms_ssim"] <= 1
    # the field's extras: per-class AP, complexity per part, median coding times
    # (scored against the uncompressed detections: the reference's classes are the annotations' and any other the
    # random detector found)
    ids = [c["category_id"] for c in coco_pt["per_class_ap"]]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(ids)
    assert {c["id"] for c in gt_categories(sample)} <= set(ids)
    assert all(c["ap50"] is None or 0.0 <= c["ap50"] <= 1.0 for c in coco_pt["per_class_ap"])
    assert kodak_pt["encode_ms"] > 0 and kodak_pt["decode_ms"] > 0 and coco_pt["decode_ms"] > 0
    parts = results["complexity"]["parts"]
    assert (
        set(parts) == {"front", "encoder", "base_decoder", "full_decoder"}
        and results["complexity"]["input"] == "768x512"
    )
    assert c.get_run(rid).data.params["complexity.encoder.params"] == f"{parts['encoder']['params']:.0f}"
    assert (out / rid / "results.csv").read_text().count("\n") == len(rows) + 1
    anchors = json.loads((out / "anchors" / "results.json").read_text())
    unc = [p for p in anchors["datasets"]["coco"]["points"] if p["codec"] == "uncompressed"]
    assert unc[0]["map50"] == pytest.approx(1.0)  # scored against its own detections
    jpeg = [p for p in anchors["datasets"]["kodak"]["points"] if p["codec"] == "jpeg"]
    assert [p["param"] for p in jpeg] == [10, 60] and jpeg[0]["bpp"] < jpeg[1]["bpp"]
    assert jpeg[0]["container_bpp"] > 0
    assert "JPEG (Pillow)" in (out / "bd_table.md").read_text()
    assert "coco_s_psnr" in (out / "bd_table.csv").read_text()
    jpeg_coco = [p for p in anchors["datasets"]["coco"]["points"] if p["codec"] == "jpeg"]
    assert all(math.isfinite(p["s_psnr"]) for p in jpeg_coco) and unc[0]["s_psnr"] is None

    # read back through the MLflow client: metrics and results on the trial run, plots on the evaluation run
    metrics = c.get_run(rid).data.metrics
    assert metrics["eval/coco_bpp_base"] == pytest.approx(coco_pt["bpp_base"])
    assert metrics["eval/kodak_psnr"] == pytest.approx(kodak_pt["psnr"])
    assert metrics["eval/coco_s_psnr"] == pytest.approx(coco_pt["s_psnr"])
    assert {a.path for a in c.list_artifacts(rid, "evaluation")} == {
        "evaluation/results.json",
        "evaluation/results.csv",
    }
    evals = c.search_runs([tracking.experiment_id(mlflow_uri)], filter_string="tags.`dvcm.evaluation` = '1'")
    assert len(evals) == 1
    plots = {a.path for a in c.list_artifacts(evals[0].info.run_id, "plots")}
    assert {
        "plots/rate_accuracy.png",
        "plots/rate_accuracy_map.png",
        "plots/psnr_bpp.png",
        "plots/msssim_bpp.png",
        "plots/redundancy.png",
    } <= plots
    assert metrics["eval/coco_map"] == pytest.approx(coco_pt["map"])
    assert "coco_map," in (out / "bd_table.csv").read_text()
    assert any(p.startswith("plots/channels_") for p in plots)
    local = c.download_artifacts(evals[0].info.run_id, "plots/rate_accuracy.png", str(tmp_path))
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # rerun: every (checkpoint, dataset) pair is skipped
    items, gt = coco_items(sample.coco_root, sample.coco_annotations, None)
    job = Job(
        targets=[Target(next((out / ".downloads" / rid).rglob("*.pt")), run_id=rid, key=rid)],
        out=out,
        settings=Settings(conf_thres=0.05),
        coco=(items, gt, sample.coco_annotations),
        kodak=folder_items(sample.kodak_root),
        reference="uncompressed",
        anchors=["jpeg"],
        anchor_params={"jpeg": (10, 60)},
        redundancy_fibers=256,
        redundancy_images=2,
        redundancy_learned_steps=20,
    )
    again = run_job(job, progress=False)
    assert again["computed"] == [] and again["extras_computed"] == []
    assert json.loads((out / rid / "results.json").read_text())["per_image"] == rows
    # other redundancy settings: the estimate is made again (and only it), and says what it was asked for
    other = run_job(dataclasses.replace(job, redundancy_k=2), progress=False)
    assert other["computed"] == [] and other["extras_computed"] == [rid]
    res = json.loads((out / rid / "results.json").read_text())
    assert res["redundancy"]["requested"] == {
        "K": 2,
        "fibers": 256,
        "images": 2,
        "learned_steps": 20,
        "dataset": "coco",
    }
    # both estimators on the same 2 COCO images at 512x512, each saying what it is
    learned = res["redundancy_learned"]
    assert learned["estimator"] == "learned" and learned["images"] == 2 and learned["dataset"] == "coco"
    assert learned["train_images"] == 1 and learned["test_images"] == 1 and math.isfinite(learned["H_y2"])
    kmeans = res["redundancy"]
    top = kmeans["rdn_y2_given_y1_ceiling"]  # null where this untrained codec's ŷ2 carries (almost) nothing
    assert kmeans["estimator"] == "kmeans" and (top is None or 0 < top <= 1)


def gt_categories(sample) -> list[dict]:
    return json.loads(Path(sample.coco_annotations).read_text())["categories"]


def test_feature_psnr_formula() -> None:
    """10·log10(max|s|² / MSE) on a pair whose answer is known by hand."""
    s = torch.zeros(1, 256, 4, 4)
    s[0, 0, 0, 0] = -4.0  # peak = max|s| = 4
    s_hat = s.clone()
    s_hat[0, 1] += 0.5  # 16 elements off by 0.5 out of 4096: MSE = 16 * 0.25 / 4096
    expected = 10 * math.log10(16.0 / (16 * 0.25 / 4096))
    assert feature_psnr(s, s_hat) == pytest.approx(expected)
    assert feature_psnr(s, s) == math.inf
    worse = s.clone()
    worse[0, 1] += 1.0  # twice the error: 6.02 dB lower
    assert feature_psnr(s, s_hat) - feature_psnr(s, worse) == pytest.approx(20 * math.log10(2))


def test_feature_snr_normalises_each_channel_by_its_variance() -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    # two channels on very different scales: a PSNR over all elements would only see the large one
    s = torch.randn(1, 2, 16, 16, generator=g) * torch.tensor([100.0, 0.01]).reshape(1, 2, 1, 1)
    std = s.std(dim=(0, 2, 3), unbiased=False).reshape(1, 2, 1, 1)
    assert feature_snr(s, s.mean(dim=(2, 3), keepdim=True)) == pytest.approx(0.0, abs=1e-9)  # each channel's mean
    assert feature_snr(s, s) == math.inf
    noise = torch.randn(1, 2, 16, 16, generator=g)
    noise = noise / noise.pow(2).mean(dim=(0, 2, 3), keepdim=True).sqrt()  # unit power per channel
    assert feature_snr(s, s + 0.1 * std * noise) == pytest.approx(20.0, abs=1e-6)
    # the small channel's error counts as much as the large one's
    only_small_bad = s.clone()
    only_small_bad[:, 1] = s[:, 1].mean()
    assert feature_snr(s, only_small_bad) == pytest.approx(-10 * math.log10(0.5), abs=1e-9)
    assert feature_psnr(s, only_small_bad) > 90  # the peak-normalised PSNR barely notices


def test_undecodable_image_is_skipped_and_counted(sample, tiny_ckpt: Path, tmp_path: Path, ray_local) -> None:
    kodak = tmp_path / "kodak"
    kodak.mkdir()
    (kodak / "kodim01.png").write_bytes(next(sample.kodak_root.glob("*.png")).read_bytes())
    (kodak / "kodim02.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    job = Job(
        targets=[Target(tiny_ckpt, key="tiny")],
        out=tmp_path / "eval",
        settings=Settings(),
        kodak=folder_items(kodak),
        anchors=[],
        redundancy_fibers=256,
        redundancy_images=1,
    )
    res = run_job(job, progress=False)["results"]["tiny"]
    entry = res["datasets"]["kodak"]
    assert entry["images"] == 1 and entry["skipped"] == 1 and entry["skipped_images"] == ["kodim02.png"]
    assert entry["points"][0]["images"] == 1


# -- bad input: one line, exit code 2 -------------------------------------------------------------


def test_missing_and_malformed_annotations(sample, tiny_ckpt: Path, tmp_path: Path) -> None:
    common = [
        "evaluate",
        "--checkpoint",
        str(tiny_ckpt),
        "--coco-root",
        str(sample.coco_root),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--out",
        str(tmp_path / "o"),
    ]
    _assert_one_line_error(_cli(*common, "--coco-annotations", str(tmp_path / "none.json")), "does not exist")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [}')
    _assert_one_line_error(_cli(*common, "--coco-annotations", str(bad)), "not valid JSON")


def test_listed_image_missing_on_disk(sample, tiny_ckpt: Path, tmp_path: Path) -> None:
    ann = json.loads(sample.coco_annotations.read_text())
    ann["images"].append({"id": 999999, "file_name": "COCO_val2014_000000999999.jpg", "width": 640, "height": 480})
    ann_path = tmp_path / "ann.json"
    ann_path.write_text(json.dumps(ann))
    listing = tmp_path / "list.txt"
    listing.write_text("COCO_val2014_000000999999.jpg\n")
    res = _cli(
        "evaluate",
        "--checkpoint",
        str(tiny_ckpt),
        "--coco-root",
        str(sample.coco_root),
        "--coco-annotations",
        str(ann_path),
        "--image-list",
        str(listing),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--out",
        str(tmp_path / "o"),
    )
    _assert_one_line_error(res, "missing on disk")


def test_checkpoint_of_unknown_model(sample, tiny_ckpt: Path, tmp_path: Path) -> None:
    content = torch.load(tiny_ckpt, weights_only=True)
    content["model"] = "mystery-codec"
    bad = tmp_path / "mystery.pt"
    torch.save(content, bad)
    res = _cli(
        "evaluate",
        "--checkpoint",
        str(bad),
        "--kodak-root",
        str(sample.kodak_root),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--out",
        str(tmp_path / "o"),
        "--anchors",
        "none",
    )
    _assert_one_line_error(res, "unknown model")


def test_error_inside_a_ray_task_is_one_line(sample, tiny_ckpt: Path, tmp_path: Path, ray_address: str) -> None:
    """The checkpoint was trained with another V_front (YOLO seed 0): the task's CheckpointError
    comes back from Ray as the same one-line error, not a RayTaskError traceback."""
    res = _cli(
        "evaluate",
        "--checkpoint",
        str(tiny_ckpt),
        "--kodak-root",
        str(sample.kodak_root),
        "--yolo-seed",
        "1",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--out",
        str(tmp_path / "o"),
        "--anchors",
        "none",
        "--address",
        ray_address,
    )
    _assert_one_line_error(res, "YOLO weights")


@pytest.mark.parametrize("flag", ["--conf-thres", "--nms-iou"])
@pytest.mark.parametrize("value", ["nan", "-inf", "2"])
def test_thresholds_outside_0_1_are_refused_before_anything_starts(flag: str, value: str, tmp_path: Path) -> None:
    """Issue 28, defect 12: --conf-thres -inf gave 300 detections per image; NaN and 2 were accepted."""
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.infra.errors import UserError

    result = CliRunner().invoke(
        app, ["evaluate", "--checkpoint", "zoo:proposed-l0.0932", flag, value, "--out", str(tmp_path / "eval")]
    )
    assert isinstance(result.exception, UserError) and f"{flag} must be a number between 0 and 1" in str(
        result.exception
    )
    assert not (tmp_path / "eval").exists()
