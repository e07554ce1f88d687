"""The GPU tests of the second tier: they need Ray, MLflow, WebDataset and typer besides CUDA (the first tier, which
needs only torch, compressai and pytest, is ``tests/test_gpu_core.py``). Every test here is marked ``gpu``: it runs
wherever CUDA exists (``pytest -m gpu``) and is skipped, and reported as skipped, elsewhere (CI has no GPU); on a
machine without those packages the whole module is skipped and says which are missing.

What each shows on a GPU machine:
- a one-trial ``sweep --use-gpu`` of a few steps runs in fp32 and under AMP (bf16 transforms,
  fp32 entropy models): the end-of-epoch checksum, the metrics on the device and NCCL+gloo
  collectives (bugs 1 and 3 of the GPU issue), and its checkpoint loads on a CPU;
- a worker killed on the GPU resumes from its checkpoint with the optimizer state on the GPU
  (bug 4) and the CUDA RNG restored;
- ``prepare --num-gpus-per-worker 0.5`` writes the same shards as the CPU (within float tolerance);
- ``bench train --device cuda`` prints its table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.bench.doctor import installed

NEEDS = ("ray", "mlflow", "webdataset", "typer")
MISSING = [m for m in NEEDS if not installed(m)]
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (the workflow's packages): pip install -e ."),
    # before the session fixtures (a local Ray, an MLflow server, shards) start for nothing
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA (a GPU); run `pytest -m gpu` on a GPU machine"
    ),
]

TINY = ["--preset", "tiny", "--epochs", "2", "--steps-per-epoch", "3", "--val-steps", "1"]


def invoke(args: list[str]):  # noqa: ANN201 - typer's Result
    from typer.testing import CliRunner

    from pipeline.cli import app

    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("precision", ["fp32", "amp"])
def test_one_trial_gpu_sweep_and_its_checkpoint_loads_on_cpu(
    precision: str, tiny_shards: Path, tmp_path: Path, mlflow_uri: str, ray_local: None
) -> None:
    storage = tmp_path / "runs"
    result = invoke(
        [
            "sweep",
            "--shards",
            str(tiny_shards),
            *TINY,
            "--lambdas",
            "0.01",
            "--use-gpu",
            "--precision",
            precision,
            "--storage",
            str(storage),
            "--tracking-uri",
            mlflow_uri,
            "--name",
            f"gpu-{precision}",
        ]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    state = json.loads((storage / f"gpu-{precision}" / "sweep.json").read_text())
    (entry,) = state["trials"].values()
    assert entry["status"] == "finished"
    from dvcm.checkpoint import load_checkpoint

    model, meta = load_checkpoint(entry["final_checkpoint"])  # map_location cpu inside
    assert next(model.parameters()).device.type == "cpu" and meta["extra"]["epochs"] >= 1


def test_killed_gpu_worker_resumes_with_its_optimizer_on_the_gpu(
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
            "--use-gpu",
            "--storage",
            str(storage),
            "--tracking-uri",
            mlflow_uri,
            "--name",
            "killed-gpu",
        ]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (storage / "killed-gpu" / ".killed-proposed-16-32-2-l0.0067").read_text().startswith("killed at epoch 2")
    state = json.loads((storage / "killed-gpu" / "sweep.json").read_text())
    assert state["trials"]["proposed-16-32-2-l0.0067"]["epochs"] == 3


def test_prepare_on_half_a_gpu_matches_the_cpu(tmp_path: Path, ray_local: None) -> None:
    from pipeline.data.prepare import run_prepare
    from pipeline.data.sample_data import generate_sample
    from pipeline.data.shards import make_loader
    from pipeline.data.sources import vimeo90k

    sample = generate_sample(tmp_path / "data", train_sequences=2, val_sequences=1)
    listing = vimeo90k(sample.vimeo_root, frames=2)
    run_prepare(listing, tmp_path / "cpu", frames=2, shard_size=2, use_ray=False, progress=False)
    run_prepare(
        listing, tmp_path / "gpu", frames=2, shard_size=2, use_ray=True, num_gpus_per_worker=0.5, progress=False
    )
    for (_, s_cpu), (_, s_gpu) in zip(
        make_loader(str(tmp_path / "cpu"), "train", crop=None), make_loader(str(tmp_path / "gpu"), "train", crop=None)
    ):
        np.testing.assert_allclose(s_cpu.numpy(), s_gpu.numpy(), rtol=1e-2, atol=1e-3)


def test_bench_train_on_cuda_prints_its_table(ray_address: str) -> None:
    result = invoke(
        [
            "bench",
            "train",
            "--device",
            "cuda",
            "--batch-size",
            "2",
            "--crop",
            "128",
            "--steps",
            "1",
            "--N",
            "32",
            "--ddp-N",
            "16",
            "--address",
            ray_address,
        ]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "train step on cuda" in result.output and "proposed/hyperprior" in result.output
