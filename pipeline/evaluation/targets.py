"""What to evaluate: checkpoints (files, storage URLs, MLflow runs) and the images of COCO or an image folder."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.infra import storage
from pipeline.infra.errors import UserError
from pipeline.infra.tracking import file_digest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


@dataclass
class Target:
    """One learned-codec checkpoint to evaluate (from a file or an MLflow run)."""

    checkpoint: Path
    run_id: str | None = None
    key: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    origin: str | None = None  # the storage URL the local ``checkpoint`` was fetched from


@dataclass
class ImageItem:
    """One evaluation image: its path, and for COCO its image id and size from the annotations."""

    path: str
    image_id: int | None = None


def _checkpoints_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".pt", ".pth", ".ckpt"))


def resolve_targets(
    checkpoints: Sequence[str | Path],
    run_ids: Sequence[str],
    sweep: str | None,
    all_runs: bool,
    tracking_uri: str | None,
    download_dir: Path,
) -> list[Target]:
    """Checkpoint files to evaluate, from paths, storage URLs and/or MLflow runs (their ``checkpoint`` artifacts).

    A URL (``s3://...``) is downloaded to ``download_dir`` first, so that ``torch.load`` reads a local file.
    """
    from dvcm.zoo import ZOO_PREFIX, zoo_checkpoint

    targets = []
    for p in checkpoints:
        if str(p).startswith(ZOO_PREFIX):  # a bundled checkpoint (dvcm.zoo)
            targets.append(Target(zoo_checkpoint(str(p)), origin=str(p)))
            continue
        storage.check(p)
        if not storage.is_file(p):
            raise UserError(f"checkpoint {p} does not exist; pass a file written by dvcm training")
        local = storage.local_path(p)
        if local is None:
            dest = download_dir / f"url-{hashlib.sha256(str(p).encode()).hexdigest()[:12]}" / storage.name(p)
            targets.append(Target(storage.download(p, dest), origin=str(p)))
        else:
            targets.append(Target(local))
    runs: list[str] = list(run_ids)
    if sweep or all_runs:
        from pipeline.infra import tracking

        c = tracking.client(tracking_uri)
        exp = c.get_experiment_by_name(tracking.EXPERIMENT_NAME)
        if exp is None:
            raise UserError(f"no '{tracking.EXPERIMENT_NAME}' experiment at {tracking_uri}; check --tracking-uri")
        if sweep:
            parents = c.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.TAG_SWEEP}` = '{sweep}'")
            if not parents:
                raise UserError(f"no sweep named {sweep!r} at {tracking_uri}; check --sweep and --tracking-uri")
            for parent in parents:
                kids = c.search_runs(
                    [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
                )
                runs += [k.info.run_id for k in kids if k.info.status == "FINISHED"]
        else:
            found = c.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.TAG_TRIAL}` != ''")
            runs += [r.info.run_id for r in found if r.info.status == "FINISHED"]
    if runs:
        from pipeline.infra import tracking

        c = tracking.client(tracking_uri)
        for run_id in dict.fromkeys(runs):
            try:
                c.get_run(run_id)
            except Exception:  # noqa: BLE001 - MLflow raises its own exception types
                raise UserError(
                    f"MLflow run {run_id} not found at {tracking_uri}; check --run and --tracking-uri"
                ) from None
            dest = download_dir / run_id
            dest.mkdir(parents=True, exist_ok=True)
            try:
                local = Path(c.download_artifacts(run_id, "checkpoint", str(dest)))
            except Exception:  # noqa: BLE001
                raise UserError(
                    f"MLflow run {run_id} has no 'checkpoint' artifact; it did not finish training"
                ) from None
            found_ckpts = _checkpoints_in(local) if local.is_dir() else [local]
            if not found_ckpts:
                raise UserError(f"MLflow run {run_id} has no checkpoint file under its 'checkpoint' artifact")
            targets.append(Target(found_ckpts[-1], run_id=run_id))
    if not targets:
        raise UserError("nothing to evaluate: give --checkpoint PATH, --run ID, --sweep NAME or --all-runs")
    for t in targets:
        t.key = t.run_id or f"ckpt-{file_digest(t.checkpoint)[:12]}"
    return targets


def read_image_list(path: Path) -> list[str]:
    """Names in an image-list file: one per line (file name, or numeric COCO image id); # comments."""
    if not path.is_file():
        raise UserError(f"--image-list {path} does not exist")
    return [ln.split("#")[0].strip() for ln in path.read_text().splitlines() if ln.split("#")[0].strip()]


def coco_items(coco_root: Path, annotations: Path, image_list: Path | None) -> tuple[list[ImageItem], Any]:
    """COCO images to evaluate (annotation order, or the list's), checked to exist on disk."""
    from pipeline.evaluation.coco import load_coco

    gt = load_coco(annotations)
    images = gt.dataset["images"]
    by_name = {im["file_name"]: im for im in images}
    by_id = {int(im["id"]): im for im in images}
    if image_list is not None:
        chosen = []
        for name in read_image_list(image_list):
            im = by_id.get(int(name)) if name.isdigit() else by_name.get(Path(name).name)
            if im is None:
                raise UserError(f"image {name!r} of --image-list {image_list} is not in the annotations {annotations}")
            chosen.append(im)
    else:
        chosen = list(images)
    items = []
    for im in chosen:
        p = coco_root / "val2014" / im["file_name"]
        if not p.is_file():
            p = coco_root / im["file_name"]
        if not p.is_file():
            raise UserError(
                f"image {im['file_name']} (id {im['id']}) is listed but missing on disk under {coco_root}; "
                "fix --coco-root or the image list"
            )
        items.append(ImageItem(str(p), int(im["id"])))
    if not items:
        raise UserError(f"no images to evaluate in {annotations}")
    return items, gt


def folder_items(root: Path) -> list[ImageItem]:
    """Every image file directly under ``root`` (Kodak or any image folder), sorted by name."""
    if not root.is_dir():
        raise UserError(f"--kodak-root {root} is not a folder")
    items = [ImageItem(str(p)) for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return items
