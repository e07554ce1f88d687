"""Shared fixtures: one local Ray per test session, a real MLflow server, a tiny prepared dataset."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from tests.mlflow_server import mlflow_server
except ImportError:  # tests/ collected as a plain folder (rootdir on sys.path differs)
    from mlflow_server import mlflow_server  # type: ignore[no-redef]


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray with 2 CPUs, started once and shut down at the end of the session."""
    import ray

    # Workers must import this checkout (dvcm, pipeline, tests) whatever their cwd.
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            configure_logging=False,
            runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}},
        )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The http URI of a real ``mlflow server`` on 127.0.0.1 (SQLite store, local artifacts)."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="session")
def ray_address(ray_local: None) -> str:
    """The GCS address of the session's Ray, for CLI subprocesses that should join it."""
    import ray

    return ray.get_runtime_context().gcs_address


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample Vimeo-like set prepared into shards: 6 train + 3 val frames (448x256), seeded YOLO 0."""
    from pipeline.data.prepare import run_prepare
    from pipeline.data.sample_data import generate_sample
    from pipeline.data.sources import vimeo90k

    root = tmp_path_factory.mktemp("sample")
    sample = generate_sample(root / "data", train_sequences=2, val_sequences=1)
    out = root / "shards"
    run_prepare(vimeo90k(sample.vimeo_root, frames=3), out, frames=3, shard_size=4, use_ray=False, progress=False)
    return out


@pytest.fixture(scope="session")
def yolo():
    """The seeded random-weight YOLOv3 (seed 0), built once: it says it is random, with a warning."""
    from dvcm.yolo import build_yolov3

    with pytest.warns(UserWarning, match="seeded random weights"):
        return build_yolov3(None, seed=0)


# Integration tests are `slow`: those with a real Ray, a real MLflow server, Chromium or a
# quickstart (by the fixtures they use, or marked in their module); `pytest -m "not slow"` runs
# the fast unit tests. CI runs everything.
INTEGRATION_FIXTURES = frozenset({"ray_local", "ray_address", "mlflow_uri"})
# Fixtures that take minutes on 2 cores: tests_codec's `trained` trains a codec for 300 steps.
SLOW_FIXTURES = frozenset({"trained"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if (INTEGRATION_FIXTURES | SLOW_FIXTURES) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _skip_gpu_tests_without_cuda(request: pytest.FixtureRequest) -> None:
    """Tests marked ``gpu`` run wherever CUDA exists (``pytest -m gpu``) and are skipped, and shown as
    skipped, elsewhere."""
    if request.node.get_closest_marker("gpu") is not None and not _cuda_available():
        pytest.skip("needs CUDA (a GPU); run `pytest -m gpu` on a GPU machine")
