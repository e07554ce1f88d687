"""Atomic file writes to a local path (temp file + ``os.replace``) or a storage URL (temp file + upload)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pipeline.infra import storage


def atomic_write_bytes(path: str | Path, data: bytes) -> str | Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    ``path`` may be an fsspec URL (see :mod:`pipeline.infra.storage`); returns it (a ``Path`` when local).
    """
    storage.write_bytes(path, data)
    return path if storage.is_url(path) else Path(path)


def atomic_write_text(path: str | Path, text: str) -> str | Path:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities as null, so that the JSON written is standard (readable outside Python)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> str | Path:
    """Write ``obj`` as indented JSON (NaN written as ``NaN``, as Python's json does)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
