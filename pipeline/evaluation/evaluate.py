"""The ``evaluate`` job: rate–accuracy on COCO, rate–distortion on Kodak, anchors, BD-rate, plots.

Work is spread over Ray tasks, one per (codec × chunk of images); a codec is a checkpoint
or a standard-codec anchor. Every rate comes from real bytes: ``dvcm.bitstream.compress``
for the learned codecs, the codestream of the anchor encoders otherwise.

COCO path (per image): resize to 512×512 (bilinear), encode, decode the **base layer only**
to ŝ, measure its feature PSNR against s = V_front(x) (see ``feature_psnr``), run V_back, decode detections (``--conf-thres``, default 0.001; ``--nms-iou``, default
0.5), map boxes back to the original size; bpp = base-layer bytes × 8 / (512·512). mAP@0.5
and the 12 COCO stats from pycocotools, against the annotations (``--reference-detections
gt``) or against the uncompressed YOLOv3's detections with score ≥ ``--reference-score``
(``uncompressed``). Kodak path (per image, full size): bpp of the base layer, the
enhancement layer and both; PSNR (RGB, 0–255) and MS-SSIM (pytorch-msssim) of x̂.

Feature PSNR of the base layer (``s_psnr``, dB): ``10·log10(peak² / MSE(ŝ, s))`` with ``s =
V_front(x)`` of the same 512×512 input and ``peak = max|s|`` of that image; averaged in dB over
images. Unlike mAP it needs no trained detector, so it is the base-layer quality that still means
something with random-weight YOLOv3. For anchors ŝ is ``V_front(x̂)`` of the decoded image; for
the uncompressed anchor it is undefined (null).

Feature SNR of the base layer (``s_snr``, dB): ``-10·log10(mean_c MSE_c(ŝ, s) / Var_c(s))``, the
MSE of each of the 256 channels normalised by that channel's variance over the image: the base-layer
distortion that training minimises (D_s, normalised per channel), so 0 dB means "no better than each
channel's mean". The peak-normalised PSNR above is dominated by the few channels of largest range.

Output folder (``--out``), one sub-folder per codec key (``<run id>`` or ``ckpt-<sha12>`` for
a checkpoint, ``anchors`` for the anchors)::

    <key>/results.json   the schema below
    <key>/results.csv    one row per (dataset, codec point, image): the ``per_image`` rows
    bd_table.md / .csv   BD-rate and BD-quality of every curve against the references
    plots/*.png          rate–accuracy, PSNR–bpp, MS-SSIM–bpp, redundancy, top-8 channels

``results.json`` (``schema: "dvcm-eval/1"``)::

    {"schema", "key", "kind": "model"|"anchors", "label", "run_id", "checkpoint", "checkpoint_sha256",
     "model", "config": {N, M1, M2, H}, "lmbda", "yolo": {weights, weights_sha256, split_layer,
     random_weights}, "detector": "YOLOv3" | "random-weight YOLOv3",
     "datasets": {"coco"|"kodak": {"settings": {...}, "settings_digest", "images", "skipped",
                  "skipped_images": [...], "points": [point, ...]}},
     "redundancy": {"rdn_y1_given_y2", "rdn_y2_given_y1", "K", "fibers", "images"} | null,
     "channel_rates": {"image", "y1": [{"channel", "bits", "map"}...], "y2": [...]} | null,
     "per_image": [row, ...]}

    (undefined numbers, e.g. MS-SSIM of an image under 161 pixels or the bpp of the
    uncompressed anchor, are null)

    point (COCO): {"codec", "label", "param", "bpp", "bpp_base", "bytes_header", "container_bpp",
                   "map50", "coco_stats": {AP, AP50, ..., ARl}, "s_psnr", "s_snr", "images"}
    point (Kodak): {"codec", "label", "param", "bpp", "bpp_base", "bpp_enh", "container_bpp",
                    "psnr", "ms_ssim", "images"}
    row: {"dataset", "codec", "param", "image", "width", "height", "bytes_base", "bytes_enh",
          "bytes_header", "bytes_container", "bpp_base", "bpp_enh", "bpp", "psnr", "ms_ssim", "s_psnr", "s_snr",
          "t_encode", "t_decode", "t_back", "t_score"}

For anchors ``bpp``/``bpp_base`` count codestream bytes only and ``container_bpp`` the
container; for the learned codecs ``bytes_header`` is the fixed dvcm file header, counted
apart from the layers. A rerun skips (codec, dataset) pairs whose stored ``settings_digest``
matches, unless ``--overwrite``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from pipeline.infra import storage
from pipeline.infra.atomic import atomic_write_json, atomic_write_text
from pipeline.evaluation.coco import DEFAULT_REFERENCE_SCORE
from pipeline.infra.errors import UserError
from pipeline.infra.tracking import file_digest

SCHEMA = "dvcm-eval/1"
COCO_SIZE = 512
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
ROW_FIELDS = ("dataset", "codec", "param", "image", "width", "height", "bytes_base", "bytes_enh", "bytes_header",
              "bytes_container", "bpp_base", "bpp_enh", "bpp", "psnr", "ms_ssim", "s_psnr", "s_snr",
              "t_encode", "t_decode", "t_back", "t_score")


# ---------------------------------------------------------------------------------------------
# What to evaluate
# ---------------------------------------------------------------------------------------------


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
    checkpoints: Sequence[str | Path], run_ids: Sequence[str], sweep: str | None, all_runs: bool,
    tracking_uri: str | None, download_dir: Path,
) -> list[Target]:
    """Checkpoint files to evaluate, from paths, storage URLs and/or MLflow runs (their ``checkpoint`` artifacts).

    A URL (``s3://...``) is downloaded to ``download_dir`` first, so that ``torch.load`` reads a local file.
    """
    targets = []
    for p in checkpoints:
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
                kids = c.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
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
                raise UserError(f"MLflow run {run_id} not found at {tracking_uri}; check --run and --tracking-uri") from None
            dest = download_dir / run_id
            dest.mkdir(parents=True, exist_ok=True)
            try:
                local = Path(c.download_artifacts(run_id, "checkpoint", str(dest)))
            except Exception:  # noqa: BLE001
                raise UserError(f"MLflow run {run_id} has no 'checkpoint' artifact; it did not finish training") from None
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
            raise UserError(f"image {im['file_name']} (id {im['id']}) is listed but missing on disk under {coco_root}; "
                            "fix --coco-root or the image list")
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


# ---------------------------------------------------------------------------------------------
# Per-chunk work (runs inside Ray tasks; imports torch lazily)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What a Ray task needs to know besides its images."""

    conf_thres: float = 0.001
    nms_iou: float = 0.5
    yolo_weights: str | None = None
    yolo_seed: int = 0
    threads: int = 1


_CACHE: dict[tuple, Any] = {}


def _yolo(s: Settings):  # -> YOLOv3
    key = ("yolo", s.yolo_weights, s.yolo_seed)
    if key not in _CACHE:
        import warnings

        from dvcm.yolo import build_yolov3

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the random-weight warning: labelled in every output
            _CACHE[key] = build_yolov3(s.yolo_weights, seed=s.yolo_seed)
    return _CACHE[key]


def _codec(checkpoint: str, s: Settings):  # -> ScalableCodec
    key = ("codec", checkpoint, s.yolo_weights, s.yolo_seed)
    if key not in _CACHE:
        from dvcm.checkpoint import load_checkpoint

        model, _ = load_checkpoint(checkpoint, yolo_provenance=_yolo(s).provenance)
        _CACHE[key] = model
    return _CACHE[key]


def _load_rgb(path: str):  # -> PIL.Image | None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def _readable(items: list[ImageItem], skipped: list[str]):  # -> Iterator[tuple[ImageItem, PIL.Image]]
    """The images of ``items`` that decode; the names of the others are appended to ``skipped``."""
    for item in items:
        img = _load_rgb(item.path)
        if img is None:
            skipped.append(Path(item.path).name)
            continue
        yield item, img


def _to_tensor(img):  # PIL → [1,3,H,W] float in [0,1]
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0).contiguous()


def _quality(x, x_hat) -> tuple[float, float]:
    """PSNR (RGB, 0–255 scale) and MS-SSIM (NaN when the image is too small for 5 scales)."""
    import torch
    from pytorch_msssim import ms_ssim

    mse = torch.mean((x * 255.0 - x_hat * 255.0) ** 2).item()
    psnr = 10 * math.log10(255.0**2 / mse) if mse > 0 else float("inf")
    msssim = float(ms_ssim(x, x_hat, data_range=1.0).item()) if min(x.shape[-2:]) > 160 else float("nan")
    return psnr, msssim


def feature_psnr(s, s_hat) -> float:
    """PSNR (dB) of ŝ against s: ``10·log10(max|s|² / MSE)`` over every element (inf when equal)."""
    peak = float(s.abs().max())
    mse = float(((s_hat.double() - s.double()) ** 2).mean())
    if mse == 0.0:
        return float("inf")
    return 10 * math.log10(peak**2 / mse) if peak > 0 else float("-inf")


def feature_snr(s, s_hat) -> float:
    """SNR (dB) of ŝ against s, each channel's MSE normalised by its variance over the image (see module doc)."""
    s, s_hat = s.double(), s_hat.double()
    mse_c = ((s_hat - s) ** 2).mean(dim=(0, 2, 3))
    var_c = s.var(dim=(0, 2, 3), unbiased=False)
    varying = var_c > 1e-12 * float(var_c.mean())  # a channel constant over this image has no SNR: left out
    if not bool(varying.any()):
        return float("nan")
    nmse = float((mse_c[varying] / var_c[varying]).mean())
    return float("inf") if nmse == 0.0 else -10 * math.log10(nmse)


def _detect(heads, hw_in, orig_hw, image_id: int, s: Settings) -> list[dict]:
    from dvcm.yolo import decode_detections, detections_to_coco

    (det,) = decode_detections(heads, hw_in, conf_thres=s.conf_thres, nms_iou=s.nms_iou)
    return detections_to_coco(det, image_id, scale_xy=(orig_hw[1] / hw_in[1], orig_hw[0] / hw_in[0]))


def _row(dataset: str, codec: str, param: Any, item: ImageItem, w: int, h: int, pixels: int, **kw: Any) -> dict:
    row = {f: None for f in ROW_FIELDS}
    row.update(dataset=dataset, codec=codec, param=param, image=Path(item.path).name, width=w, height=h, **kw)
    for part in ("base", "enh"):
        if row.get(f"bytes_{part}") is not None:
            row[f"bpp_{part}"] = row[f"bytes_{part}"] * 8 / pixels
    parts = [row[f"bpp_{p}"] for p in ("base", "enh") if row[f"bpp_{p}"] is not None]
    row["bpp"] = sum(parts) if parts else None  # None: nothing was coded (the uncompressed anchor)
    return row


def run_codec_chunk(checkpoint: str, dataset: str, items: list[ImageItem], s: Settings) -> dict:
    """Encode/decode one chunk with a learned codec; per-image rows, detections, skipped images."""
    import torch

    from dvcm.bitstream import compress, decode, decode_base, layer_sizes

    torch.set_num_threads(max(1, s.threads))
    model, yolo = _codec(checkpoint, s), _yolo(s)
    rows, dets, skipped = [], [], []
    with torch.no_grad():
        for item, img in _readable(items, skipped):
            w, h = img.size
            if dataset == "coco":
                x = _to_tensor(img.resize((COCO_SIZE, COCO_SIZE), _bilinear()))
                t0 = time.perf_counter()
                data = compress(model, x)
                t1 = time.perf_counter()
                s_hat = decode_base(model, data)
                t2 = time.perf_counter()
                heads = yolo.back(s_hat)
                t3 = time.perf_counter()
                dets += _detect(heads, (COCO_SIZE, COCO_SIZE), (h, w), int(item.image_id), s)
                s_ref = yolo.front(x)
                s_psnr, s_snr = feature_psnr(s_ref, s_hat), feature_snr(s_ref, s_hat)
                t4 = time.perf_counter()
                sizes = layer_sizes(data)
                rows.append(_row("coco", "model", None, item, w, h, COCO_SIZE * COCO_SIZE, bytes_base=sizes["base"],
                                 bytes_header=sizes["header"], bytes_container=0, s_psnr=s_psnr, s_snr=s_snr,
                                 t_encode=t1 - t0, t_decode=t2 - t1, t_back=t3 - t2, t_score=t4 - t3))
            else:
                x = _to_tensor(img)
                t0 = time.perf_counter()
                data = compress(model, x)
                t1 = time.perf_counter()
                x_hat = decode(model, data)
                t2 = time.perf_counter()
                psnr, msssim = _quality(x, x_hat)
                t3 = time.perf_counter()
                sizes = layer_sizes(data)
                rows.append(_row("kodak", "model", None, item, w, h, w * h, bytes_base=sizes["base"],
                                 bytes_enh=sizes["enhancement"], bytes_header=sizes["header"], bytes_container=0,
                                 psnr=psnr, ms_ssim=msssim, t_encode=t1 - t0, t_decode=t2 - t1, t_back=0.0,
                                 t_score=t3 - t2))
    return {"rows": rows, "detections": dets, "skipped": skipped}


def _bilinear():
    from PIL import Image

    return Image.Resampling.BILINEAR


def run_anchor_chunk(codec: str, dataset: str, items: list[ImageItem], s: Settings,
                     params: Sequence[int] | None = None) -> dict:
    """One anchor at ``params`` (default: its own list), or ``uncompressed``, over a chunk of images."""
    import torch

    from pipeline.evaluation.anchors import ANCHORS

    torch.set_num_threads(max(1, s.threads))
    yolo = _yolo(s)
    params: Sequence[Any] = [None] if codec == "uncompressed" else (params or ANCHORS[codec].params)
    rows, dets, skipped = [], {str(p): [] for p in params}, []
    with torch.no_grad():
        for item, img in _readable(items, skipped):
            w, h = img.size
            src = img.resize((COCO_SIZE, COCO_SIZE), _bilinear()) if dataset == "coco" else img
            pixels = src.size[0] * src.size[1]
            s_ref = yolo.front(_to_tensor(src)) if dataset == "coco" else None
            for p in params:
                t0 = time.perf_counter()
                if p is None:
                    dec, cs, cont = src, None, 0
                else:
                    enc = ANCHORS[codec].encode(src, p)
                    dec, cs, cont = enc.decoded, enc.codestream_bytes, enc.container_bytes
                t1 = time.perf_counter()
                x_hat = _to_tensor(dec)
                if dataset == "coco":
                    s_hat = yolo.front(x_hat)
                    heads = yolo.back(s_hat)
                    t2 = time.perf_counter()
                    dets[str(p)] += _detect(heads, (COCO_SIZE, COCO_SIZE), (h, w), int(item.image_id), s)
                    t3 = time.perf_counter()
                    s_psnr = None if p is None else feature_psnr(s_ref, s_hat)  # uncompressed: ŝ = s
                    s_snr = None if p is None else feature_snr(s_ref, s_hat)
                    rows.append(_row("coco", codec, p, item, w, h, pixels, bytes_base=cs, bytes_container=cont,
                                     s_psnr=s_psnr, s_snr=s_snr,
                                     t_encode=t1 - t0, t_decode=0.0, t_back=t2 - t1, t_score=t3 - t2))
                else:
                    psnr, msssim = _quality(_to_tensor(src), x_hat)
                    t2 = time.perf_counter()
                    rows.append(_row("kodak", codec, p, item, w, h, pixels, bytes_base=cs, bytes_container=cont,
                                     psnr=psnr, ms_ssim=msssim, t_encode=t1 - t0, t_decode=0.0, t_back=0.0,
                                     t_score=t2 - t1))
    return {"rows": rows, "detections": dets, "skipped": skipped}


def run_model_extras(checkpoint: str, items: list[ImageItem], s: Settings, K: int, fibers: int) -> dict:
    """Redundancy Rdn(ŷ1|ŷ2), Rdn(ŷ2|ŷ1) over ``items`` and the top-8 channels by rate of the first image."""
    import torch

    from dvcm.redundancy import model_redundancy

    torch.set_num_threads(max(1, s.threads))
    model = _codec(checkpoint, s)
    images = [_to_tensor(im) for im in (_load_rgb(i.path) for i in items) if im is not None]
    if not images:
        return {"redundancy": None, "channel_rates": None}
    red = model_redundancy(model, images, K=K, num_fibers=fibers)
    red["images"] = len(images)
    with torch.no_grad():
        out = model(images[0])
    rates: dict[str, Any] = {"image": Path(items[0].path).name}
    for name in ("y1", "y2"):
        bits = -torch.log2(out["likelihoods"][name][0]).sum(dim=(1, 2))
        top = torch.argsort(bits, descending=True)[:8]
        rates[name] = [{"channel": int(c), "bits": float(bits[c]),
                        "map": out[f"{name}_hat"][0, c].tolist()} for c in top]
    return {"redundancy": red, "channel_rates": rates}


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


def _mean(values: Sequence[float | None]) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def summarize(dataset: str, codec: str, label: str, rows: list[dict], dets: list[dict] | None,
              coco_ref: Any, image_ids: list[int], param: Any = None) -> dict:
    """One operating point from per-image rows (and, for COCO, its detections)."""
    mine = [r for r in rows if r["dataset"] == dataset and r["codec"] == codec and r["param"] == param]
    point: dict[str, Any] = {"codec": codec, "label": label, "param": param, "images": len(mine),
                             "bpp": _mean([r["bpp"] for r in mine]), "bpp_base": _mean([r["bpp_base"] for r in mine])}
    pixels = [(COCO_SIZE * COCO_SIZE if dataset == "coco" else r["width"] * r["height"]) for r in mine]
    point["container_bpp"] = _mean([(r["bytes_container"] or 0) * 8 / px for r, px in zip(mine, pixels)])
    if dataset == "coco":
        from pipeline.evaluation.coco import evaluate as coco_evaluate

        point["bytes_header"] = _mean([r["bytes_header"] for r in mine])
        stats = coco_evaluate(coco_ref, dets or [], image_ids)
        point["coco_stats"] = stats
        point["map50"] = stats["AP50"]
        point["s_psnr"] = _mean([r.get("s_psnr") for r in mine])
        point["s_snr"] = _mean([r.get("s_snr") for r in mine])
    else:
        point.update(bpp_enh=_mean([r["bpp_enh"] for r in mine]), psnr=_mean([r["psnr"] for r in mine]),
                     ms_ssim=_mean([r["ms_ssim"] for r in mine]))
    return point


def write_results(folder: Path, results: dict) -> None:
    """``results.json`` and ``results.csv`` (per-image rows), atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(ROW_FIELDS), lineterminator="\n")
    w.writeheader()
    for r in results.get("per_image", []):
        w.writerow({k: r.get(k) for k in ROW_FIELDS})
    atomic_write_json(folder / "results.json", _json_safe(results))
    atomic_write_text(folder / "results.csv", buf.getvalue())


def _json_safe(obj: Any) -> Any:
    """NaN/inf become null so that results.json is standard JSON (readable outside Python)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def load_results(folder: Path) -> dict | None:
    p = folder / "results.json"
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except ValueError:
        return None
    return data if data.get("schema") == SCHEMA else None


def model_label(meta: dict) -> str:
    """``proposed (64,192,2) λ=0.0067``: model, configuration (M1,M2,H) and λ when known."""
    cfg = meta.get("config", {})
    lam = meta.get("lmbda")
    text = f"{meta.get('model', '?')} ({cfg.get('M1')},{cfg.get('M2')},{cfg.get('H')})"
    return text + (f" λ={lam:g}" if isinstance(lam, (int, float)) else "")


def detector_name(provenance: dict) -> str:
    return "random-weight YOLOv3" if provenance.get("random_weights") else "YOLOv3"


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


@dataclass
class Job:
    """Everything ``evaluate`` was asked to do."""

    targets: list[Target]
    out: Path
    settings: Settings
    coco: tuple[list[ImageItem], Any, Path] | None = None  # items, COCO gt, annotations path
    kodak: list[ImageItem] | None = None
    reference: str = "gt"
    reference_score: float = DEFAULT_REFERENCE_SCORE
    anchors: list[str] = field(default_factory=lambda: ["jpeg", "webp", "avif", "hevc", "vvc"])
    anchor_params: dict[str, tuple[int, ...]] = field(default_factory=dict)
    bd_reference: str = "choi2022"
    overwrite: bool = False
    chunk_size: int = 16
    redundancy_k: int = 16
    redundancy_fibers: int = 2048
    redundancy_images: int = 4
    tracking_uri: str | None = None


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _dataset_settings(job: Job, dataset: str) -> dict:
    items = job.coco[0] if dataset == "coco" else job.kodak
    base = {"images": [Path(i.path).name for i in items or []], "schema": SCHEMA,
            "yolo_weights": job.settings.yolo_weights, "yolo_seed": job.settings.yolo_seed}
    if dataset == "coco":
        base.update(conf_thres=job.settings.conf_thres, nms_iou=job.settings.nms_iou, reference=job.reference,
                    reference_score=job.reference_score if job.reference == "uncompressed" else None,
                    annotations_sha256=file_digest(job.coco[2]), resize=f"{COCO_SIZE}x{COCO_SIZE} bilinear",
                    s_psnr="10log10(max|s|^2/MSE) per image", s_snr="-10log10(mean_c MSE_c/Var_c(s)) per image")
    return base


def _chunks(items: list[ImageItem], size: int) -> list[list[ImageItem]]:
    return [items[i : i + size] for i in range(0, len(items), max(1, size))]


def _remote(fn):  # -> ray.remote function
    import ray

    return ray.remote(fn)


def run_job(job: Job, progress: bool = True) -> dict[str, Any]:
    """Run the evaluation; returns ``{"results": {key: results.json dict}, "notices": [...], "out": Path}``."""
    import ray

    from dvcm.checkpoint import read_checkpoint
    from pipeline.evaluation.anchors import available_anchors
    from pipeline.evaluation.coco import results_as_ground_truth

    job.out.mkdir(parents=True, exist_ok=True)
    datasets = [d for d, present in (("coco", job.coco), ("kodak", job.kodak)) if present]
    if not datasets:
        raise UserError("no dataset to evaluate on: give --coco-root and/or --kodak-root")
    yolo = _yolo(job.settings)
    detector = detector_name(yolo.provenance)
    anchor_codecs, notices = available_anchors(job.anchors)
    anchor_codecs = [dataclasses.replace(c, params=job.anchor_params.get(c.name, c.params)) for c in anchor_codecs]

    # -- plan: which (key, dataset) pairs are still to do -------------------------------------
    results: dict[str, dict] = {}
    todo: list[tuple[str, str]] = []
    for t in job.targets:
        content = read_checkpoint(t.checkpoint)  # unknown model / bad file: one-line CheckpointError
        extra = content.get("extra") or {}
        t.meta = {"model": content["model"], "config": content["config"], "yolo": content.get("yolo") or {},
                  "lmbda": extra.get("lmbda", extra.get("lambda")), "epoch": extra.get("epoch")}
        prev = None if job.overwrite else load_results(job.out / t.key)
        res = prev or {"schema": SCHEMA, "key": t.key, "kind": "model", "datasets": {}, "per_image": [],
                       "redundancy": None, "channel_rates": None}
        res.update(label=model_label(t.meta), run_id=t.run_id, checkpoint=t.origin or str(t.checkpoint),
                   checkpoint_sha256=file_digest(t.checkpoint), model=t.meta["model"], config=t.meta["config"],
                   lmbda=t.meta["lmbda"], yolo=dict(yolo.provenance), detector=detector)
        results[t.key] = res
    anchors_res = (None if job.overwrite else load_results(job.out / "anchors")) or {
        "schema": SCHEMA, "key": "anchors", "kind": "anchors", "label": "anchors", "datasets": {}, "per_image": []}
    anchors_res.update(yolo=dict(yolo.provenance), detector=detector, notices=notices)
    results["anchors"] = anchors_res
    for key, res in results.items():
        for d in datasets:
            settings = _dataset_settings(job, d)
            if key == "anchors":
                settings["anchors"] = [(c.name, list(c.params)) for c in anchor_codecs]
            done = res["datasets"].get(d, {}).get("settings_digest") == _digest(settings)
            if not done:
                todo.append((key, d))
    extras_todo = [t for t in job.targets if results[t.key].get("redundancy") is None]

    # -- submit Ray tasks ------------------------------------------------------------------------
    s = job.settings
    codec_task = _remote(run_codec_chunk).options(num_cpus=s.threads)
    anchor_task = _remote(run_anchor_chunk).options(num_cpus=s.threads)
    extras_task = _remote(run_model_extras).options(num_cpus=s.threads)
    futures: dict[Any, tuple[str, str, str]] = {}
    by_key = {t.key: t for t in job.targets}
    for key, d in todo:
        items = job.coco[0] if d == "coco" else job.kodak
        for chunk in _chunks(items, job.chunk_size):
            if key == "anchors":
                for codec in (["uncompressed"] if d == "coco" else []) + [c.name for c in anchor_codecs]:
                    params = next((list(c.params) for c in anchor_codecs if c.name == codec), None)
                    futures[anchor_task.remote(codec, d, chunk, s, params)] = (key, d, codec)
            else:
                futures[codec_task.remote(str(by_key[key].checkpoint), d, chunk, s)] = (key, d, "model")
    extra_items = (job.kodak or job.coco[0])[: max(1, job.redundancy_images)]
    for t in extras_todo:
        futures[extras_task.remote(str(t.checkpoint), extra_items, s, job.redundancy_k, job.redundancy_fibers)] = (
            t.key, "extras", "model")

    gathered: dict[tuple[str, str], dict] = {}
    pending = list(futures)
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("evaluate", total=len(pending))
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                key, d, codec = futures[ref]
                out = _get(ref)
                if d == "extras":
                    results[key].update(out)
                else:
                    g = gathered.setdefault((key, d), {"rows": [], "detections": {}, "skipped": set()})
                    g["rows"] += out["rows"]
                    g["skipped"].update(out["skipped"])
                    dets = out["detections"]
                    if codec == "model":
                        g["detections"].setdefault("model|None", []).extend(dets)
                    else:
                        for p, lst in dets.items():
                            g["detections"].setdefault(f"{codec}|{p}", []).extend(lst)
                bar.advance(task)

    # -- COCO reference ----------------------------------------------------------------------------
    coco_ref = None
    if job.coco:
        items, gt, _ = job.coco
        image_ids = [int(i.image_id) for i in items]
        if job.reference == "gt":
            coco_ref = gt
        else:
            g = gathered.get(("anchors", "coco"))
            unc_path = job.out / "anchors" / "uncompressed_detections.json"
            if g is not None:
                unc = g["detections"].get("uncompressed|None", [])
                atomic_write_json(unc_path, unc)
            elif unc_path.is_file():
                unc = json.loads(unc_path.read_text())
            else:
                raise UserError(f"{unc_path} is missing; rerun with --overwrite")
            coco_ref = results_as_ground_truth(unc, [gt.imgs[i] for i in image_ids], gt.dataset["categories"],
                                               score_thres=job.reference_score)

    # -- summaries -------------------------------------------------------------------------------
    for (key, d), g in gathered.items():
        res = results[key]
        res["per_image"] = [r for r in res["per_image"] if r["dataset"] != d] + g["rows"]
        points = []
        ids = [int(i.image_id) for i in job.coco[0]] if d == "coco" else []
        done_ids = sorted({int(i.image_id) for i in job.coco[0] if Path(i.path).name not in g["skipped"]}) if d == "coco" else []
        if key == "anchors":
            codecs = (["uncompressed"] if d == "coco" else []) + [c.name for c in anchor_codecs]
            for codec in codecs:
                params = [None] if codec == "uncompressed" else next(c.params for c in anchor_codecs if c.name == codec)
                for p in params:
                    label = "uncompressed" if codec == "uncompressed" else next(
                        c.point_label(p) for c in anchor_codecs if c.name == codec)
                    points.append(summarize(d, codec, label, g["rows"], g["detections"].get(f"{codec}|{p}"),
                                            coco_ref, done_ids or ids, param=p))
        else:
            points.append(summarize(d, "model", res["label"], g["rows"], g["detections"].get("model|None"),
                                    coco_ref, done_ids or ids))
        settings = _dataset_settings(job, d)
        if key == "anchors":
            settings["anchors"] = [(c.name, list(c.params)) for c in anchor_codecs]
        res["datasets"][d] = {"settings": settings, "settings_digest": _digest(settings),
                              "images": len(job.coco[0] if d == "coco" else job.kodak) - len(g["skipped"]),
                              "skipped": len(g["skipped"]), "skipped_images": sorted(g["skipped"]), "points": points}
    for key, res in results.items():
        write_results(job.out / key, res)

    # -- BD table, plots, tracking -----------------------------------------------------------------
    from pipeline.evaluation import plots
    from pipeline.evaluation.bdrate import bd_table, write_table

    bd_rows: list[dict] = []
    for metric in ("coco_map50", "coco_s_psnr", "coco_s_snr", "kodak_psnr", "kodak_ms_ssim"):
        curves = plots.curves(list(results.values()), metric)
        refs = [c.label for c in curves if c.meta.get("kind") == "anchor" or c.label.startswith(job.bd_reference)]
        bd_rows += bd_table(curves, refs, metric)
    write_table(bd_rows, job.out)
    plot_paths = plots.plot_all(list(results.values()), job.out / "plots", histories=_histories(job))
    summary = {"results": results, "notices": notices, "out": job.out, "bd_rows": bd_rows, "plots": plot_paths,
               "computed": todo, "extras_computed": [t.key for t in extras_todo]}
    if job.tracking_uri:
        log_to_mlflow(job, summary)
    return summary


def _get(ref: Any) -> Any:
    """``ray.get`` that turns a ``DvcmError`` raised inside a task back into itself (one CLI line)."""
    import ray

    from dvcm.errors import DvcmError

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, DvcmError):
            raise type(cause)(str(cause)) from None
        raise


def _histories(job: Job) -> dict[str, list[tuple[int, float, float]]]:
    """Per-epoch redundancy logged by training (``val/rdn_*``) for targets that come from runs."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    if not job.tracking_uri:
        return out
    from pipeline.infra import tracking

    c = tracking.client(job.tracking_uri)
    for t in job.targets:
        if not t.run_id:
            continue
        h12 = {m.step: m.value for m in c.get_metric_history(t.run_id, "val/rdn_y1_given_y2")}
        h21 = {m.step: m.value for m in c.get_metric_history(t.run_id, "val/rdn_y2_given_y1")}
        if h12 or h21:
            out[model_label(t.meta)] = [(e, h12.get(e, math.nan), h21.get(e, math.nan)) for e in sorted(set(h12) | set(h21))]
    return out


def _point_metrics(res: dict) -> dict[str, float]:
    m: dict[str, float] = {}
    for d, entry in res.get("datasets", {}).items():
        for p in entry.get("points", []):
            for k in ("bpp", "bpp_base", "bpp_enh", "psnr", "ms_ssim", "map50", "s_psnr", "s_snr"):
                v = p.get(k)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    m[f"eval/{d}_{k}"] = float(v)
        m[f"eval/{d}_skipped"] = float(entry.get("skipped", 0))
    red = res.get("redundancy") or {}
    for k in ("rdn_y1_given_y2", "rdn_y2_given_y1"):
        if isinstance(red.get(k), (int, float)):
            m[f"eval/{k}"] = float(red[k])
    return m


def log_to_mlflow(job: Job, summary: dict) -> str:
    """Metrics and results files on each trial run; plots, BD tables and all results on an evaluation run."""
    from pipeline.infra import tracking

    uri = job.tracking_uri
    c = tracking.client(uri)
    for t in job.targets:
        res = summary["results"][t.key]
        if t.run_id:
            tracking.log_metrics(uri, t.run_id, _point_metrics(res), step=0)
            tracking.log_artifact(uri, t.run_id, job.out / t.key / "results.json", "evaluation")
            tracking.log_artifact(uri, t.run_id, job.out / t.key / "results.csv", "evaluation")
    run = c.create_run(tracking.experiment_id(uri), run_name=f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}",
                       tags={"dvcm.evaluation": "1", "dvcm.detector": summary["results"]["anchors"]["detector"]})
    rid = run.info.run_id
    tracking.log_params(uri, rid, {"targets": ",".join(t.key for t in job.targets)[:500],
                                   "reference_detections": job.reference, "conf_thres": job.settings.conf_thres,
                                   "nms_iou": job.settings.nms_iou, "bd_reference": job.bd_reference})
    for t in job.targets:
        m = {f"{k}.{t.key[:12]}": v for k, v in _point_metrics(summary["results"][t.key]).items()}
        tracking.log_metrics(uri, rid, m, step=0)
    for p in summary["plots"]:
        tracking.log_artifact(uri, rid, p, "plots")
    for name in ("bd_table.md", "bd_table.csv"):
        tracking.log_artifact(uri, rid, job.out / name, "bd")
    for key in summary["results"]:
        tracking.log_artifact(uri, rid, job.out / key / "results.json", f"results/{key}")
    tracking.end_run(uri, rid)
    summary["evaluation_run_id"] = rid
    return rid


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def evaluate_command(
    checkpoint: Annotated[Optional[list[str]], typer.Option("--checkpoint", help="A checkpoint file or fsspec URL such as s3://bucket/runs/.../final.pt (repeatable).")] = None,
    run: Annotated[Optional[list[str]], typer.Option("--run", help="An MLflow trial run id (repeatable).")] = None,
    sweep: Annotated[Optional[str], typer.Option(help="Every finished trial of this sweep.")] = None,
    all_runs: Annotated[bool, typer.Option("--all-runs", help="Every finished trial run in the store.")] = False,
    tracking_uri: Annotated[Optional[str], typer.Option(help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")] = None,
    coco_root: Annotated[Optional[Path], typer.Option(help="COCO 2014 root (val2014/ and annotations/).")] = None,
    coco_annotations: Annotated[Optional[Path], typer.Option(help="Default: <coco-root>/annotations/instances_val2014.json.")] = None,
    image_list: Annotated[Optional[Path], typer.Option(help="File names or image ids, one per line (e.g. the 5k subset).")] = None,
    kodak_root: Annotated[Optional[Path], typer.Option(help="Kodak (or any image folder) for rate-distortion.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for results.json/csv, BD tables and plots.")] = Path("eval"),
    conf_thres: Annotated[float, typer.Option(help="Detection confidence threshold.")] = 0.001,
    nms_iou: Annotated[float, typer.Option(help="Class-wise NMS IoU.")] = 0.5,
    reference_detections: Annotated[str, typer.Option(help="gt: the annotations; uncompressed: the uncompressed YOLOv3's detections.")] = "gt",
    reference_score: Annotated[float, typer.Option(help="Score from which uncompressed detections count as ground truth (darknet's display threshold).")] = DEFAULT_REFERENCE_SCORE,
    anchors: Annotated[str, typer.Option(help="Comma-separated anchors (jpeg,webp,avif,hevc,vvc) or 'none'.")] = "jpeg,webp,avif,hevc,vvc",
    anchor_params: Annotated[Optional[str], typer.Option(help="Override fixed parameters, e.g. 'jpeg=10,40;hevc=37,32'.")] = None,
    bd_reference: Annotated[str, typer.Option(help="Model name whose curves are BD references (anchors always are).")] = "choi2022",
    yolo_weights: Annotated[Optional[Path], typer.Option(help="Darknet yolov3.weights; seeded random without.")] = None,
    yolo_seed: Annotated[int, typer.Option(help="Seed of the random-weight YOLOv3 when no weights are given.")] = 0,
    redundancy_k: Annotated[int, typer.Option(help="k-means clusters K for Rdn.")] = 16,
    redundancy_fibers: Annotated[int, typer.Option(help="Fibers sampled for Rdn.")] = 2048,
    redundancy_images: Annotated[int, typer.Option(help="Images used for Rdn.")] = 4,
    chunk_size: Annotated[int, typer.Option(help="Images per Ray task.")] = 16,
    overwrite: Annotated[bool, typer.Option(help="Redo finished (checkpoint, dataset) pairs.")] = False,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: $RAY_ADDRESS or a local Ray).")] = None,
) -> None:
    """Evaluate checkpoints on COCO (rate–accuracy) and Kodak (rate–distortion) with anchors, BD-rate and plots."""
    from rich.console import Console

    from pipeline.infra import tracking
    from pipeline.infra.ray_runtime import init_ray

    if reference_detections not in ("gt", "uncompressed"):
        raise UserError(f"--reference-detections must be gt or uncompressed, got {reference_detections!r}")
    if yolo_weights is not None and not yolo_weights.is_file():
        raise UserError(f"--yolo-weights {yolo_weights} does not exist; give a Darknet yolov3.weights file")
    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_reachable(uri)
    targets = resolve_targets(checkpoint or [], run or [], sweep, all_runs, uri, out / ".downloads")
    coco = None
    if coco_root is not None:
        ann = coco_annotations or coco_root / "annotations" / "instances_val2014.json"
        items, gt = coco_items(coco_root, ann, image_list)
        coco = (items, gt, ann)
    kodak = folder_items(kodak_root) if kodak_root is not None else None
    names = [] if anchors.strip() == "none" else [a.strip() for a in anchors.split(",") if a.strip()]
    job = Job(anchor_params=parse_anchor_params(anchor_params), targets=targets, out=out, settings=Settings(conf_thres, nms_iou, str(yolo_weights) if yolo_weights else None, yolo_seed),
              coco=coco, kodak=kodak, reference=reference_detections, reference_score=reference_score, anchors=names,
              bd_reference=bd_reference, overwrite=overwrite, chunk_size=chunk_size, redundancy_k=redundancy_k,
              redundancy_fibers=redundancy_fibers, redundancy_images=redundancy_images, tracking_uri=uri)
    from dvcm.checkpoint import read_checkpoint

    for t in targets:  # refuse unknown models / bad files before starting Ray
        read_checkpoint(t.checkpoint)
    init_ray(address)
    summary = run_job(job)
    con = Console()
    for line in summary["notices"]:
        con.print(line)
    _print_summary(con, summary)


def parse_anchor_params(text: str | None) -> dict[str, tuple[int, ...]]:
    """``jpeg=10,40;hevc=37,32`` → {"jpeg": (10, 40), "hevc": (37, 32)}."""
    out: dict[str, tuple[int, ...]] = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        name, _, values = part.partition("=")
        try:
            out[name.strip()] = tuple(int(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise UserError(f"--anchor-params {part!r} does not parse; write e.g. 'jpeg=10,40;hevc=37,32'") from None
        if not out[name.strip()]:
            raise UserError(f"--anchor-params {part!r} gives no values; write e.g. 'jpeg=10,40'")
    from pipeline.evaluation.anchors import ANCHORS

    unknown = sorted(set(out) - set(ANCHORS))
    if unknown:
        raise UserError(f"--anchor-params names unknown codecs {unknown}; choose from {', '.join(ANCHORS)}")
    return out


def _print_summary(con: Any, summary: dict) -> None:
    from rich.table import Table

    table = Table(title=f"evaluation ({summary['results']['anchors']['detector']} on COCO)")
    for col in ("codec", "dataset", "bpp", "mAP@0.5", "ŝ PSNR", "ŝ SNR", "PSNR", "MS-SSIM", "images", "skipped"):
        table.add_column(col)
    for res in summary["results"].values():
        for d, entry in res.get("datasets", {}).items():
            for p in entry["points"]:
                fmt = lambda v, n=3: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{n}f}"  # noqa: E731
                table.add_row(p["label"], d, fmt(p.get("bpp"), 4), fmt(p.get("map50")), fmt(p.get("s_psnr"), 2),
                              fmt(p.get("s_snr"), 2),
                              fmt(p.get("psnr"), 2),
                              fmt(p.get("ms_ssim"), 4), str(p["images"]), str(entry.get("skipped", 0)))
    con.print(table)
    con.print(f"results in {summary['out']}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add ``evaluate`` and ``bench evaluate``."""
    app.command("evaluate")(evaluate_command)
    from pipeline.bench.evaluate import bench_evaluate

    bench.command("evaluate")(bench_evaluate)
