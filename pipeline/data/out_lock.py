"""One prepare at a time per ``--out``: ``<out>/.prepare.lock``.

A local folder holds an exclusive ``flock`` on it, which the kernel releases even on kill -9. An object store
(s3://, gs://) has no flock: the lock is an object created only if none exists (fsspec's exclusive write), naming
its holder and refreshed by a heartbeat. A lock whose holder is gone (a process of this machine that no longer runs,
or a heartbeat older than :data:`LEASE_SECONDS`) is taken over, so that a rerun after a crash resumes. This holds
where the store honours conditional writes (AWS S3, GCS); on other protocols prepare warns and runs unguarded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.infra import storage
from pipeline.infra.errors import UserError

LOCK_FILE = ".prepare.lock"
HEARTBEAT_SECONDS = 60.0
LEASE_SECONDS = 600.0  # ten missed heartbeats: the holder is gone


@contextlib.contextmanager
def out_dir_lock(out: str) -> Iterator[Callable[[], None]]:
    """Hold ``<out>/.prepare.lock`` while preparing: a second prepare into the same ``--out`` is refused in one line
    instead of deleting the first one's temp files or overwriting its shards (issue 28). Yields a check to call
    after each shard: it raises the one line of a lock that another prepare took over meanwhile (object stores)."""
    path = storage.local_path(out)
    with _folder_lock(out, path) if path is not None else _object_lock(out) as check:
        yield check


def _unguarded() -> None:
    """The check of a lock that cannot be lost (a folder's flock) or of no lock at all."""


def _busy(out: str, holder: str = "") -> UserError:
    return UserError(
        f"another prepare{holder} is writing into --out {out}; wait for it to finish (a rerun then resumes) or "
        "choose another --out"
    )


@contextlib.contextmanager
def _folder_lock(out: str, path: Any) -> Iterator[Callable[[], None]]:
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
        yield _unguarded
        return
    try:
        yield _unguarded
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def this_machine() -> dict[str, Any]:
    """What names this process's machine and process namespace: a pid is only comparable within both."""
    where: dict[str, Any] = {"host": socket.gethostname()}
    with contextlib.suppress(OSError):
        where["pid_namespace"] = os.stat("/proc/self/ns/pid").st_ino
    return where


def holder_is_gone(holder: dict[str, Any], now: float, here: dict[str, Any]) -> bool:
    """Whether the prepare that wrote ``holder`` (the lock object's JSON) no longer runs: it missed its heartbeats
    for :data:`LEASE_SECONDS` (by this machine's clock: hosts' clocks differ by far less), or its process is not
    alive on this machine (same host and process namespace, ``here``). A lock without a heartbeat is no prepare's."""
    beat = holder.get("heartbeat")
    if not isinstance(beat, (int, float)) or now - beat > LEASE_SECONDS:
        return True
    pid = holder.get("pid")
    same = all(holder.get(k) == here.get(k) for k in ("host", "pid_namespace"))
    if same and isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
    return False


def _read_holder(location: str) -> dict[str, Any]:
    """The lock object's JSON; ``{}`` when there is none or it is no JSON object. A failed read (a timeout, a 503)
    raises: it says nothing of the holder."""
    try:
        doc = json.loads(storage.read_bytes(location))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


class _ObjectLock:
    """The lock object of one prepare: its body names the holder and carries a token of its own, so that the
    holder can tell its lock from a successor's."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.location = storage.join(out, LOCK_FILE)
        self.token = uuid.uuid4().hex
        self.since = time.time()
        self.lost = threading.Event()

    def body(self) -> bytes:
        me = {**this_machine(), "pid": os.getpid(), "token": self.token, "since": self.since, "heartbeat": time.time()}
        return json.dumps(me).encode()

    def ours(self) -> bool:
        return _read_holder(self.location).get("token") == self.token

    def acquire(self) -> None:
        """Create the lock object, or take over one whose holder is gone; :class:`UserError` while it lives."""
        try:
            if storage.create_new(self.location, self.body()) and self.ours():
                return
            holder = _read_holder(self.location)
            if not holder_is_gone(holder, time.time(), this_machine()):
                beat = holder.get("heartbeat")
                ago = f", heartbeat {time.time() - beat:.0f} s ago" if isinstance(beat, (int, float)) else ""
                raise _busy(self.out, f" (host {holder.get('host')}, pid {holder.get('pid')}{ago})")
            # its holder is gone: take it over, unless another taker was faster (the lock is no longer the stale
            # one we read); a holder that still loses its lock learns it from its next heartbeat
            if _read_holder(self.location) != holder:
                raise _busy(self.out)
            storage.remove(self.location)
            if not (storage.create_new(self.location, self.body()) and self.ours()):
                raise _busy(self.out)
        except OSError as exc:
            raise UserError(
                f"--out {self.out}: cannot read or write its lock ({exc}); check the store, rerun"
            ) from None

    def beat(self, stop: threading.Event) -> None:
        """Refresh the heartbeat every :data:`HEARTBEAT_SECONDS` while the lock is ours; a lock that became
        another's is flagged (``lost``), never overwritten."""
        failures = 0
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                if not self.ours():  # removed, or another's token: a taker judged this prepare gone
                    self.lost.set()
                    return
                storage.write_bytes(self.location, self.body())
                failures = 0
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; ten missed ones free the lock
                failures += 1
                if failures == 3:
                    warnings.warn(f"--out {self.out}: the lock's heartbeat failed 3 times ({exc})", stacklevel=1)

    def check(self) -> None:
        """Raise the one line of a lost lock (the prepare calls it after every shard, and stops writing)."""
        if self.lost.is_set():
            raise UserError(
                f"another prepare took over the lock on --out {self.out} while this one ran (its heartbeats had failed "
                f"for {LEASE_SECONDS / 60:.0f} min), so this one stopped; rerun prepare once the other has finished: "
                "it checks and resumes the shards"
            )

    def release(self) -> None:
        with contextlib.suppress(Exception):
            if self.ours():
                storage.remove(self.location)


@contextlib.contextmanager
def _object_lock(out: str) -> Iterator[Callable[[], None]]:
    lock = _ObjectLock(out)
    try:
        lock.acquire()
    except NotImplementedError:
        warnings.warn(f"--out {out}: this store has no exclusive writes; run one prepare at a time there", stacklevel=3)
        yield _unguarded
        return
    stop = threading.Event()
    thread = threading.Thread(target=lock.beat, args=(stop,), name="prepare-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield lock.check
    finally:
        stop.set()
        thread.join()  # a beat in flight lands before the lock is removed
        lock.release()
    lock.check()
