"""The sweep record ``<storage>/<sweep>/sweep.json``: which trials finished, their runs and checkpoints."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from pipeline.infra import storage

STATE_FILE = "sweep.json"


_STATE_LOCK = threading.Lock()


def read_state(sweep_dir: str | Path) -> dict[str, Any] | None:
    """The sweep record (``sweep_dir`` a local folder or a URL), or None when the sweep never started."""
    path = storage.join(sweep_dir, STATE_FILE)
    if not storage.is_file(path):
        return None
    return json.loads(storage.read_text(path))


def write_state(sweep_dir: str | Path, state: dict[str, Any]) -> None:
    """Write the sweep record atomically (an upload of the whole file on object stores)."""
    from pipeline.infra.atomic import atomic_write_json

    atomic_write_json(storage.join(sweep_dir, STATE_FILE), state)
