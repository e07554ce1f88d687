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
    # bench redundancy (zoo:proposed-l0.0932): with every fiber of 2 images (3072) both intervals lie above 0 at
    # K 4, 8 and 16, where 1024 fibers at K 16 fall below 0; K 4 takes a third of the time of K 16
    redundancy_k: int = 4
    redundancy_fibers: int = 6144  # every fiber of 4 images of 768x512 (1536 each)
    redundancy_images: int = 256  # the paper's: fibers sampled over 256 images (COCO at 512x512; fewer when fewer)
    # the learned estimator (dvcm.conditional_entropy): fitting steps of each of its models; 0 leaves it out
    redundancy_learned_steps: int = 400
    tracking_uri: str | None = None
