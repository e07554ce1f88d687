"""``dvcm-pipeline prepare``: WebDataset shards of (image, s, metadata) from a dataset."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

import typer

from dvcm.zoo import detector_name
from pipeline.cli.options import YoloCfgOpt, YoloWeightsOpt
from pipeline.data.feature_encoding import DEFAULT_ENCODING, FEATURE_ENCODINGS, NO_FEATURES, check_encoding
from pipeline.data.prepare import PrepareReport, listing_for, run_prepare
from pipeline.data.sources import DATASETS, Listing, parse_frames
from pipeline.infra import storage
from pipeline.infra.errors import UserError
from pipeline.infra.yolo_files import yolo_files


def _print_summary(report: PrepareReport, out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    info = report.info
    table = Table(title=f"prepared {info['provenance']['dataset']} -> {out}")
    for col in ("split", "shards", "samples"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, entry in info["splits"].items():
        table.add_row(split, str(len(entry["shards"])), str(entry["samples"]))
    console = Console(stderr=False)
    console.print(table)
    rate = report.frames_written / report.seconds if report.seconds > 0 else 0.0
    yolo = info["provenance"]["yolo"]
    label = detector_name(yolo)
    console.print(
        f"shards written {report.shards_written}, already finished {report.shards_skipped}; "
        f"{report.frames_written} frames in {report.seconds:.1f} s ({rate:.1f} frames/s); "
        f"features from {label} (sha256 {str(yolo.get('weights_sha256'))[:12]}, layer {yolo.get('split_layer')})"
    )
    encoding = info["provenance"]["feature_encoding"]
    total = sum(s["bytes"] for entry in info["splits"].values() for s in entry["shards"])
    stored = "image-only shards: training computes s" if encoding == NO_FEATURES else f"features stored as {encoding}"
    console.print(
        f"{stored}; {total / max(info['counts']['written'], 1) / 1e3:.1f} KB per frame, {total / 1e6:.1f} MB in all"
    )
    counts = info["counts"]
    if counts["skipped"]:
        kinds = ", ".join(f"{n} {k}" for k, n in counts["skipped_by_reason"].items())
        typer.secho(
            f"warning: skipped {counts['skipped']} inputs ({kinds}); listed in {storage.join(out, 'dataset.json')}",
            err=True,
            fg=typer.colors.YELLOW,
        )


def _print_dry_run(
    listing: Listing, shard_size: int, weights: str | None, cfg: str | None, yolo_seed: int, chosen: str
) -> None:
    """Frames, shards, and each encoding's bytes per frame and total, measured on a sample of the tree."""
    from rich.console import Console
    from rich.table import Table

    from dvcm.yolo import build_yolov3
    from pipeline.data.size_estimate import measure_sizes

    by_split = Counter(r.split for r in listing.items)
    shards = sum(-(-n // shard_size) for n in by_split.values())
    yolo = build_yolov3(weights, seed=yolo_seed, cfg=cfg)
    est = measure_sizes(listing, yolo.front)
    label = detector_name(yolo.provenance)
    console = Console()
    console.print(
        f"dry run: {est.frames} frames ({', '.join(f'{k} {v}' for k, v in by_split.items())}) in {shards} "
        f"shards; sizes measured on {est.probed} of them with the features of {label}",
        soft_wrap=True,
    )
    table = Table(title="shard size by feature encoding")
    for col in ("encoding", "KB per frame", "× PNG", "total GB", ""):
        table.add_column(col, justify="left" if col in ("encoding", "") else "right")
    for encoding, per_frame in est.per_frame.items():
        table.add_row(
            encoding if encoding != NO_FEATURES else "none (image only: s computed in training)",
            f"{per_frame / 1e3:.1f}",
            f"{per_frame / max(est.png_bytes, 1):.2f}",
            f"{est.total(encoding) / 1e9:.2f}",
            "← this run" if encoding == chosen else "",
        )
    console.print(table)
    console.print(
        f"PNG alone: {est.png_bytes / 1e3:.1f} KB per frame; {est.seconds_per_frame:.2f} s per probed frame "
        f"here; {len(listing.skipped)} inputs would be skipped; nothing written"
    )


def _chosen_encoding(features: str, encoding: str | None) -> str:
    """The encoding of s that ``--features`` and ``--feature-encoding`` ask for, or one line saying why not."""
    if features not in ("stored", NO_FEATURES):
        raise UserError(f"--features {features!r} is not one of: stored, {NO_FEATURES}")
    if encoding == NO_FEATURES:
        raise UserError(f"--feature-encoding {NO_FEATURES!r}: image-only shards are --features {NO_FEATURES}")
    if features == NO_FEATURES:
        if encoding is not None:
            raise UserError(
                f"--features {NO_FEATURES} stores no s, so --feature-encoding {encoding} has nothing to "
                "encode; drop one of them"
            )
        return NO_FEATURES
    return check_encoding(encoding or DEFAULT_ENCODING)


def prepare_command(
    dataset: Annotated[str, typer.Option(help=f"One of: {', '.join(DATASETS)}.")],
    out: Annotated[
        str,
        typer.Option(
            help="Output folder or fsspec URL (s3://bucket/shards) for shards, manifest.parquet and dataset.json."
        ),
    ],
    root: Annotated[str | None, typer.Option(help="Dataset folder (for sample: where to generate it).")] = None,
    frames: Annotated[str, typer.Option(help="Frames per sequence: all, middle or N (evenly spaced).")] = "all",
    shard_size: Annotated[int, typer.Option(help="Samples per shard.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Frames per V_front batch.")] = 8,
    feature_encoding: Annotated[
        str | None,
        typer.Option(
            help=f"How s is stored: {', '.join(FEATURE_ENCODINGS)} (default {DEFAULT_ENCODING}; see README, 'Shard storage')."
        ),
    ] = None,
    features: Annotated[
        str,
        typer.Option(
            help="stored: s in the shards; none: image-only shards, training computes s on its workers (GPUs)."
        ),
    ] = "stored",
    feature_dtype: Annotated[str | None, typer.Option(hidden=True, help="Old name of --feature-encoding.")] = None,
    yolo_weights: YoloWeightsOpt = None,
    yolo_cfg: YoloCfgOpt = None,
    yolo_seed: Annotated[int, typer.Option(help="Seed of the random YOLOv3 when no weights are given.")] = 0,
    num_gpus_per_worker: Annotated[float, typer.Option(help="GPUs per shard task (fractions share a GPU).")] = 0.0,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of a local Ray instance (default: all).")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS or local).")] = None,
    image_list: Annotated[str | None, typer.Option(help="coco2014: file of image names/ids (5k subset).")] = None,
    val_fraction: Annotated[float, typer.Option(help="folder: fraction of files hashed into val.")] = 0.05,
    sample_seed: Annotated[int, typer.Option(help="sample: generator seed.")] = 0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print counts and the size estimate; write nothing.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace shards already in --out.")] = False,
) -> None:
    """Write WebDataset shards of (image PNG, YOLOv3 layer-12 features s, metadata) for training/evaluation."""
    encoding = _chosen_encoding(features, feature_encoding or feature_dtype)
    frames_sel = parse_frames(frames)
    storage.check(out)
    weights, cfg = yolo_files(yolo_weights, yolo_cfg)
    listing = listing_for(dataset, root, frames_sel, image_list, val_fraction, sample_seed)
    if dry_run:
        _print_dry_run(listing, shard_size, weights, cfg, yolo_seed, encoding)
        return
    report = run_prepare(
        listing,
        out,
        weights,
        yolo_seed,
        frames_sel,
        shard_size,
        batch_size,
        encoding,
        num_gpus_per_worker,
        overwrite,
        True,
        address,
        num_cpus,
        yolo_cfg=cfg,
    )
    _print_summary(report, storage.resolve(out))
