"""A trial that fails for good (NaN loss) is marked FAILED in MLflow with its reason; the other
trial of the sweep still runs and finishes; the sweep says one trial failed and exits non-zero.

Real local Ray, a real ``mlflow server``; the NaN comes from the test-only hook
``DVCM_TEST_NAN_LAMBDA`` (``pipeline.training.faults.NAN_ENV``), which multiplies that trial's loss by NaN.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.infra.errors import UserError
from pipeline.infra.tracking import TAG_FAILURE
from pipeline.training.faults import NAN_ENV

pytestmark = pytest.mark.slow  # integration: real Ray, MLflow, Chromium or subprocess CLIs

runner = CliRunner()
BAD, GOOD = "proposed-16-32-2-l0.05", "proposed-16-32-2-l0.0067"


def test_nan_trial_fails_for_good_in_mlflow_and_the_other_trial_finishes(
    tiny_shards: Path, tmp_path: Path, mlflow_uri: str, ray_local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from pipeline.cli import app

    monkeypatch.setenv(NAN_ENV, "0.05")
    monkeypatch.setenv("COLUMNS", "200")  # rich's final table at a terminal's width, not 80 (names stay whole)
    storage = tmp_path / "runs"
    # One trial at a time, the failing one first: the sweep must go on to the next trial.
    # --max-failures 1: Ray Train restarts the NaN trial once, and it fails again (for good).
    result = runner.invoke(
        app,
        [
            "sweep",
            "--shards",
            str(tiny_shards),
            "--model",
            "proposed",
            "--configs",
            "16,32,2",
            "--lambdas",
            "0.05,0.0067",
            "--preset",
            "tiny",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--val-steps",
            "1",
            "--max-concurrent-trials",
            "1",
            "--max-failures",
            "1",
            "--storage",
            str(storage),
            "--tracking-uri",
            mlflow_uri,
            "--name",
            "nan",
        ],
    )

    # The CLI: a one-line user-facing error (exit 2 through pipeline.cli.main) naming the failed trial,
    # after the final table that shows it FAILED.
    assert isinstance(result.exception, UserError), result.output + repr(result.exception)
    assert result.exit_code != 0
    assert str(result.exception).startswith(f"1 of 2 trials did not finish ({BAD})")
    assert "sweep nan: failed" in result.output
    table_rows = {ln.split("│")[1].strip(): ln for ln in result.output.splitlines() if ln.count("│") > 3}
    assert "FAILED" in table_rows[BAD] and "FINISHED" in table_rows[GOOD]

    state = json.loads((storage / "nan" / "sweep.json").read_text())
    assert state["trials"][BAD]["status"] == "failed"
    assert state["trials"][GOOD]["status"] == "finished" and Path(state["trials"][GOOD]["final_checkpoint"]).is_file()

    c = MlflowClient(mlflow_uri)
    parent = c.get_run(state["parent_run_id"])
    assert parent.info.status == "FAILED"
    runs = {
        r.info.run_name: r
        for r in c.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
    }
    assert sorted(runs) == sorted([BAD, GOOD])

    bad = runs[BAD]
    assert bad.info.status == "FAILED"
    reason = bad.data.tags[TAG_FAILURE]
    assert "non-finite loss nan" in reason and "FloatingPointError" in reason, reason
    assert state["trials"][BAD]["reason"] == reason
    assert not c.list_artifacts(bad.info.run_id, "checkpoint")
    assert not c.get_metric_history(bad.info.run_id, "train/loss")  # it never finished an epoch

    good = runs[GOOD]
    assert good.info.status == "FINISHED" and TAG_FAILURE not in good.data.tags
    assert {a.path for a in c.list_artifacts(good.info.run_id, "checkpoint")} == {"checkpoint/final.pt"}
    assert [m.step for m in c.get_metric_history(good.info.run_id, "val/loss")] == [1]
    assert good.info.start_time >= bad.info.end_time  # it ran after the failure: the sweep went on
