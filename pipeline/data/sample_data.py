"""A deterministic, download-free sample dataset for the quickstart and the tests, drawn from the synthetic world.

The world (:mod:`pipeline.data.world`) has eight object classes that a detector can tell apart
in the pixels: each has its own shape and colour family or texture (red discs, blue squares,
green triangles, yellow stars, purple rings, cyan crosses, striped hexagons, checkered diamonds;
COCO-style category ids 1..8), 2-8 of them per scene at 12 px to 45 % of the short side, drawn in
depth order over a natural-looking background (gradient plus multi-octave value-noise texture),
with a little sensor noise. ``generate_sample(root)`` writes three small sets from it, laid out
exactly like the real datasets:

- ``vimeo_septuplet/``: Vimeo-90K septuplet layout (``sequences/00001/0001/im1..im7.png``,
  ``sep_trainlist.txt``, ``sep_testlist.txt``), 448×256 frames: clips 0, 1, ... of the world's
  *train* split; the camera pans and the objects move a few pixels per frame, as in a video;
- ``coco2014/``: ``val2014/COCO_val2014_%012d.jpg`` and ``annotations/instances_val2014.json``:
  scenes 0, 1, ... of the world's *test* split (640×480, every third 480×640), one box per
  object of the world's ground truth, categories = the 8 world classes (ids 1..8, which are
  YOLO labels 0..7 through ``dvcm.yolo.COCO80_TO_COCO91``);
- ``kodak/``: ``kodim01.png ...``: test-split scenes from index 1 000 000 on (not the COCO-like
  ones), at 768×512 and, every fourth, 512×768.

The same seed gives the same bytes. A finished tree is recognised by a marker file and
reused; pass another ``root`` or seed for a different one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.world import (
    DEFAULT_WORLD_STYLE,
    WorldScene,
    check_style,
    coco_annotations,
    coco_dataset,
    encode_image,
    render_world_clip,
    render_world_scene,
    split_seed,
)
from pipeline.infra.atomic import atomic_write_bytes, atomic_write_json

_MARKER = ".dvcm-sample.json"
_FORMAT = 2  # 2: the synthetic world (1: random shapes with random categories)
_KODAK_FIRST_INDEX = 1_000_000  # Kodak-like images: test-split scenes from here on, apart from the COCO-like ones


@dataclass(frozen=True)
class SampleData:
    """Where each part of a generated sample lives."""

    root: Path
    vimeo_root: Path
    coco_root: Path
    coco_annotations: Path
    kodak_root: Path

    @classmethod
    def at(cls, root: Path) -> SampleData:
        """The parts' places under ``root``, laid out as the real datasets are (module docstring)."""
        return cls(
            root=root,
            vimeo_root=root / "vimeo_septuplet",
            coco_root=root / "coco2014",
            coco_annotations=root / "coco2014" / "annotations" / "instances_val2014.json",
            kodak_root=root / "kodak",
        )


def _write_vimeo(root: Path, seed: int, train: int, val: int, size: tuple[int, int], style: str) -> None:
    names = []
    world = split_seed(seed, "train")
    for n in range(train + val):
        seq = f"{n // 3 + 1:05d}/{n % 3 + 1:04d}"
        names.append(seq)
        for t, frame in enumerate(render_world_clip(world, n, size, 7, style)):
            atomic_write_bytes(root / "sequences" / seq / f"im{t + 1}.png", encode_image(frame.image))
    atomic_write_bytes(root / "sep_trainlist.txt", ("\n".join(names[:train]) + "\n").encode())
    atomic_write_bytes(root / "sep_testlist.txt", ("\n".join(names[train:]) + "\n").encode())


def _write_coco(root: Path, seed: int, count: int, style: str) -> Path:
    images, annotations = [], []
    world = split_seed(seed, "test")
    for n in range(count):
        size = (640, 480) if n % 3 else (480, 640)
        image_id = 100 + 37 * n
        scene = render_world_scene(world, n, size, style)
        name = f"COCO_val2014_{image_id:012d}.jpg"
        atomic_write_bytes(root / "val2014" / name, encode_image(scene.image, "jpg", quality=92))
        images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        annotations += coco_annotations(scene, image_id, len(annotations) + 1)
    ann_path = root / "annotations" / "instances_val2014.json"
    atomic_write_json(ann_path, coco_dataset(images, annotations, "dvcm synthetic sample (not COCO data)"))
    return ann_path


def kodak_scene(seed: int, n: int, style: str = DEFAULT_WORLD_STYLE) -> WorldScene:
    """Kodak-like image ``n`` (from 0) of world ``seed``: a test-split scene at 768×512 (every fourth one 512×768)."""
    size = (512, 768) if n % 4 == 3 else (768, 512)
    return render_world_scene(split_seed(seed, "test"), _KODAK_FIRST_INDEX + n, size, style)


def _write_kodak(root: Path, seed: int, count: int, style: str) -> None:
    for n in range(count):
        atomic_write_bytes(root / f"kodim{n + 1:02d}.png", encode_image(kodak_scene(seed, n, style).image))


def generate_sample(
    root: str | Path,
    seed: int = 0,
    train_sequences: int = 4,
    val_sequences: int = 2,
    frame_size: tuple[int, int] = (448, 256),
    coco_images: int = 6,
    kodak_images: int = 4,
    style: str = DEFAULT_WORLD_STYLE,
) -> SampleData:
    """Write the sample dataset of world ``seed`` in ``style`` under ``root`` (reused when already complete) and
    return its parts.

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
        **({} if style == DEFAULT_WORLD_STYLE else {"style": check_style(style)}),
    }
    parts = SampleData.at(root)
    marker = root / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == params:
                return parts
        except ValueError:
            pass
    marker.unlink(missing_ok=True)  # an interrupted rewrite must not pass for the sample another marker described
    _write_vimeo(parts.vimeo_root, seed, train_sequences, val_sequences, frame_size, style)
    _write_coco(parts.coco_root, seed, coco_images, style)
    _write_kodak(parts.kodak_root, seed, kodak_images, style)
    atomic_write_json(marker, params)
    return parts


def sample_image(seed: int = 1, size: tuple[int, int] = (768, 512)) -> np.ndarray:
    """One deterministic natural-looking scene as an H×W×3 uint8 array; ``size`` is (width, height).

    It is scene 0 of the world seeded ``seed``.
    The embedded default image of the demo and the benchmarks: no file or download needed.
    """
    return render_world_scene(seed, 0, size).image
