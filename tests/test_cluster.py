"""The same commands on a multi-node Ray cluster, simulated on this machine.

Two ``ray start`` nodes on 127.0.0.1 (a head with ``{"node_a": 1}`` and the job server, a worker
with ``{"node_b": 1}``; one CPU each), ``prepare`` and a 2-trial ``sweep`` submitted with
``ray job submit --runtime-env`` (a copy of ``jobs/runtime_env.yaml`` pointed at this test's
MLflow server), results checked in that real ``mlflow server``.

Where the trials ran is read from Ray's own state API: every Ray Train worker actor with the
node it was placed on. Each node has one CPU and a trial's worker needs one, so two trials
running at once *must* use both nodes; the test checks that they did.

Stopping: ``ray stop --force`` would stop every Ray on the machine (other test sessions
included), so the nodes are stopped by their own processes: those whose command line names
this cluster's temp dir, and their children.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.mlflow_server import free_port

pytestmark = pytest.mark.slow  # integration: real Ray, MLflow, Chromium or subprocess CLIs

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_job_specs_parse_and_name_what_they_must() -> None:
    """The cluster files are valid YAML with the fields `ray up`, KubeRay and `ray job submit` need."""
    env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "." and ".venv/" in env["excludes"] and ".git/" in env["excludes"]
    assert "MLFLOW_TRACKING_URI" in env["env_vars"]
    up = yaml.safe_load((REPO / "jobs" / "cluster-gpu.yaml").read_text())
    assert {"cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands"} <= set(up)
    assert up["head_node_type"] in up["available_node_types"]
    assert any(t["resources"].get("GPU", 0) > 0 for t in up["available_node_types"].values())
    job = yaml.safe_load((REPO / "jobs" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"].startswith("dvcm-pipeline sweep --spec jobs/paper_sweep.yaml")
    assert "MLFLOW_TRACKING_URI" in yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert any(
        "nvidia.com/gpu" in c["resources"]["limits"] for w in workers for c in w["template"]["spec"]["containers"]
    )


def _env(auth: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every cluster process: this venv on PATH, and the cluster's own auth token."""
    env = {
        **os.environ,
        **(auth or {}),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _run(cmd: list[str], timeout: float, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, (
        f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{proc.stdout[-8000:]}\n{proc.stderr[-6000:]}"
    )
    return proc


def _node_ports() -> list[str]:
    """Explicit free ports, so that two nodes on one machine (and other Ray sessions) never collide."""
    return [
        "--node-manager-port",
        str(free_port()),
        "--object-manager-port",
        str(free_port()),
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--dashboard-agent-grpc-port",
        str(free_port()),
        "--metrics-export-port",
        str(free_port()),
        "--runtime-env-agent-port",
        str(free_port()),
    ]


def _stop_cluster(temp_dir: str) -> None:
    """Stop every process of this cluster only: command line names ``temp_dir``, plus their descendants."""
    import psutil

    roots = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in p.info["cmdline"] or []):
                roots.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    procs = {p.pid: p for p in roots}
    for p in roots:
        try:
            procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    procs.pop(os.getpid(), None)
    for p in procs.values():
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture()
def two_node_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """(job server URL, env) of a head ``{"node_a": 1}`` + worker ``{"node_b": 1}`` cluster, 1 CPU each.

    Token authentication as on a real cluster: a token of its own, given to every process by env.
    """
    import secrets

    # Short: Ray's unix sockets live under it. The worker node gets its own temp dir below it, as a
    # real node has its own disk: two raylets sharing one session dir also share one runtime_env
    # package cache, and the worker node's agent then deletes or re-unpacks the job's working_dir
    # under the running job driver (its cwd vanishes: FileNotFoundError from os.getcwd in Tune).
    temp_dir = tempfile.mkdtemp(prefix="dvcmrc", dir="/tmp")
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = _env({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    gcs_port, dash_port = free_port(), free_port()
    try:
        _run(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(gcs_port),
                "--num-cpus",
                "1",
                "--num-gpus",
                "0",
                "--resources",
                json.dumps({"node_a": 1}),
                "--include-dashboard",
                "true",
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(dash_port),
                "--temp-dir",
                temp_dir,
                "--disable-usage-stats",
                *_node_ports(),
            ],
            timeout=180,
            env=env,
        )
        _run(
            [
                str(BIN / "ray"),
                "start",
                "--address",
                f"127.0.0.1:{gcs_port}",
                "--node-ip-address",
                "127.0.0.1",
                "--num-cpus",
                "1",
                "--num-gpus",
                "0",
                "--resources",
                json.dumps({"node_b": 1}),
                "--disable-usage-stats",
                "--temp-dir",
                str(Path(temp_dir) / "b"),
                *_node_ports(),
            ],
            timeout=180,
            env=env,
        )
        yield f"http://127.0.0.1:{dash_port}", env
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(address: str, env: dict[str, str], runtime_env: Path, entrypoint: list[str], timeout: float) -> str:
    proc = _run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--runtime-env", str(runtime_env), "--", *entrypoint],
        timeout=timeout,
        env=env,
    )
    return proc.stdout + proc.stderr


def test_prepare_and_sweep_through_ray_job_submit_use_both_nodes(
    two_node_cluster: tuple[str, dict[str, str]], mlflow_uri: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    address, env = two_node_cluster
    # jobs/runtime_env.yaml as shipped, with this test's tracking server and the checkout as working_dir.
    spec = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    spec["working_dir"] = str(REPO)
    spec["env_vars"].update({"MLFLOW_TRACKING_URI": mlflow_uri, "DVCM_STORAGE": str(tmp_path / "runs")})
    runtime_env = tmp_path / "runtime_env.yaml"
    runtime_env.write_text(yaml.safe_dump(spec))

    shards = tmp_path / "shards"
    out = _submit(
        address,
        env,
        runtime_env,
        [
            "dvcm-pipeline",
            "prepare",
            "--dataset",
            "sample",
            "--root",
            str(tmp_path / "sample"),
            "--out",
            str(shards),
            "--frames",
            "3",
            "--shard-size",
            "4",
        ],
        timeout=400,
    )
    assert "succeeded" in out, out[-3000:]
    info = json.loads((shards / "dataset.json").read_text())
    assert info["counts"]["written"] > 0 and (shards / "manifest.parquet").is_file()

    # No --tracking-uri and no --address: MLFLOW_TRACKING_URI from the runtime_env, RAY_ADDRESS from the job.
    out = _submit(
        address,
        env,
        runtime_env,
        [
            "dvcm-pipeline",
            "sweep",
            "--shards",
            str(shards),
            "--model",
            "proposed",
            "--configs",
            "16,32,2",
            "--lambdas",
            "0.01,0.02",
            "--preset",
            "tiny",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "1",
            "--val-steps",
            "1",
            "--max-concurrent-trials",
            "2",
            "--storage",
            str(tmp_path / "runs"),
            "--name",
            "cluster",
        ],
        timeout=500,
    )
    assert "succeeded" in out, out[-3000:]
    # The job's log holds every worker's output too: the runtime_env's setup hook keeps it to what matters.
    assert "torch.jit.script` is deprecated" not in out, out[-3000:]
    assert "Reporting training result" not in out, out[-3000:]
    assert out.count("uses seeded random weights") <= 1, out[-3000:]  # said once, by the CLI

    # The trials' Ray Train workers, and the node each was placed on (Ray's state API on the head;
    # queried from a process that holds the cluster's token).
    placed = json.loads(_run([sys.executable, "-c", STATE_QUERY, address], timeout=120, env=env).stdout)
    assert sorted(placed["nodes"].values()) == ["node_a", "node_b"]
    assert len(placed["workers"]) >= 2, placed
    assert {placed["nodes"][nid] for nid in placed["workers"]} == {"node_a", "node_b"}

    # The results reached the MLflow server: one parent run, one finished nested run per trial.
    state = json.loads((tmp_path / "runs" / "cluster" / "sweep.json").read_text())
    assert state["tracking_uri"] == mlflow_uri
    c = MlflowClient(mlflow_uri)
    parent = c.get_run(state["parent_run_id"])
    assert parent.info.run_name == "cluster" and parent.info.status == "FINISHED"
    kids = c.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in kids) == ["proposed-16-32-2-l0.01", "proposed-16-32-2-l0.02"]
    for r in kids:
        assert r.info.status == "FINISHED" and r.data.tags["model"] == "proposed" and r.data.tags["config"] == "16,32,2"
        assert {a.path for a in c.list_artifacts(r.info.run_id, "checkpoint")} == {"checkpoint/final.pt"}
        assert [m.step for m in c.get_metric_history(r.info.run_id, "val/D_s")] == [1]


STATE_QUERY = """
import json, sys
from ray.util.state import list_actors, list_nodes
nodes = {n.node_id: next((k for k in ("node_a", "node_b") if k in (n.resources_total or {})), "?")
         for n in list_nodes(address=sys.argv[1], detail=True)}
workers = [a.node_id for a in list_actors(address=sys.argv[1], filters=[("class_name", "=", "RayTrainWorker")],
                                           detail=True, limit=1000)]
print(json.dumps({"nodes": nodes, "workers": workers}))
"""


def test_unreachable_address_is_one_line_error(tiny_shards: Path, tmp_path: Path) -> None:
    """``--address`` with nothing listening: exit 2 and one line within seconds (Ray alone retries for minutes)."""
    closed = f"127.0.0.1:{free_port()}"
    cmd = [
        str(BIN / "dvcm-pipeline"),
        "sweep",
        "--shards",
        str(tiny_shards),
        "--model",
        "proposed",
        "--configs",
        "16,32,2",
        "--lambdas",
        "0.01",
        "--preset",
        "tiny",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "nowhere",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--address",
        closed,
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=_env(), cwd=REPO)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = [
        line for line in proc.stderr.splitlines() if line.startswith("error")
    ]  # (the seeded-YOLO warning may precede it)
    assert len(err) == 1 and "cannot reach the Ray cluster" in err[0] and closed in err[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert time.monotonic() - t0 < 120
