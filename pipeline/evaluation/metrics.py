"""The metrics of ``evaluate``: one declaration each, read by the scoring, the plots, the BD table, the
CompressAI-style curve files, MLflow and the report; and the typed shapes of an operating point and of a
codec's results (``results.json``, schema ``dvcm-eval/1``, see :mod:`pipeline.evaluation.job`).

A :class:`Metric` is a rate–quality curve: on which dataset's points it lives, which point key is its rate
and which its quality, its axis labels, how its quality is computed for an operating point (the mean over
images of a per-image row field, or a COCO statistic of the point's detections), the keys a CompressAI
``eval_model`` JSON file uses for it, and whether it gets a plot and BD rows. Adding a metric is one entry
in :data:`METRICS` (and, for a new per-image field, the field in ``tasks.ROW_FIELDS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

COCO_AXIS = "base-layer bpp (512×512)"  # a single-layer codec's base layer is all of it
KODAK_AXIS = "bpp (base + enhancement)"


@dataclass(frozen=True)
class Metric:
    """One rate–quality curve of the evaluation."""

    key: str  # coco_map50: <dataset>_<quality>
    dataset: str  # "coco" (base layer, detection) or "kodak" (both layers, reconstruction)
    rate: str  # the point key of the rate: bpp_base (COCO) or bpp (Kodak)
    quality: str  # the point key of the quality
    rate_axis: str
    label: str  # the quality axis
    file_keys: tuple[str, ...]  # keys in a CompressAI-style curves file; the first is what we write
    row_field: str | None = None  # quality = mean over images of this per-image row field ...
    coco_stat: str | None = None  # ... or this COCO statistic of the point's detections (pycocotools)
    plot_file: str | None = None  # its rate–quality plot, when it has one
    bd: bool = True  # BD rows against the references
    detection: bool = False  # a detector's accuracy: the uncompressed detector's value is drawn beside it


METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric(
            "coco_map50",
            "coco",
            "bpp_base",
            "map50",
            COCO_AXIS,
            "mAP@0.5",
            ("map50",),
            coco_stat="AP50",
            plot_file="rate_accuracy.png",
            detection=True,
        ),
        Metric(
            "coco_map",
            "coco",
            "bpp_base",
            "map",
            COCO_AXIS,
            "mAP@[.5:.95]",
            ("map", "mAP"),
            coco_stat="AP",
            plot_file="rate_accuracy_map.png",
            detection=True,
        ),
        Metric(
            "coco_s_psnr",
            "coco",
            "bpp_base",
            "s_psnr",
            COCO_AXIS,
            "feature PSNR of ŝ vs V_front(x) (dB)",
            ("s_psnr",),
            row_field="s_psnr",
            plot_file="feature_psnr_bpp.png",
        ),
        Metric(
            "coco_s_snr",
            "coco",
            "bpp_base",
            "s_snr",
            COCO_AXIS,
            "feature SNR of ŝ, per-channel normalised (dB)",
            ("s_snr",),
            row_field="s_snr",
            plot_file="feature_snr_bpp.png",
        ),
        Metric(
            "kodak_psnr",
            "kodak",
            "bpp",
            "psnr",
            KODAK_AXIS,
            "PSNR (dB, RGB)",
            ("psnr-rgb", "psnr"),
            row_field="psnr",
            plot_file="psnr_bpp.png",
        ),
        Metric(
            "kodak_ms_ssim",
            "kodak",
            "bpp",
            "ms_ssim",
            KODAK_AXIS,
            "MS-SSIM",
            ("ms-ssim-rgb", "ms-ssim"),
            row_field="ms_ssim",
            plot_file="msssim_bpp.png",
        ),
    )
}
BD_METRICS: tuple[str, ...] = tuple(k for k, m in METRICS.items() if m.bd)
RATE_KEYS: tuple[str, ...] = ("bpp", "bpp_base", "bpp_enh")


def metrics_of(dataset: str) -> list[Metric]:
    return [m for m in METRICS.values() if m.dataset == dataset]


def point_qualities(
    dataset: str, rows: list[dict[str, Any]], coco_stats: dict[str, float] | None, mean: Any
) -> dict[str, float]:
    """Every metric's quality of one operating point: ``mean`` of its per-image rows' field, or a COCO statistic."""
    out = {}
    for m in metrics_of(dataset):
        if m.row_field is not None:
            out[m.quality] = mean([r.get(m.row_field) for r in rows])
        elif m.coco_stat is not None and coco_stats is not None:
            out[m.quality] = coco_stats[m.coco_stat]
    return out


class OperatingPoint(TypedDict, total=False):
    """One rate point of one codec on one dataset, as ``results.json`` holds it (undefined numbers are null).

    The qualities are the :data:`METRICS` of its dataset (COCO: map50, map, s_psnr, s_snr; Kodak: psnr, ms_ssim)."""

    codec: str  # "model", an anchor's name, or "uncompressed"
    label: str
    param: Any  # the anchor's quality parameter; None for a model
    images: int
    bpp: float
    bpp_base: float
    bpp_enh: float  # Kodak
    container_bpp: float
    bytes_header: float  # COCO
    encode_ms: float  # models
    decode_ms: float
    coco_stats: dict[str, float]  # COCO: the 12 statistics of pycocotools
    per_class_ap: list[dict[str, Any]]
    map50: float
    map: float
    s_psnr: float
    s_snr: float
    psnr: float
    ms_ssim: float


class DatasetResults(TypedDict, total=False):
    settings: dict[str, Any]
    settings_digest: str
    images: int
    skipped: int
    skipped_images: list[str]
    points: list[OperatingPoint]


class Results(TypedDict, total=False):
    """``results.json`` of one codec key (a trained model's run or checkpoint, or the anchors)."""

    schema: str
    key: str
    kind: str  # "model" or "anchors"
    label: str
    run_id: str | None
    checkpoint: str | None
    checkpoint_sha256: str
    model: str
    config: dict[str, int]  # N and the codec's hyperparameters (dvcm.registry)
    lmbda: float | None
    yolo: dict[str, Any]
    detector: str
    datasets: dict[str, DatasetResults]
    redundancy: dict[str, Any] | None  # the paper's k-means estimator (dvcm.redundancy)
    redundancy_learned: dict[str, Any] | None  # the learned conditional entropy estimator (dvcm.conditional_entropy)
    channel_rates: dict[str, Any] | None
    complexity: dict[str, Any] | None
    per_image: list[dict[str, Any]]
