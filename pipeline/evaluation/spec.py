"""What ``evaluate`` was asked to do (:class:`Job`): targets, datasets, references, anchors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.evaluation.anchors import DEFAULT_ANCHORS
from pipeline.evaluation.coco import DEFAULT_REFERENCE_SCORE
from pipeline.evaluation.targets import ImageItem, Target
from pipeline.evaluation.tasks import Settings


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
    anchors: list[str] = field(default_factory=lambda: list(DEFAULT_ANCHORS))
    anchor_params: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # models whose curves are BD references, comma separated (anchors always are): the baseline, and the single-layer
    # codec against which a scalable codec's BD-rate on PSNR is the cost of scalability
    bd_reference: str = "choi2022,bmshj2018"
    overwrite: bool = False
    chunk_size: int = 16
    # bench redundancy (zoo:proposed-l0.0932, 256 world scenes at 512x512): at 8192 fibers the k-means estimate still
    # rises from K 4 to 16 (Rdn(ŷ1|ŷ2) +0.012 -> +0.063, Rdn(ŷ2|ŷ1) +0.101 -> +0.131) and stops there (K 32: +0.058,
    # +0.135); at 2048 fibers and fewer, K 16 falls below 0 (too few fibers per cluster)
    redundancy_k: int = 16
    redundancy_fibers: int = 8192
    redundancy_images: int = 256  # the paper's: fibers sampled over 256 images (COCO at 512x512; fewer when fewer)
    # the learned estimator (dvcm.conditional_entropy): fitting steps of each of its models; 0 leaves it out
    redundancy_learned_steps: int = 400
    tracking_uri: str | None = None
