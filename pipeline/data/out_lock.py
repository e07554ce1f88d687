"""One prepare at a time per ``--out``: ``<out>/.prepare.lock``.

A local folder holds an exclusive ``flock`` on it, which the kernel releases even on kill -9. An object store
(s3://, gs://) has no flock: the lock is an object created only if none exists (fsspec's exclusive write), naming
its holder and refreshed by a heartbeat. A lock whose holder is gone (a process of this host that no longer runs,
or a heartbeat older than :data:`LEASE_SECONDS`) is taken over, so that a rerun after a crash resumes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

from pipeline.infra import storage
from pipeline.infra.errors import UserError

LOCK_FILE = ".prepare.lock"
HEARTBEAT_SECONDS = 60.0
LEASE_SECONDS = 600.0  # ten missed heartbeats: the holder is gone


@contextlib.contextmanager
def out_dir_lock(out: str) -> Iterator[None]:
    """Hold ``<out>/.prepare.lock`` while preparing: a second prepare into the same ``--out`` is refused in one line
    instead of deleting the first one's temp files or overwriting its shards (issue 28)."""
    path = storage.local_path(out)
    with _folder_lock(out, path) if path is not None else _object_lock(out):
        yield


def _busy(out: str, holder: str = "") -> UserError:
    return UserError(
        f"another prepare{holder} is writing into --out {out}; wait for it to finish (a rerun then resumes) or "
        "choose another --out"
    )


@contextlib.contextmanager
def _folder_lock(out: str, path: Any) -> Iterator[None]:
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle = open(path / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole preparation
    except OSError as exc:
        raise UserError(f"--out {out}: cannot make the folder ({exc.strerror or exc}); choose another --out") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise _busy(out) from None
    except OSError as exc:  # a file system without locks (some NFS or FUSE mounts): go on, unguarded
        handle.close()
        warnings.warn(
            f"--out {out}: no lock on this file system ({exc.strerror}); run one prepare at a time there", stacklevel=3
        )
        yield
        return
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def holder_is_gone(holder: dict[str, Any], now: float, host: str) -> bool:
    """Whether the prepare that wrote ``holder`` (the lock object's JSON) no longer runs: its process is not alive
    on this host, or it missed its heartbeats for :data:`LEASE_SECONDS`. A lock without a heartbeat is no prepare's."""
    beat = holder.get("heartbeat")
    if not isinstance(beat, (int, float)) or now - beat > LEASE_SECONDS:
        return True
    pid = holder.get("pid")
    if holder.get("host") == host and isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
    return False


def _lock_body(since: float) -> bytes:
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": since, "heartbeat": time.time()}
    return json.dumps(me).encode()


def _read_holder(location: str) -> dict[str, Any]:
    try:
        doc = json.loads(storage.read_bytes(location))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


@contextlib.contextmanager
def _object_lock(out: str) -> Iterator[None]:
    location = storage.join(out, LOCK_FILE)
    since = time.time()
    try:
        taken = storage.create_new(location, _lock_body(since))
        if not taken:
            holder = _read_holder(location)
            if not holder_is_gone(holder, time.time(), socket.gethostname()):
                beat = holder.get("heartbeat")
                ago = f", heartbeat {time.time() - beat:.0f} s ago" if isinstance(beat, (int, float)) else ""
                raise _busy(out, f" (host {holder.get('host')}, pid {holder.get('pid')}{ago})")
            storage.remove(location)  # its holder is gone: take it over (two takers: one create wins)
            if not storage.create_new(location, _lock_body(since)):
                raise _busy(out)
    except NotImplementedError:
        warnings.warn(f"--out {out}: this store has no exclusive writes; run one prepare at a time there", stacklevel=3)
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):  # a missed beat is retried; ten missed ones free the lock
                storage.write_bytes(location, _lock_body(since))

    thread = threading.Thread(target=beat, name="prepare-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        with contextlib.suppress(Exception):
            storage.remove(location)
