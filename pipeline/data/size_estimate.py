"""``prepare --dry-run``: the shards' size in every feature encoding, measured on a sample of the real tree.

Up to ``probe`` frames, spread evenly over the listing, go through what prepare does to them
(decode, PNG, V_front, each encoding, the tar's 512-byte headers and padding); the mean bytes per
frame times the number of frames gives each encoding's total. Nothing is written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.data.feature_encoding import FEATURE_ENCODINGS, NO_FEATURES
from pipeline.data.sources import Listing
from pipeline.infra.errors import UserError

TAR_BLOCK = 512


def tar_bytes(members: dict[str, bytes]) -> int:
    """Bytes that ``members`` take in a tar: a header block each, data padded to whole blocks."""
    return sum(TAR_BLOCK + -(-len(v) // TAR_BLOCK) * TAR_BLOCK for v in members.values())


@dataclass
class SizeEstimate:
    """Measured bytes per frame of each encoding (``none``: image-only shards) and the totals."""

    frames: int
    probed: int
    png_bytes: float  # mean PNG bytes per probed frame
    per_frame: dict[str, float]  # encoding -> mean sample bytes in the tar
    seconds_per_frame: float  # decode + V_front + every encoding, on this machine

    def total(self, encoding: str) -> float:
        return self.per_frame[encoding] * self.frames


def measure_sizes(listing: Listing, front: Any, probe: int = 8) -> SizeEstimate:
    """Measure each encoding's bytes per frame on up to ``probe`` frames of ``listing``."""
    from pipeline.data.prepare import _decode, _sample_members, front_features

    items = listing.items
    refs = items[:: max(1, len(items) // probe)][:probe]
    sizes: dict[str, list[int]] = {e: [] for e in (*FEATURE_ENCODINGS, NO_FEATURES)}
    pngs: list[int] = []
    t0 = time.perf_counter()
    front = front.eval()
    for ref in refs:
        decoded = _decode(ref)
        if isinstance(decoded, str):
            continue
        arr, png = decoded
        s = front_features(front, [arr])[0]
        pngs.append(len(png))
        for encoding in sizes:  # the members prepare writes
            sizes[encoding].append(tar_bytes(_sample_members(ref, arr, png, s, encoding)[0]))
    probed = len(pngs)
    if not probed:
        raise UserError(
            f"none of the {len(refs)} frames probed for the size estimate could be read; "
            "check the files under the dataset root"
        )
    seconds = (time.perf_counter() - t0) / max(probed, 1)
    per_frame = {e: float(np.mean(v)) if v else 0.0 for e, v in sizes.items()}
    return SizeEstimate(len(items), probed, float(np.mean(pngs)) if pngs else 0.0, per_frame, seconds)
