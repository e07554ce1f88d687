"""``dvcm-pipeline prepare``: images -> WebDataset shards of (PNG, s = V_front(image), JSON).

One Ray task writes one shard. The frozen YOLOv3 front is built once on the driver and put
in the object store (about 2.3 MB pickled); each task fetches it, so no task rebuilds
YOLOv3 (3 s) and no actor pool is needed: ``bench prepare`` reports the per-task fetch time
next to the work per shard. Tasks are submitted with a bounded number in flight, each
streams its frames (decode -> V_front in batches -> encode -> tar), so memory does not grow
with the dataset.

Output (see :mod:`pipeline.data.shards`): ``<out>/<split>/shard-NNNNNN.tar`` plus, per shard,
``shard-NNNNNN.json`` (its manifest rows, feature statistics and skipped inputs, written
after the tar) -- a shard with both files and the same plan digest is finished and a rerun
skips it. ``plan.json`` at the root ties the folder to one dataset and set of options; a
folder holding another plan's shards is refused unless ``--overwrite``. ``manifest.parquet``
and ``dataset.json`` are written last.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.feature_encoding import (
    DEFAULT_ENCODING,
    NO_FEATURES,
    check_encoding,
    decode_features,
    encode_features,
)
from pipeline.data.images import to_rgb8
from pipeline.data.out_lock import out_dir_lock
from pipeline.data.shards import (
    FEATURE_CHANNELS,
    FEATURE_STRIDE,
    FORMAT,
    AtomicTarWriter,
    ChannelStats,
    remove_stale_temp_files,
    shard_name,
)
from pipeline.data.sources import FrameRef, Listing, list_source
from pipeline.infra import storage
from pipeline.infra.atomic import atomic_write_bytes, atomic_write_json
from pipeline.infra.errors import UserError
from pipeline.infra.progress import StepProgress

TOOL = "dvcm-pipeline prepare"
PLAN_FILE = "plan.json"
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _tool_version() -> str:
    try:
        from importlib.metadata import version

        return f"dvcm {version('dvcm')}"
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "dvcm (source tree)"


@dataclass(frozen=True)
class ShardTask:
    """Everything one worker needs to write one shard."""

    split: str
    index: int
    path: str
    refs: tuple[FrameRef, ...]
    plan_digest: str
    feature_encoding: str  # one of FEATURE_ENCODINGS, or "none" (image-only shards)
    batch_size: int
    torch_threads: int | None = None
    use_gpu: bool = False

    @property
    def sidecar(self) -> str:
        """``shard-NNNNNN.json`` next to the tar (a path or URL, as ``path``)."""
        return self.path.removesuffix(".tar") + ".json"


@dataclass
class ShardResult:
    """What a finished shard contributed (also stored as its sidecar JSON)."""

    split: str
    index: int
    name: str
    plan_digest: str
    rows: list[dict]
    skipped: list[dict]
    stats: dict
    tar_bytes: int
    tar_sha256: str
    timings: dict[str, float] = field(default_factory=dict)


class DiskFullError(OSError):
    """No space left while writing a shard (the temp file was removed)."""


# ---------------------------------------------------------------- one shard


MAX_FRAME_PIXELS = (
    48 << 20
)  # V_front would need about 8 GiB there; a fixed limit, so that a rerun skips the same frames


def front_bytes(hw: tuple[int, int]) -> int:
    """Estimated peak bytes of V_front on a frame of ``hw``: 18 GB were asked for a 12000x12000 frame (issue 28),
    125 bytes a pixel; 160 is the model (the decoded frame, its float copy and the front's largest activations)."""
    return 160 * hw[0] * hw[1]


def _decode(ref: FrameRef) -> tuple[np.ndarray, bytes] | str:
    """(RGB uint8 HxWx3, lossless PNG bytes) or the reason the frame is unusable."""
    from PIL import Image

    try:
        data = Path(ref.path).read_bytes()
    except OSError as exc:
        return f"cannot read file ({exc.strerror})"
    if not data:
        return "zero-byte file"
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size  # from the header, before a pixel is decoded
            if w * h > MAX_FRAME_PIXELS:
                return (f"too large for prepare ({w}x{h}: more than {MAX_FRAME_PIXELS >> 20} Mpixels, for which V_front "
                        f"would need about {front_bytes((h, w)) >> 30} GiB)")  # fmt: skip
            im.load()
            fmt, mode = im.format, im.mode
            rgb, _ = to_rgb8(im, Path(ref.path).name)  # alpha is dropped, as in every reader
    except UserError as exc:  # a mode with no 8-bit mapping (32-bit, float)
        return f"unsupported image ({exc})"
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the file is unusable
        return f"corrupt image ({type(exc).__name__}: {str(exc)[:120]})"
    arr = np.asarray(rgb)
    if fmt == "PNG" and mode == "RGB":
        return arr, data  # already lossless RGB PNG: keep the original bytes
    buf = io.BytesIO()
    rgb.save(buf, format="PNG", compress_level=6)
    return arr, buf.getvalue()


def front_features(front: Any, images: list[np.ndarray], device: str = "cpu") -> list[np.ndarray]:
    """V_front of each image (batched when sizes agree), float32 [256, ceil(H/8), ceil(W/8)]."""
    import torch

    x = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    with torch.no_grad():
        s = front(x).float().cpu().numpy()
    return [s[i] for i in range(len(images))]


def _batches(refs: tuple[FrameRef, ...], size: int) -> Iterator[tuple[FrameRef, ...]]:
    for i in range(0, len(refs), size):
        yield refs[i : i + size]


def write_shard(task: ShardTask, front: Any) -> ShardResult:
    """Decode, run V_front, encode and write one shard atomically; returns its manifest rows and stats."""
    import torch

    threads_before = torch.get_num_threads()
    if task.torch_threads:
        torch.set_num_threads(task.torch_threads)
    try:
        return _write_shard(task, front)
    finally:
        torch.set_num_threads(threads_before)


def _decode_batch(batch: tuple[FrameRef, ...], skipped: list[dict]) -> list[tuple[FrameRef, np.ndarray, bytes]]:
    """(ref, RGB array, PNG bytes) of each frame that decodes; the others are appended to ``skipped``."""
    decoded = []
    for ref in batch:
        out = _decode(ref)
        if isinstance(out, str):
            skipped.append({"split": ref.split, "input": ref.source, "reason": out})
        else:
            decoded.append((ref, out[0], out[1]))
    return decoded


def _batch_features(
    front: Any, decoded: list[tuple[FrameRef, np.ndarray, bytes]], device: str
) -> dict[str, np.ndarray]:
    """s of every decoded frame by key, V_front batched over frames of the same size."""
    feats: dict[str, np.ndarray] = {}
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, (_, arr, _) in enumerate(decoded):
        by_size.setdefault(arr.shape, []).append(i)
    for idxs in by_size.values():
        for i, s in zip(idxs, front_features(front, [decoded[i][1] for i in idxs], device)):
            feats[decoded[i][0].key] = s
    return feats


def _sample_members(
    ref: FrameRef, arr: np.ndarray, png: bytes, s: np.ndarray, feature_encoding: str
) -> tuple[dict[str, bytes], str]:
    """The tar members of one sample (PNG, s unless image-only, JSON metadata) and their sha256."""
    members = {} if feature_encoding == NO_FEATURES else encode_features(s, feature_encoding)
    meta = {
        "source": ref.source,
        "sequence": ref.sequence,
        "frame": ref.frame,
        "width": int(arr.shape[1]),
        "height": int(arr.shape[0]),
        "split": ref.split,
    }
    members = {"png": png, **members, "json": json.dumps(meta, sort_keys=True).encode()}
    digest = hashlib.sha256()
    for k in sorted(members):
        digest.update(k.encode() + b"\0" + members[k])
    return members, digest.hexdigest()


def _write_shard(task: ShardTask, front: Any) -> ShardResult:
    import torch

    device = "cuda" if task.use_gpu and torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    front = front.to(device).eval()
    timings = Counter({"load_front": time.perf_counter() - t0})
    stats = ChannelStats()
    rows: list[dict] = []
    skipped: list[dict] = []
    name = storage.name(task.path)
    try:
        with AtomicTarWriter(task.path) as tar:
            for batch in _batches(task.refs, task.batch_size):
                t = time.perf_counter()
                decoded = _decode_batch(batch, skipped)
                timings["decode"] += time.perf_counter() - t
                t = time.perf_counter()
                feats = _batch_features(front, decoded, device)
                timings["v_front"] += time.perf_counter() - t
                for ref, arr, png in decoded:
                    t = time.perf_counter()
                    members, sha256 = _sample_members(ref, arr, png, feats[ref.key], task.feature_encoding)
                    # the statistics of s as training will see it: decoded, or computed (image-only shards)
                    stats.update(feats[ref.key] if task.feature_encoding == NO_FEATURES else decode_features(members))
                    timings["encode"] += time.perf_counter() - t
                    t = time.perf_counter()
                    tar.write(ref.key, members)
                    timings["write"] += time.perf_counter() - t
                    rows.append(
                        {
                            "key": ref.key,
                            "split": ref.split,
                            "shard": f"{task.split}/{name}",
                            "index_in_shard": len(rows),
                            "source": ref.source,
                            "sequence": ref.sequence,
                            "frame": ref.frame,
                            "width": int(arr.shape[1]),
                            "height": int(arr.shape[0]),
                            "bytes": sum(len(v) for v in members.values()),
                            "sha256": sha256,
                            "feature_encoding": task.feature_encoding,
                        }
                    )
            t = time.perf_counter()
            tar_bytes, tar_sha256 = tar.commit()
            timings["write"] += time.perf_counter() - t
        result = ShardResult(
            task.split,
            task.index,
            name,
            task.plan_digest,
            rows,
            skipped,
            stats.to_dict(),
            tar_bytes,
            tar_sha256,
            dict(timings),
        )
        sidecar = asdict(result)
        sidecar.pop("timings")
        atomic_write_json(task.sidecar, sidecar)
    except OSError as exc:
        if exc.errno in DISK_ERRNOS:
            storage.remove(task.path)
            raise DiskFullError(exc.errno, f"no space left writing {task.path}") from None
        raise
    return result


def _finished(task: ShardTask) -> ShardResult | None:
    """The stored result of a shard finished by an earlier run with the same plan, else None."""
    try:
        d = json.loads(storage.read_text(task.sidecar))
        if d.get("plan_digest") != task.plan_digest or storage.size(task.path) != d["tar_bytes"]:
            return None
        return ShardResult(**d)
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------- planning


@dataclass
class Plan:
    """The shards to write and the options that define them."""

    out: str
    listing: Listing
    tasks: list[ShardTask]
    fingerprint: dict


def _canonical_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def make_plan(
    listing: Listing,
    out: str,
    yolo_provenance: dict,
    feature_encoding: str,
    frames: str | int,
    shard_size: int,
    batch_size: int,
    torch_threads: int | None = None,
    use_gpu: bool = False,
    out_dir_plan: dict | None = None,
) -> Plan:
    """Cut each split's frames into shards of ``shard_size`` in listing order.

    ``out_dir_plan``: the ``plan.json`` already in ``out``; when it describes the same preparation in the
    words of an earlier dvcm (:func:`_same_legacy_plan`), the plan keeps it, so that its shards resume."""
    fingerprint = {
        "format": FORMAT,
        "dataset": listing.dataset,
        "source_root": listing.root,
        "layout": listing.layout,
        "list_digests": listing.list_digests,
        "frames": frames,
        "shard_size": shard_size,
        "feature_encoding": feature_encoding,
        "yolo_weights_sha256": yolo_provenance.get("weights_sha256"),
        "split_layer": yolo_provenance.get("split_layer"),
    }
    if out_dir_plan is not None and _same_legacy_plan(out_dir_plan, fingerprint):
        fingerprint = out_dir_plan
    base_digest = _canonical_digest(fingerprint)
    tasks = []
    for split in listing.splits():
        refs = [r for r in listing.items if r.split == split]
        for index, start in enumerate(range(0, len(refs), shard_size)):
            chunk = tuple(refs[start : start + shard_size])
            digest = _canonical_digest([base_digest, split, index, [r.key for r in chunk]])
            path = storage.join(out, split, shard_name(index))
            tasks.append(
                ShardTask(split, index, path, chunk, digest, feature_encoding, batch_size, torch_threads, use_gpu)
            )
    return Plan(out, listing, tasks, fingerprint)


LEGACY_FORMAT = "dvcm-shards/1"  # before feature encodings had names: plan.json said feature_dtype


def _same_legacy_plan(old: dict, fingerprint: dict) -> bool:
    """Whether ``old``, a plan of format dvcm-shards/1, describes the preparation ``fingerprint`` describes."""
    if old.get("format") != LEGACY_FORMAT or "feature_dtype" not in old:
        return False
    renamed = {k: v for k, v in old.items() if k != "feature_dtype"}
    return {**renamed, "format": FORMAT, "feature_encoding": old["feature_dtype"]} == fingerprint


def read_out_dir_plan(out: str) -> dict | None:
    """The ``plan.json`` of a shard folder (or URL prefix), or None."""
    try:
        return json.loads(storage.read_text(storage.join(out, PLAN_FILE)))
    except (OSError, ValueError):
        return None


def recorded_encoding(out: str | Path) -> str | None:
    """The feature encoding that the shards in ``out`` were planned with (None: no plan there), so that a
    workflow's rerun resumes them rather than asking for the default of a newer dvcm."""
    old = read_out_dir_plan(str(out))
    if not old:
        return None
    return old.get("feature_encoding") or old.get("feature_dtype")


def claim_out_dir(out: str, fingerprint: dict, overwrite: bool) -> None:
    """Refuse a folder (or URL prefix) holding another plan's shards; with ``overwrite`` clear our files first."""
    plan_path = storage.join(out, PLAN_FILE)
    ours = [plan_path, storage.join(out, "dataset.json"), storage.join(out, "manifest.parquet")]
    shard_files = storage.glob(out, "*/shard-*.tar") + storage.glob(out, "*/shard-*.json")
    if overwrite:
        for path in ours + shard_files:
            storage.remove(path)
    elif storage.is_file(plan_path):
        try:
            old = json.loads(storage.read_text(plan_path))
        except ValueError:
            old = {}
        if old != fingerprint:
            diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise UserError(
                f"--out {out} already holds shards of another preparation (differs in: {', '.join(diff)}; "
                f"it holds {old.get('dataset')!r} from {old.get('source_root')!r}); "
                "choose another --out or pass --overwrite to replace them"
            )
    elif shard_files or storage.exists(ours[1]):
        raise UserError(
            f"--out {out} already holds shards that this tool did not plan (no {PLAN_FILE}); "
            "choose another --out or pass --overwrite to replace them"
        )
    try:
        storage.makedirs(out)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot make the folder ({exc.strerror or exc}); choose another --out") from None
    remove_stale_temp_files(out)
    atomic_write_json(plan_path, fingerprint)


# ---------------------------------------------------------------- running


def _run_tasks_ray(tasks: list[ShardTask], front: Any, num_gpus: float, on_done: Any) -> list[ShardResult]:
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if num_gpus > 0 and gpus < num_gpus:
        raise UserError(
            f"--num-gpus-per-worker {num_gpus:g} asks for GPUs but the Ray cluster has {gpus:g}; "
            "drop the flag to compute s on CPUs, or start Ray on GPU nodes"
        )
    front_box = [ray.put(front)]  # boxed so the task times its own fetch
    # GPU tasks default to max_calls=1 (a new process per shard, the front loaded again each time);
    # unlimited calls keep each worker's front on its GPU across shards (see _FRONTS).
    remote = ray.remote(num_cpus=1, num_gpus=num_gpus or 0, max_retries=2, retry_exceptions=False, max_calls=0)(
        _write_shard_task
    )
    cpus = int(ray.cluster_resources().get("CPU", 1))
    window = max(2, 2 * cpus)
    results: list[ShardResult] = []
    pending: dict[Any, ShardTask] = {}
    queue = list(tasks)
    try:
        while queue or pending:
            while queue and len(pending) < window:
                task = queue.pop(0)
                pending[remote.remote(task, front_box)] = task
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, OSError) and cause.errno in DISK_ERRNOS:
                        raise DiskFullError(cause.errno, str(cause)) from None
                    if isinstance(cause, UserError):  # e.g. a storage write refused: one line, as on the driver
                        raise cause from None
                    raise
                results.append(result)
                on_done(result)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    return results


_FRONTS: dict[str, Any] = {}  # per worker process: the front of the current prepare, fetched (and placed) once


def _write_shard_task(task: ShardTask, front_box: list) -> ShardResult:
    """Ray task body: fetch the shared front from the object store (once per worker), then :func:`write_shard`."""
    import ray

    t = time.perf_counter()
    key = front_box[0].hex()
    if key not in _FRONTS:
        _FRONTS.clear()
        _FRONTS[key] = ray.get(front_box[0])
    front = _FRONTS[key]
    fetched = time.perf_counter() - t
    result = write_shard(task, front)
    result.timings["load_front"] = result.timings.get("load_front", 0.0) + fetched
    return result


def _run_tasks_local(tasks: list[ShardTask], front: Any, on_done: Any) -> list[ShardResult]:
    results = []
    for task in tasks:
        result = write_shard(task, front)
        results.append(result)
        on_done(result)
    return results


def finalize(plan: Plan, results: list[ShardResult], yolo_provenance: dict, feature_encoding: str) -> dict:
    """Write ``manifest.parquet`` and ``dataset.json`` from all shard results (in plan order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    order = {(t.split, t.index): i for i, t in enumerate(plan.tasks)}
    results = sorted(results, key=lambda r: order[(r.split, r.index)])
    stats = ChannelStats(int(yolo_provenance.get("feature_channels") or FEATURE_CHANNELS))
    rows: list[dict] = []
    skipped = list(plan.listing.skipped)
    splits: dict[str, dict] = {}
    for r in results:
        stats.merge(ChannelStats.from_dict(r.stats))
        rows.extend(r.rows)
        skipped.extend(r.skipped)
        entry = splits.setdefault(r.split, {"samples": 0, "shards": []})
        entry["samples"] += len(r.rows)
        entry["shards"].append({"name": r.name, "samples": len(r.rows), "bytes": r.tar_bytes, "sha256": r.tar_sha256})
    schema = pa.schema(
        [
            ("key", pa.string()),
            ("split", pa.string()),
            ("shard", pa.string()),
            ("index_in_shard", pa.int32()),
            ("source", pa.string()),
            ("sequence", pa.string()),
            ("frame", pa.int32()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("bytes", pa.int64()),
            ("sha256", pa.string()),
            ("feature_encoding", pa.string()),
        ]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    atomic_write_bytes(storage.join(plan.out, "manifest.parquet"), buf.getvalue().to_pybytes())
    reasons = Counter(_reason_kind(s["reason"]) for s in skipped)
    info = {
        "format": FORMAT,
        "provenance": {
            "dataset": plan.listing.dataset,
            "layout": plan.listing.layout,
            "source_root": plan.listing.root,
            "list_digests": plan.listing.list_digests,
            "yolo": {
                k: yolo_provenance.get(k)
                for k in (
                    "weights",
                    "weights_sha256",
                    "split_layer",
                    "random_weights",
                    "feature_channels",
                    "cfg",
                    "cfg_sha256",
                )
            },
            "feature_encoding": feature_encoding,
            "feature_stride": FEATURE_STRIDE,
            "frames": plan.fingerprint["frames"],
            "shard_size": plan.fingerprint["shard_size"],
            "tool": TOOL,
            "tool_version": _tool_version(),
        },
        "counts": {
            "written": len(rows),
            "skipped": len(skipped),
            "skipped_by_reason": dict(sorted(reasons.items())),
            "by_split": {k: {"samples": v["samples"], "shards": len(v["shards"])} for k, v in splits.items()},
        },
        "splits": splits,
        "skipped": skipped,
        "s_stats_count": stats.n,
        "s_mean": stats.mean.tolist(),
        "s_std": stats.std.tolist(),
    }
    atomic_write_json(storage.join(plan.out, "dataset.json"), info)
    return info


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0]


@dataclass
class PrepareReport:
    """What a prepare run did."""

    info: dict
    shards_written: int
    shards_skipped: int
    frames_written: int
    seconds: float
    timings: dict[str, float]


def run_prepare(
    listing: Listing,
    out: str | Path,
    yolo_weights: str | None = None,
    yolo_seed: int = 0,
    frames: str | int = "all",
    shard_size: int = 128,
    batch_size: int = 8,
    feature_encoding: str = DEFAULT_ENCODING,
    num_gpus_per_worker: float = 0.0,
    overwrite: bool = False,
    use_ray: bool = True,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    front: Any = None,
    yolo_provenance: dict | None = None,
    torch_threads: int | None = None,
    yolo_cfg: str | None = None,
) -> PrepareReport:
    """Prepare ``listing`` into ``out``; resumes finished shards. ``use_ray=False`` runs in this process.

    ``torch_threads`` per shard: default 1 on Ray (one task per CPU), torch's default in-process.
    ``yolo_cfg``: the Darknet ``.cfg`` of the YOLOv3 family ``yolo_weights`` belong to (default:
    standard YOLOv3). ``dataset.json`` records the front's channels C_s and the cfg's sha256.
    """
    check_encoding(feature_encoding, allow_none=True)
    if shard_size < 1 or batch_size < 1:
        raise UserError("--shard-size and --batch-size must be at least 1")
    storage.check(out)
    out = storage.resolve(out)
    if front is None:
        from dvcm.yolo import build_yolov3

        yolo = build_yolov3(yolo_weights, seed=yolo_seed, cfg=yolo_cfg)
        front, yolo_provenance = yolo.front, dict(yolo.provenance)
        del yolo
    assert yolo_provenance is not None
    yolo_provenance = {
        "feature_channels": getattr(front, "out_channels", FEATURE_CHANNELS),
        "cfg": None,
        "cfg_sha256": None,
        **yolo_provenance,
    }
    plan = make_plan(
        listing,
        out,
        yolo_provenance,
        feature_encoding,
        frames,
        shard_size,
        batch_size,
        torch_threads=torch_threads or (1 if use_ray else None),
        use_gpu=num_gpus_per_worker > 0,
        out_dir_plan=None if overwrite else read_out_dir_plan(out),
    )
    with out_dir_lock(out) as lock_still_ours:  # a second prepare into the same --out is refused
        claim_out_dir(out, plan.fingerprint, overwrite)
        done = {(t.split, t.index): r for t in plan.tasks if (r := _finished(t)) is not None}
        todo = [t for t in plan.tasks if (t.split, t.index) not in done]
        t0 = time.perf_counter()
        timings: Counter = Counter()
        total = sum(len(t.refs) for t in plan.tasks)
        with StepProgress(
            f"prepare {listing.dataset}",
            total,
            "frames",
            enabled=progress,
            transient=False,
            completed=sum(len(r.rows) + len(r.skipped) for r in done.values()),
        ) as bar:

            def on_done(result: ShardResult) -> None:
                timings.update(result.timings)
                bar.advance(len(result.rows) + len(result.skipped))
                lock_still_ours()  # an object store's lock that another prepare took over: stop writing

            try:
                if use_ray and todo:
                    from pipeline.infra.ray_runtime import init_ray

                    init_ray(address, num_cpus)
                    new = _run_tasks_ray(todo, front, num_gpus_per_worker, on_done)
                else:
                    new = _run_tasks_local(todo, front, on_done)
            except DiskFullError as exc:
                remove_stale_temp_files(out)
                raise UserError(
                    f"disk full while writing shards under {out} ({exc.strerror}); free space or choose another --out, "
                    "then rerun: finished shards are kept and the rest resumes"
                ) from None
        seconds = time.perf_counter() - t0
        info = finalize(plan, list(done.values()) + new, yolo_provenance, feature_encoding)
    return PrepareReport(info, len(new), len(done), sum(len(r.rows) for r in new), seconds, dict(timings))


# ---------------------------------------------------------------- CLI


def listing_for(
    dataset: str, root: str | None, frames: str | int, image_list: str | None, val_fraction: float, sample_seed: int
) -> Listing:
    if dataset == "sample":
        from pipeline.data.sample_data import generate_sample

        base = Path(root) if root else Path(os.environ.get("DVCM_CACHE", Path.home() / ".cache" / "dvcm")) / "sample"
        parts = generate_sample(base, seed=sample_seed)
        return list_source("sample", parts.vimeo_root, frames)
    return list_source(dataset, root, frames, image_list, val_fraction)
