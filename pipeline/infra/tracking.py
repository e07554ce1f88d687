"""MLflow tracking for training: URI resolution, reachability, parent/nested runs, logging helpers.

One process writes to MLflow: the CLI driver of a sweep (fed by Ray Tune results). That keeps a
local SQLite store free of concurrent writers and means Ray workers never need to reach the
tracking server.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from dvcm.fileio import file_sha256
from pipeline.infra.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXPERIMENT_NAME = "dvcm"
TAG_SWEEP = "dvcm.sweep"
TAG_TRIAL = "dvcm.trial"
TAG_FAILURE = "dvcm.failure_reason"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the cwd.

    A relative SQLite path is made absolute so that every process (and a later ``mlflow ui``
    started in the same directory) sees the same file.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///") :]
        uri = "sqlite:///" + str((Path.cwd() / rel).resolve())
    elif "://" not in uri:
        uri = str(Path(uri).resolve())  # a plain directory: the file store
    return uri


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Raise ``UserError`` (one line) if the tracking store cannot be used, before any training."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
                if resp.status != 200:
                    raise UserError(f"MLflow tracking server {uri} answered HTTP {resp.status}; check --tracking-uri")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(
                f"MLflow tracking server {uri} is unreachable ({reason}); start it or fix --tracking-uri/MLFLOW_TRACKING_URI"
            ) from None
    elif uri.startswith("sqlite:///"):
        parent = Path(uri[len("sqlite:///") :]).parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise UserError(f"MLflow SQLite store {uri}: directory {parent} is missing or not writable")
    elif "://" in uri and not uri.startswith("file://"):  # another store: MLflow must know its scheme
        try:
            client(uri).search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - MLflow's errors for an unknown or unreachable store
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise UserError(
                f"MLflow tracking store {uri} cannot be used ({first[:200]}); fix --tracking-uri/MLFLOW_TRACKING_URI "
                "(sqlite:///FILE, http://HOST:PORT, or a folder)"
            ) from None


def client(uri: str):  # -> mlflow.MlflowClient
    """An ``MlflowClient`` on ``uri``."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


# MLflow 3's UI opens an experiment on its GenAI overview (traces) unless the experiment says it holds
# model training; this tag is what the UI reads (values of its ExperimentKind).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite store (``<its folder>/mlartifacts``), so that
    nothing lands in the current folder (MLflow's default there is ``./mlruns``); the store's own default else."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


def experiment_id(uri: str, name: str = EXPERIMENT_NAME) -> str:
    """Get or create the experiment that holds every sweep, marked as a model-training experiment."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            c.create_experiment(
                name, artifact_location=artifact_location(uri), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except Exception:  # created concurrently by another process
            pass
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise UserError(f"cannot create the MLflow experiment {name!r} at {uri}")
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # an experiment made before the tag existed
        c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def start_parent_run(
    uri: str,
    sweep_name: str,
    params: dict[str, Any],
    existing_run_id: str | None = None,
    description: str | None = None,
) -> str:
    """Create (or reopen, on ``--resume``) the parent run of a sweep; return its id.

    ``description`` becomes the run's description in the UI (the ``mlflow.note.content`` tag)."""
    c = client(uri)
    if existing_run_id:
        from mlflow.exceptions import MlflowException

        try:
            c.get_run(existing_run_id)
            c.update_run(existing_run_id, status="RUNNING")
            if description:
                c.set_tag(existing_run_id, "mlflow.note.content", description)
            return existing_run_id
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise UserError(
                    f"cannot reopen the sweep's parent run {existing_run_id} at {uri}: {exc.message}"
                ) from None
            # the tracking store was replaced: start a fresh parent run
    tags = {TAG_SWEEP: sweep_name, **({"mlflow.note.content": description} if description else {})}
    run = c.create_run(experiment_id(uri), run_name=sweep_name, tags=tags)
    log_params(uri, run.info.run_id, params)
    return run.info.run_id


def start_trial_run(uri: str, parent_run_id: str, trial_name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """Create, or find again after a resume, the nested run of one trial under the parent run."""
    c = client(uri)
    parent = c.get_run(parent_run_id)
    found = c.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`{TAG_TRIAL}` = '{trial_name}'",
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        c.update_run(run_id, status="RUNNING")
        return run_id
    all_tags = {"mlflow.parentRunId": parent_run_id, TAG_TRIAL: trial_name, **tags}
    run = c.create_run(parent.info.experiment_id, run_name=trial_name, tags=all_tags)
    log_params(uri, run.info.run_id, params)
    return run.info.run_id


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    """Log params in one batch (values stringified, ``None`` skipped)."""
    from mlflow.entities import Param

    batch = [Param(k, str(v)) for k, v in params.items() if v is not None]
    if batch:
        client(uri).log_batch(run_id, params=batch)


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Log numeric metrics at ``step`` in one batch."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    # NaN is kept (MLflow stores it): e.g. redundancy is undefined while a latent has zero entropy.
    batch = [
        Metric(k, float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    if batch:
        client(uri).log_batch(run_id, metrics=batch)


def log_artifact(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Upload one local file as an artifact of ``run_id``."""
    client(uri).log_artifact(run_id, str(path), artifact_path)


def log_dict(uri: str, run_id: str, data: dict[str, Any], name: str) -> None:
    """Store a dict as a JSON artifact."""
    client(uri).log_dict(run_id, data, name)


def end_run(uri: str, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
    """Close a run; a failed run gets its reason as a tag."""
    c = client(uri)
    if reason:
        c.set_tag(run_id, TAG_FAILURE, reason[:5000])
    c.set_terminated(run_id, status=status)


def file_digest(path: str | Path) -> str:
    """sha256 of a file (hex), e.g. the digest of ``dataset.json``."""
    return file_sha256(path)


def text_digest(text: str) -> str:
    """sha256 of a text (hex)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def code_version() -> str:
    """The git commit of the checkout (``-dirty`` when the code differs from it: ``dvcm/``, ``pipeline/`` or
    ``pyproject.toml``; an edited README or test does not change what runs), else the package version."""
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(here),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":/dvcm",
                ":/pipeline",
                ":/pyproject.toml",
            ],  # from the top of the repository
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "dvcm==" + version("dvcm")
        except PackageNotFoundError:
            return "unknown"


def resolved_config_json(config: dict[str, Any]) -> str:
    """The resolved trial config as stable JSON (for the artifact and for digests)."""
    return json.dumps(config, sort_keys=True, indent=2, default=str)
