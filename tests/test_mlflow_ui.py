"""The MLflow UI in a real browser: a sweep's runs on a real ``mlflow server`` in headless Chromium.

The sweep's runs are logged as ``dvcm-pipeline sweep`` logs them (``pipeline.infra.tracking``: one parent
run named after the sweep, one nested run per trial named by ``pipeline.training.sweep.trial_name``, with the
model/config/λ tags). Chromium is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``, stdlib only), as a user would click:

- the experiment's runs page lists the parent run; a click on its expander lists every trial by name;
- filtering the runs page by the ``lambda`` tag lists that trial and not the other;
- the compare page of the trials lists each trial by name.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # integration: real Ray, MLflow, Chromium or subprocess CLIs

CHROMIUM = shutil.which("chromium") or (str(Path("/usr/bin/chromium")) if Path("/usr/bin/chromium").exists() else None)
EXPANDER = "button[data-component-id*=runnamecellrenderer]"  # the +/- before a parent run's name


class Browser:
    """Headless Chromium with the DevTools protocol on fds 3 (commands in) and 4 (replies out)."""

    def __init__(self, chromium: str, user_data: Path) -> None:
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()

        def wire_fds() -> None:  # runs in the child before exec: the pipe ends become fds 3 and 4
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.proc = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
                f"--user-data-dir={user_data}",
                "--window-size=1400,900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=wire_fds,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buf, self._id, self.session = b"", 0, None

    def send(self, method: str, params: dict | None = None, timeout_s: float = 60.0) -> dict:
        """One DevTools command; its result (an error reply raises)."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if self.session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply to {method} within {timeout_s} s")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk

    def open(self, url: str) -> None:
        """Open ``url`` in a new tab and talk to that tab from now on."""
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def js(self, expression: str) -> Any:
        return self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get("value")

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *needles: str, timeout_s: float = 90.0) -> str:
        """The page's visible text once it shows every needle; the last text in the assertion otherwise."""
        deadline, text = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(0.5)
        raise AssertionError(f"{needles} not all shown within {timeout_s} s; the page shows: {text[-1500:]}")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout_s=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._in)
        os.close(self._out)


@pytest.fixture
def browser(tmp_path: Path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    b = Browser(CHROMIUM, tmp_path / "chrome")
    yield b
    b.close()
    assert b.proc.returncode is not None


def test_sweep_runs_are_listed_in_the_mlflow_ui(mlflow_uri: str, tmp_path: Path, browser: Browser) -> None:
    from pipeline.infra import tracking
    from pipeline.training.grid import trial_name

    sweep = f"ui-sweep-{int(time.time())}"
    description = f"Sweep {sweep}: 2 trials of proposed; compare val/D_s across them"
    parent = tracking.start_parent_run(mlflow_uri, sweep, {"preset": "tiny"}, description=description)
    trials: dict[str, str] = {}
    for lmbda in (0.0123, 0.0456):  # values no other test uses on the session's server
        name = trial_name("proposed", {"M1": 16, "M2": 32, "H": 2}, lmbda)
        run_id = tracking.start_trial_run(
            mlflow_uri,
            parent,
            name,
            {"model": "proposed", "config": "16,32,2", "lambda": f"{lmbda:g}"},
            {"lmbda": lmbda},
        )
        tracking.log_metrics(mlflow_uri, run_id, {"val/D_s": 1.0 + lmbda}, step=1)
        tracking.end_run(mlflow_uri, run_id)
        trials[name] = run_id
    tracking.end_run(mlflow_uri, parent)
    exp = tracking.experiment_id(mlflow_uri)
    names = list(trials)
    runs_page = f"{mlflow_uri}/#/experiments/{exp}/runs"

    # The address the quickstart prints lands on the runs of this model-training experiment in a fresh browser,
    # not on MLflow 3's GenAI overview of traces ("No data available"), where the bare experiment address goes.
    from pipeline.workflows.quickstart import mlflow_runs_url

    browser.open(mlflow_runs_url(mlflow_uri, exp))
    landing = browser.wait_for_text(sweep, "Runs")
    assert "No data available" not in landing and "/runs" in browser.js("window.location.hash")
    browser.screenshot(tmp_path / "landing.png")
    # The parent run's page shows its description.
    browser.open(f"{mlflow_uri}/#/experiments/{exp}/runs/{parent}?workflowType=machine_learning")
    browser.wait_for_text(description)
    browser.screenshot(tmp_path / "parent.png")

    # The runs page: the parent is listed; its trials show once the user expands it.
    browser.open(runs_page)
    browser.wait_for_text(sweep)
    assert not any(n in browser.text() for n in names), "trials listed before the parent was expanded"
    assert browser.js(f"document.querySelectorAll('{EXPANDER}').length") >= 1
    browser.js(f"document.querySelectorAll('{EXPANDER}').forEach(b => b.click())")
    browser.wait_for_text(sweep, *names)
    browser.screenshot(tmp_path / "runs_page.png")

    # Filter by λ as a user types it in the search box: that trial is listed, the other is not.
    browser.open(runs_page + "?searchFilter=" + urllib.parse.quote("tags.lambda = '0.0123'"))
    browser.wait_for_text(sweep, "matching runs")  # the parent is shown for its matching trial
    # The UI remembers (in the browser's storage) that the parent was expanded above; expand it only if not.
    try:
        text = browser.wait_for_text(names[0], timeout_s=10)
    except AssertionError:
        browser.js(f"document.querySelectorAll('{EXPANDER}').forEach(b => b.click())")
        text = browser.wait_for_text(names[0])
    assert names[1] not in text, f"{names[1]} is listed though the filter is lambda = 0.0123"

    ids = urllib.parse.quote(json.dumps(list(trials.values())))
    browser.open(f"{mlflow_uri}/#/compare-runs?runs={ids}&experiments={urllib.parse.quote(json.dumps([exp]))}")
    browser.wait_for_text(*names)
    browser.screenshot(tmp_path / "compare.png")
    assert (tmp_path / "runs_page.png").stat().st_size > 10_000
    print(
        "screenshots: "
        + " ".join(str(tmp_path / f) for f in ("landing.png", "parent.png", "runs_page.png", "compare.png"))
    )
