"""``dvcm-pipeline evaluate``: checkpoints on COCO (rate–accuracy) and Kodak (rate–distortion), with anchors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli.options import YoloCfgOpt, YoloWeightsOpt
from pipeline.evaluation.anchors import ANCHOR_LIST, parse_anchor_params
from pipeline.evaluation.coco import DEFAULT_REFERENCE_SCORE
from pipeline.evaluation.job import Job, run_job
from pipeline.evaluation.targets import coco_items, folder_items, resolve_targets
from pipeline.evaluation.tasks import Settings
from pipeline.infra.errors import UserError, check_unit_interval
from pipeline.infra.yolo_files import yolo_files


def evaluate_command(
    checkpoint: Annotated[
        list[str] | None,
        typer.Option(
            "--checkpoint",
            help="A checkpoint file, an fsspec URL such as s3://bucket/runs/.../final.pt, or zoo:NAME for a bundled one (repeatable).",
        ),
    ] = None,
    run: Annotated[list[str] | None, typer.Option("--run", help="An MLflow trial run id (repeatable).")] = None,
    sweep: Annotated[str | None, typer.Option(help="Every finished trial of this sweep.")] = None,
    all_runs: Annotated[bool, typer.Option("--all-runs", help="Every finished trial run in the store.")] = False,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
    ] = None,
    coco_root: Annotated[Path | None, typer.Option(help="COCO 2014 root (val2014/ and annotations/).")] = None,
    coco_annotations: Annotated[
        Path | None, typer.Option(help="Default: <coco-root>/annotations/instances_val2014.json.")
    ] = None,
    image_list: Annotated[
        Path | None, typer.Option(help="File names or image ids, one per line (e.g. the 5k subset).")
    ] = None,
    kodak_root: Annotated[Path | None, typer.Option(help="Kodak (or any image folder) for rate-distortion.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for results.json/csv, BD tables and plots.")] = Path("eval"),
    conf_thres: Annotated[float, typer.Option(help="Detection confidence threshold.")] = 0.001,
    nms_iou: Annotated[float, typer.Option(help="Class-wise NMS IoU.")] = 0.5,
    reference_detections: Annotated[
        str, typer.Option(help="gt: the annotations; uncompressed: the uncompressed YOLOv3's detections.")
    ] = "gt",
    reference_score: Annotated[
        float,
        typer.Option(
            help="Score from which uncompressed detections count as ground truth (darknet's display threshold)."
        ),
    ] = DEFAULT_REFERENCE_SCORE,
    anchors: Annotated[str, typer.Option(help=f"Comma-separated anchors ({ANCHOR_LIST}) or 'none'.")] = ANCHOR_LIST,
    anchor_params: Annotated[
        str | None, typer.Option(help="Override fixed parameters, e.g. 'jpeg=10,40;hevc=37,32'.")
    ] = None,
    bd_reference: Annotated[
        str, typer.Option(help="Models whose curves are BD references, comma separated (anchors always are).")
    ] = "choi2022,bmshj2018",
    yolo_weights: YoloWeightsOpt = None,
    yolo_cfg: YoloCfgOpt = None,
    yolo_seed: Annotated[int, typer.Option(help="Seed of the random-weight YOLOv3 when no weights are given.")] = 0,
    redundancy_k: Annotated[
        int, typer.Option(help="k-means clusters K for Rdn (16: where bench redundancy finds it stops moving).")
    ] = 16,
    redundancy_fibers: Annotated[
        int, typer.Option(help="Fibers the k-means Rdn estimator samples over the images (at most).")
    ] = 8192,
    redundancy_images: Annotated[
        int,
        typer.Option(help="Images of both Rdn estimators: COCO's at 512x512 (Kodak's without COCO); the paper's 256."),
    ] = 256,
    redundancy_learned_steps: Annotated[
        int, typer.Option(help="Fitting steps of each model of the learned Rdn estimator; 0 leaves it out.")
    ] = 400,
    chunk_size: Annotated[int, typer.Option(help="Images per Ray task.")] = 16,
    overwrite: Annotated[bool, typer.Option(help="Redo finished (checkpoint, dataset) pairs.")] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS or a local Ray).")
    ] = None,
    device: Annotated[
        str, typer.Option(help="cpu, or cuda: encode, decode and detect on a GPU (one per Ray task).")
    ] = "cpu",
) -> None:
    """Evaluate checkpoints on COCO (rate–accuracy) and Kodak (rate–distortion) with anchors, BD-rate and plots."""
    from rich.console import Console

    from pipeline.infra import tracking
    from pipeline.infra.ray_runtime import init_ray

    if device not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    check_unit_interval("--conf-thres", conf_thres)
    check_unit_interval("--nms-iou", nms_iou)
    if reference_detections not in ("gt", "uncompressed"):
        raise UserError(f"--reference-detections must be gt or uncompressed, got {reference_detections!r}")
    weights, cfg = yolo_files(yolo_weights, yolo_cfg)  # absolute: Ray tasks build the YOLO
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
    job = Job(
        anchor_params=parse_anchor_params(anchor_params),
        targets=targets,
        out=out,
        settings=Settings(conf_thres, nms_iou, weights, yolo_seed, device=device, yolo_cfg=cfg),
        coco=coco,
        kodak=kodak,
        reference=reference_detections,
        reference_score=reference_score,
        anchors=names,
        bd_reference=bd_reference,
        overwrite=overwrite,
        chunk_size=chunk_size,
        redundancy_k=redundancy_k,
        redundancy_fibers=redundancy_fibers,
        redundancy_images=redundancy_images,
        redundancy_learned_steps=redundancy_learned_steps,
        tracking_uri=uri,
    )
    from dvcm.checkpoint import read_checkpoint

    for t in targets:  # refuse unknown models / bad files before starting Ray
        read_checkpoint(t.checkpoint)
    init_ray(address)
    if device == "cuda":
        import ray

        if ray.cluster_resources().get("GPU", 0) < 1:
            raise UserError("--device cuda needs a GPU but the Ray cluster has none; use --device cpu")
    summary = run_job(job)
    con = Console()
    for line in summary["notices"]:
        con.print(line)
    _print_summary(con, summary)


def _print_summary(con: Any, summary: dict) -> None:
    from rich.table import Table

    table = Table(title=f"evaluation ({summary['results']['anchors']['detector']} on COCO)")
    for col in ("codec", "dataset", "bpp", "mAP@0.5", "ŝ PSNR", "ŝ SNR", "PSNR", "MS-SSIM", "images", "skipped"):
        table.add_column(col)
    for res in summary["results"].values():
        for d, entry in res.get("datasets", {}).items():
            for p in entry["points"]:
                fmt = lambda v, n=3: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{n}f}"  # noqa: E731
                table.add_row(
                    p["label"],
                    d,
                    fmt(p.get("bpp"), 4),
                    fmt(p.get("map50")),
                    fmt(p.get("s_psnr"), 2),
                    fmt(p.get("s_snr"), 2),
                    fmt(p.get("psnr"), 2),
                    fmt(p.get("ms_ssim"), 4),
                    str(p["images"]),
                    str(entry.get("skipped", 0)),
                )
    con.print(table)
    con.print(f"results in {summary['out']}")
