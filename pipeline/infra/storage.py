"""Where the workflow's files live: a local path or an fsspec URL (``s3://``, ``gs://``, ``file://``, ...).

Every place that reads or writes shards, sweep records or checkpoints goes through this module,
so that ``--out``, ``--shards`` and ``--storage`` take either form and the same commands run on
nodes that share no disk. Local paths (and ``file://`` URLs) keep the temp-file + ``os.replace``
writes; on an object store a file is written to a local temp file and uploaded to its final key,
so an object appears only when it is complete (an S3/GCS upload is all or nothing).

Endpoint and credentials come from the environment, as fsspec users expect: ``AWS_ENDPOINT_URL``
(or ``FSSPEC_S3_ENDPOINT_URL``), ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE``,
``GOOGLE_APPLICATION_CREDENTIALS``, and any ``FSSPEC_<PROTOCOL>_<OPTION>`` (fsspec's own config).
Every process that touches the storage reads them, Ray workers included: set them on every node
(or in the job's ``runtime_env`` ``env_vars``).
Ray gets the same filesystem as a pyarrow one (:func:`ray_storage`), so that it sees the same
endpoint as this code.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeVar

from dvcm.fileio import atomic_open
from pipeline.infra.errors import UserError

T = TypeVar("T")
LOCAL_PROTOCOLS = ("file", "local")
# The package that implements each common protocol (fsspec itself names it on import errors).
PACKAGES = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
}


def is_url(location: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` (any protocol, ``file://`` included)."""
    return "://" in str(location)


def protocol(location: str | os.PathLike[str]) -> str | None:
    """The URL's protocol (``s3``), or None for a plain path."""
    return str(location).split("://", 1)[0].lower() if is_url(location) else None


def local_path(location: str | os.PathLike[str]) -> Path | None:
    """The local path of a plain path or ``file://`` URL; None for remote storage."""
    if not is_url(location):
        return Path(location).expanduser()
    proto, rest = str(location).split("://", 1)
    if proto.lower() in LOCAL_PROTOCOLS:
        return Path(rest).expanduser()
    return None


def is_remote(location: str | os.PathLike[str]) -> bool:
    """True when ``location`` is not on this machine's file system (``s3://``, ``gs://``, ...)."""
    return local_path(location) is None


def resolve(location: str | os.PathLike[str]) -> str:
    """An absolute local path, or the URL as given (without a trailing slash)."""
    if is_url(location):
        return str(location).rstrip("/")
    return str(Path(location).expanduser().resolve())


def join(root: str | os.PathLike[str], *parts: str) -> str:
    """``root/part/...`` for local paths and URLs alike."""
    if is_url(root):
        return "/".join([str(root).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(root, *parts))


def name(location: str | os.PathLike[str]) -> str:
    """The last component (``final.pt``)."""
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def filesystem(location: str | os.PathLike[str]) -> tuple[Any, str]:
    """(fsspec filesystem, path on it) for a URL; a one-line ``UserError`` for unknown or missing protocols."""
    import fsspec

    proto = protocol(location) or "file"
    try:
        # No listing cache: objects written by other processes (Ray workers) must be seen at once.
        return fsspec.core.url_to_fs(str(location), use_listings_cache=False)
    except ImportError:
        package = PACKAGES.get(proto, f"the fsspec implementation of {proto}://")
        raise UserError(
            f"{location}: {proto}:// needs the {package} package; install it (pip install {package}, "
            "or pip install 'dvcm[remote]')"
        ) from None
    except ValueError as exc:
        if "protocol" in str(exc).lower():
            raise UserError(
                f"{location}: unknown storage protocol {proto!r}; use a local path or an fsspec URL "
                "such as s3://bucket/path or gs://bucket/path"
            ) from None
        raise


def check(location: str | os.PathLike[str]) -> None:
    """Fail early (one line) when a URL's protocol is unknown or its package is missing."""
    if is_remote(location):
        filesystem(location)


# ---------------------------------------------------------------- reading


def _either(location: str | os.PathLike[str], local: Callable[[Path], T], remote: str) -> T:
    """``local(path)`` for a local location, else the fsspec filesystem's method ``remote`` on its path."""
    path = local_path(location)
    if path is not None:
        return local(path)
    return _remote(location, lambda fs, p: getattr(fs, remote)(p))


def _remote(location: str | os.PathLike[str], call: Callable[[Any, str], T]) -> T:
    """``call(filesystem, path)`` for a URL, the object store's refusal of credentials as one line."""
    fs, p = filesystem(location)
    try:
        return call(fs, p)
    except (FileNotFoundError, IsADirectoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - the object store's own errors: credentials first
        if _is_access_failure(exc):
            first = (str(exc).splitlines() or [""])[0]
            raise UserError(
                f"{location}: the storage refused access ({type(exc).__name__}: {first}); give it credentials "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile for s3://, GOOGLE_APPLICATION_CREDENTIALS "
                "for gs://) or check the URL"
            ) from None
        raise


def _is_access_failure(exc: BaseException) -> bool:
    """Whether an object store's error says the credentials are missing or refused."""
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    credentials = {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError", "RefreshError"}
    return bool(names & credentials) or isinstance(exc, PermissionError) or "credential" in str(exc).lower()


def exists(location: str | os.PathLike[str]) -> bool:
    """Whether a file (or folder) exists there."""
    return bool(_either(location, Path.exists, "exists"))


def is_file(location: str | os.PathLike[str]) -> bool:
    """Whether a file exists there."""
    return bool(_either(location, Path.is_file, "isfile"))


def size(location: str | os.PathLike[str]) -> int:
    """Size in bytes; ``FileNotFoundError`` when missing."""
    return int(_either(location, lambda p: p.stat().st_size, "size"))


def open_read(location: str | os.PathLike[str]) -> IO[bytes]:
    """A binary stream to read from (the caller closes it)."""
    return _either(location, lambda p: open(p, "rb"), "open")  # fsspec's open defaults to "rb"


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    """The whole file; ``FileNotFoundError`` when missing."""
    with open_read(location) as f:
        return f.read()


def read_text(location: str | os.PathLike[str]) -> str:
    """The whole file as UTF-8 text."""
    return read_bytes(location).decode("utf-8")


def glob(root: str | os.PathLike[str], pattern: str) -> list[str]:
    """Files under ``root`` matching ``pattern`` (e.g. ``*/shard-*.tar``), sorted, as locations."""
    path = local_path(root)
    if path is not None:
        return [str(p) for p in sorted(path.glob(pattern))]
    fs, p = filesystem(root)
    return sorted(fs.unstrip_protocol(m) for m in fs.glob(f"{p.rstrip('/')}/{pattern}"))


def file_sizes(root: str | os.PathLike[str], pattern: str) -> dict[str, int]:
    """Size in bytes of every file under ``root`` matching ``pattern``, keyed by its path relative to ``root``
    (``train/shard-000000.tar``): one listing on an object store, not a request per file."""
    path = local_path(root)
    if path is not None:
        return {p.relative_to(path).as_posix(): p.stat().st_size for p in path.glob(pattern) if p.is_file()}

    def listing(fs: Any, p: str) -> dict[str, int]:
        base = p.rstrip("/") + "/"
        found = fs.glob(base + pattern, detail=True)
        return {k[len(base) :]: int(v["size"]) for k, v in found.items() if v.get("type") != "directory"}

    return _remote(root, listing)


def download(location: str | os.PathLike[str], dest: str | Path) -> Path:
    """Copy a file to the local path ``dest`` (temp file + rename there); returns ``dest``."""
    import shutil

    dest = Path(dest)
    with open_read(location) as src, atomic_writer(dest) as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return dest


# ---------------------------------------------------------------- writing


def makedirs(location: str | os.PathLike[str]) -> None:
    """Create a local folder; object stores have no folders to create."""
    path = local_path(location)
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)


def remove(location: str | os.PathLike[str]) -> None:
    """Delete a file if it exists."""
    path = local_path(location)
    if path is not None:
        path.unlink(missing_ok=True)
        return
    fs, p = filesystem(location)
    try:
        fs.rm_file(p)
    except FileNotFoundError:
        pass


def temp_file_for(location: str | os.PathLike[str]) -> tuple[int, Path]:
    """(fd, path) of a new temp file for ``location``: next to it when local, in the temp folder when remote."""
    path = local_path(location)
    if path is not None:
        folder = path.parent
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.gettempdir())
    fd, tmp = tempfile.mkstemp(prefix=f".{name(location)}.", suffix=".tmp", dir=folder)
    os.fchmod(fd, 0o644)
    return fd, Path(tmp)


def publish(tmp: Path, location: str | os.PathLike[str]) -> None:
    """Move a finished temp file (from :func:`temp_file_for`) to ``location``: rename, or upload and delete."""
    path = local_path(location)
    if path is not None:
        os.replace(tmp, path)
        return
    fs, p = filesystem(location)
    try:
        fs.put_file(str(tmp), p)  # one PUT / multipart upload: the object appears only when complete
    except (OSError, ValueError) as exc:  # s3fs/gcsfs turn a missing bucket, a denied PUT into these
        raise UserError(
            f"cannot write {location} ({exc}); check the bucket, the endpoint and the credentials"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_writer(location: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to write ``location`` through: readers see the old file or the whole new one.

    On success the temp file is fsynced and published (:func:`publish`); on any error it is deleted.
    A local path goes through the codec library's own :func:`dvcm.fileio.atomic_open`.
    """
    path = local_path(location)
    if path is not None:
        with atomic_open(path) as f:
            yield f
        return
    fd, tmp = temp_file_for(location)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, location)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


EXCLUSIVE_WRITE_PROTOCOLS = ("s3", "s3a", "gs", "gcs")  # fsspec implementations whose "create" is the store's own


def create_new(location: str | os.PathLike[str], data: bytes) -> bool:
    """Write ``data`` to a remote ``location`` only if no object is there (the store's conditional write: S3's
    ``If-None-Match: *``, GCS's ``ifGenerationMatch=0``); False when one already is. ``NotImplementedError`` for a
    protocol or store without one (fsspec's generic fallback checks and then writes, which is no lock)."""
    import errno

    if protocol(location) not in EXCLUSIVE_WRITE_PROTOCOLS:
        raise NotImplementedError(f"{protocol(location)}:// has no exclusive write")
    try:
        _remote(location, lambda fs, p: fs.pipe_file(p, data, mode="create"))
    except FileExistsError:
        return False
    except TypeError as exc:  # an older s3fs/gcsfs whose pipe_file takes no mode
        raise NotImplementedError(f"{protocol(location)}:// of this fsspec version has no exclusive write") from exc
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):  # an S3-compatible store that refuses the condition
            raise NotImplementedError(f"{location}: the store refuses conditional writes") from exc
        raise UserError(
            f"cannot write {location} ({exc}); check the bucket, the endpoint and the credentials"
        ) from None
    return True


def write_bytes(location: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(location) as f:
        f.write(data)


# ---------------------------------------------------------------- Ray


def ray_storage(location: str | os.PathLike[str]) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for a Ray Train/Tune ``RunConfig``.

    Local: (absolute path, None), Ray's own local file system. Remote: (the path without its
    protocol, ``pyarrow.fs.PyFileSystem(FSSpecHandler(fs))``) over the same fsspec filesystem this
    module uses, as Ray's docs ask for a custom filesystem.
    """
    path = local_path(location)
    if path is not None:
        return str(path.resolve()), None
    import pyarrow.fs

    fs, p = filesystem(location)
    return p, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def from_ray_path(location: str | os.PathLike[str], fs_path: str) -> str:
    """A path that Ray reports on :func:`ray_storage`'s filesystem, as a location like ``location``."""
    if local_path(location) is not None:
        return fs_path
    fs, _ = filesystem(location)
    return fs.unstrip_protocol(fs_path)
