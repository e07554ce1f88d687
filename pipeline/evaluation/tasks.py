"""The work of one Ray task of ``evaluate``: a chunk of images through a learned codec (real bitstreams),
an anchor codec, or the redundancy extras; feature PSNR/SNR of ŝ. Imports torch lazily."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.evaluation.targets import ImageItem

COCO_SIZE = 512


ROW_FIELDS = (
    "dataset",
    "codec",
    "param",
    "image",
    "width",
    "height",
    "bytes_base",
    "bytes_enh",
    "bytes_header",
    "bytes_container",
    "bpp_base",
    "bpp_enh",
    "bpp",
    "psnr",
    "ms_ssim",
    "s_psnr",
    "s_snr",
    "t_encode",
    "t_decode",
    "t_back",
    "t_score",
)


@dataclass(frozen=True)
class Settings:
    """What a Ray task needs to know besides its images."""

    conf_thres: float = 0.001
    nms_iou: float = 0.5
    yolo_weights: str | None = None
    yolo_seed: int = 0
    threads: int = 1
    device: str = "cpu"  # cuda: encoding, V_front/V_back and decoding on the GPU (scale indexes stay float64)
    yolo_cfg: str | None = None  # a Darknet .cfg of the YOLOv3 family (None: standard yolov3.cfg)


_CACHE: dict[tuple, Any] = {}


def detector(s: Settings):  # -> YOLOv3
    key = ("yolo", s.yolo_weights, s.yolo_cfg, s.yolo_seed, s.device)
    if key not in _CACHE:
        import warnings

        from dvcm.yolo import build_yolov3

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the random-weight warning: labelled in every output
            _CACHE[key] = build_yolov3(s.yolo_weights, seed=s.yolo_seed, cfg=s.yolo_cfg).to(s.device)
    return _CACHE[key]


def _codec(checkpoint: str, s: Settings):  # -> ScalableCodec
    key = ("codec", checkpoint, s.yolo_weights, s.yolo_cfg, s.yolo_seed, s.device)
    if key not in _CACHE:
        from dvcm.checkpoint import load_checkpoint

        model, _ = load_checkpoint(checkpoint, yolo_provenance=detector(s).provenance)
        _CACHE[key] = model.to(s.device)
    return _CACHE[key]


def forget_codec(checkpoint: str) -> None:
    """Drop every cached copy of ``checkpoint``'s codec (a caller scoring many short-lived checkpoints in one
    process, such as ``bench learning-curve``, would otherwise keep them all)."""
    for key in [k for k in _CACHE if k[0] == "codec" and k[1] == checkpoint]:
        del _CACHE[key]


def _load_rgb(path: str):  # -> PIL.Image | None
    """8-bit RGB (16-bit scaled, see pipeline.data.images), or None for a file that is skipped."""
    from pipeline.data.images import read_rgb8
    from pipeline.infra.errors import UserError

    try:
        return read_rgb8(Path(path))[0]
    except UserError:
        return None


def _readable(items: list[ImageItem], skipped: list[str]):  # -> Iterator[tuple[ImageItem, PIL.Image]]
    """The images of ``items`` that decode; the names of the others are appended to ``skipped``."""
    for item in items:
        img = _load_rgb(item.path)
        if img is None:
            skipped.append(Path(item.path).name)
            continue
        yield item, img


def _to_tensor(img, device: str = "cpu"):  # PIL → [1,3,H,W] float in [0,1]
    import numpy as np
    import torch

    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0).contiguous()
    return x.to(device)


def image_psnr(x, x_hat) -> float:
    """PSNR (dB) of x̂ against x, both in [0, 1], on the 0–255 scale over all RGB samples (inf when equal)."""
    import torch

    mse = torch.mean((x * 255.0 - x_hat * 255.0) ** 2).item()
    return 10 * math.log10(255.0**2 / mse) if mse > 0 else float("inf")


def _quality(x, x_hat) -> tuple[float, float]:
    """PSNR (RGB, 0–255 scale) and MS-SSIM (NaN when the image is too small for 5 scales)."""
    from pytorch_msssim import ms_ssim

    psnr = image_psnr(x, x_hat)
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


def _detect(heads, hw_in, orig_hw, image_id: int, s: Settings, anchors) -> list[dict]:
    from dvcm.yolo import decode_detections, detections_to_coco

    (det,) = decode_detections(heads, hw_in, conf_thres=s.conf_thres, nms_iou=s.nms_iou, anchors=anchors)
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
    model, yolo = _codec(checkpoint, s), detector(s)
    rows, dets, skipped = [], [], []
    with torch.no_grad():
        for item, img in _readable(items, skipped):
            w, h = img.size
            if dataset == "coco":
                x = _to_tensor(img.resize((COCO_SIZE, COCO_SIZE), _bilinear()), s.device)
                t0 = time.perf_counter()
                data = compress(model, x)
                t1 = time.perf_counter()
                s_hat = decode_base(model, data)
                t2 = time.perf_counter()
                heads = yolo.back(s_hat)
                t3 = time.perf_counter()
                dets += _detect(heads, (COCO_SIZE, COCO_SIZE), (h, w), int(item.image_id), s, yolo.anchors)
                s_ref = yolo.front(x)
                s_psnr, s_snr = feature_psnr(s_ref, s_hat), feature_snr(s_ref, s_hat)
                t4 = time.perf_counter()
                sizes = layer_sizes(data)
                rows.append(
                    _row(
                        "coco",
                        "model",
                        None,
                        item,
                        w,
                        h,
                        COCO_SIZE * COCO_SIZE,
                        bytes_base=sizes["base"],
                        bytes_header=sizes["header"],
                        bytes_container=0,
                        s_psnr=s_psnr,
                        s_snr=s_snr,
                        t_encode=t1 - t0,
                        t_decode=t2 - t1,
                        t_back=t3 - t2,
                        t_score=t4 - t3,
                    )
                )
            else:
                x = _to_tensor(img, s.device)
                t0 = time.perf_counter()
                data = compress(model, x)
                t1 = time.perf_counter()
                x_hat = decode(model, data)
                t2 = time.perf_counter()
                psnr, msssim = _quality(x, x_hat)
                t3 = time.perf_counter()
                sizes = layer_sizes(data)
                rows.append(
                    _row(
                        "kodak",
                        "model",
                        None,
                        item,
                        w,
                        h,
                        w * h,
                        bytes_base=sizes["base"],
                        bytes_enh=sizes["enhancement"],
                        bytes_header=sizes["header"],
                        bytes_container=0,
                        psnr=psnr,
                        ms_ssim=msssim,
                        t_encode=t1 - t0,
                        t_decode=t2 - t1,
                        t_back=0.0,
                        t_score=t3 - t2,
                    )
                )
    return {"rows": rows, "detections": dets, "skipped": skipped}


def _bilinear():
    from PIL import Image

    return Image.Resampling.BILINEAR


def run_anchor_chunk(
    codec: str, dataset: str, items: list[ImageItem], s: Settings, params: Sequence[int] | None = None
) -> dict:
    """One anchor at ``params`` (default: its own list), or ``uncompressed``, over a chunk of images."""
    import torch

    from pipeline.evaluation.anchors import ANCHORS

    torch.set_num_threads(max(1, s.threads))
    yolo = detector(s)
    params: Sequence[Any] = [None] if codec == "uncompressed" else (params or ANCHORS[codec].params)
    rows, dets, skipped = [], {str(p): [] for p in params}, []
    with torch.no_grad():
        for item, img in _readable(items, skipped):
            w, h = img.size
            src = img.resize((COCO_SIZE, COCO_SIZE), _bilinear()) if dataset == "coco" else img
            pixels = src.size[0] * src.size[1]
            s_ref = yolo.front(_to_tensor(src, s.device)) if dataset == "coco" else None
            for p in params:
                t0 = time.perf_counter()
                if p is None:
                    dec, cs, cont = src, None, 0
                else:
                    enc = ANCHORS[codec].encode(src, p)
                    dec, cs, cont = enc.decoded, enc.codestream_bytes, enc.container_bytes
                t1 = time.perf_counter()
                x_hat = _to_tensor(dec, s.device)
                if dataset == "coco":
                    s_hat = yolo.front(x_hat)
                    heads = yolo.back(s_hat)
                    t2 = time.perf_counter()
                    dets[str(p)] += _detect(heads, (COCO_SIZE, COCO_SIZE), (h, w), int(item.image_id), s, yolo.anchors)
                    t3 = time.perf_counter()
                    s_psnr = None if p is None else feature_psnr(s_ref, s_hat)  # uncompressed: ŝ = s
                    s_snr = None if p is None else feature_snr(s_ref, s_hat)
                    rows.append(
                        _row(
                            "coco",
                            codec,
                            p,
                            item,
                            w,
                            h,
                            pixels,
                            bytes_base=cs,
                            bytes_container=cont,
                            s_psnr=s_psnr,
                            s_snr=s_snr,
                            t_encode=t1 - t0,
                            t_decode=0.0,
                            t_back=t2 - t1,
                            t_score=t3 - t2,
                        )
                    )
                else:
                    psnr, msssim = _quality(_to_tensor(src, s.device), x_hat)
                    t2 = time.perf_counter()
                    rows.append(
                        _row(
                            "kodak",
                            codec,
                            p,
                            item,
                            w,
                            h,
                            pixels,
                            bytes_base=cs,
                            bytes_container=cont,
                            psnr=psnr,
                            ms_ssim=msssim,
                            t_encode=t1 - t0,
                            t_decode=0.0,
                            t_back=0.0,
                            t_score=t2 - t1,
                        )
                    )
    return {"rows": rows, "detections": dets, "skipped": skipped}


def run_model_complexity(checkpoint: str, s: Settings) -> dict:
    """The parameters and kMAC per pixel of each part of the codec (:mod:`dvcm.complexity`)."""
    import torch

    from dvcm.complexity import HEIGHT, WIDTH, codec_complexity

    torch.set_num_threads(max(1, s.threads))
    return {
        "complexity": {
            "input": f"{WIDTH}x{HEIGHT}",
            "counter": "torch.utils.flop_counter.FlopCounterMode",
            "parts": codec_complexity(_codec(checkpoint, s)),
        }
    }


def redundancy_request(K: int, fibers: int, images: int, learned_steps: int = 0, dataset: str = "kodak") -> dict:
    """The settings a redundancy estimate was asked for (stored with it, compared on reruns)."""
    request: dict[str, Any] = {"K": int(K), "fibers": int(fibers), "images": int(images)}
    if learned_steps or dataset != "kodak":  # estimates made before the learned estimator asked for neither
        request.update(learned_steps=int(learned_steps), dataset=dataset)
    return request


def run_model_extras(
    checkpoint: str,
    items: list[ImageItem],
    s: Settings,
    K: int,
    fibers: int,
    learned_steps: int = 0,
    dataset: str = "kodak",
) -> dict:
    """Redundancy Rdn(ŷ1|ŷ2), Rdn(ŷ2|ŷ1) over ``items`` (COCO ones at 512×512) by the paper's k-means estimator
    (``redundancy``) and, with ``learned_steps``, by the learned one (``redundancy_learned``,
    :mod:`dvcm.conditional_entropy`); the top-8 channels by rate of the first image; and the parameters and kMAC per
    pixel of each part of the codec (:mod:`dvcm.complexity`)."""
    import torch

    from dvcm.conditional_entropy import model_learned_redundancy
    from dvcm.redundancy import model_redundancy

    torch.set_num_threads(max(1, s.threads))
    model = _codec(checkpoint, s)
    complexity = run_model_complexity(checkpoint, s)["complexity"]
    pictures = (_load_rgb(i.path) for i in items)
    if dataset == "coco":
        pictures = (None if im is None else im.resize((COCO_SIZE, COCO_SIZE), _bilinear()) for im in pictures)
    images = [_to_tensor(im) for im in pictures if im is not None]
    if not images or model.layers == 1:  # a single-layer codec has no (ŷ1, ŷ2) pair
        return {"redundancy": None, "redundancy_learned": None, "channel_rates": None, "complexity": complexity}
    request = redundancy_request(K, fibers, len(items), learned_steps, dataset)  # a rerun with others: made again
    red = model_redundancy(model, images, K=K, num_fibers=fibers)
    red.update(images=len(images), dataset=dataset, requested=request)
    learned = None
    if learned_steps and len(images) >= 2:
        learned = model_learned_redundancy(model, images, steps=learned_steps)
        learned.update(dataset=dataset, requested=request)
    with torch.no_grad():
        out = model(images[0])
    rates: dict[str, Any] = {"image": Path(items[0].path).name}
    for name in ("y1", "y2"):
        bits = -torch.log2(out["likelihoods"][name][0]).sum(dim=(1, 2))
        top = torch.argsort(bits, descending=True)[:8]
        rates[name] = [
            {"channel": int(c), "bits": float(bits[c]), "map": out[f"{name}_hat"][0, c].tolist()} for c in top
        ]
    return {"redundancy": red, "redundancy_learned": learned, "channel_rates": rates, "complexity": complexity}
