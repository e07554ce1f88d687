"""`dvcm-pipeline quickstart`, shrunk (1 epoch of 2 steps, JPEG anchor only), run for real:
what it prints, what it logged to MLflow, the files it wrote, and a clean rerun into the same folder."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

SHRINK = ["--epochs", "1", "--steps-per-epoch", "2", "--val-steps", "1", "--anchors", "jpeg"]


@pytest.mark.slow  # integration: real Ray, MLflow, Chromium and the CLI
def test_quickstart_runs_everything_and_reruns_cleanly(tmp_path: Path, ray_local: None) -> None:
    from mlflow import MlflowClient

    from pipeline.cli import app

    out = tmp_path / "qs"
    result = CliRunner().invoke(app, ["quickstart", "--out", str(out), *SHRINK])
    assert result.exit_code == 0, result.output[-4000:] + repr(result.exception)
    text = result.output
    mini = "mini YOLOv3 (width 0.125, 8 classes) trained on the synthetic world"
    assert f"detector: {mini}" in text and "random weights" not in text  # the bundled detector by default
    uri = f"sqlite:///{out.resolve() / 'mlflow.db'}"
    assert f"mlflow ui --backend-store-uri {uri}" in text  # whole, on one line, whatever the terminal's width
    exp = MlflowClient(uri).get_experiment_by_name("dvcm")
    assert (
        f"then browse: http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        in text
    )
    trials = [
        "proposed-11-32-2-l0.0018",
        "proposed-11-32-2-l0.0932",
        "choi2022-21-11-1-l0.0018",
        "choi2022-21-11-1-l0.0932",
        "bmshj2018-43-l0.0018",
        "bmshj2018-43-l0.0932",
    ]
    for name in trials:
        assert name in text
    # every trial fine-tunes the zoo's checkpoint of its model and λ, and says so
    for model in ("proposed", "choi2022", "bmshj2018"):
        for lam in ("0.0018", "0.0932"):
            assert f"fine-tunes zoo:{model}-l{lam}" in text
    assert "BD-rate of proposed vs choi2022 on the base layer" in text
    for model in ("proposed", "choi2022"):  # the third codec's row: the cost of scalability
        assert re.search(
            rf"the cost of scalability: BD-rate of {model} vs the single-layer bmshj2018 on Kodak PSNR \(total bpp\): "
            r"([+-]?\d+\.\d+ %|n/a \()",
            " ".join(text.split()),
        )
    # the base-layer BD-rate on feature SNR of ŝ (real bitstreams), printed as the BD table has it: a number
    # with its method and the BD library's notes (e.g. of little curve overlap), or "n/a (reason)". With the
    # zoo's loss (γ scaled by λ) both base layers move with λ, and the figure is finite (asserted below).
    flat = " ".join(text.split())
    m = re.search(
        r"quality = feature SNR of ŝ, base-layer bpp from real bitstreams\): "
        r"([+-]?\d+\.\d+ %|n/a \((.+?)\))(?: \(.+?\))?(?: instead, the base-layer rate each needs where both reach: "
        r".+?)? BD-rate of proposed vs choi2022",
        flat,
    )
    assert m, flat[-3000:]
    assert re.search(r"COCO mAP@0\.5 vs base-layer bpp, " + re.escape(mini) + r"\): ([+-]?\d+\.\d+ %|n/a \(.+\))", flat)
    assert f"mAP@.5 of {mini}, scored against the world's ground truth" in flat

    # files: shards, sweep record, evaluation results, BD table, plots, report
    assert (out / "shards" / "dataset.json").is_file()
    # shrunk settings are not the defaults: their sweep is named after them, so it never resumes default trials,
    # and its evaluation has its own folder
    (sweep_dir,) = [p for p in (out / "runs").iterdir() if p.is_dir()]
    assert sweep_dir.name.startswith("quickstart-")
    eval_dir = out / f"eval-{sweep_dir.name}"
    state = json.loads((sweep_dir / "sweep.json").read_text())
    assert state["training_settings"]["steps_per_epoch"] == 2 and state["training_settings"]["seed"] == 0
    assert sorted(state["trials"]) == sorted(trials) and all(
        t["status"] == "finished" for t in state["trials"].values()
    )
    human: dict[str, dict[float, tuple[float, float]]] = {}
    machine: dict[str, dict[float, tuple[float, float, float]]] = {}
    for entry in state["trials"].values():
        res = json.loads((eval_dir / entry["run_id"] / "results.json").read_text())
        assert res["detector"] == mini
        kodak = res["datasets"]["kodak"]["points"][0]
        human.setdefault(res["model"], {})[res["lmbda"]] = (kodak["bpp"], kodak["psnr"])
        assert kodak["bpp_base"] > 0 and math.isfinite(kodak["psnr"])
        assert (kodak["bpp_enh"] == 0) == (res["model"] == "bmshj2018")  # one layer: all of it in the base layer
        coco = res["datasets"]["coco"]["points"][0]
        assert coco["bpp_base"] > 0 and math.isfinite(coco["s_psnr"]) and math.isfinite(coco["s_snr"])
        machine.setdefault(res["model"], {})[res["lmbda"]] = (coco["bpp_base"], coco["map50"], coco["s_snr"])
    # from the zoo, even 2 steps of fine-tuning leave trained codecs: rate and PSNR rise with λ for both models,
    # and so do the base layer's rate, mAP and ŝ SNR (the zoo's loss scales γ with λ)
    for model, points in human.items():
        (low_bpp, low_psnr), (high_bpp, high_psnr) = points[0.0018], points[0.0932]
        assert high_bpp > low_bpp and high_psnr > low_psnr + 1.0, (model, points)
    for model, points in machine.items():
        (low_bpp, low_map, low_snr), (high_bpp, high_map, high_snr) = points[0.0018], points[0.0932]
        assert high_bpp > low_bpp and high_map > low_map and high_snr > low_snr, (model, points)
    bd = (eval_dir / "bd_table.csv").read_text()
    assert "coco_map50" in bd and "choi2022 (21,11,1)" in bd and "proposed (11,32,2)" in bd
    assert 'kodak_psnr,pchip,bmshj2018 (43),"proposed (11,32,2)",' in bd  # the cost of scalability's BD row
    pair = [
        r
        for r in csv.DictReader(bd.splitlines())
        if r["metric"] == "coco_s_snr" and r["reference"] == "choi2022 (21,11,1)" and r["test"] == "proposed (11,32,2)"
    ]
    assert [r["method"] for r in pair] == ["pchip", "pchip-isotonic"]
    strict, fitted = (float(r["bd_rate_percent"]) if r["bd_rate_percent"] else math.nan for r in pair)
    row = pair[0] if math.isfinite(strict) or not math.isfinite(fitted) else pair[1]  # what the summary shows
    value = float(row["bd_rate_percent"]) if row["bd_rate_percent"] else math.nan
    # a BD figure only where the curves share at least 75 % of their range (issue 27); otherwise n/a with the
    # overlap, and the rates each model needs at levels both reach instead (when they share any)
    from pipeline.evaluation.bdrate import MIN_OVERLAP_PERCENT, rate_overlap_percent

    if "overlap over" in str(row.get("note")):  # the package measured the overlap: the figure exists iff >= 75 %
        assert math.isfinite(value) == (rate_overlap_percent(row) >= MIN_OVERLAP_PERCENT), row
    if not math.isfinite(value) and "do not overlap" not in row["note"] and "dominates" not in m.group(0):
        assert "instead, the base-layer rate each needs where both reach: ŝ SNR dB" in flat
    assert (
        "bits proposed saves against choi2022 at 2 % mAP loss (the paper: about 55 %, at about 0.30 vs 0.58 bpp): "
        in flat
    )
    if math.isfinite(value):
        assert m.group(1) == f"{value:+.2f} %"
        method = "pchip, strict" if row is pair[0] else "pchip-isotonic: on monotone fits of both curves"
        assert flat[m.end(1) :].startswith(f" ({method}"), flat[m.start(1) : m.start(1) + 300]
    else:  # the table's reason, after the sentence saying which model dominates when one does
        printed = m.group(2)
        if "dominates" in printed:
            assert printed.startswith(("proposed dominates choi2022: ŝ SNR", "choi2022 dominates proposed: ŝ SNR"))
            printed = printed.split("; ", 1)[1] if "; " in printed else ""
        assert printed in row["note"]
    assert list((eval_dir / "plots").glob("*.png"))
    assert "<img" in (eval_dir / "report.html").read_text()

    # MLflow: a parent run, 6 nested trial runs tagged by model/config/λ with checkpoint and evaluation artifacts
    c = MlflowClient(uri)
    parent = c.get_run(state["parent_run_id"])
    assert parent.info.run_name == sweep_dir.name and parent.info.status == "FINISHED"
    kids = c.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in kids) == sorted(trials)
    for r in kids:
        assert (r.data.tags["model"], r.data.tags["config"]) in (
            ("proposed", "11,32,2"),
            ("choi2022", "21,11,1"),
            ("bmshj2018", "43"),
        )
        assert r.data.tags["lambda"] in ("0.0018", "0.0932")
        assert {a.path for a in c.list_artifacts(r.info.run_id, "checkpoint")} == {"checkpoint/final.pt"}
        assert {"evaluation/results.json", "evaluation/results.csv"} <= {
            a.path for a in c.list_artifacts(r.info.run_id, "evaluation")
        }
        assert "eval/kodak_psnr" in r.data.metrics and math.isfinite(r.data.metrics["eval/coco_s_snr"])
    evals = c.search_runs([parent.info.experiment_id], filter_string="tags.`dvcm.evaluation` = '1'")
    assert len(evals) == 1 and [a.path for a in c.list_artifacts(evals[0].info.run_id, "plots")]

    # rerun into the same folder: every step resumes, nothing is trained again
    ckpt = Path(state["trials"][trials[0]]["final_checkpoint"])
    mtime = ckpt.stat().st_mtime_ns
    again = CliRunner().invoke(app, ["quickstart", "--out", str(out), *SHRINK])
    assert again.exit_code == 0, again.output[-4000:] + repr(again.exception)
    written = re.search(r": (\d+) written, 0 already finished", flat)
    assert written and int(written.group(1)) > 0, flat[:3000]
    assert f"0 written, {written.group(1)} already finished" in " ".join(again.output.split())
    assert ckpt.stat().st_mtime_ns == mtime
    assert len(
        c.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    ) == len(trials)

    # a folder whose sweep was trained otherwise (as by an earlier dvcm under the same name) is refused in one
    # line that says what to do with the quickstart's own options
    record = json.loads((sweep_dir / "sweep.json").read_text())
    record["training_settings"]["lr"] = 0.5
    (sweep_dir / "sweep.json").write_text(json.dumps(record))
    old = CliRunner().invoke(app, ["quickstart", "--out", str(out), *SHRINK])
    # (pipeline.cli.main prints a UserError as its one line and exits 1; CliRunner hands back the error itself)
    message = str(old.exception)
    assert old.exit_code == 1 and type(old.exception).__name__ == "UserError" and "\n" not in message
    assert "holds a quickstart trained otherwise" in message and "lr 0.5 -> 0.0001" in message
    assert message.endswith("pass a new --out") and "--name" not in message


def test_sweep_name_is_the_default_only_for_the_default_training_settings() -> None:
    from pipeline.training.settings import resolve
    from pipeline.workflows.quickstart import (
        DEFAULT_LAMBDAS,
        SWEEP_NAME,
        TRAINING_PRESET,
        default_training,
        eval_folder,
        sweep_name,
        zoo_loss,
    )

    def name(lams: list[float] | None = None, **flags: object) -> str:
        settings = resolve(TRAINING_PRESET, {}, {**default_training(), "shards": "x", **flags})
        return sweep_name(settings, lams or [float(v) for v in DEFAULT_LAMBDAS.split(",")])

    # the resolved settings count: the zoo's own γ and the preset's validation steps, given explicitly, are the defaults
    gamma = zoo_loss()["gamma"]
    assert name() == name(gamma=gamma) == name(val_steps=8) == name([0.0932, 0.0018]) == SWEEP_NAME
    others = {
        name(seed=1),
        name(gamma=gamma * 5),
        name([0.0018, 0.0483]),
        name(lr=1e-3),
        name(gamma_mode="fixed" if zoo_loss()["gamma_mode"] == "scaled" else "scaled"),
    }
    assert len(others) == 5 and all(n.startswith(SWEEP_NAME + "-") for n in others)
    assert name(seed=1) == name(seed=1)  # stable: a rerun resumes
    assert eval_folder(Path("q"), SWEEP_NAME) == Path("q/eval") and eval_folder(
        Path("q"), name(seed=1)
    ).name.startswith("eval-")


def row(model: str, lam: float, bpp: float, map50: float):  # -> TrialSummary
    """One trial's base-layer point, for the summary's helpers."""
    from pipeline.workflows.quickstart import TrialSummary

    return TrialSummary(f"{model}-{lam}", model, lam, None, bpp_coco_base=bpp, map50=map50)


def test_a_base_layer_that_dominates_is_said_when_no_bd_rate_exists() -> None:
    from pipeline.workflows.quickstart import base_layer_dominance

    rows = [
        row("proposed", 0.0018, 0.026, 0.867),
        row("proposed", 0.0932, 0.025, 0.860),
        row("choi2022", 0.0018, 0.043, 0.593),
        row("choi2022", 0.0932, 0.074, 0.648),
    ]
    assert base_layer_dominance(rows, "map50", "mAP@0.5") == (
        "proposed dominates choi2022: mAP@0.5 0.860–0.867 at 0.0250–0.0260 bpp against 0.593–0.648 at "
        "0.0430–0.0740 bpp, so the curves share no range for a Bjøntegaard figure"
    )
    rows[2] = row("choi2022", 0.0018, 0.020, 0.593)  # choi2022 now reaches a lower rate: neither dominates
    assert base_layer_dominance(rows, "map50", "mAP@0.5") == ""


def test_without_a_bd_figure_the_summary_gives_rates_at_shared_levels_and_the_savings_at_2_percent() -> None:
    """The quickstart's curves that share 26 % of their mAP range: no headline BD-rate; instead the rate each model
    needs at three mAP levels both reach, and the bits saved at 2 % mAP loss (n/a where choi2022 stops short)."""
    from pipeline.workflows.quickstart import base_layer_savings, rates_at_shared_levels

    rows = [
        row("proposed", 0.0018, 0.01, 0.60),
        row("proposed", 0.0932, 0.04, 0.90),
        row("choi2022", 0.0018, 0.05, 0.50),
        row("choi2022", 0.0932, 0.10, 0.70),
    ]
    text = rates_at_shared_levels(rows, "map50", "mAP@0.5")
    # shared: 0.60 to 0.70; at 0.60 proposed needs 0.01, choi2022 exp(log 0.05 + 0.5 (log 0.1 - log 0.05))
    assert text.startswith("mAP@0.5 0.6: proposed 0.0100 bpp, choi2022 0.0707 bpp; mAP@0.5 0.65: ")
    assert text.endswith("mAP@0.5 0.7: proposed 0.0159 bpp, choi2022 0.1000 bpp")
    saving, note = base_layer_savings(rows, 0.92)  # 98 % of 0.92 = 0.9016: neither curve reaches it
    assert math.isnan(saving) and "choi2022 reaches at most 0.7" in note and "proposed reaches at most 0.9" in note
    saving, note = base_layer_savings(rows, 0.70 / 0.98)  # the level 0.70 that both reach
    assert saving == pytest.approx(100 * (1 - 0.015874 / 0.1), abs=0.01) and "proposed 0.01587 vs choi2022 0.1" in note
    rows = [r for r in rows if r.model == "proposed"] + [
        row("choi2022", 0.0018, 0.05, 0.3),
        row("choi2022", 1, 0.1, 0.5),
    ]
    assert rates_at_shared_levels(rows, "map50", "mAP@0.5") == ""  # no shared level
