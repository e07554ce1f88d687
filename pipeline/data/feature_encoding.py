"""How s = V_front(x) is stored in a shard sample: the feature encodings, and their members.

=================  ===============================================  ==========================
encoding           members                                          error of s
=================  ===============================================  ==========================
``float16``        ``s.npy`` (float16)                              float16 rounding
``float16-zstd``   ``s.npy.blosc``: the same .npy, byte-shuffled    float16 rounding
                   and zstd-compressed by Blosc (numcodecs)
``uint8``          ``s.npy`` (uint8) + ``s_range.npy`` (float32     half a step of min–max / 255
                   [C, 2]: each channel's min and max in the frame)
``uint8-zstd``     ``s.npy.blosc`` (the uint8 .npy, bit-shuffled,   as ``uint8``
                   zstd) + ``s_range.npy``
``none``           nothing: training computes s from the image      (none stored)
=================  ===============================================  ==========================

A sample says by its members how to read it, so that shards written before encodings had names
(``float16``, ``uint8``: ``dataset.json`` recorded ``feature_dtype``) read as they did. Blosc
compresses the whole .npy (header included: numpy pads it to a multiple of 64 bytes, so the shuffle
stays aligned with the elements) and its frame carries the sizes it needs to decompress.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from pipeline.infra.errors import UserError

FEATURE_ENCODINGS: tuple[str, ...] = ("float16", "float16-zstd", "uint8", "uint8-zstd")
NO_FEATURES = "none"
READABLE_ENCODINGS: tuple[str, ...] = (*FEATURE_ENCODINGS, NO_FEATURES)
DEFAULT_ENCODING = "uint8-zstd"  # bench shards: the smallest whose effect on training is within seed noise
ZSTD_LEVEL = 3  # Blosc's zstd level: level 9 saves 4 % more bytes at 10-20x the encode time (bench shards)


def _blosc_encode(npy: bytes, dtype: np.dtype) -> bytes:
    """The .npy bytes compressed by Blosc's zstd, shuffled by elements of ``dtype`` (the buffer is viewed as
    ``dtype`` items: numpy pads the header to a multiple of 64 bytes, so the data stays aligned)."""
    from numcodecs import Blosc, blosc

    blosc.use_threads = False  # one thread: prepare's Ray tasks and DataLoader workers are the parallelism
    # byte shuffle for 2-byte floats, bit shuffle for bytes (a byte shuffle of 1-byte items does nothing)
    shuffle = Blosc.BITSHUFFLE if dtype.itemsize == 1 else Blosc.SHUFFLE
    return bytes(Blosc(cname="zstd", clevel=ZSTD_LEVEL, shuffle=shuffle).encode(np.frombuffer(npy, dtype=dtype)))


def check_encoding(encoding: str, allow_none: bool = False) -> str:
    """``encoding`` if this dvcm can write it, else one line naming the choices."""
    choices = READABLE_ENCODINGS if allow_none else FEATURE_ENCODINGS
    if encoding not in choices:
        raise UserError(f"feature encoding {encoding!r} is not supported; use one of {', '.join(choices)}")
    return encoding


def encode_features(s: np.ndarray, encoding: str) -> dict[str, bytes]:
    """Sample members holding features ``s`` [C,h,w] float32 in ``encoding``."""
    check_encoding(encoding)
    if encoding.startswith("float16"):
        arr, extra = s.astype(np.float16), {}
    else:
        lo = s.min(axis=(1, 2)).astype(np.float32)
        hi = s.max(axis=(1, 2)).astype(np.float32)
        span = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
        arr = np.clip(np.rint((s - lo[:, None, None]) / span[:, None, None] * 255.0), 0, 255).astype(np.uint8)
        extra = {"s_range.npy": _npy_bytes(np.stack([lo, hi], axis=1))}
    npy = _npy_bytes(arr)
    if encoding.endswith("-zstd"):
        return {"s.npy.blosc": _blosc_encode(npy, arr.dtype), **extra}
    return {"s.npy": npy, **extra}


def decode_features(sample: dict[str, Any], window: tuple[int, int, int] | None = None) -> np.ndarray:
    """s of a sample (its members by name, as :func:`encode_features` wrote them), float32 [C,h,w].

    ``window`` = (top, left, size) in feature cells converts only that square.
    """
    if "s.npy.blosc" in sample:
        from numcodecs import Blosc, blosc

        blosc.use_threads = False
        npy = bytes(Blosc().decode(sample["s.npy.blosc"]))
    elif "s.npy" in sample:
        npy = sample["s.npy"]
    else:
        raise UserError(
            f"shard sample {sample.get('__key__', '?')!r} holds no features (members: "
            f"{', '.join(sorted(k for k in sample if not k.startswith('__')))}); prepare it again"
        )
    where = f"sample {sample.get('__key__', '?')!r} of shard {sample.get('__url__', '?')}"
    try:
        arr = np.load(io.BytesIO(npy), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{where}: its features do not decode ({exc}); prepare again (--overwrite)") from None
    if arr.ndim != 3:
        raise UserError(f"{where}: its features have shape {arr.shape}, not [C, h, w]; prepare again (--overwrite)")
    if window is not None:
        top, left, size = window
        arr = arr[:, top : top + size, left : left + size]
    s_range = sample.get("s_range.npy")
    if s_range is None:
        if arr.dtype == np.uint8:  # 8-bit features mean nothing without their per-channel range
            raise UserError(
                f"{where} lacks its s_range.npy member (8-bit features need it); prepare again (--overwrite)"
            )
        return arr.astype(np.float32)
    try:
        rng = np.load(io.BytesIO(s_range), allow_pickle=False).astype(np.float32)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{where}: its s_range.npy does not decode ({exc}); prepare again (--overwrite)") from None
    if rng.shape != (arr.shape[0], 2) or not bool(np.isfinite(rng).all()):
        raise UserError(f"{where}: its s_range.npy is damaged (shape {rng.shape} or not finite); prepare again")
    lo, hi = rng[:, 0][:, None, None], rng[:, 1][:, None, None]
    return (lo + arr.astype(np.float32) * ((hi - lo) / np.float32(255.0))).astype(np.float32)


def dataset_encoding(info: dict[str, Any], where: str) -> str:
    """The feature encoding a ``dataset.json`` records (``feature_dtype`` in shards from before the
    encodings had names); one line when this dvcm cannot read it."""
    prov = info.get("provenance", {})
    encoding = prov.get("feature_encoding") or prov.get("feature_dtype") or "float16"
    if encoding not in READABLE_ENCODINGS:
        raise UserError(
            f"{where} records feature encoding {encoding!r}, which this dvcm cannot read (it reads "
            f"{', '.join(READABLE_ENCODINGS)}); upgrade dvcm or prepare the shards again"
        )
    return encoding


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()
