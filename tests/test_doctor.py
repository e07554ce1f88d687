"""``dvcm-pipeline doctor``: real runs on the CPU (the codec, a training step at N = 192, gloo), what it says when a
package is missing, and bad input in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.bench.doctor import (
    FAIL,
    PASS,
    SKIP,
    DoctorContext,
    check_all_reduce,
    check_codec,
    check_loader,
    check_package,
    check_ray_cluster,
    check_step,
    check_torch,
    check_zoo,
)

ROOT = Path(__file__).resolve().parent.parent
# What a bare box lacks: these imports fail in the subprocesses below as they would there.
BLOCK = "import sys\nfor _m in ('ray', 'mlflow', 'webdataset', 'typer'):\n    sys.modules[_m] = None\n"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, env=_env(), timeout=timeout
    )


@pytest.mark.slow
def test_doctor_on_cpu_passes_and_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "doctor.json"
    result = _cli("doctor", "--device", "cpu", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    table = json.loads(out.read_text())
    assert table["schema"] == "dvcm-doctor/1" and table["device"] == "cpu" and table["exit_code"] == 0
    rows = {c["name"]: c for c in table["checks"]}
    status = {name: c["status"] for name, c in rows.items()}
    threads = torch.get_num_threads()
    codec_rows = [n for n in rows if n.startswith("codec ")]
    assert len(codec_rows) == 2, rows.keys()  # device -> CPU and the reverse (CPU at its threads vs one thread)
    for name in codec_rows:
        assert status[name] == PASS and rows[name]["values"]["mismatched"] == 0
        assert rows[name]["values"]["symbols"] > 0 and rows[name]["values"]["bytes"] > 0
    if threads > 1:
        assert f"codec cpu ({threads} threads) -> cpu (1 thread)" in rows
    assert status["torch"] == PASS and rows["torch"]["values"]["torch"] == torch.__version__
    assert status["compressai"] == PASS and status["bf16"] == PASS and status["all-reduce (gloo)"] == PASS
    assert status["zoo checkpoint"] == PASS  # the bundled checkpoints fit this compressai
    fp32 = rows["train step fp32"]
    assert fp32["status"] == PASS and fp32["values"]["steps_per_s"] > 0 and fp32["values"]["peak_memory_gib"] > 0
    assert set(fp32["values"]["rates"]) == {"bpp_y1", "bpp_z1", "bpp_y2", "bpp_z2"}
    assert status["train step amp"] == SKIP and "GPU" in rows["train step amp"]["figure"]
    assert status["ray cluster"] == SKIP and "--address" in rows["ray cluster"]["figure"]
    assert status["loader vs step"] == SKIP and "--shards" in rows["loader vs step"]["figure"]
    # one printed line per check, with its status first
    printed = [ln for ln in result.stdout.splitlines() if ln[:4] in (PASS, FAIL, SKIP)]
    assert [ln.split()[0] for ln in printed] == [c["status"] for c in table["checks"]]
    assert table["seconds"] > 0  # its time is reported, not asserted (tests never assert timings)


@pytest.mark.slow  # a CLI or pytest subprocess: 5-10 s here
def test_cuda_asked_for_without_cuda_is_a_fail_line_and_exit_1(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "doctor.json"
    result = _cli("doctor", "--device", "cuda", "--json", str(out), timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith(FAIL))
    assert "torch" in line and "--device cuda" in line
    table = json.loads(out.read_text())
    status = {c["name"]: c["status"] for c in table["checks"]}
    assert table["exit_code"] == 1 and [n for n, s in status.items() if s == FAIL] == ["torch"]
    assert status["train step fp32"] == SKIP and status["bf16"] == SKIP


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "tpu"], "--device 'tpu' is not a device the doctor checks; choose cuda or cpu"),
        (["--device", "cpu", "--json", "/nonexistent-folder/doctor.json"], "folder /nonexistent-folder does not exist"),
    ],
)
def test_bad_input_is_refused_before_any_check(args: list[str], message: str) -> None:
    """A user error (printed by the CLI's main as one ``error:`` line, exit 2) before anything runs."""
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.infra.errors import UserError

    result = CliRunner().invoke(app, ["doctor", *args])
    assert isinstance(result.exception, UserError) and message in str(result.exception), result.output
    assert "\n" not in str(result.exception)
    assert not any(ln[:4] in (PASS, FAIL, SKIP) for ln in result.output.splitlines())  # nothing ran


def test_without_ray_mlflow_and_webdataset_their_checks_are_skips() -> None:
    ctx = DoctorContext("cpu", {"ray": False, "mlflow": False, "webdataset": False})
    for package in ("ray", "mlflow"):
        check = check_package(package, False, ctx.available, {})
        assert check.status == SKIP and "not installed" in check.figure and "pip install" in check.figure
    # the Ray check is a SKIP without Ray even with an address (nothing is contacted)
    check = check_ray_cluster(ctx, "127.0.0.1:1")
    assert check.status == SKIP and "ray is not installed" in check.figure
    ctx.step_samples_per_s = 1.0
    check = check_loader(ctx, "/some/shards")
    assert check.status == SKIP and "webdataset is not installed" in check.figure
    # compressai is required: absent, it is a FAIL
    assert check_package("compressai", True, {"compressai": False}, {}).status == FAIL


def test_on_a_box_without_ray_mlflow_webdataset_and_typer_the_doctor_imports_and_says_skip() -> None:
    code = BLOCK + (
        "from pipeline.bench.doctor import DoctorContext, availability, check_package, check_ray_cluster\n"
        "avail = availability()\n"
        "assert avail == {'ray': False, 'mlflow': False, 'webdataset': False}, avail\n"
        "ctx = DoctorContext('cpu', avail)\n"
        "print(check_package('ray', False, avail, {}).status, check_package('mlflow', False, avail, {}).status,"
        " check_ray_cluster(ctx, '127.0.0.1:1').status)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [SKIP, SKIP, SKIP]


def test_a_zoo_checkpoint_this_install_lacks_is_a_skip() -> None:
    check = check_zoo("no-such-checkpoint")
    assert check.status == SKIP and "no zoo:no-such-checkpoint" in check.figure


def test_version_outside_the_declared_range_is_named() -> None:
    check = check_package("compressai", True, {}, {"compressai": ">=99"})
    assert check.status == PASS and "outside dvcm's >=99" in check.figure
    check = check_package("compressai", True, {}, {"compressai": ">=1.2"})
    assert "dvcm declares >=1.2" in check.figure


def test_checks_that_need_cuda_skip_when_it_fails() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    ctx = DoctorContext("cuda", {})
    assert check_torch(ctx, {}).status == FAIL
    for check in (check_codec(ctx, "device", Path(".")), check_step(ctx, "fp32"), check_all_reduce(ctx, Path("."))):
        assert check.status == SKIP and "needs CUDA" in check.figure


@pytest.mark.slow
def test_loader_check_measures_real_shards_against_the_step(tiny_shards: Path) -> None:
    ctx = DoctorContext("cpu", {"webdataset": True})
    ctx.step_samples_per_s = 1e-3  # a step far slower than any loader
    check = check_loader(ctx, str(tiny_shards))
    assert check.status == PASS and check.values["loader_samples_per_s"] > 0
    ctx.step_samples_per_s = 1e9  # a step no loader keeps up with, even with the paper preset's workers
    check = check_loader(ctx, str(tiny_shards))
    assert check.status == FAIL and "--loader-workers" in check.figure


def test_ray_cluster_check_counts_the_cpus_and_runs_a_task(ray_address: str) -> None:
    check = check_ray_cluster(DoctorContext("cpu", {"ray": True}), ray_address, timeout_s=300)  # a busy machine
    assert check.status == PASS, check.figure
    assert check.values["cpus"] >= 1 and check.values["worker"]["torch"] == torch.__version__


@pytest.mark.slow  # a CLI or pytest subprocess: 5-10 s here
def test_gpu_tiers_collect_and_skip_cleanly_without_the_workflow_packages() -> None:
    """``pytest -m gpu`` where Ray, MLflow, WebDataset and typer cannot be imported: the first tier collects (and
    skips here without CUDA), the second is skipped naming what is missing; nothing errors."""
    code = BLOCK + (
        "import pytest\n"
        "sys.exit(pytest.main(['-m', 'gpu', '-rs', '-p', 'no:cacheprovider', '-o', 'addopts=',"
        " 'tests/test_gpu_core.py', 'tests/test_gpu.py']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "error" not in out.lower().replace("errors", ""), out
    assert "needs ray, mlflow, webdataset, typer" in out
    if not torch.cuda.is_available():
        assert "needs CUDA" in out and " passed" not in out
