"""Connecting to Ray: a local instance on a laptop, the cluster when ``--address``/``RAY_ADDRESS`` is set."""

from __future__ import annotations

import logging
import os
import socket
import warnings
from typing import Any

from pipeline.infra.errors import UserError

CONNECT_TIMEOUT_S = 5.0
# Runs first in every Ray worker process of our jobs (runtime_env worker_process_setup_hook).
WORKER_SETUP_HOOK = "pipeline.infra.ray_runtime.quiet_worker"


class _DropMessages(logging.Filter):
    """Drop log records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


class _WithoutTraceback(_DropMessages):
    """Keep log records whose message starts with one of ``prefixes`` as their one line, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(self.prefixes):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_warnings() -> None:
    """Warnings that every process would otherwise repeat: said once by the CLI, or not ours to fix."""
    # compressai scripts a function at import; torch 2.14 deprecates torch.jit.script.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
    if verbose():
        return
    # A local Ray says that it enabled token authentication (good news, nothing to do); its warning when
    # authentication is *disabled* is kept.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        _DropMessages("Token authentication is enabled for this Ray cluster")
    )


def pin_own_cluster() -> None:
    """Point this worker's Ray clients at the cluster it belongs to: with two local Ray instances on one machine
    (two dvcm jobs at once), Ray Train's PlacementGroupCleaner otherwise asks which one and fails with
    "Found multiple active Ray instances" (issue 28)."""
    if os.environ.get("RAY_ADDRESS"):
        return
    try:
        import ray

        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - outside a Ray worker there is nothing to pin
        pass


def drop_exit_on_stop(previous: Any) -> Any:
    """A ``sys.unraisablehook`` for a worker: Ray stops a finished trial's actor with SIGTERM, whose handler raises
    SystemExit; when that lands inside a weakref callback Python prints it as "Exception ignored in … SystemExit: 1"
    with a traceback, which Ray forwards to the user's terminal (seen in the quickstart's log). An unraisable
    SystemExit is dropped; every other unraisable exception goes to ``previous`` (the hook installed before)."""

    def hook(unraisable: Any) -> None:
        if isinstance(getattr(unraisable, "exc_value", None), SystemExit):
            return
        previous(unraisable)

    return hook


def quiet_worker() -> None:
    """Setup hook of every worker: the CLI driver has already said what these would repeat per process.

    - the seeded-random-YOLOv3 warning (the CLI prints it once, before any worker starts);
    - torch's torch.jit deprecation warning (see ``quiet_warnings``);
    - Ray Train's per-report INFO lines (see below);
    - the SystemExit of an actor stopped inside a weakref callback (:func:`drop_exit_on_stop`);
    - Ray Train's PlacementGroupCleaner polling the State API, which needs the dashboard that a
      local instance here runs without (``include_dashboard=False``): it would log every few seconds;
    - the traceback of Ray Train's controller timing out on its autoscaling coordinator on a loaded machine (its
      one-line warning stays).
    """
    pin_own_cluster()
    if os.environ.get("DVCM_VERBOSE", "") not in ("", "0"):
        return
    import sys

    sys.unraisablehook = drop_exit_on_stop(sys.unraisablehook)
    quiet_warnings()
    warnings.filterwarnings("ignore", message="YOLOv3 uses seeded random weights")
    # Ray Train's LoggingConfig(log_level=...) filters loggers named "ray.train.*", but two of its
    # modules name their logger after their file path; one logs every report with all its metrics.
    import importlib.util

    for module in ("ray.train.v2._internal.execution.context", "ray.train.collective.collectives"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            logging.getLogger(spec.origin).setLevel(logging.WARNING)
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").addFilter(
        _DropMessages("Failed to query Ray Train Controller actor state")
    )
    # On a loaded machine (two dvcm jobs at once) Ray Train's controller may wait longer than its 5 s for the
    # autoscaling coordinator actor; it logs that (and retries) with a GetTimeoutError traceback, which Ray itself
    # calls safe to ignore when transient. Its one line is kept.
    logging.getLogger("ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client").addFilter(
        _WithoutTraceback("Failed to send resource request", "Failed to cancel resource request")
    )


def check_gcs_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast with a ``UserError`` when a ``host:port`` (or ``ray://host:port``) address has nothing listening.

    ``ray.init`` retries an unreachable GCS for minutes; a TCP connect answers in seconds.
    Other forms (``auto``, ``local``) are left to Ray.
    """
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot reach the Ray cluster at {address!r} ({exc}); start it (ray start --head) or fix --address / RAY_ADDRESS"
        ) from None


# Non-secret settings that every worker needs to reach the same code, tracking server and bucket.
# Credentials are not forwarded: on a cluster they belong to the nodes (instance role or their env).
# STORAGE_EMULATOR_HOST is gcsfs's endpoint for gs:// (a GCS emulator), the counterpart of AWS_ENDPOINT_URL;
# GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false makes gcsfs skip its gRPC bucket-type probe, which an emulator
# cannot answer (each probe would retry for 60 s): both must match on the driver and the workers.
FORWARDED_ENV = (
    "PYTHONPATH",
    "DVCM_VERBOSE",
    "MLFLOW_TRACKING_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "STORAGE_EMULATOR_HOST",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
)
FORWARDED_ENV_PREFIXES = ("FSSPEC_",)


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The driver's variables that the workers of a job get too (see ``FORWARDED_ENV``)."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k in FORWARDED_ENV or k.startswith(FORWARDED_ENV_PREFIXES)}


VERBOSE_ENV = "DVCM_VERBOSE"  # set by `dvcm-pipeline -v`: nothing of Ray's is filtered
# Lines Ray forwards to the driver that tell a user of dvcm nothing to act on: the raylet's note that
# more worker processes started than its startup concurrency (every Tune trial starts a Train
# controller and workers at once), a core worker's note on an actor's constructor arguments, and
# the PlacementGroupCleaner's State-API polling from processes the setup hook did not reach (seen in
# the quickstart's log, "[repeated 5x across cluster]").
DRIVER_NOISE = (
    "PYTHON worker processes have been started",
    "'PreemptionWatcher'",
    "State API may be temporarily unavailable",
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def train_logging_config():  # -> ray.train.LoggingConfig
    """Ray Train's log level for the trainers dvcm starts: WARNING (its INFO lines, every report with all its
    metrics, every worker group and checkpoint path, would bury dvcm's own output; they stay in Ray's log
    files, ray-train-sys-*.log), INFO with ``-v``, or ``DVCM_RAY_TRAIN_LOG_LEVEL``."""
    from ray.train import LoggingConfig

    return LoggingConfig(log_level=os.environ.get("DVCM_RAY_TRAIN_LOG_LEVEL", "INFO" if verbose() else "WARNING"))


def filter_driver_logs() -> None:
    """Drop :data:`DRIVER_NOISE` from what Ray prints on the driver (worker logs and error messages
    pushed by the raylet); every other line, errors included, is printed as before. Must run before
    ``ray.init``, which registers the printer."""
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    if verbose() or getattr(original, "dvcm_filter", False):
        return

    def print_to_stdstream(data: dict, ignore_prefix: bool) -> None:
        lines = [ln for ln in data.get("lines", []) if not any(n in ln for n in DRIVER_NOISE)]
        if lines:
            original({**data, "lines": lines}, ignore_prefix)

    print_to_stdstream.dvcm_filter = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = print_to_stdstream


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start or join Ray once per process.

    ``address`` (or ``RAY_ADDRESS``) joins an existing cluster; otherwise a local instance
    is started with ``num_cpus`` CPUs (all cores when None). Safe to call twice.
    """
    import ray

    if ray.is_initialized():
        return
    filter_driver_logs()
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    # Workers must import dvcm and pipeline even on nodes whose cwd is elsewhere.
    env_vars = forwarded_env()
    # Inside `ray job submit` the job's runtime_env (jobs/runtime_env.yaml, which names the same
    # setup hook) already reaches every worker, and Ray refuses a driver runtime_env that sets the
    # same keys: pass none there.
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        kwargs["runtime_env"] = {
            "worker_process_setup_hook": WORKER_SETUP_HOOK,
            **({"env_vars": env_vars} if env_vars else {}),
        }
    try:
        if address:
            check_gcs_reachable(address)
            ray.init(address=address, **kwargs)
        else:
            start_local_ray(num_cpus, kwargs)
    except ConnectionError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address!r} ({exc}); check --address / RAY_ADDRESS") from None


def start_local_ray(num_cpus: int | None, kwargs: dict) -> None:
    """A local Ray instance; when its raylet misses the 30 s Ray waits for it (a busy machine: issue 28 measured a load
    of 13), one line says what to do. No second try: the first one's processes keep running after Ray gives up on
    them, and ``ray.shutdown()`` does not stop them, so a retry would start a second instance beside them."""
    import ray

    try:
        ray.init(num_cpus=num_cpus, **kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception when the node times out
        if "timed out during startup" not in str(exc):
            raise
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        raise UserError(
            f"a local Ray did not start in time (the machine's load is {load:.1f}); run again when it is less busy, "
            "give fewer CPUs (--num-cpus), or join a running cluster (RAY_ADDRESS)"
        ) from None
