"""How costly a set of images is to code, against natural photos: JPEG's and HEVC-intra's bpp at equal PSNR.

The miniature study is only worth running on images that cost what photos cost (DESIGN.md, "The
miniature study"): on images that standard codecs code for almost nothing, they keep detection
intact at tiny rates and the comparison of learned base layers says nothing about real scenes.

For each image and codec, :func:`bpp_at_psnr` searches the codec's quality parameter (JPEG quality
1..95, HEVC-intra QP 0..51) for the two settings whose PSNR brackets the target and interpolates the
rate linearly in PSNR between them. :func:`image_cost` gives each codec's median over a set, and
:func:`cost_against_photos` sets it beside the same figure on the natural photos that scikit-image
ships (:data:`REFERENCE_PHOTOS`), as the ratio photos / images: 1 means the images cost what photos
cost; the study asks for a ratio within a factor of 2 (:data:`MAX_COST_RATIO`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.evaluation.anchors import ANCHORS, AnchorCodec
from pipeline.infra.errors import UserError

TARGET_PSNR_DB = 35.0
MAX_COST_RATIO = 2.0
# Colour photographs of natural scenes that scikit-image ships inside its wheel (no download), lossless PNGs
# (its rocket.jpg is left out: a JPEG already, whose colour detail 4:2:0 chroma cannot bring to 35 dB).
REFERENCE_PHOTOS: tuple[str, ...] = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png")
# codec -> (its quality parameter's search range, whether a larger parameter means higher quality)
SEARCH: dict[str, tuple[tuple[int, int], bool]] = {"jpeg": ((1, 95), True), "hevc": ((0, 51), False)}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images over all channels (peak 255): scikit-image's."""
    from skimage.metrics import peak_signal_noise_ratio

    return float("inf") if np.array_equal(a, b) else float(peak_signal_noise_ratio(a, b, data_range=255))


@dataclass(frozen=True)
class Point:
    """One coded version of an image: quality parameter, bpp (codestream bytes) and PSNR."""

    param: int
    bpp: float
    psnr: float


def code_point(img: Image.Image, codec: AnchorCodec, param: int) -> Point:
    """``img`` coded by ``codec`` at ``param``: its bpp (codestream bytes) and PSNR."""
    enc = codec.encode(img, param)
    w, h = img.size
    return Point(param, 8.0 * enc.codestream_bytes / (w * h), psnr(np.asarray(img), np.asarray(enc.decoded)))


def bpp_at_psnr(img: Image.Image, codec_name: str, target_db: float = TARGET_PSNR_DB) -> float:
    """The bpp ``codec_name`` (``jpeg`` or ``hevc``) needs for ``target_db`` on ``img``, interpolated in PSNR.

    Bisects the quality parameter for the cheapest setting that reaches the target; the rate is
    interpolated between it and the next cheaper one. An image the codec cannot bring to the target
    at its best setting costs ``inf``; one that its cheapest setting already brings there costs that
    setting's bpp.
    """
    codec = ANCHORS[codec_name]
    (lo, hi), up = SEARCH[codec_name]
    cache: dict[int, Point] = {}

    def at(p: int) -> Point:
        if p not in cache:
            cache[p] = code_point(img, codec, p)
        return cache[p]

    def better(p: int) -> int:
        return p + 1 if up else p - 1

    best, worst = (hi, lo) if up else (lo, hi)
    if at(best).psnr < target_db:
        return math.inf
    if at(worst).psnr >= target_db:
        return at(worst).bpp
    # invariant: worst misses the target, best reaches it
    while abs(best - worst) > 1:
        mid = (best + worst) // 2
        if at(mid).psnr >= target_db:
            best = mid
        else:
            worst = mid
    a, b = at(worst), at(best)
    assert better(worst) == best
    if b.psnr == a.psnr:
        return b.bpp
    t = (target_db - a.psnr) / (b.psnr - a.psnr)
    return a.bpp + t * (b.bpp - a.bpp)


def image_cost(
    images: Sequence[Image.Image], codecs: Sequence[str] = ("jpeg", "hevc"), target_db: float = TARGET_PSNR_DB
) -> dict[str, float]:
    """Each codec's median bpp at ``target_db`` over ``images`` (those whose encoder is missing are left out)."""
    out = {}
    for name in codecs:
        if ANCHORS[name].missing() is not None:
            continue
        out[name] = statistics.median(bpp_at_psnr(img.convert("RGB"), name, target_db) for img in images)
    return out


def reference_photos() -> list[Image.Image]:
    """The natural photos of :data:`REFERENCE_PHOTOS`, from scikit-image's bundled data (no download)."""
    try:
        import skimage.data
    except ImportError as e:
        raise UserError("the natural-photo reference needs scikit-image: pip install scikit-image") from e
    folder = Path(skimage.data.__file__).parent
    return [Image.open(folder / name).convert("RGB") for name in REFERENCE_PHOTOS]


@dataclass(frozen=True)
class CostComparison:
    """Median bpp at equal PSNR per codec, on a set of images and on the reference photos."""

    target_db: float
    images: dict[str, float]
    photos: dict[str, float]

    def ratio(self, codec: str) -> float:
        """Photos' bpp over the images': how many times cheaper the images are (1 = as costly as photos); nan when
        either set does not reach the PSNR at all (an infinite cost)."""
        a, b = self.photos[codec], self.images[codec]
        return a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else math.nan

    def holds(self) -> bool:
        """True when every codec measured on both sets is within :data:`MAX_COST_RATIO` of the photos' cost."""
        shared = [c for c in self.images if c in self.photos]
        return bool(shared) and all(1 / MAX_COST_RATIO <= self.ratio(c) <= MAX_COST_RATIO for c in shared)

    def lines(self, what: str) -> list[str]:
        """One line per codec, for a plan or a log."""
        out = []
        for c in self.images:
            if c in self.photos and not math.isfinite(self.ratio(c)):
                out.append(f"{ANCHORS[c].label} at {self.target_db:g} dB: {what} or the photos never reach it")
            elif c in self.photos:
                r = self.ratio(c)
                rel = f"{r:.1f}× cheaper" if r >= 1 else f"{1 / r:.1f}× costlier"
                ok = "within" if 1 / MAX_COST_RATIO <= r <= MAX_COST_RATIO else "outside"
                out.append(
                    f"{ANCHORS[c].label} at {self.target_db:g} dB: {what} {self.images[c]:.3f} bpp, natural photos "
                    f"{self.photos[c]:.3f} bpp ({rel} than photos; {ok} the study's factor {MAX_COST_RATIO:g})"
                )
        return out


def cost_against_photos(
    images: Sequence[Image.Image],
    codecs: Sequence[str] = ("jpeg", "hevc"),
    target_db: float = TARGET_PSNR_DB,
    photos: Callable[[], list[Image.Image]] = reference_photos,
) -> CostComparison:
    """:func:`image_cost` on ``images`` and on the reference photos."""
    return CostComparison(target_db, image_cost(images, codecs, target_db), image_cost(photos(), codecs, target_db))


def load_images(paths: Sequence[str | Path]) -> list[Image.Image]:
    """RGB images from files."""
    return [Image.open(p).convert("RGB") for p in paths]
