"""WebDataset shards of (image, s = V_front(image)): the writer helpers and the reader.

On disk (written by ``dvcm-pipeline prepare``)::

    <root>/dataset.json             provenance, counts, skipped inputs, per-channel s_mean/s_std
    <root>/manifest.parquet         one row per sample: key, split, shard, sizes, sha256
    <root>/<split>/shard-000000.tar samples: <key>.png, <key>.json and s [C_s, ceil(H/8), ceil(W/8)]
                                    in the dataset's feature encoding (:mod:`pipeline.data.feature_encoding`;
                                    none in image-only shards, ``prepare --features none``)

Reader: :func:`make_loader` yields (x [B,3,crop,crop] in [0,1], s [B,C_s,crop/8,crop/8]
float32, or from image-only shards a :class:`FramesToFeaturize`) from random crops whose corners are multiples of 8 pixels, so that the s window is
exactly the features of the image window (away from borders, where V_front's receptive field
is cut). Shards are split by rank (Ray Train world rank) and then by DataLoader worker; when a
split has fewer shards than ``world_size * max(num_workers, 1)``, every reader walks all
shards and keeps every n-th sample instead, so that each rank still gets data.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError
from typing import Any

import numpy as np
import torch

from dvcm.fileio import file_sha256
from pipeline.data.feature_encoding import NO_FEATURES, dataset_encoding, decode_features
from pipeline.infra import storage
from pipeline.infra.errors import UserError

FORMAT = "dvcm-shards/2"  # /2: named feature encodings (feature_encoding.py), image-only shards
READABLE_FORMATS: tuple[str, ...] = ("dvcm-shards/1", FORMAT)
FEATURE_CHANNELS = 256
FEATURE_STRIDE = 8


# ---------------------------------------------------------------- writer helpers


def shard_name(index: int) -> str:
    """Stable shard file name: ``shard-000000.tar``."""
    return f"shard-{index:06d}.tar"


class ChannelStats:
    """Per-channel count, mean and sum of squared deviations (M2), merged exactly (Chan et al.).

    Each frame adds its spatial positions; partial results of Ray tasks merge on the driver
    in a fixed order, so the result does not depend on scheduling.
    """

    def __init__(self, channels: int = FEATURE_CHANNELS) -> None:
        self.n = 0
        self.mean = np.zeros(channels, np.float64)
        self.m2 = np.zeros(channels, np.float64)

    def update(self, s: np.ndarray) -> None:
        """Add one frame's features [C, h, w]."""
        x = s.reshape(s.shape[0], -1).astype(np.float64)
        other = ChannelStats(x.shape[0])
        other.n = x.shape[1]
        other.mean = x.mean(axis=1)
        other.m2 = ((x - other.mean[:, None]) ** 2).sum(axis=1)
        self.merge(other)

    def merge(self, other: ChannelStats) -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean.copy(), other.m2.copy()
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.n / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.n * other.n / n)
        self.n = n

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n, 1))

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChannelStats:
        out = cls(len(d["mean"]))
        out.n = int(d["n"])
        out.mean = np.asarray(d["mean"], np.float64)
        out.m2 = np.asarray(d["m2"], np.float64)
        return out


class AtomicTarWriter:
    """A deterministic tar (fixed mtime, owner, mode; members in given order) written to a temp file.

    ``commit()`` fsyncs it and publishes it to its location (:func:`pipeline.infra.storage.publish`:
    a rename locally, an upload to an object store) and returns its (size, sha256); leaving the
    ``with`` block without a commit (an error, a full disk) deletes the temp file, so nothing
    half-written remains.
    """

    def __init__(self, location: str | Path) -> None:
        import webdataset as wds

        self.location = str(location)
        fd, self._tmp = storage.temp_file_for(self.location)
        self._file = os.fdopen(fd, "wb")
        self._writer = wds.TarWriter(self._file, user="dvcm", group="dvcm", mode=0o444, mtime=0.0, encoder=False)
        self._committed = False

    def write(self, key: str, members: dict[str, bytes]) -> None:
        self._writer.write({"__key__": key, **members})

    def commit(self) -> tuple[int, str]:
        """Publish the tar; returns (bytes, sha256 hex) of what was published."""
        self._writer.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        size, digest = self._tmp.stat().st_size, file_sha256(self._tmp)
        storage.publish(self._tmp, self.location)
        self._committed = True
        return size, digest

    def __enter__(self) -> AtomicTarWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._committed:
            for close in (self._writer.close, self._file.close):  # both, even when the disk is full
                try:
                    close()
                except (OSError, ValueError):
                    pass
            self._tmp.unlink(missing_ok=True)


def remove_stale_temp_files(folder: str | Path) -> int:
    """Delete temp files that a killed run left (``.<name>.*.tmp``) in a local folder; returns how many.

    Remote outputs have none: their temp files are local and the objects appear only when complete.
    """
    folder = storage.local_path(folder)
    if folder is None:
        return 0
    count = 0
    for tmp in folder.glob("**/.*.tmp"):
        tmp.unlink(missing_ok=True)
        count += 1
    return count


# ---------------------------------------------------------------- reader


def read_dataset_info(root: str) -> dict:
    """``dataset.json`` of a prepared shard folder; a clear error when it is missing or empty."""
    url = storage.join(root, "dataset.json")
    try:
        info = json.loads(storage.read_text(url))
    except FileNotFoundError:
        raise UserError(
            f"{root} is not a prepared dataset (no dataset.json); run `dvcm-pipeline prepare --out {root}` first"
        ) from None
    except ValueError as exc:
        raise UserError(f"{url} is not valid JSON ({exc}); rerun prepare with --overwrite") from None
    except OSError as exc:
        raise UserError(f"cannot read {url} ({exc}); check the path, the storage endpoint and credentials") from None
    if not isinstance(info, dict):
        raise UserError(
            f"{url} is not a JSON object (it holds a {type(info).__name__}); rerun prepare with --overwrite"
        )
    if info.get("format") not in READABLE_FORMATS:
        raise UserError(
            f"{url} has format {info.get('format')!r}, which this dvcm cannot read (it reads "
            f"{', '.join(READABLE_FORMATS)}); upgrade dvcm or prepare the shards again"
        )
    info["feature_encoding"] = dataset_encoding(info, url)
    if not info.get("counts", {}).get("written"):
        raise UserError(f"{root} holds no samples (every input was skipped); see skipped in {url}")
    return info


def check_frames_fit(root: str, crop: int, batch_size: int) -> None:
    """Refuse, before training, a crop that no frame of a split can hold, or a batch larger than the frames that can
    (the loader skips frames smaller than the crop, and would wait forever for a batch); from ``manifest.parquet``'s
    frame sizes. A folder without a manifest is not checked here."""
    import io

    import pyarrow.parquet as pq

    url = storage.join(root, "manifest.parquet")
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(url)), columns=["split", "width", "height"])
    except FileNotFoundError:
        return
    except Exception as exc:  # noqa: BLE001 - a damaged manifest: one line
        raise UserError(f"cannot read {url} ({type(exc).__name__}); rerun prepare with --overwrite") from None
    rows = table.to_pylist()
    for split in ("train", "val"):
        frames = [(r["width"], r["height"]) for r in rows if r["split"] == split]
        if not frames:
            continue
        fit = sum(1 for w, h in frames if w >= crop and h >= crop)
        if fit == 0:
            w, h = max(frames, key=lambda f: min(f))
            raise UserError(
                f"no frame of split {split!r} in {root} holds a {crop}x{crop} crop (the largest is {w}x{h}); "
                f"lower --crop to {max(128, min(w, h) // 64 * 64)} or less"
            )
        if fit < batch_size:
            raise UserError(
                f"split {split!r} in {root} has {fit} frames that hold a {crop}x{crop} crop, fewer than --batch-size "
                f"{batch_size}; lower --batch-size or prepare more frames"
            )


def check_provenance(info: dict, yolo_provenance: dict) -> None:
    """Refuse features computed by another YOLO front than the one in use (its channels C_s first:
    a ``dataset.json`` that does not record them was prepared with standard YOLOv3, 256)."""
    prov = info.get("provenance", {}).get("yolo", {})
    stored_c = int(prov.get("feature_channels") or FEATURE_CHANNELS)
    used_c = int(yolo_provenance.get("feature_channels") or FEATURE_CHANNELS)
    if stored_c != used_c:
        raise UserError(
            f"the shards' features have {stored_c} channels, but the YOLO front in use gives {used_c}; "
            "pass the same --yolo-weights/--yolo-cfg as prepare, or prepare again with these"
        )
    stored = (prov.get("weights_sha256"), prov.get("split_layer"))
    used = (yolo_provenance.get("weights_sha256"), yolo_provenance.get("split_layer"))
    if stored != used:
        raise UserError(
            f"the shards' features come from YOLO weights sha256 {stored[0]} at split layer {stored[1]}, "
            f"but the YOLO front in use has sha256 {used[0]} at split layer {used[1]}; "
            "use the same --yolo-weights/--yolo-cfg/--yolo-seed or rerun prepare with them"
        )


def feature_stats(info: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of s per channel over the whole prepared set, each [C_s] float32 (256 for standard YOLOv3);
    refused in one line unless both are finite, of one length, and every std is above 0 (a std of 0 would divide
    every normalised feature by zero: issue 28 measured a validation loss of 1e11 from it)."""
    try:
        mean = torch.tensor(info["s_mean"], dtype=torch.float32)
        std = torch.tensor(info["s_std"], dtype=torch.float32)
    except (KeyError, TypeError, ValueError):
        raise UserError("dataset.json's s_mean and s_std are missing or not lists of numbers; prepare again") from None
    if mean.dim() != 1 or mean.shape != std.shape or mean.numel() == 0:
        raise UserError(f"dataset.json's s_mean and s_std have {mean.numel()} and {std.numel()} values; prepare again")
    if not bool(torch.isfinite(mean).all() and torch.isfinite(std).all()) or not bool((std > 0).all()):
        raise UserError("dataset.json's s_mean and s_std must be finite and every s_std above 0; prepare again")
    return mean, std


VERIFY_BYTES = 2 << 30  # shards up to this size in all are hashed before training; larger ones are checked by size
REMOTE_VERIFY_BYTES = 256 << 20  # on an object store, where hashing downloads them (at every sweep and round)


def check_shard_files(root: str, info: dict, verify: bool | None = None) -> str:
    """Every shard ``dataset.json`` lists must be the file it records: its size, and its sha256 when the shards
    total at most :data:`VERIFY_BYTES` (:data:`REMOTE_VERIFY_BYTES` on an object store), or ``verify``. A damaged,
    truncated or replaced shard is refused in one line that names it. Local folders and object stores alike (their sizes from one listing). Returns what was
    checked, in words."""
    import hashlib

    listed = [(split, s) for split, entry in (info.get("splits") or {}).items() for s in entry.get("shards", [])]
    total = sum(int(s.get("bytes") or 0) for _, s in listed)
    limit = VERIFY_BYTES if storage.local_path(root) is not None else REMOTE_VERIFY_BYTES
    hashed = verify if verify is not None else total <= limit
    sizes = storage.file_sizes(root, "*/shard-*.tar")
    for split, s in listed:
        size = sizes.get(f"{split}/{s['name']}")
        if size is None:
            if s.get("samples", 0) > 0:
                raise UserError(f"shard {split}/{s['name']} listed in {root}/dataset.json is missing; prepare again")
            continue
        if s.get("bytes") is not None and size != int(s["bytes"]):
            raise UserError(
                f"shard {split}/{s['name']} is {size} bytes, dataset.json records {s['bytes']}: it is "
                "damaged or was replaced; prepare again (--overwrite)"
            )
        if hashed and s.get("sha256"):
            with storage.open_read(storage.join(root, split, s["name"])) as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if digest != s["sha256"]:
                raise UserError(
                    f"shard {split}/{s['name']} does not have the sha256 dataset.json records: it is damaged; "
                    "prepare again (--overwrite)"
                )
    return f"{len(listed)} shards checked by " + ("size and sha256" if hashed else "size (too large to hash)")


def shard_urls(root: str, split: str) -> list[str]:
    """Shard locations of ``split`` (those holding samples), in name order."""
    info = read_dataset_info(root)
    splits = info.get("splits", {})
    if split not in splits:
        raise UserError(f"{root} has no split {split!r}; it has: {', '.join(sorted(splits)) or 'none'}")
    return [storage.join(root, split, s["name"]) for s in splits[split]["shards"] if s["samples"] > 0]


@dataclass
class FramesToFeaturize:
    """What stands for s in a batch from image-only shards (``prepare --features none``): the whole frames
    (uint8 [H,W,3] each, of any sizes) and each crop's window in feature cells, so that
    the training worker runs V_front on the whole frame and cuts the window: the same s as stored shards hold
    (V_front of the crop alone would differ near the crop's border, where its receptive field is cut)."""

    frames: list[torch.Tensor]
    windows: list[tuple[int, int, int, int]]  # (top, left, height, width) in feature cells

    def pin_memory(self) -> FramesToFeaturize:
        return FramesToFeaturize([f.pin_memory() for f in self.frames], self.windows)

    def features(self, front: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> torch.Tensor:
        """s [B, C_s, h, w] float32 on ``device``: V_front of each whole frame, cut to its window."""
        frames = self.frames
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, f in enumerate(frames):
            by_size.setdefault(tuple(f.shape), []).append(i)
        s: list[torch.Tensor | None] = [None] * len(frames)
        with torch.no_grad():
            for idx in by_size.values():  # one V_front batch per frame size
                x = torch.stack([frames[i] for i in idx]).to(device, non_blocking=True)
                out = front(x.permute(0, 3, 1, 2).float().div_(255.0)).float()
                for j, i in enumerate(idx):
                    top, left, h, w = self.windows[i]
                    s[i] = out[j, :, top : top + h, left : left + w]
        return torch.stack(s)  # type: ignore[arg-type]


def _decode_sample(
    sample: dict, crop: int | None, rng: random.Random, image_only: bool = False
) -> tuple[np.ndarray, Any] | None:
    """Decode one sample, cropping before any float conversion; None when the frame is smaller than ``crop``.

    From image-only shards (``prepare --features none``) the second item is (whole frame uint8, window in
    feature cells) for :class:`FramesToFeaturize`, instead of s.
    """
    from PIL import Image

    where = f"sample {sample.get('__key__', '?')!r} of shard {sample.get('__url__', '?')}"
    if "png" not in sample:
        raise UserError(f"{where} lacks its png member; the shard is damaged: prepare again (--overwrite)")
    try:
        with Image.open(io.BytesIO(sample["png"])) as im:
            frame = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for a damaged PNG
        raise UserError(f"{where}: its png does not decode ({exc}); prepare again (--overwrite)") from None
    img, window = frame, None
    h, w = frame.shape[:2]
    if crop is not None:
        if h < crop or w < crop:
            return None
        top = rng.randrange(0, (h - crop) // FEATURE_STRIDE + 1) * FEATURE_STRIDE
        left = rng.randrange(0, (w - crop) // FEATURE_STRIDE + 1) * FEATURE_STRIDE
        img = frame[top : top + crop, left : left + crop]
        window = (top // FEATURE_STRIDE, left // FEATURE_STRIDE, crop // FEATURE_STRIDE)
    x = img.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255.0)  # numpy: no thread-pool start-up
    top, left, size = window or (0, 0, None)
    cells = (size, size) if size else (-(-h // FEATURE_STRIDE), -(-w // FEATURE_STRIDE))
    if image_only:
        return x, (frame, (top, left, *cells))
    try:
        s = decode_features(sample, window)  # the dataset's encoding stores s: a sample without it is refused
    except UserError as exc:
        raise UserError(f"shard {sample.get('__url__', '?')}: {exc}") from None
    except (ValueError, TypeError, OSError, EOFError, IndexError, KeyError, SyntaxError, TokenError) as exc:
        # numpy's errors for a damaged .npy (its header is parsed as a Python literal: a flipped byte there is a
        # SyntaxError or a TokenError)
        raise UserError(
            f"{where}: its features do not decode ({type(exc).__name__}: {exc}); the shard is damaged: prepare "
            "again (--overwrite)"
        ) from None
    if s.shape[1:] != cells or not bool(np.isfinite(s).all()):
        problem = "not finite" if s.shape[1:] == cells else f"{s.shape[1]}x{s.shape[2]} cells, the image needs {cells}"
        raise UserError(f"{where}: its features are {problem}; the shard is damaged: prepare again (--overwrite)")
    return x, s


def _crop_stage(
    crop: int | None, rng_seed: tuple[int, ...], image_only: bool = False
) -> Callable[[Iterator[dict]], Iterator[tuple]]:
    def stage(src: Iterator[dict]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rng = random.Random(_seed(*rng_seed, _worker_id()[0]))
        for sample in src:
            pair = _decode_sample(sample, crop, rng, image_only)
            if pair is not None:  # frames smaller than the crop are left out
                yield pair

    return stage


def _seed(*parts: int) -> int:
    """A seed from integers that is the same in every process (unlike ``hash`` of strings)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def _worker_id() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _every_nth(rank: int, world_size: int) -> Callable[[Iterator[dict]], Iterator[dict]]:
    """Sample-level split when there are too few shards: reader r of n keeps samples r, r+n, ..."""

    def stage(src: Iterator[dict]) -> Iterator[dict]:
        worker, workers = _worker_id()
        readers = world_size * workers
        me = rank * workers + worker
        for i, sample in enumerate(src):
            if i % readers == me:
                yield sample

    return stage


def open_shards(src: Iterable[dict]) -> Iterator[dict]:
    """WebDataset stage: ``{"url"}`` -> ``{"url", "stream"}``, each shard opened by :func:`pipeline.infra.storage.open_read`.

    The stream is closed once the next stage has read the whole tar.
    """
    for item in src:
        with storage.open_read(item["url"]) as stream:
            yield {**item, "stream": stream}


class ShardLoader:
    """Iterable of (x, s) batches over one split; see :func:`make_loader`."""

    def __init__(
        self,
        urls: list[str],
        crop: int | None,
        batch_size: int,
        num_workers: int,
        shuffle_buffer: int,
        seed: int,
        epoch: int,
        rank: int,
        world_size: int,
        repeat: bool,
        pin_memory: bool = False,
        image_only: bool = False,
    ) -> None:
        self.urls, self.crop, self.batch_size, self.num_workers = urls, crop, batch_size, num_workers
        self.shuffle_buffer, self.seed, self.epoch = shuffle_buffer, seed, epoch
        self.rank, self.world_size, self.repeat = rank, world_size, repeat
        self.pin_memory = pin_memory  # page-locked batches, for non_blocking copies to a GPU
        self.image_only = image_only  # prepare --features none: the worker computes s (FramesToFeaturize)

    def _pipeline(self, epoch: int) -> Any:
        import webdataset as wds
        from webdataset.tariterators import group_by_keys, tar_file_expander

        readers = self.world_size * max(self.num_workers, 1)
        by_shard = len(self.urls) >= readers
        rank, world = self.rank, self.world_size

        def nodesplitter(src: Iterable[Any], group: Any = None) -> Iterator[Any]:
            for i, item in enumerate(src):
                if i % world == rank:
                    yield item

        shuffle = self.shuffle_buffer > 1
        # WebDataset's own stages, with shards opened through pipeline.infra.storage (a local file or an
        # fsspec URL such as s3://...) instead of its gopen, which knows no object stores.
        ds = wds.DataPipeline(
            wds.SimpleShardList(self.urls),
            nodesplitter if by_shard else None,
            wds.split_by_worker if by_shard else None,
            wds.detshuffle(len(self.urls), seed=self.seed * 1_000_003 + epoch) if shuffle else None,
            open_shards,
            wds.pipelinefilter(tar_file_expander)(),
            wds.pipelinefilter(group_by_keys)(),
        )
        if not by_shard:
            ds = ds.compose(_every_nth(rank, world))
        if shuffle:
            ds = ds.compose(wds.shuffle(self.shuffle_buffer, rng=random.Random(_seed(self.seed, epoch, rank, 1))))
        ds = ds.compose(_crop_stage(self.crop, (self.seed, epoch, rank), self.image_only))
        if self.crop is None:
            return ds.compose(wds.batched(1, collation_fn=_stack, partial=True))
        return ds.compose(wds.batched(self.batch_size, collation_fn=_stack, partial=False))

    def _one_epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pipe = self._pipeline(epoch)
        if self.num_workers <= 0:
            for x, s in pipe:
                yield (x.pin_memory(), s.pin_memory()) if self.pin_memory else (x, s)
            return
        loader = torch.utils.data.DataLoader(
            pipe, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory
        )
        yield from loader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        while True:
            yield from self._one_epoch(epoch)
            if not self.repeat:
                return
            epoch += 1


def _stack(batch: list[tuple[np.ndarray, Any]]) -> tuple[torch.Tensor, torch.Tensor | FramesToFeaturize]:
    x = torch.from_numpy(np.stack([b[0] for b in batch]))
    if isinstance(batch[0][1], np.ndarray):
        return x, torch.from_numpy(np.stack([b[1] for b in batch]))
    # image-only shards: whole frames, V_front runs on the training worker
    return x, FramesToFeaturize([torch.from_numpy(np.array(b[1][0])) for b in batch], [b[1][1] for b in batch])


def make_loader(
    root: str,
    split: str = "train",
    crop: int | None = 256,
    batch_size: int = 8,
    num_workers: int = 0,
    shuffle_buffer: int = 256,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    yolo_provenance: dict | None = None,
    repeat: bool = False,
    pin_memory: bool = False,
) -> ShardLoader:
    """Batches (x [B,3,crop,crop] in [0,1], s [B,C_s,crop/8,crop/8] float32) from prepared shards; from
    image-only shards s is a :class:`FramesToFeaturize` that the training worker turns into s.

    ``crop=None`` yields whole frames one at a time (B = 1). Frames smaller than ``crop``
    are left out. The order depends only on (seed, epoch, rank, workers), not on timing.
    Shard locations must be readable from every worker (a shared folder, or URLs).
    """
    if crop is not None and (crop <= 0 or crop % FEATURE_STRIDE):
        raise UserError(f"crop {crop} must be a positive multiple of {FEATURE_STRIDE} so the s window matches exactly")
    if batch_size < 1:
        raise UserError(f"batch size {batch_size} must be at least 1")
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside world size {world_size}")
    info = read_dataset_info(root)
    if yolo_provenance is not None:
        check_provenance(info, yolo_provenance)
    urls = shard_urls(root, split)
    if not urls:
        raise UserError(f"split {split!r} of {root} holds no samples; prepare more data or pick another split")
    return ShardLoader(
        urls,
        crop,
        batch_size,
        num_workers,
        shuffle_buffer,
        seed,
        epoch,
        rank,
        world_size,
        repeat,
        pin_memory,
        image_only=info["feature_encoding"] == NO_FEATURES,
    )
