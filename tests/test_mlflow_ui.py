"""The MLflow UI in a real browser: a sweep's runs on a real ``mlflow server`` in headless Chromium.

The sweep's runs are logged as ``dvcm-pipeline sweep`` logs them (``pipeline.tracking``: one parent
run named after the sweep, one nested run per trial named by ``pipeline.sweep.trial_name``, with the
model/config/λ tags), then two pages are rendered by Chromium:

- the experiment's runs page: the sweep's parent run is listed, with all 3 runs matching (the UI
  shows nested runs collapsed under their parent until a click expands them);
- the compare page of the trials: each trial is listed by name.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or (str(Path("/usr/bin/chromium")) if Path("/usr/bin/chromium").exists() else None)


def _chromium(url: str, user_data: Path, *mode: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``url`` with ``mode`` (``--dump-dom`` or ``--screenshot=...``)."""
    assert CHROMIUM
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={user_data}", "--window-size=1400,900", "--virtual-time-budget=20000", *mode, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_sweep_runs_are_listed_in_the_mlflow_ui(mlflow_uri: str, tmp_path: Path) -> None:
    from pipeline import tracking
    from pipeline.sweep import trial_name

    sweep = "ui-sweep"
    parent = tracking.start_parent_run(mlflow_uri, sweep, {"preset": "tiny"})
    trials = {}
    for lmbda in (0.01, 0.02):
        name = trial_name("proposed", 16, 32, 2, lmbda)
        run_id = tracking.start_trial_run(mlflow_uri, parent, name,
                                          {"model": "proposed", "config": "16,32,2", "lambda": f"{lmbda:g}"}, {"lmbda": lmbda})
        tracking.log_metrics(mlflow_uri, run_id, {"val/D_s": 1.0 + lmbda}, step=1)
        tracking.end_run(mlflow_uri, run_id)
        trials[name] = run_id
    tracking.end_run(mlflow_uri, parent)
    exp = tracking.experiment_id(mlflow_uri)
    n_runs = 1 + len(trials)

    runs_page = f"{mlflow_uri}/#/experiments/{exp}/runs"
    dom = _chromium(runs_page, tmp_path / "chrome", "--dump-dom").stdout
    assert "<html" in dom and f">{sweep}<" in dom, dom[-2000:]
    # Other tests may log runs into the same session server's experiment: at least this sweep's.
    matching = [int(m) for m in re.findall(r"<strong>(\d+)</strong>\s*matching runs", dom)]
    assert matching and matching[0] >= n_runs, matching
    shot = tmp_path / "runs_page.png"
    _chromium(runs_page, tmp_path / "chrome", f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 10_000

    ids = urllib.parse.quote(json.dumps(list(trials.values())))
    compare = f"{mlflow_uri}/#/compare-runs?runs={ids}&experiments={urllib.parse.quote(json.dumps([exp]))}"
    dom = _chromium(compare, tmp_path / "chrome", "--dump-dom").stdout
    for name in trials:
        assert name in dom, f"{name} not on the compare page: {dom[-2000:]}"
    _chromium(compare, tmp_path / "chrome", f"--screenshot={tmp_path / 'compare.png'}")
    print(f"screenshots: {shot} {tmp_path / 'compare.png'}")
