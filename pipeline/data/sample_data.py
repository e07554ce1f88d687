"""A deterministic, download-free sample dataset for the quickstart and the tests.

``generate_sample(root)`` writes three small sets of natural-looking synthetic scenes
(smooth gradients, multi-octave noise textures, shapes with their own textures, a little
sensor noise) laid out exactly like the real datasets:

- ``vimeo_septuplet/``: Vimeo-90K septuplet layout (``sequences/00001/0001/im1..im7.png``,
  ``sep_trainlist.txt``, ``sep_testlist.txt``), 448×256 frames; the objects and the
  camera move a few pixels per frame, as in a video;
- ``coco2014/``: ``val2014/COCO_val2014_%012d.jpg`` and ``annotations/instances_val2014.json``
  with one box per drawn object and valid COCO category ids;
- ``kodak/``: ``kodim01.png ...`` at 768×512 and 512×768.

The same seed gives the same bytes. A finished tree is recognised by a marker file and
reused; pass another ``root`` or seed for a different one.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline.infra.atomic import atomic_write_bytes, atomic_write_json

# The 80 YOLO classes as (COCO category id, name), in YOLO order.
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"),
    (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"),
    (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
    (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"),
    (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"),
    (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"),
    (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"),
    (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"),
    (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
)

_MARKER = ".dvcm-sample.json"
_FORMAT = 1


@dataclass(frozen=True)
class SampleData:
    """Where each part of a generated sample lives."""

    root: Path
    vimeo_root: Path
    coco_root: Path
    coco_annotations: Path
    kodak_root: Path


@dataclass(frozen=True)
class _Shape:
    kind: str  # "ellipse" | "rect" | "polygon"
    cx: float
    cy: float
    rx: float
    ry: float
    color: tuple[int, int, int]
    vx: float
    vy: float
    vertices: tuple[tuple[float, float], ...]


def _noise_texture(rng: np.random.Generator, h: int, w: int, octaves: int = 5) -> np.ndarray:
    """Multi-octave value noise in [-1, 1] (smooth at coarse octaves, fine grain at the top)."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = 2 ** (o + 2)
        grid = rng.standard_normal((cells, cells)).astype(np.float32)
        img = Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC)
        out += amp * np.asarray(img, np.float32)
        total += amp
        amp *= 0.7
    out /= total
    return np.clip(out / (np.abs(out).max() + 1e-6), -1.0, 1.0)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A sky-to-ground style gradient with a coloured texture, float RGB in [0, 255]."""
    top = rng.uniform(60, 230, 3)
    bottom = rng.uniform(20, 200, 3)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    tilt = np.linspace(-0.15, 0.15, w, dtype=np.float32)[None, :, None] * rng.uniform(-1, 1)
    img = top * (1 - t) + bottom * t + 255 * tilt
    for c in range(3):
        img[..., c] += rng.uniform(15, 45) * _noise_texture(rng, h, w, octaves=7)
    return img


def _random_shapes(rng: np.random.Generator, h: int, w: int, count: int) -> list[_Shape]:
    shapes = []
    for _ in range(count):
        kind = str(rng.choice(["ellipse", "rect", "polygon"]))
        rx, ry = rng.uniform(0.05, 0.2) * w, rng.uniform(0.06, 0.25) * h
        n = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.6, 1.0, n)
        vertices = tuple((float(np.cos(a) * r), float(np.sin(a) * r)) for a, r in zip(angles, radii))
        shapes.append(
            _Shape(
                kind=kind,
                cx=float(rng.uniform(0.1, 0.9) * w),
                cy=float(rng.uniform(0.15, 0.85) * h),
                rx=float(rx),
                ry=float(ry),
                color=tuple(int(v) for v in rng.integers(0, 256, 3)),
                vx=float(rng.uniform(-6, 6)),
                vy=float(rng.uniform(-3, 3)),
                vertices=vertices,
            )
        )
    return shapes


def _shape_box(s: _Shape, t: int, h: int, w: int) -> tuple[float, float, float, float] | None:
    """Clipped xyxy box of shape ``s`` at frame ``t``; None when it left the image."""
    cx, cy = s.cx + s.vx * t, s.cy + s.vy * t
    if s.kind == "polygon":
        xs = [cx + vx * s.rx for vx, _ in s.vertices]
        ys = [cy + vy * s.ry for _, vy in s.vertices]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    else:
        x0, y0, x1, y1 = cx - s.rx, cy - s.ry, cx + s.rx, cy + s.ry
    x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    return x0, y0, x1, y1


def _render(
    background: np.ndarray, shapes: list[_Shape], t: int, pan: tuple[int, int], size: tuple[int, int], seed: int
) -> tuple[np.ndarray, list[tuple[int, tuple[float, float, float, float]]]]:
    """Frame ``t``: a window of the background moved by ``pan`` per frame, shapes moved by their velocity.

    Returns the uint8 HxWx3 image and (shape index, xyxy box) for each visible shape.
    """
    w, h = size
    ox, oy = pan[0] * t, pan[1] * t
    img = background[oy : oy + h, ox : ox + w].copy()
    boxes = []
    for i, s in enumerate(shapes):
        box = _shape_box(s, t, h, w)
        if box is None:
            continue
        mask_img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask_img)
        cx, cy = s.cx + s.vx * t, s.cy + s.vy * t
        if s.kind == "ellipse":
            draw.ellipse([cx - s.rx, cy - s.ry, cx + s.rx, cy + s.ry], fill=255)
        elif s.kind == "rect":
            draw.rectangle([cx - s.rx, cy - s.ry, cx + s.rx, cy + s.ry], fill=255)
        else:
            draw.polygon([(cx + vx * s.rx, cy + vy * s.ry) for vx, vy in s.vertices], fill=255)
        mask_img = mask_img.filter(ImageFilter.GaussianBlur(0.8))
        mask = np.asarray(mask_img, np.float32)[..., None] / 255.0
        shading = np.linspace(1.15, 0.8, h, dtype=np.float32)[:, None, None]
        tex_rng = np.random.default_rng([seed, i])
        tex = 35.0 * _noise_texture(tex_rng, h, w, octaves=6)[..., None]
        obj = np.asarray(s.color, np.float32) * shading + tex
        img = img * (1 - mask) + obj * mask
        boxes.append((i, box))
    grain = np.random.default_rng([seed, 1000 + t]).normal(0.0, 2.0, img.shape).astype(np.float32)
    return np.clip(img + grain, 0, 255).round().astype(np.uint8), boxes


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _scene(seed: int, size: tuple[int, int], frames: int, pan: tuple[int, int], shapes: int):
    """Render ``frames`` frames of one scene; yields (image, boxes)."""
    w, h = size
    rng = np.random.default_rng(seed)
    bg = _background(rng, h + abs(pan[1]) * frames + 1, w + abs(pan[0]) * frames + 1)
    objs = _random_shapes(rng, h, w, shapes)
    for t in range(frames):
        yield _render(bg, objs, t, pan, size, seed)


def _write_vimeo(root: Path, seed: int, train: int, val: int, size: tuple[int, int]) -> None:
    names = []
    for n in range(train + val):
        seq = f"{n // 3 + 1:05d}/{n % 3 + 1:04d}"
        names.append(seq)
        rng = np.random.default_rng([seed, 1, n])
        pan = (int(rng.integers(0, 4)), int(rng.integers(0, 2)))
        for t, (img, _) in enumerate(_scene(int(rng.integers(2**31)), size, 7, pan, int(rng.integers(2, 6)))):
            atomic_write_bytes(root / "sequences" / seq / f"im{t + 1}.png", _png_bytes(img))
    atomic_write_bytes(root / "sep_trainlist.txt", ("\n".join(names[:train]) + "\n").encode())
    atomic_write_bytes(root / "sep_testlist.txt", ("\n".join(names[train:]) + "\n").encode())


def _write_coco(root: Path, seed: int, count: int) -> Path:
    images, annotations = [], []
    ann_id = 1
    for n in range(count):
        rng = np.random.default_rng([seed, 2, n])
        size = (640, 480) if n % 3 else (480, 640)
        image_id = 100 + 37 * n
        img, boxes = next(_scene(int(rng.integers(2**31)), size, 1, (0, 0), int(rng.integers(2, 6))))
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=92)
        name = f"COCO_val2014_{image_id:012d}.jpg"
        atomic_write_bytes(root / "val2014" / name, buf.getvalue())
        images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        for shape_index, (x0, y0, x1, y1) in boxes:
            cat = COCO_CATEGORIES[int(np.random.default_rng([seed, 3, n, shape_index]).integers(80))][0]
            bw, bh = x1 - x0, y1 - y0
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [round(x0, 2), round(y0, 2), round(bw, 2), round(bh, 2)],
                    "area": round(bw * bh, 2),
                    "iscrowd": 0,
                    "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                }
            )
            ann_id += 1
    ann_path = root / "annotations" / "instances_val2014.json"
    atomic_write_json(
        ann_path,
        {
            "info": {"description": "dvcm synthetic sample (not COCO data)", "version": "1.0"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": name, "supercategory": "synthetic"} for i, name in COCO_CATEGORIES],
        },
    )
    return ann_path


def _write_kodak(root: Path, seed: int, count: int) -> None:
    for n in range(count):
        rng = np.random.default_rng([seed, 4, n])
        size = (512, 768) if n % 4 == 3 else (768, 512)
        img, _ = next(_scene(int(rng.integers(2**31)), size, 1, (0, 0), int(rng.integers(3, 7))))
        atomic_write_bytes(root / f"kodim{n + 1:02d}.png", _png_bytes(img))


def generate_sample(
    root: str | Path,
    seed: int = 0,
    train_sequences: int = 4,
    val_sequences: int = 2,
    frame_size: tuple[int, int] = (448, 256),
    coco_images: int = 6,
    kodak_images: int = 4,
) -> SampleData:
    """Write the sample dataset under ``root`` (reused when already complete) and return its parts.

    ``frame_size`` is (width, height); Vimeo-90K frames are 448×256. Every file is written
    atomically and the marker last, so an interrupted generation is redone on the next call.
    """
    root = Path(root)
    params = {
        "format": _FORMAT,
        "seed": seed,
        "train_sequences": train_sequences,
        "val_sequences": val_sequences,
        "frame_size": list(frame_size),
        "coco_images": coco_images,
        "kodak_images": kodak_images,
    }
    parts = SampleData(
        root=root,
        vimeo_root=root / "vimeo_septuplet",
        coco_root=root / "coco2014",
        coco_annotations=root / "coco2014" / "annotations" / "instances_val2014.json",
        kodak_root=root / "kodak",
    )
    marker = root / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == params:
                return parts
        except ValueError:
            pass
    _write_vimeo(parts.vimeo_root, seed, train_sequences, val_sequences, frame_size)
    _write_coco(parts.coco_root, seed, coco_images)
    _write_kodak(parts.kodak_root, seed, kodak_images)
    atomic_write_json(marker, params)
    return parts


def sample_image(seed: int = 1, size: tuple[int, int] = (768, 512)) -> np.ndarray:
    """One deterministic natural-looking scene as an H×W×3 uint8 array; ``size`` is (width, height).

    The embedded default image of the demo and the benchmarks: no file or download needed.
    """
    img, _ = next(_scene(seed, size, 1, (0, 0), 5))
    return img
