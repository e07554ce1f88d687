"""Test-only fault injection for training, switched on by environment variables of the driver.

``DVCM_TEST_KILL_AT_EPOCH=N`` kills rank 0's process (SIGKILL, a real death) once, at the start
of epoch N, so that tests see Ray Train restore the trial from its checkpoint.
``DVCM_TEST_NAN_LAMBDA=λ`` gives the trial of that λ a NaN loss, as a diverged run does: it fails
for good. Unset (always, outside tests), a trial's ``faults`` field is ``None`` and nothing here runs.
"""

from __future__ import annotations

import math
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.infra import storage

KILL_ENV = "DVCM_TEST_KILL_AT_EPOCH"
NAN_ENV = "DVCM_TEST_NAN_LAMBDA"


@dataclass(frozen=True)
class Faults:
    """What to break in one trial."""

    kill_at_epoch: int = 0  # 0: never
    kill_marker: str = ""  # a local file that says the kill already happened (it happens once)
    nan_loss: bool = False

    def maybe_kill(self, epoch: int, rank: int) -> None:
        """Kill this process at the start of ``kill_at_epoch`` on rank 0, the first time only."""
        if self.kill_at_epoch == epoch and rank == 0 and not os.path.exists(self.kill_marker):
            Path(self.kill_marker).write_text(f"killed at epoch {epoch}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    def poison(self, loss: Any) -> Any:
        """The loss, made NaN when asked."""
        return loss * float("nan") if self.nan_loss else loss


def from_env(sweep_dir: str, trial: str, lmbda: float) -> dict[str, Any] | None:
    """The faults the environment asks for this trial, as a plain mapping (``None``: none)."""
    kill_at = os.environ.get(KILL_ENV)
    nan_lambda = os.environ.get(NAN_ENV)
    if not kill_at and not nan_lambda:
        return None
    return {
        "kill_at_epoch": int(kill_at) if kill_at else 0,
        "kill_marker": _kill_marker(sweep_dir, trial) if kill_at else "",
        "nan_loss": bool(nan_lambda) and math.isclose(float(nan_lambda), lmbda),
    }


def _kill_marker(sweep_dir: str, trial: str) -> str:
    """The local file that says rank 0 was killed once (a temp folder for remote storage)."""
    local = storage.local_path(sweep_dir)
    folder = local if local is not None else Path(tempfile.gettempdir()) / "dvcm-test-markers" / storage.name(sweep_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f".killed-{trial}")
