"""Image sources for ``prepare``: each lists (key, image path) in a stable order, by split.

A source checks the layout up front (a wrong root is one clear :class:`UserError`) and
records what it has to leave out (blank or duplicate list lines, sequences or frames the
list names but the disk lacks) as skipped inputs with a reason; unreadable images are
found later, when a worker decodes them.

Splits:

- ``vimeo90k`` (septuplet or triplet): ``train`` from ``sep_trainlist.txt`` /
  ``tri_trainlist.txt``, ``val`` from ``sep_testlist.txt`` / ``tri_testlist.txt``;
- ``coco2014``: ``val`` (the val2014 images named in the annotations, optionally only those
  in an image-list file such as the 5k subset);
- ``kodak``: ``test``;
- ``folder``: ``train`` and ``val``, a file going to ``val`` when a hash of its relative
  path falls under ``val_fraction`` (stable when files are added), with at least one
  ``val`` file when there are two or more;
- ``sample``: the generated sample (see :mod:`pipeline.data.sample_data`) through the
  ``vimeo90k`` source.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dvcm.fileio import file_sha256
from pipeline.infra.errors import UserError

DATASETS: tuple[str, ...] = ("vimeo90k", "coco2014", "kodak", "folder", "sample")
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg"})


@dataclass(frozen=True)
class FrameRef:
    """One input image: a unique key (letters, digits, ``_`` and ``-`` only), its split and path."""

    key: str
    split: str
    path: str
    source: str  # path relative to the source root
    sequence: str | None = None
    frame: int | None = None


@dataclass
class Listing:
    """What a source found: frames in stable order, skipped inputs, digests of the list files."""

    dataset: str
    root: str
    items: list[FrameRef]
    skipped: list[dict] = field(default_factory=list)
    list_digests: dict[str, str] = field(default_factory=dict)
    layout: str = ""

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(key, image path) in stable order."""
        return ((ref.key, ref.path) for ref in self.items)

    def splits(self) -> list[str]:
        """Split names in first-seen order."""
        return list(dict.fromkeys(ref.split for ref in self.items))


def _existing_root(root: str | Path | None, dataset: str) -> Path:
    if root is None:
        raise UserError(f"--root is required for --dataset {dataset}: point it at the dataset folder")
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(f"--root {root} does not exist; point it at the {dataset} folder (see datasets/{dataset}.md)")
    if not path.is_dir():
        raise UserError(f"--root {root} is a file, not a folder; point it at the {dataset} folder")
    return path.resolve()


def parse_frames(frames: str) -> str | int:
    """``all`` | ``middle`` | a positive integer N (N evenly spaced frames per sequence)."""
    text = str(frames).strip().lower()
    if text in ("all", "middle"):
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(
            f"--frames {frames!r} is not valid: use all, middle or a positive number of frames per sequence"
        )
    return n


def select_frames(frames: str | int, count: int) -> list[int]:
    """1-based frame numbers chosen out of ``count`` (7 for septuplets, 3 for triplets)."""
    if frames == "all":
        return list(range(1, count + 1))
    if frames == "middle" or frames == 1:
        return [(count + 1) // 2]
    assert isinstance(frames, int)
    if frames > count:
        raise UserError(f"--frames {frames} asks for more frames than a sequence has ({count}); use at most {count}")
    return sorted({round(1 + i * (count - 1) / (frames - 1)) for i in range(frames)})


def _read_list(path: Path, root: Path, split: str, skipped: list[dict]) -> list[str]:
    """Sequence names of a Vimeo list file; blank and duplicate lines are skipped and recorded."""
    names: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        name = raw.strip().strip("/")
        where = f"{path.name}:{lineno}"
        if not name:
            skipped.append({"split": split, "input": where, "reason": "blank line in list file"})
            continue
        if name in first_line:
            skipped.append({"split": split, "input": where, "reason": f"duplicate of line {first_line[name]} ({name})"})
            continue
        first_line[name] = lineno
        names.append(name)
    return names


def vimeo90k(root: str | Path | None, frames: str | int = "all") -> Listing:
    """Vimeo-90K septuplet (``sep_*list.txt``, im1..im7) or triplet (``tri_*list.txt``, im1..im3)."""
    base = _existing_root(root, "vimeo90k")
    if (base / "sep_trainlist.txt").is_file() or (base / "sep_testlist.txt").is_file():
        layout, prefix, count = "septuplet", "sep", 7
    elif (base / "tri_trainlist.txt").is_file() or (base / "tri_testlist.txt").is_file():
        layout, prefix, count = "triplet", "tri", 3
    else:
        raise UserError(
            f"--root {root} is not a Vimeo-90K tree: expected sep_trainlist.txt/sep_testlist.txt (septuplet) "
            "or tri_trainlist.txt/tri_testlist.txt (triplet) next to sequences/"
        )
    if not (base / "sequences").is_dir():
        raise UserError(f"--root {root} is not a Vimeo-90K tree: the folder sequences/ is missing")
    wanted = select_frames(frames, count)
    listing = Listing(dataset="vimeo90k", root=str(base), items=[], layout=layout)
    seen_keys: set[str] = set()
    for split, list_name in (("train", f"{prefix}_trainlist.txt"), ("val", f"{prefix}_testlist.txt")):
        list_path = base / list_name
        if not list_path.is_file():
            continue
        listing.list_digests[list_name] = file_sha256(list_path)
        for name in _read_list(list_path, base, split, listing.skipped):
            seq_dir = base / "sequences" / name
            if not re.fullmatch(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*", name) or not seq_dir.is_dir():
                listing.skipped.append(
                    {
                        "split": split,
                        "input": f"sequences/{name}",
                        "reason": "sequence named in the list is missing on disk",
                    }
                )
                continue
            for t in wanted:
                key = f"{name.replace('/', '_')}_im{t}"
                if key in seen_keys:  # the same sequence in both lists: keep the first
                    listing.skipped.append(
                        {
                            "split": split,
                            "input": f"sequences/{name}/im{t}.png",
                            "reason": "already listed in another split",
                        }
                    )
                    continue
                frame_path = seq_dir / f"im{t}.png"
                rel = f"sequences/{name}/im{t}.png"
                if not frame_path.is_file():
                    listing.skipped.append({"split": split, "input": rel, "reason": "frame missing from the sequence"})
                    continue
                seen_keys.add(key)
                listing.items.append(FrameRef(key, split, str(frame_path), rel, name, t))
    return listing


def coco2014(root: str | Path | None, image_list: str | Path | None = None) -> Listing:
    """COCO 2014 val: ``val2014/`` + ``annotations/instances_val2014.json`` (+ optional image list)."""
    base = _existing_root(root, "coco2014")
    ann = base / "annotations" / "instances_val2014.json"
    if not (base / "val2014").is_dir() or not ann.is_file():
        raise UserError(
            f"--root {root} is not a COCO 2014 tree: expected val2014/ and annotations/instances_val2014.json"
        )
    try:
        images = json.loads(ann.read_text(encoding="utf-8"))["images"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{ann} is not a COCO annotations file ({exc}); download it again") from None
    listing = Listing(dataset="coco2014", root=str(base), items=[], layout="val2014")
    listing.list_digests[ann.name] = file_sha256(ann)
    keep: set[int] | None = None
    if image_list is not None:
        lst = Path(image_list).expanduser()
        if not lst.is_file():
            raise UserError(f"--image-list {image_list} does not exist; give a file of image names or ids, one a line")
        listing.list_digests[lst.name] = file_sha256(lst)
        keep = set()
        for lineno, raw in enumerate(lst.read_text().splitlines(), 1):
            text = raw.strip()
            if not text:
                listing.skipped.append(
                    {"split": "val", "input": f"{lst.name}:{lineno}", "reason": "blank line in list file"}
                )
                continue
            match = re.search(r"(\d+)(\.\w+)?$", Path(text).name)
            if match is None:
                listing.skipped.append(
                    {"split": "val", "input": f"{lst.name}:{lineno}", "reason": "not an image name or id"}
                )
                continue
            keep.add(int(match.group(1)))
    for entry in sorted(images, key=lambda e: int(e["id"])):
        image_id = int(entry["id"])
        if keep is not None and image_id not in keep:
            continue
        rel = f"val2014/{entry['file_name']}"
        path = base / rel
        if not path.is_file():
            listing.skipped.append(
                {"split": "val", "input": rel, "reason": "image named in the annotations is missing on disk"}
            )
            continue
        listing.items.append(FrameRef(f"coco_{image_id:012d}", "val", str(path), rel, None, None))
    return listing


def kodak(root: str | Path | None) -> Listing:
    """Kodak: ``kodim01.png ... kodim24.png`` in one folder."""
    base = _existing_root(root, "kodak")
    files = sorted(p for p in base.iterdir() if re.fullmatch(r"kodim\d+\.png", p.name, re.IGNORECASE))
    if not files:
        raise UserError(
            f"--root {root} holds no kodimNN.png files; point it at the Kodak folder (see datasets/kodak.md)"
        )
    items = [FrameRef(p.stem.lower(), "test", str(p), p.name) for p in files]
    return Listing(dataset="kodak", root=str(base), items=items, layout="kodak")


def folder(root: str | Path | None, val_fraction: float = 0.05) -> Listing:
    """Every PNG/JPEG below ``root``, sorted by relative path; split by a hash of that path."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction {val_fraction} must be in [0, 1)")
    base = _existing_root(root, "folder")
    files = sorted(
        (p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(base).as_posix(),
    )
    if not files:
        raise UserError(f"--root {root} holds no PNG or JPEG files")
    rels = [p.relative_to(base).as_posix() for p in files]
    score = {r: int(hashlib.sha256(r.encode()).hexdigest()[:8], 16) / 2**32 for r in rels}
    val = {r for r in rels if score[r] < val_fraction}
    if val_fraction > 0 and not val and len(rels) >= 2:
        val = {min(rels, key=lambda r: score[r])}
    items, keys = [], set()
    for p, rel in zip(files, rels):
        key = re.sub(r"[^A-Za-z0-9_-]", "_", rel)
        if key in keys:
            key = f"{key}-{hashlib.sha256(rel.encode()).hexdigest()[:8]}"
        keys.add(key)
        items.append(FrameRef(key, "val" if rel in val else "train", str(p), rel))
    return Listing(dataset="folder", root=str(base), items=items, layout="folder")


def list_source(
    dataset: str,
    root: str | Path | None,
    frames: str | int = "all",
    image_list: str | Path | None = None,
    val_fraction: float = 0.05,
) -> Listing:
    """Dispatch on ``dataset``; ``sample`` is expected to be generated already (``root`` = its vimeo part)."""
    if dataset in ("vimeo90k", "sample"):
        listing = vimeo90k(root, frames)
        listing.dataset = dataset
    elif dataset == "coco2014":
        listing = coco2014(root, image_list)
    elif dataset == "kodak":
        listing = kodak(root)
    elif dataset == "folder":
        listing = folder(root, val_fraction)
    else:
        raise UserError(f"--dataset {dataset!r} is unknown; choose one of {', '.join(DATASETS)}")
    if not listing.items:
        raise UserError(
            f"no readable frames found under {listing.root} for --dataset {dataset}; check --root and the list files"
        )
    return listing
