"""Connecting to Ray: a local instance on a laptop, the cluster when ``--address``/``RAY_ADDRESS`` is set."""

from __future__ import annotations

import os
import socket

from pipeline.errors import UserError

CONNECT_TIMEOUT_S = 5.0


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
        raise UserError(f"cannot reach the Ray cluster at {address!r} ({exc}); start it (ray start --head) or fix --address / RAY_ADDRESS") from None


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start or join Ray once per process.

    ``address`` (or ``RAY_ADDRESS``) joins an existing cluster; otherwise a local instance
    is started with ``num_cpus`` CPUs (all cores when None). Safe to call twice.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    # Workers must import dvcm and pipeline even on nodes whose cwd is elsewhere.
    env_vars = {k: os.environ[k] for k in ("PYTHONPATH", "MLFLOW_TRACKING_URI") if k in os.environ}
    # Inside `ray job submit` the job's runtime_env already reaches every worker, and Ray refuses a
    # driver runtime_env that sets the same keys: pass none there.
    if env_vars and "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        kwargs["runtime_env"] = {"env_vars": env_vars}
    try:
        if address:
            check_gcs_reachable(address)
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    except ConnectionError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address!r} ({exc}); check --address / RAY_ADDRESS") from None
