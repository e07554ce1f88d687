"""`dvcm-pipeline train`: bad input refused before training, 2-worker gloo DDP, worker-kill resume.

Real local Ray (2 CPUs), real `mlflow server` on 127.0.0.1, real shards from `prepare`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipeline.infra.errors import UserError
from pipeline.training.ddp import param_checksum
from pipeline.training.loop import rng_state, set_rng_state
from tests.mlflow_server import free_port

runner = CliRunner()

TINY = ["--preset", "tiny", "--epochs", "2", "--steps-per-epoch", "3", "--val-steps", "1"]


def invoke(args: list[str]):
    from pipeline.cli import app

    return runner.invoke(app, args)


def nested_runs(uri: str, parent_run_id: str):
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_run(parent_run_id).info.experiment_id
    return c, c.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


def state_of(storage: Path, name: str) -> dict:
    return json.loads((storage / name / "sweep.json").read_text())


# ------------------------------------------------------------------------------- unit pieces
def test_rng_state_round_trips_through_weights_only_load(tmp_path: Path) -> None:
    import random

    import numpy as np

    state = rng_state()
    torch.save(state, tmp_path / "s.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_warm_start_takes_the_neighbours_weights_and_refuses_another_codec(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from dvcm.checkpoint import save_checkpoint
    from dvcm.errors import CheckpointError
    from dvcm.registry import build
    from dvcm.yolo import build_yolov3
    from dvcm.zoo import MINI_DETECTOR
    from pipeline.infra.yolo_files import yolo_files
    from pipeline.training.loop import Worker, warm_start

    weights, cfg = yolo_files(MINI_DETECTOR, None)
    front = build_yolov3(weights, cfg=cfg)
    torch.manual_seed(1)
    neighbour = build("proposed", front=front.front, yolo_provenance=dict(front.provenance), N=16, M1=8, M2=8, H=2)
    save_checkpoint(tmp_path / "neighbour.pt", neighbour)
    torch.manual_seed(2)
    fresh = build("proposed", front=front.front, yolo_provenance=dict(front.provenance), N=16, M1=8, M2=8, H=2)
    trial = SimpleNamespace(model="proposed", yolo_provenance=dict(front.provenance))
    w = Worker(
        trial=trial,
        rank=0,
        world=1,
        device=torch.device("cpu"),
        model=fresh,
        forward=fresh,  # type: ignore[arg-type]
        criterion=torch.nn.Identity(),
        net_opt=None,
        aux_opt=None,
        sched=None,
    )  # type: ignore[arg-type]
    warm_start(w, str(tmp_path / "neighbour.pt"))
    for key, value in neighbour.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    other = build("proposed", front=front.front, yolo_provenance=dict(front.provenance), N=16, M1=8, M2=4, H=2)
    w.model = other
    with pytest.raises(CheckpointError, match="not the trial's proposed"):
        warm_start(w, str(tmp_path / "neighbour.pt"))
    with pytest.raises(CheckpointError, match="not a file"):
        warm_start(w, str(tmp_path / "missing.pt"))


def test_param_checksum_sees_a_single_changed_weight() -> None:
    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    assert param_checksum(a) == param_checksum(b)
    with torch.no_grad():
        b.weight[1, 2] += 1e-3
    assert param_checksum(a) != param_checksum(b)


# ------------------------------------------------------------------------------- bad input
@pytest.fixture()
def empty_shards(tiny_shards: Path, tmp_path: Path) -> Path:
    """A shard folder whose dataset.json says nothing was written."""
    out = tmp_path / "empty"
    out.mkdir()
    info = json.loads((tiny_shards / "dataset.json").read_text())
    info["counts"]["written"] = 0
    (out / "dataset.json").write_text(json.dumps(info))
    return out


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--model", "nosuch"], "unknown model 'nosuch'"),
        (["--config", "64,abc,2"], "does not parse"),
        (["--lmbda", "0"], "lambda must be > 0"),
        (["--lmbda", "-0.01"], "lambda must be > 0"),
        (["--shards", "{missing}"], "does not exist"),
        (["--shards", "{empty}"], "holds no"),
        (["--yolo-seed", "1"], "YOLO weights sha256"),
        (["--precision", "amp"], "--precision amp needs GPUs"),
        (["--crop", "64"], "at least 128"),
        # issue 28, defect 2: these waited forever for a batch the loader could never form
        (["--crop", "4096"], "no frame of split 'train' in"),
        (["--batch-size", "64"], "frames that hold a 128x128 crop, fewer than --batch-size 64"),
        # issue 28, defect 12: accepted before
        (["--lr", "-1"], "--lr must be > 0"),
        (["--N", "0"], "--N must be at least 1"),
        (["--seed", "-1"], "--seed must be 0 or more"),
        (["--loader-workers", "-1"], "--loader-workers must be 0 or more"),
        (["--name", "../../x"], "is not a plain name"),
        (["--tracking-uri", "http://127.0.0.1:{port}"], "unreachable"),
        (["--workers-per-trial", "3"], "Ray cluster has 2"),
    ],
)
def test_bad_input_is_one_line_before_training(
    extra: list[str], expected: str, tiny_shards: Path, empty_shards: Path, tmp_path: Path, ray_local: None
) -> None:
    subs = {"{missing}": str(tmp_path / "nope"), "{empty}": str(empty_shards), "{port}": str(free_port())}
    extra = [subs.get(e, e.replace("{port}", subs["{port}"])) for e in extra]
    args = [
        "train",
        "--shards",
        str(tiny_shards),
        *TINY,
        "--storage",
        str(tmp_path / "runs"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        *extra,
    ]
    result = invoke(args)
    assert isinstance(result.exception, UserError), result.output
    message = str(result.exception)
    assert expected in message and "\n" not in message
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("train_state.pt"))


@pytest.mark.slow  # over 5 s: a subprocess or a real job (the fast tier stays near a minute)
def test_cli_prints_user_error_as_one_line_exit_2(tmp_path: Path) -> None:
    exe = shutil.which("dvcm-pipeline", path=str(Path(sys.executable).parent))
    assert exe, "dvcm-pipeline is not installed in this environment"
    proc = subprocess.run(
        [exe, "train", "--shards", str(tmp_path), "--model", "nosuch", "--lmbda", "0.01"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "unknown model 'nosuch'" in lines[0]
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------- DDP
def test_two_worker_gloo_ddp_keeps_ranks_identical_and_loss_falls(
    tiny_shards: Path, tmp_path: Path, mlflow_uri: str, ray_local: None
) -> None:
    storage = tmp_path / "runs"
    result = invoke(
        [
            "train",
            "--shards",
            str(tiny_shards),
            "--preset",
            "tiny",
            "--epochs",
            "2",
            "--steps-per-epoch",
            "4",
            "--val-steps",
            "1",
            "--lr",
            "1e-3",
            "--workers-per-trial",
            "2",
            "--storage",
            str(storage),
            "--tracking-uri",
            mlflow_uri,
            "--name",
            "ddp",
        ]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    state = state_of(storage, "ddp")
    client, runs = nested_runs(mlflow_uri, state["parent_run_id"])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["workers_per_trial"] == "2"
    rid = run.info.run_id
    r0 = {m.step: m.value for m in client.get_metric_history(rid, "ddp/param_checksum_rank0")}
    r1 = {m.step: m.value for m in client.get_metric_history(rid, "ddp/param_checksum_rank1")}
    assert sorted(r0) == [1, 2] and r0 == r1  # bit-identical weights on both ranks after every epoch
    assert r0[1] != r0[2]  # and they did move
    first = client.get_metric_history(rid, "train/first_step_loss")[0].value
    last = {m.step: m.value for m in client.get_metric_history(rid, "train/loss")}[2]
    assert last < first


# ------------------------------------------------------------------------------- fault injection
def test_killed_worker_resumes_from_last_checkpoint(
    tiny_shards: Path, tmp_path: Path, mlflow_uri: str, ray_local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DVCM_TEST_KILL_AT_EPOCH", "2")
    storage = tmp_path / "runs"
    result = invoke(
        [
            "train",
            "--shards",
            str(tiny_shards),
            "--preset",
            "tiny",
            "--epochs",
            "3",
            "--steps-per-epoch",
            "2",
            "--val-steps",
            "1",
            "--max-lr-drops",
            "5",
            "--storage",
            str(storage),
            "--tracking-uri",
            mlflow_uri,
            "--name",
            "killed",
        ]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    marker = storage / "killed" / ".killed-proposed-16-32-2-l0.0067"
    assert marker.read_text().startswith("killed at epoch 2")  # the worker really died once
    state = state_of(storage, "killed")
    entry = state["trials"]["proposed-16-32-2-l0.0067"]
    assert entry["status"] == "finished" and entry["epochs"] == 3
    client, runs = nested_runs(mlflow_uri, state["parent_run_id"])
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")]
    assert steps == [1, 2, 3]  # epoch 1 was not trained again after the restart
    from dvcm.checkpoint import load_checkpoint

    model, meta = load_checkpoint(entry["final_checkpoint"])
    assert meta["extra"]["epochs"] == 3
