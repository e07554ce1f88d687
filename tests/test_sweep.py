"""`dvcm-pipeline sweep`: grid/spec parsing, a 2-trial parallel sweep tracked in a real MLflow
server whose checkpoints code real images, and stop + `--resume` that skips finished trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.infra.errors import UserError
from pipeline.training.grid import build_grid, load_spec, parse_lambdas, trial_name
from pipeline.training.settings import resolve

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
TINY = ["--preset", "tiny", "--epochs", "2", "--steps-per-epoch", "2", "--val-steps", "2"]


def invoke(args: list[str]):
    from pipeline.cli import app

    return runner.invoke(app, args)


# ------------------------------------------------------------------------------- grid and spec
def test_grid_is_model_config_lambda_with_per_model_configs() -> None:
    grid = build_grid(
        ["proposed", "choi2022"], {"proposed": ["64,192,2", "64,128,1"], "choi2022": ["128,64,1"]}, [0.0067, 0.025]
    )
    names = [t["trial_name"] for t in grid]
    assert names == [
        "proposed-64-192-2-l0.0067",
        "proposed-64-192-2-l0.025",
        "proposed-64-128-1-l0.0067",
        "proposed-64-128-1-l0.025",
        "choi2022-128-64-1-l0.0067",
        "choi2022-128-64-1-l0.025",
    ]
    assert grid[4] == {
        "trial_name": "choi2022-128-64-1-l0.0067",
        "model": "choi2022",
        "config": {"M1": 128, "M2": 64, "H": 1},
        "lmbda": 0.0067,
    }
    assert trial_name("proposed", {"M1": 64, "M2": 192, "H": 2}, 0.0018) == "proposed-64-192-2-l0.0018"
    assert trial_name("bmshj2018", {"M": 192}, 0.0018, seed=2) == "bmshj2018-192-l0.0018-s2"


def test_a_model_without_configurations_trains_its_registered_defaults_of_the_preset() -> None:
    from dvcm.registry import CODECS

    for preset in ("tiny", "mini", "paper"):
        grid = build_grid(list(CODECS), None, [0.01], preset)
        for name, spec in CODECS.items():
            assert [spec.text(t["config"]) for t in grid if t["model"] == name] == list(spec.defaults(preset))
    with pytest.raises(UserError, match="of bmshj2018 does not parse; write M such as 192"):
        build_grid(["bmshj2018"], ["64,192,2"], [0.01])


def test_grid_entries_may_carry_their_own_seed_and_warm_start() -> None:
    from pipeline.training.trial import TrialConfig, trial_configs

    settings = resolve("tiny", {}, {"shards": "s", "seed": 0})
    config = {"M1": 16, "M2": 32, "H": 2}
    grid = [
        {
            "trial_name": trial_name("proposed", config, 0.0932, seed=1),
            "model": "proposed",
            "config": config,
            "lmbda": 0.0932,
            "seed": 1,
            "init_checkpoint": "/runs/proposed-16-32-2-l0.18-s1/final.pt",
            "epochs": 7,
        },
        {"trial_name": trial_name("proposed", config, 0.0932), "model": "proposed", "config": config, "lmbda": 0.0932},
        {
            "trial_name": trial_name("bmshj2018", {"M": 48}, 0.0932),
            "model": "bmshj2018",
            "config": {"M": 48},
            "lmbda": 0.0932,
        },
    ]
    seeded, plain, single = trial_configs(grid, settings, "s", "/runs", {}, {})
    assert TrialConfig.from_dict(single.to_dict()) == single and single.to_dict()["M"] == 48
    assert seeded.trial_name == "proposed-16-32-2-l0.0932-s1" and plain.trial_name == "proposed-16-32-2-l0.0932"
    assert (seeded.training.seed, seeded.init_checkpoint) == (1, "/runs/proposed-16-32-2-l0.18-s1/final.pt")
    assert (plain.training.seed, plain.init_checkpoint) == (0, None)
    assert (seeded.training.epochs, plain.training.epochs) == (7, settings.training.epochs)
    assert TrialConfig.from_dict(seeded.to_dict()) == seeded  # what travels through Ray comes back whole


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"max_concurrent_trials": 0}, "--max-concurrent-trials must be at least 1"),
        ({"lr": 0}, "--lr must be > 0"),
        ({"lr_factor": 1.5}, "--lr-factor must be between 0 and 1"),
        ({"cpus_per_worker": 0}, "--cpus-per-worker must be > 0"),
    ],
)
def test_settings_that_could_never_train_are_refused_before_anything_starts(flags: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve("tiny", {}, {"shards": "s", **flags})


def test_names_that_would_leave_the_storage_folder_are_refused() -> None:
    from pipeline.training.grid import check_name

    for bad in ("../../x", "/etc/x", "a/b", ".hidden", "", "x" * 200, "a..b"):
        with pytest.raises(UserError, match="is not a plain name"):
            check_name(bad)
    assert check_name("quickstart-1a2b.v2_x") == "quickstart-1a2b.v2_x"


@pytest.mark.parametrize("lambdas", [["0"], ["-1"], ["nan"], ["abc"], []])
def test_bad_lambdas_are_refused(lambdas: list[str]) -> None:
    with pytest.raises(UserError):
        parse_lambdas(lambdas)


def test_duplicate_and_unknown_grid_entries_are_refused() -> None:
    with pytest.raises(UserError, match="repeats"):
        build_grid(["proposed"], ["64,192,2", "64,192,2"], [0.01])
    with pytest.raises(UserError, match="unknown model"):
        build_grid(["proposed", "hyper"], ["64,192,2"], [0.01])
    with pytest.raises(UserError, match="does not parse"):
        build_grid(["proposed"], ["64;192;2"], [0.01])
    with pytest.raises(UserError, match="no configuration"):
        build_grid(["choi2022"], {"proposed": ["64,192,2"]}, [0.01])


def test_paper_spec_is_the_papers_grid_and_flags_override_it(tmp_path: Path) -> None:
    spec = load_spec(REPO / "jobs" / "paper_sweep.yaml")
    assert spec["preset"] == "paper" and spec["N"] == 192 and spec["models"] == ["proposed", "choi2022"]
    grid = build_grid(spec["models"], spec["configs"], parse_lambdas(spec["lambdas"]))
    configs = sorted({(t["model"], t["config"]["M1"], t["config"]["M2"], t["config"]["H"]) for t in grid})
    assert configs == [
        ("choi2022", 128, 64, 1),
        ("proposed", 64, 128, 1),
        ("proposed", 64, 128, 2),
        ("proposed", 64, 192, 2),
        ("proposed", 128, 64, 1),
    ]
    settings = resolve(None, spec, {"shards": "x", "epochs": 3, "batch_size": None}).training
    assert settings.epochs == 3 and settings.batch_size == 16 and settings.crop == 256
    bad = tmp_path / "bad.yaml"
    bad.write_text("lambdaz: [0.1]\n")
    with pytest.raises(UserError, match="unknown keys"):
        load_spec(bad)


# ------------------------------------------------------------------------------- a real sweep
def test_two_trial_sweep_in_parallel_logs_parent_and_nested_runs_and_codes_images(
    tiny_shards: Path, tmp_path: Path, mlflow_uri: str, ray_local: None
) -> None:
    import torch
    from mlflow import MlflowClient

    from dvcm.bitstream import compress, decode, decode_base, layer_sizes
    from dvcm.checkpoint import load_checkpoint

    storage = tmp_path / "runs"
    result = invoke(
        [
            "sweep",
            "--shards",
            str(tiny_shards),
            "--model",
            "proposed",
            "--configs",
            "16,32,2",
            "--lambdas",
            "0.0067,0.025",
            *TINY,
            "--max-concurrent-trials",
            "2",
            "--storage",
            str(storage),
            "--tracking-uri",
            mlflow_uri,
            "--name",
            "two",
        ]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    state = json.loads((storage / "two" / "sweep.json").read_text())
    c = MlflowClient(mlflow_uri)
    parent = c.get_run(state["parent_run_id"])
    assert parent.info.run_name == "two" and parent.info.status == "FINISHED"
    runs = c.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in runs) == ["proposed-16-32-2-l0.0067", "proposed-16-32-2-l0.025"]
    starts = [r.info.start_time for r in runs]
    ends = [r.info.end_time for r in runs]
    assert max(starts) < min(ends)  # both trials were running at the same time
    for r in runs:
        p, tags = r.data.params, r.data.tags
        assert r.info.status == "FINISHED"
        assert (p["model"], p["N"], p["M1"], p["M2"], p["H"], p["preset"]) == (
            "proposed",
            "32",
            "16",
            "32",
            "2",
            "tiny",
        )
        assert float(p["lmbda"]) == float(tags["lambda"]) and float(p["gamma"]) >= 0
        assert len(p["dataset_digest"]) == 64 and len(p["yolo_weights_sha256"]) == 64 and p["code_version"]
        assert tags["model"] == "proposed" and tags["config"] == "16,32,2"
        for key in (
            "train/loss",
            "val/loss",
            "val/bpp",
            "val/bpp_y1",
            "val/bpp_z1",
            "val/bpp_y2",
            "val/bpp_z2",
            "val/D_x",
            "val/D_s",
            "val/psnr",
            "lr",
            "train/share_ds",
            "val/rdn_y1_given_y2",
        ):
            assert [m.step for m in c.get_metric_history(r.info.run_id, key)] == [1, 2], key
        arts = {a.path for a in c.list_artifacts(r.info.run_id, "checkpoint")}
        assert arts == {"checkpoint/final.pt"}
        assert {a.path for a in c.list_artifacts(r.info.run_id, "config")} == {"config/resolved_config.json"}

    x = torch.rand(1, 3, 96, 160)
    for name, entry in state["trials"].items():
        model, meta = load_checkpoint(entry["final_checkpoint"])
        assert meta["extra"]["trial"] == name
        data = compress(model, x)
        sizes = layer_sizes(data)
        assert sizes["base"] > 0 and sizes["enhancement"] > 0
        assert decode(model, data).shape == (1, 3, 96, 160)
        assert decode_base(model, data).shape == (1, 256, 12, 20)


def test_stopped_sweep_resumes_without_rerunning_finished_trials(
    tiny_shards: Path, tmp_path: Path, ray_address: str
) -> None:
    from mlflow import MlflowClient

    storage, uri = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "sweep",
        "--shards",
        str(tiny_shards),
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
        "2",
        "--val-steps",
        "1",
        "--max-concurrent-trials",
        "1",
        "--storage",
        str(storage),
        "--tracking-uri",
        uri,
        "--name",
        "stopme",
    ]
    code = "import sys; from pipeline.cli import main; sys.argv = ['dvcm-pipeline'] + sys.argv[1:]; main()"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args, "--address", ray_address],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    state_file = storage / "stopme" / "sweep.json"
    deadline = time.monotonic() + 300
    finished: list[str] = []
    while time.monotonic() < deadline and proc.poll() is None and not finished:
        time.sleep(1)
        if state_file.is_file():
            trials = json.loads(state_file.read_text())["trials"]
            finished = [n for n, t in trials.items() if t.get("status") == "finished"]
    assert finished, "the first trial never finished"
    proc.send_signal(signal.SIGINT)  # stop the sweep as Ctrl-C would
    proc.wait(timeout=120)
    first = finished[0]
    before = json.loads(state_file.read_text())["trials"]
    first_ckpt = Path(before[first]["final_checkpoint"])
    mtime = first_ckpt.stat().st_mtime_ns

    result = invoke([*args, "--resume"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    after = json.loads(state_file.read_text())["trials"]
    assert all(t["status"] == "finished" for t in after.values()) and len(after) == 2
    assert after[first]["final_checkpoint"] == before[first]["final_checkpoint"]
    assert first_ckpt.stat().st_mtime_ns == mtime  # not retrained
    c = MlflowClient(uri)
    run = c.get_run(after[first]["run_id"])
    assert [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")] == [1]  # logged once

    # resuming with other training settings is refused before anything runs, and the record is kept
    record = state_file.read_bytes()
    changed = invoke([*args, "--resume", "--seed", "3", "--lr", "0.002"])
    assert isinstance(changed.exception, UserError), changed.output + repr(changed.exception)
    message = str(changed.exception)
    assert "\n" not in message and "seed 0 -> 3" in message and "lr 0.0001 -> 0.002" in message and "--name" in message
    assert state_file.read_bytes() == record


def test_resume_settings_check_compares_training_settings_only() -> None:
    from pipeline.training.settings import check_resume_settings, resume_record

    flags = {"shards": "s", "seed": 1}

    def record(**changed: object) -> dict:
        return resume_record(resolve("tiny", {}, {**flags, **changed}), data)

    data = {"shards_digest": "abc", "yolo_weights_sha256": "def"}
    state = {"training_settings": record()}
    # resources may change; a YAML number read as a string ("1e-4") is the same number
    check_resume_settings("s1", state, record(max_concurrent_trials=4, cpus_per_worker=2.0, lr="1e-4"))
    check_resume_settings("s1", {"trials": {}}, record(gamma=9.0))  # an older record
    with pytest.raises(UserError, match=r"gamma 1\.0 -> 9\.0"):
        check_resume_settings("s1", state, record(gamma=9.0))
    with pytest.raises(UserError, match=r"workers_per_trial 1 -> 2"):  # it scales the batch
        check_resume_settings("s1", state, record(workers_per_trial=2))
    with pytest.raises(UserError, match=r"shards_digest 'abc' -> 'xyz'"):  # other data
        check_resume_settings("s1", state, resume_record(resolve("tiny", {}, flags), {**data, "shards_digest": "xyz"}))
    # a record written before --gamma-mode existed trained with the paper's fixed γ
    legacy = {"training_settings": {k: v for k, v in record().items() if k != "gamma_mode"}}
    check_resume_settings("s1", legacy, record())
    with pytest.raises(UserError, match=r"gamma_mode 'fixed' -> 'scaled'"):
        check_resume_settings("s1", legacy, record(gamma_mode="scaled"))


def test_gamma_mode_sets_the_weight_of_the_feature_term() -> None:
    import torch

    from dvcm.loss import ScalableRDLoss, feature_weight

    assert feature_weight(0.025, 4.0, "fixed") == 4.0
    assert feature_weight(0.025, 4.0, "scaled") == pytest.approx(0.1)
    with pytest.raises(ValueError, match="gamma mode"):
        feature_weight(0.025, 4.0, "linear")
    with pytest.raises(UserError, match=r"^--gamma-mode must be one of fixed, scaled, got 'linear'$"):
        resolve("tiny", {}, {"shards": "s", "gamma_mode": "linear"})
    # the loss the trial builds: R + λ·D_x + λ·γ·D_s in the scaled mode
    x = torch.rand(1, 3, 8, 8)
    out = {
        "likelihoods": {"y1": torch.full((1, 1, 2, 2), 0.5)},
        "x_hat": x + 0.1,
        "s": torch.zeros(1, 2, 1, 1),
        "s_hat": torch.ones(1, 2, 1, 1),
    }
    terms = ScalableRDLoss(0.025, feature_weight(0.025, 4.0, "scaled"))(out, x)
    expected = terms["bpp"] + 0.025 * terms["D_x"] + 0.025 * 4.0 * terms["D_s"]
    assert float(terms["loss"]) == pytest.approx(float(expected))


@pytest.mark.parametrize("width", [80, 160])
def test_trial_table_never_cuts_a_cell(width: int) -> None:
    import io

    from rich.console import Console

    from pipeline.training.live_table import TrialRow, render_table

    paper = trial_name("proposed", {"M1": 128, "M2": 64, "H": 1}, 0.0483)  # a paper-sized name and epoch count
    rows = {
        paper: TrialRow(
            paper, epochs=300, state="RUNNING", epoch=123, train_loss=12.3456, val_loss=13.4567, bpp=0.4567, psnr=33.21
        )
    }
    for i, lam in enumerate((0.0018, 0.0932)):
        for model in ("proposed", "choi2022"):
            name = trial_name(model, {"M1": 16, "M2": 32, "H": 2}, lam)
            rows[name] = TrialRow(
                name,
                epochs=4,
                state="FINISHED",
                epoch=4,
                train_loss=46.0552 + i,
                val_loss=111.0693,
                bpp=0.0927 + i,
                psnr=21.35,
            )
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(render_table(rows, "sweep", width=width))
    text = out.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
    for name in rows:
        assert name in text
    assert "val bpp" in text and "0.0927" in text and "1.09" in text and "21.35" in text
    assert ("47.06" in text) == (width >= 160)  # the training loss is left out when it does not fit


@pytest.mark.slow  # over 5 s: a subprocess or a real job (the fast tier stays near a minute)
def test_artifacts_of_a_local_store_land_beside_it_and_nothing_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 28: the quickstart left 19 MB of ./mlruns in the folder it ran in (MLflow's default artifact root)."""
    from pipeline.infra import tracking

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    (tmp_path / "out").mkdir()
    uri = tracking.resolve_tracking_uri(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    c = tracking.client(uri)
    run = c.create_run(tracking.experiment_id(uri))
    artifact = tmp_path / "a.txt"
    artifact.write_text("x")
    tracking.log_artifact(uri, run.info.run_id, artifact, "files")
    stored = list((tmp_path / "out" / "mlartifacts").rglob("a.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "x"
    assert list(cwd.iterdir()) == []
