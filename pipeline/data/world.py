"""A synthetic world a detector can learn: eight object classes whose class is visible in the pixels.

Each class has its own shape and its own colour family or texture (:data:`WORLD_CLASSES`, COCO-style
ids 1..8), with variation within the class: hue, saturation, brightness, shading direction and
strength, fine texture, size, aspect, rotation (where the shape allows it).

A scene (:func:`render_world_scene`) is a natural-looking background (a two-colour gradient with a
multi-octave value-noise texture, partly desaturated so that the objects' colours stand out) with
2-8 objects drawn back to front, 12 px to 45 % of the short side across (log-uniform), anti-aliased
edges, a little Gaussian sensor noise. A clip (:func:`render_world_clip`) is a scene over which the
camera pans a few pixels per frame while each object moves with its own velocity.

Ground truth, one rule for occlusion and truncation: an object's box is the box of its whole
silhouette, clipped to the image; it is *not* shrunk to the pixels left unoccluded. An object of
which more than :data:`MAX_HIDDEN` (70 %) of the silhouette is hidden, by objects in front of it or
by lying outside the image, is drawn but dropped from the ground truth (as is one whose clipped box
is under 2 px wide or high).

Splits (:data:`WORLD_SPLITS`, :func:`split_seed`): each split's scenes come from their own seed,
derived from (world seed, split name) by a :class:`numpy.random.SeedSequence`, so train, val and test
never share a scene. :func:`world_split_coco` writes a split as images and a COCO instances JSON.

Everything is deterministic per (seed, index, size) and vectorised numpy (PIL only for the noise
resampling and image encoding): on one idle core a 256×256 scene takes about 5 ms, a 768×512
one about 20 ms.
"""

from __future__ import annotations

import colorsys
import functools
import io
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from PIL import Image

from pipeline.infra.atomic import atomic_write_bytes, atomic_write_json

# (COCO-style category id, name): the name says the shape and its colour family or texture.
WORLD_CLASSES: tuple[tuple[int, str], ...] = (
    (1, "red disc"),
    (2, "blue square"),
    (3, "green triangle"),
    (4, "yellow star"),
    (5, "purple ring"),
    (6, "cyan cross"),
    (7, "striped hexagon"),
    (8, "checkered diamond"),
)

# Split name -> the key mixed with the world seed into the split's seed (the name's bytes).
WORLD_SPLITS: dict[str, int] = {name: int.from_bytes(name.encode(), "big") for name in ("train", "val", "test")}

MAX_HIDDEN = 0.7  # an object more hidden than this (by occluders or the image border) is not in the ground truth
MIN_OBJECTS, MAX_OBJECTS = 2, 8
MIN_SIZE_PX, MAX_SIZE_FRACTION = 12.0, 0.45  # object size range: 12 px .. 45 % of the short side
_SCENE, _CLIP = 1, 2  # random-stream tags


@dataclass(frozen=True)
class WorldObject:
    """One ground-truth object: COCO-style category id, xywh box in pixels, visible fraction of its silhouette."""

    category_id: int
    bbox: tuple[float, float, float, float]
    visible: float


@dataclass(frozen=True)
class WorldScene:
    """A rendered scene: ``image`` H×W×3 uint8 RGB and its ground-truth ``objects``, back to front."""

    image: np.ndarray
    objects: tuple[WorldObject, ...]

    @property
    def boxes(self) -> np.ndarray:
        """The boxes as an [N, 4] float64 xywh array."""
        return np.array([o.bbox for o in self.objects], np.float64).reshape(-1, 4)

    @property
    def category_ids(self) -> np.ndarray:
        """The category ids as an [N] int64 array."""
        return np.array([o.category_id for o in self.objects], np.int64)


# ---------------------------------------------------------------- textures and image files


def _resize(a: np.ndarray, w: int, h: int) -> np.ndarray:
    """Bicubic resize of a 2-D float32 array to H×W (a writable copy)."""
    return np.array(
        Image.fromarray(np.ascontiguousarray(a, np.float32)).resize((w, h), Image.Resampling.BICUBIC), np.float32
    )


# The 256 quantiles of N(0, 1): Gaussian-like values from random bytes, much cheaper than normals.
_GAUSS_LUT = np.array([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], np.float32)


def gaussian_bytes(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 1.0) -> np.ndarray:
    """Float32 N(0, sigma²)-like values of ``shape``, quantised to 256 levels (from ``rng.bytes``)."""
    lut = _GAUSS_LUT if sigma == 1.0 else _GAUSS_LUT * np.float32(sigma)
    return lut[np.frombuffer(rng.bytes(math.prod(shape)), np.uint8).reshape(shape)]


def _octaves(size: int, most: int = 7) -> int:
    """How many octaves of :func:`noise_texture` leave at least 3 px a cell over ``size`` px (1..``most``)."""
    return int(np.clip(math.floor(math.log2(max(size, 1) / 3)) - 1, 1, most))


def noise_texture(rng: np.random.Generator, h: int, w: int, octaves: int = 5) -> np.ndarray:
    """Multi-octave value noise in [-1, 1], H×W float32 (smooth at coarse octaves, fine grain at the top).

    Octave ``o`` is a 2^(o+2)-cell random grid, weight 0.7^o; the octaves are summed on the way up
    (each partial sum upsampled ×2, the next grid added), and only the sum is resized to H×W.
    """
    acc = gaussian_bytes(rng, (4, 4))
    for o in range(1, octaves):
        cells = 2 ** (o + 2)
        acc = _resize(acc, cells, cells) + gaussian_bytes(rng, (cells, cells), 0.7**o)
    out = _resize(acc, w, h)
    out *= np.float32(1.0 / (max(float(out.max()), -float(out.min())) + 1e-6))
    return out


def natural_background(rng: np.random.Generator, h: int, w: int, saturation: float = 1.0) -> np.ndarray:
    """A sky-to-ground style gradient with a coloured texture, 3×H×W (channels first) float32 RGB in about [0, 255].

    A value-noise field (octaves down to 3 px per cell) textures it in brightness, and the same
    field turned half round in colour; ``saturation`` < 1 pulls the colours towards grey.
    """

    def grey(c: np.ndarray) -> np.ndarray:
        return c.mean() + saturation * (c - c.mean())

    top, bottom = grey(rng.uniform(60, 230, 3)), grey(rng.uniform(20, 200, 3))
    tilt = 255 * rng.uniform(-1, 1)
    octaves = _octaves(max(h, w))
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(-0.15 * tilt, 0.15 * tilt, w, dtype=np.float32)[None, :]
    noise = noise_texture(rng, h, w, octaves)
    lum = np.float32(rng.uniform(15, 45)) * noise + x
    chroma = noise[::-1, ::-1]  # the same field turned half round: as good as another one, and free
    amps = grey(rng.uniform(-30, 30, 3)).astype(np.float32)
    img = np.empty((3, h, w), np.float32)
    for c in range(3):
        img[c] = np.float32(top[c]) + np.float32(bottom[c] - top[c]) * t + lum + amps[c] * chroma
    return img


SENSOR_SIGMA = 2.0  # grey levels


def to_uint8(img: np.ndarray) -> np.ndarray:
    """A 3×H×W float image (modified in place) as a contiguous H×W×3 uint8 image, rounded and clipped."""
    np.clip(img, 0, 255, out=img)
    img += 0.5
    return np.ascontiguousarray(img.astype(np.uint8).transpose(1, 2, 0))


def encode_image(img: np.ndarray, fmt: str = "png", quality: int = 92) -> bytes:
    """An H×W×3 uint8 image as PNG (compression level 6) or JPEG (``quality``) bytes."""
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(img).save(buf, format="PNG", compress_level=6)
    elif fmt in ("jpg", "jpeg"):
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    else:
        raise ValueError(f"image format {fmt!r}: use 'png' or 'jpg'")
    return buf.getvalue()


# ---------------------------------------------------------------- objects


@dataclass(frozen=True)
class _Look:
    shape: str
    hue: tuple[float, float]  # degrees; may wrap below 0
    sat: tuple[float, float]
    val: tuple[float, float]
    rotation: float  # max |rotation| in degrees (the shape's symmetry makes larger ones pointless)
    texture: str = "plain"  # "plain" | "stripes" | "checker"


_LOOKS: tuple[_Look, ...] = (
    _Look("disc", (-10, 18), (0.7, 1.0), (0.6, 1.0), 0),
    _Look("square", (212, 240), (0.6, 1.0), (0.45, 0.95), 15),
    _Look("triangle", (95, 140), (0.6, 1.0), (0.4, 0.9), 60),
    _Look("star", (47, 60), (0.7, 1.0), (0.8, 1.0), 36),
    _Look("ring", (268, 295), (0.5, 0.9), (0.45, 0.9), 0),
    _Look("cross", (178, 193), (0.6, 1.0), (0.65, 1.0), 15),
    _Look("hexagon", (0, 360), (0.0, 0.08), (0.05, 0.25), 30, "stripes"),  # dark stripes on near-white
    _Look("diamond", (318, 340), (0.45, 0.75), (0.75, 1.0), 12, "checker"),  # pink and near-white checks
)
assert len(_LOOKS) == len(WORLD_CLASSES)
_LOOKS_ID = tuple(cid for cid, _ in WORLD_CLASSES)


def _unit_parts(shape: str, inner: float) -> list[np.ndarray]:
    """The shape as convex polygons (unit size) whose union it is; [] for disc and ring; the outline for the star."""
    if shape == "square":
        return [np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], np.float64)]
    if shape == "triangle":
        a = np.deg2rad(90 + 120 * np.arange(3))
        return [np.stack([np.cos(a), np.sin(a)], 1)]
    if shape == "hexagon":
        a = np.deg2rad(60 * np.arange(6))
        return [np.stack([np.cos(a), np.sin(a)], 1)]
    if shape == "diamond":
        return [np.array([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)], np.float64)]
    if shape == "cross":
        t = 0.32
        return [
            np.array([(-1, -t), (1, -t), (1, t), (-1, t)], np.float64),
            np.array([(-t, -1), (t, -1), (t, 1), (-t, 1)], np.float64),
        ]
    if shape == "star":  # its outline (the distance is computed by folding, see _signed_distance)
        a = np.deg2rad(-90 + 36 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return [np.stack([rad * np.cos(a), rad * np.sin(a)], 1)]
    return []


@dataclass(frozen=True, eq=False)
class _Obj:
    """An object of the world: class index, frame-0 centre, radius (half its size), appearance, velocity."""

    cls: int
    cx: float
    cy: float
    r: float
    aspect: float  # x stretch of polygon shapes
    angle: float  # radians
    inner: float  # ring hole / star inner radius, relative
    colors: tuple[tuple[float, float, float], tuple[float, float, float]]  # main, second (stripes/checks)
    shade: tuple[float, float, float]  # light direction x, y and strength
    period: float  # stripe / check period, pixels
    grain: tuple[float, int, int]  # fine texture: amplitude, and where the object sits in _grain_texture()
    vx: float
    vy: float

    def polygons(self, cx: float, cy: float) -> list[np.ndarray]:
        """The convex parts in pixel coordinates, centred at (cx, cy)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        rot = np.array([[c, s], [-s, c]])
        out = []
        for p in _unit_parts(_LOOKS[self.cls].shape, self.inner):
            q = p * np.array([self.aspect, 1.0]) * self.r
            out.append(q @ rot + np.array([cx, cy]))
        return out

    def extent(self, cx: float, cy: float) -> tuple[float, float, float, float]:
        """The silhouette's exact xyxy box (unclipped)."""
        polys = self.polygons(cx, cy)
        if not polys:
            return cx - self.r, cy - self.r, cx + self.r, cy + self.r
        v = np.concatenate(polys)
        return float(v[:, 0].min()), float(v[:, 1].min()), float(v[:, 0].max()), float(v[:, 1].max())


def _rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb((h % 360) / 360.0, s, v)
    return 255.0 * r, 255.0 * g, 255.0 * b


def _random_object(rng: np.random.Generator, cls: int, h: int, w: int) -> _Obj:
    look = _LOOKS[cls]
    short = min(h, w)
    hi = max(MAX_SIZE_FRACTION * short, MIN_SIZE_PX + 1)
    lo = min(MIN_SIZE_PX, hi - 1)
    size = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    main = _rgb(rng.uniform(*look.hue), rng.uniform(*look.sat), rng.uniform(*look.val))
    if look.texture == "plain":
        second = main
    else:  # near-white second colour, slightly tinted
        second = _rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.1), rng.uniform(0.85, 1.0))
    light = rng.uniform(0, 2 * np.pi)
    aspect = 1.0 if look.shape in ("disc", "ring", "star") else float(rng.uniform(0.88, 1.12))
    return _Obj(
        cls=cls,
        cx=float(rng.uniform(0.05, 0.95) * w),
        cy=float(rng.uniform(0.05, 0.95) * h),
        r=size / 2,
        aspect=aspect,
        angle=float(np.deg2rad(rng.uniform(-look.rotation, look.rotation))),
        inner=float(rng.uniform(0.5, 0.62) if look.shape == "ring" else rng.uniform(0.38, 0.46)),
        colors=(main, second),
        shade=(math.cos(light), math.sin(light), float(rng.uniform(0.08, 0.25))),
        period=float(max(4.0, size / rng.uniform(3.0, 5.0))),
        grain=(float(rng.uniform(4, 14)), int(rng.integers(_GRAIN_SIZE)), int(rng.integers(_GRAIN_SIZE))),
        vx=float(rng.uniform(-4, 4)),
        vy=float(rng.uniform(-2, 2)),
    )


_GRAIN_SIZE = 512


@functools.cache
def _grain_texture() -> np.ndarray:
    """One fixed 512×512 noise texture that every object's grain is a window of (made once: objects stay cheap)."""
    tex = noise_texture(np.random.default_rng(20240), _GRAIN_SIZE, _GRAIN_SIZE, 7)
    tex.flags.writeable = False
    return tex


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Indices reflected into [0, n) (mirror tiling: the texture stays continuous)."""
    m = np.mod(i, 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)


def _layout(rng: np.random.Generator, h: int, w: int) -> list[_Obj]:
    """2-8 random objects of random classes, back to front."""
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    return [_random_object(rng, int(rng.integers(len(_LOOKS))), h, w) for _ in range(n)]


def _signed_distance(obj: _Obj, cx: float, cy: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Signed distance in pixels to the silhouette's edge (positive inside) at pixel centres ``xs`` × ``ys``."""
    shape = _LOOKS[obj.cls].shape
    if shape in ("disc", "ring"):
        rad = np.sqrt((xs[None, :] - cx) ** 2 + (ys[:, None] - cy) ** 2)
        d = obj.r - rad
        return np.minimum(d, rad - obj.inner * obj.r) if shape == "ring" else d
    if shape == "star":  # fold the plane onto half a spike (mirror symmetry): one edge, no seams between spikes
        px, py = xs[None, :] - cx, ys[:, None] - cy
        rad = np.sqrt(px * px + py * py)
        spike = np.float32(2 * np.pi / 5)
        phi = np.abs(np.mod(np.arctan2(py, px) - np.float32(obj.angle - np.pi / 2 - np.pi / 5), spike) - spike / 2)
        tip = np.array([obj.r, 0.0])
        inner = obj.inner * obj.r * np.array([np.cos(np.pi / 5), np.sin(np.pi / 5)])
        e = inner - tip
        n = np.array([-e[1], e[0]]) / np.hypot(*e)
        n *= np.sign(n @ tip)
        return float(n @ tip) - rad * (float(n[0]) * np.cos(phi) + float(n[1]) * np.sin(phi))
    union = None
    for poly in obj.polygons(cx, cy):
        e = np.roll(poly, -1, axis=0) - poly
        n = np.stack([e[:, 1], -e[:, 0]], 1) / np.hypot(e[:, 0], e[:, 1])[:, None]
        n *= np.sign(np.sum((poly - poly.mean(0)) * n, 1))[:, None]  # outwards, whatever the winding
        offs = np.sum(n * poly, 1)
        d = None
        for (nx, ny), c in zip(n.tolist(), offs.tolist()):
            di = (c - nx * xs)[None, :] - (ny * ys)[:, None]
            d = di if d is None else np.minimum(d, di, out=d)
        union = d if union is None else np.maximum(union, d, out=union)
    assert union is not None
    return union


def _appearance(obj: _Obj, cx: float, cy: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The object's colour at pixel centres ``xs`` × ``ys``, float32 [3, len(ys), len(xs)].

    Colour (or stripes / checks of two colours), linear shading and a fine grain texture, all fixed
    to the object: they move with it from frame to frame.
    """
    look = _LOOKS[obj.cls]
    u = (xs - cx).astype(np.float32)[None, :]
    v = (ys - cy).astype(np.float32)[:, None]
    lx, ly, strength = obj.shade
    shading = 1 + np.float32(strength / obj.r) * (np.float32(lx) * u + np.float32(ly) * v)
    amp, ox, oy = obj.grain
    tex = _grain_texture()
    iy = _reflect(np.floor(ys - cy).astype(np.intp) + oy, _GRAIN_SIZE)
    ix = _reflect(np.floor(xs - cx).astype(np.intp) + ox, _GRAIN_SIZE)
    grain = np.float32(amp) * tex[iy[:, None], ix[None, :]]
    main = obj.colors[0]
    out = np.empty((3, len(ys), len(xs)), np.float32)
    if look.texture == "plain":
        for c in range(3):
            out[c] = np.float32(main[c]) * shading + grain
        return out
    co, si = math.cos(obj.angle), math.sin(obj.angle)
    a = (co * u - si * v) * np.float32(1 / obj.period)
    if look.texture == "stripes":
        m = np.float32(1.25) * np.sin(np.float32(2 * np.pi) * a)
    else:
        b = (si * u + co * v) * np.float32(1 / obj.period)
        m = np.float32(4.0) * np.sin(np.float32(np.pi) * a) * np.sin(np.float32(np.pi) * b)
    t = np.clip(m + np.float32(0.5), 0, 1) * shading  # main colour weight (soft-edged stripes or checks), shaded
    second = obj.colors[1]
    for c in range(3):
        out[c] = np.float32(main[c]) * t + np.float32(second[c]) * (shading - t) + grain
    return out


def _compose(
    background: np.ndarray, objs: list[_Obj], t: int, shift: tuple[float, float], noise_rng: np.random.Generator
) -> WorldScene:
    """Draw ``objs`` at frame ``t`` (each moved by its velocity, all by ``shift`` per frame) onto ``background``.

    ``background`` is 3×H×W float32 (not modified). Objects are drawn back to front (list order);
    visibility is counted front to back; the ground truth follows :data:`MAX_HIDDEN`.
    """
    img = np.array(background, np.float32)
    h, w = img.shape[1:]
    covered = np.zeros((h, w), bool)
    drawn = []  # front to back
    for i in range(len(objs) - 1, -1, -1):
        o = objs[i]
        cx, cy = o.cx + (o.vx + shift[0]) * t, o.cy + (o.vy + shift[1]) * t
        x0, y0, x1, y1 = o.extent(cx, cy)
        ix0, iy0, ix1, iy1 = math.floor(x0) - 1, math.floor(y0) - 1, math.ceil(x1) + 1, math.ceil(y1) + 1
        xs = np.arange(ix0, ix1, dtype=np.float32) + np.float32(0.5)
        ys = np.arange(iy0, iy1, dtype=np.float32) + np.float32(0.5)
        d = _signed_distance(o, cx, cy, xs, ys)
        area = int(np.count_nonzero(d >= 0))  # the whole silhouette, in the image or not
        cx0, cy0, cx1, cy1 = max(ix0, 0), max(iy0, 0), min(ix1, w), min(iy1, h)
        if cx1 <= cx0 or cy1 <= cy0 or area == 0:
            continue
        d = d[cy0 - iy0 : cy1 - iy0, cx0 - ix0 : cx1 - ix0]
        win = (slice(cy0, cy1), slice(cx0, cx1))
        inside = d >= 0
        visible = int(np.count_nonzero(inside & ~covered[win]))
        covered[win] |= inside
        alpha = np.clip(d + 0.5, 0.0, 1.0).astype(np.float32)
        box = (max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h)))
        drawn.append(
            (i, win, alpha, xs[cx0 - ix0 : cx1 - ix0], ys[cy0 - iy0 : cy1 - iy0], (cx, cy), visible / area, box)
        )
    objects = []
    for i, (ys_, xs_), alpha, xs, ys, (cx, cy), frac, box in reversed(drawn):
        colour = _appearance(objs[i], cx, cy, xs, ys)
        patch = img[:, ys_, xs_]
        patch += alpha * (colour - patch)
        bw, bh = box[2] - box[0], box[3] - box[1]
        if frac >= 1 - MAX_HIDDEN and bw >= 2 and bh >= 2:
            objects.append(WorldObject(_LOOKS_ID[objs[i].cls], (box[0], box[1], bw, bh), round(frac, 4)))
    img += gaussian_bytes(noise_rng, img.shape, SENSOR_SIGMA)
    return WorldScene(to_uint8(img), tuple(objects))


def power_law_noise(rng: np.random.Generator, h: int, w: int, beta: float) -> np.ndarray:
    """Gaussian noise with a 1/f^``beta`` power spectrum (random phases), H×W float32 with unit std.

    Natural images' spectra fall off about as 1/f² (``beta`` ≈ 2): this is the fine texture of
    photographed surfaces (foliage, fabric, stone) that makes them cost bits at every scale.
    """
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amp = f ** np.float32(-beta / 2)
    amp[0, 0] = 0.0
    spec = amp * (gaussian_bytes(rng, amp.shape) + 1j * gaussian_bytes(rng, amp.shape))
    out = np.fft.irfft2(spec, s=(h, w)).astype(np.float32)
    out *= np.float32(1.0 / (float(out.std()) + 1e-12))
    return out


# The photographic background (see :func:`photographic_background`).
PATCH_LEVELS = 5  # each of the two patch fields is cut into this many levels: up to 25 kinds of surface
PATCH_SATURATION = 0.3  # surface colours are pulled this far from grey (objects' are 0.45 and more)
TEXTURE_BETA = 2.3
TEXTURE_CONTRAST = (2.0, 24.0)  # grey levels: the range of the fine texture's std, one value per kind of surface
CLUTTER_PER_PIXEL = 1 / 6000  # elongated clutter shapes per pixel
CLUTTER_RADIUS = (4.0, 0.2)  # px, fraction of the short side: the range of a clutter shape's long half-axis
CLUTTER_ASPECT = (0.15, 0.6)  # short/long axis: elongated, so that no clutter shape passes for a disc or a ring


def _surface_map(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An H×W int map of irregular patches: two value-noise fields, each cut at random levels, combined."""
    octaves = _octaves(max(h, w), 6)
    ids = np.zeros((h, w), np.int64)
    for _ in range(2):
        field = noise_texture(rng, h, w, octaves)
        cuts = np.sort(rng.uniform(-0.6, 0.6, PATCH_LEVELS - 1)).astype(np.float32)
        ids = ids * PATCH_LEVELS + np.searchsorted(cuts, field)
    return ids


def _clutter(rng: np.random.Generator, img: np.ndarray, contrast: np.ndarray) -> None:
    """Draw elongated ellipses (sizes ∝ r⁻² between the :data:`CLUTTER_RADIUS` bounds) into ``img`` and ``contrast``."""
    _, h, w = img.shape
    n = int(h * w * CLUTTER_PER_PIXEL)
    rmin, rmax = CLUTTER_RADIUS[0], max(CLUTTER_RADIUS[1] * min(h, w), CLUTTER_RADIUS[0] + 1)
    radius = 1 / (rng.uniform(0, 1, n) * (1 / rmin - 1 / rmax) + 1 / rmax)  # density ∝ r^-2 on [rmin, rmax]
    p = rng.uniform(0, 1, (n, 6))
    xs = np.arange(w, dtype=np.float32) + np.float32(0.5)
    ys = np.arange(h, dtype=np.float32) + np.float32(0.5)
    for k in range(n):
        r, cx, cy = float(radius[k]), p[k, 0] * w, p[k, 1] * h
        aspect = CLUTTER_ASPECT[0] + p[k, 2] * (CLUTTER_ASPECT[1] - CLUTTER_ASPECT[0])
        x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, w)
        y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, h)
        if x1 <= x0 or y1 <= y0:
            continue
        u, v = xs[None, x0:x1] - np.float32(cx), ys[y0:y1, None] - np.float32(cy)
        c, s = np.float32(math.cos(np.pi * p[k, 3])), np.float32(math.sin(np.pi * p[k, 3]))
        a, b = (c * u + s * v) * np.float32(1 / r), (c * v - s * u) * np.float32(1 / (aspect * r))
        alpha = np.clip((1 - np.sqrt(a * a + b * b)) * np.float32(aspect * r) + np.float32(0.5), 0, 1)
        grey = 20 + 215 * p[k, 4]
        colour = grey + PATCH_SATURATION * (rng.uniform(20, 235, 3) - grey)
        patch = img[:, y0:y1, x0:x1]
        for ch in range(3):
            patch[ch] += alpha * (np.float32(colour[ch]) - patch[ch])
        cw = contrast[y0:y1, x0:x1]
        cw += alpha * (np.float32(TEXTURE_CONTRAST[0] + p[k, 5] * (TEXTURE_CONTRAST[1] - TEXTURE_CONTRAST[0])) - cw)


def photographic_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A background that costs about what photos cost to code, 3×H×W float32 RGB in about [0, 255].

    A patchwork of surfaces (:func:`_surface_map`: irregular patches with sharp borders, each its own
    desaturated colour over :func:`natural_background`'s light and shade), a sprinkling of elongated
    clutter (no clutter shape passes for a disc or a ring), and on every surface its own contrast of
    one 1/f^2.3 luminance texture (:func:`power_law_noise`): smooth surfaces beside rough ones, as in
    photos. Colour detail stays coarse, as in photos, so 4:2:0 codecs lose little of it.
    """
    shade = natural_background(rng, h, w, saturation=0.4)
    ids = _surface_map(rng, h, w)
    kinds = PATCH_LEVELS * PATCH_LEVELS
    grey = rng.uniform(30, 220, kinds)
    colours = (grey[:, None] + PATCH_SATURATION * (rng.uniform(30, 220, (kinds, 3)) - grey[:, None])).astype(np.float32)
    contrasts = np.exp(rng.uniform(*np.log(TEXTURE_CONTRAST), kinds)).astype(np.float32)
    img = np.empty((3, h, w), np.float32)
    for c in range(3):  # half the surface colour, half the light and shade of the plain world's background
        img[c] = np.float32(0.5) * (colours[ids, c] + shade[c])
    contrast = contrasts[ids]
    _clutter(rng, img, contrast)
    img += (contrast * power_law_noise(rng, h, w, TEXTURE_BETA))[None]
    return img


# The world's styles: how its backgrounds look (the objects and the ground truth are the same in all).
WORLD_STYLES: dict[str, str] = {
    "plain": "smooth gradient and value-noise backgrounds (JPEG and HEVC code them for a small fraction of a photo's bits)",
    "photographic": "backgrounds of textured clutter that cost about what natural photos cost to code",
}
DEFAULT_WORLD_STYLE = "plain"  # the codec zoo and the first bundled detector (mini) were trained on it


def check_style(style: str) -> str:
    """``style`` if it is one of :data:`WORLD_STYLES`, else a ValueError naming them."""
    if style not in WORLD_STYLES:
        raise ValueError(f"unknown world style {style!r}: one of {', '.join(WORLD_STYLES)}")
    return style


def _world_background(rng: np.random.Generator, h: int, w: int, style: str = DEFAULT_WORLD_STYLE) -> np.ndarray:
    """The background of ``style``: :func:`natural_background` at 40 % saturation (so that no background passes
    for an object's colour), or :func:`photographic_background`."""
    if check_style(style) == "photographic":
        return photographic_background(rng, h, w)
    return natural_background(rng, h, w, saturation=0.4)


# ---------------------------------------------------------------- public rendering


def render_world_scene(seed: int, index: int, size: tuple[int, int], style: str = DEFAULT_WORLD_STYLE) -> WorldScene:
    """Scene ``index`` of the world seeded ``seed`` at ``size`` = (width, height) in ``style``; deterministic in all.

    For a split's scenes pass ``split_seed(world_seed, split)`` as ``seed``.
    """
    bg, objs, noise = _scene_parts(seed, index, size, style)
    return _compose(bg, objs, 0, (0.0, 0.0), noise)


def _scene_parts(
    seed: int, index: int, size: tuple[int, int], style: str = DEFAULT_WORLD_STYLE
) -> tuple[np.ndarray, list[_Obj], np.random.Generator]:
    """What :func:`render_world_scene` composes: background, objects (back to front), sensor-noise stream.

    In styles other than ``plain`` the objects come from a stream of their own, so that the layout
    does not depend on how much randomness the background draws (the plain world keeps its streams).
    """
    w, h = size
    rng = np.random.default_rng([seed, index, _SCENE])
    if style == DEFAULT_WORLD_STYLE:  # the plain world's streams, as they always were
        bg = _world_background(rng, h, w, style)
        return bg, _layout(rng, h, w), np.random.default_rng([seed, index, _SCENE, 1])
    objs = _layout(np.random.default_rng([seed, index, _SCENE, 2]), h, w)
    return _world_background(rng, h, w, style), objs, np.random.default_rng([seed, index, _SCENE, 1])


def render_world_clip(
    seed: int, index: int, size: tuple[int, int], frames: int, style: str = DEFAULT_WORLD_STYLE
) -> list[WorldScene]:
    """Clip ``index``: ``frames`` frames at ``size`` = (width, height) of one scene in ``style`` as a camera sees it.

    The camera pans 0-3 px right and 0-1 px down per frame (a window moving over a larger
    background, so the whole scene moves by the opposite); each object moves on top of that with
    its own velocity (up to ±4 px horizontally, ±2 px vertically per frame). Each frame has its
    own sensor noise and its own ground truth (objects that leave the frame are dropped).
    """
    w, h = size
    rng = np.random.default_rng([seed, index, _CLIP])
    pan = (int(rng.integers(0, 4)), int(rng.integers(0, 2)))
    bg = _world_background(rng, h + pan[1] * frames + 1, w + pan[0] * frames + 1, style)
    objs = _layout(rng, h, w)
    out = []
    for t in range(frames):
        window = bg[:, pan[1] * t : pan[1] * t + h, pan[0] * t : pan[0] * t + w]
        noise = np.random.default_rng([seed, index, _CLIP, 1, t])
        out.append(_compose(window, objs, t, (-float(pan[0]), -float(pan[1])), noise))
    return out


# ---------------------------------------------------------------- splits and COCO files


def split_seed(world_seed: int, split: str) -> int:
    """The seed of ``split``'s scenes in the world ``world_seed`` (a SeedSequence hash of both)."""
    if split not in WORLD_SPLITS:
        raise ValueError(f"unknown split {split!r}: one of {', '.join(WORLD_SPLITS)}")
    return int(
        np.random.SeedSequence([world_seed, WORLD_SPLITS[split]]).generate_state(2, np.uint32).view(np.uint64)[0]
    )


def coco_categories() -> list[dict[str, Any]]:
    """The world's classes as COCO ``categories`` entries."""
    return [{"id": cid, "name": name, "supercategory": "world"} for cid, name in WORLD_CLASSES]


def coco_annotations(scene: WorldScene, image_id: int, first_id: int) -> list[dict[str, Any]]:
    """The scene's ground truth as COCO ``annotations`` (ids from ``first_id``; area = box area, iscrowd 0).

    ``segmentation`` is the box as a polygon: the world is meant for box detection.
    """
    anns = []
    for k, o in enumerate(scene.objects):
        x, y, bw, bh = (round(v, 2) for v in o.bbox)
        anns.append(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": o.category_id,
                "bbox": [x, y, bw, bh],
                "area": round(bw * bh, 2),
                "iscrowd": 0,
                "segmentation": [[x, y, round(x + bw, 2), y, round(x + bw, 2), round(y + bh, 2), x, round(y + bh, 2)]],
            }
        )
    return anns


def coco_dataset(images: list[dict[str, Any]], annotations: list[dict[str, Any]], description: str) -> dict[str, Any]:
    """A COCO instances JSON object over the world's categories."""
    return {
        "info": {"description": description, "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }


def world_split_coco(
    root: str | Path, world_seed: int, split: str, count: int, size: tuple[int, int], image_format: str = "jpg"
) -> Path:
    """Write scenes 0..count-1 of ``split`` at ``size`` = (width, height) as a COCO set; returns the JSON's path.

    Images go to ``root/<split>/<index:06d>.jpg`` (or ``.png``; JPEG quality 92), image id = index + 1,
    and ``root/annotations/instances_<split>.json`` is written last; every file atomically.
    """
    root = Path(root)
    seed = split_seed(world_seed, split)
    images, annotations = [], []
    for n in range(count):
        scene = render_world_scene(seed, n, size)
        name = f"{n:06d}.{image_format}"
        atomic_write_bytes(root / split / name, encode_image(scene.image, image_format))
        images.append({"id": n + 1, "file_name": name, "width": size[0], "height": size[1]})
        annotations += coco_annotations(scene, n + 1, len(annotations) + 1)
    path = root / "annotations" / f"instances_{split}.json"
    desc = f"dvcm synthetic world {world_seed}, split {split} (not COCO data)"
    atomic_write_json(path, coco_dataset(images, annotations, desc))
    return path
