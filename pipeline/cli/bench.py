"""``dvcm-pipeline bench ...``: each benchmark prints a table and its ratios, measured side by side
in one run (``pipeline.bench``); these commands only parse their flags."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from pipeline.bench.codec import run_codec_bench
from pipeline.bench.evaluate import run_evaluate_bench
from pipeline.bench.loader import run_loader_bench
from pipeline.bench.prepare import run_prepare_bench
from pipeline.bench.redundancy import run_redundancy_bench
from pipeline.bench.shards import run_shards_bench
from pipeline.bench.train import run_train_bench
from pipeline.cli.options import YoloCfgOpt
from pipeline.cli.training import AddressOpt

bench = typer.Typer(help="Benchmarks: print a table and its ratios, measured side by side.", no_args_is_help=True)


@bench.command("codec")
def codec_command(
    repeats: Annotated[int, typer.Option(help="Timed repetitions per measurement (median reported).")] = 5,
    n: Annotated[int, typer.Option("--N", help="N of all three codecs.")] = 192,
    threads: Annotated[int, typer.Option(help="torch threads (0: torch's default).")] = 0,
) -> None:
    """Median encode/decode time on a 768×512 image: proposed (64,192,2), choi2022 (128,64,1) and CompressAI's bmshj2018-hyperprior at the same N, measured side by side. The weights are untrained (seeded): the transforms cost the same whatever the weights, but rANS time grows with the number of symbols coded, so trained models at high rate code more slowly."""
    run_codec_bench(repeats=repeats, n=n, threads=threads)


@bench.command("prepare")
def prepare_command(
    sequences: Annotated[
        int, typer.Option(help="Vimeo-shaped sequences (7 frames of 448x256 each) in the 1x fixture.")
    ] = 4,
    shard_size: Annotated[
        int, typer.Option(help="Samples per shard (small, so that the last round of shards keeps every core busy).")
    ] = 2,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs for Ray (default: all cores).")] = None,
    memory: Annotated[bool, typer.Option(help="Also measure peak RSS of prepare at 1x and 8x the fixture.")] = True,
    work_dir: Annotated[Path | None, typer.Option(help="Where fixtures and shards go (default: a temp dir).")] = None,
) -> None:
    """Frames/s of prepare: Ray on all cores vs the same code in one plain process; stage times; peak RSS."""
    run_prepare_bench(sequences=sequences, shard_size=shard_size, num_cpus=num_cpus, memory=memory, work_dir=work_dir)


@bench.command("shards")
def shards_command(
    sequences: Annotated[
        int, typer.Option(help="World training clips (3 frames each; a third as many for validation).")
    ] = 12,
    steps: Annotated[int, typer.Option(help="Training steps per run (the same for every encoding and seed).")] = 400,
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated: their spread is the noise.")] = "0,1,2,3,4",
    training: Annotated[bool, typer.Option(help="Also measure each encoding's effect on training.")] = True,
    start: Annotated[
        str,
        typer.Option(
            help="zoo: fine-tune the zoo's proposed checkpoint nearest λ 0.0932 (lr 1e-4), as the quickstart does; scratch: train from scratch (lr 1e-3)."
        ),
    ] = "zoo",
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    work_dir: Annotated[Path | None, typer.Option(help="Where the data and shards go (default: a temp dir).")] = None,
) -> None:
    """Feature encodings side by side: bytes per frame, encode/decode time, error of s, and the effect on training (val D_s and loss after the same steps from the same seeds), against float16's seed-to-seed noise."""
    run_shards_bench(
        sequences=sequences,
        steps=steps,
        seeds=tuple(int(s) for s in seeds.split(",")),
        threads=threads,
        work_dir=work_dir,
        training=training,
        start=start,
    )


@bench.command("loader")
def loader_command(
    sequences: Annotated[int, typer.Option(help="Vimeo-shaped sequences in the fixture.")] = 4,
    crop: Annotated[int, typer.Option(help="Crop size.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 8,
    epochs: Annotated[int, typer.Option(help="Passes over the fixture per reader.")] = 2,
    work_dir: Annotated[
        Path | None, typer.Option(help="Where the fixture and shards go (default: a temp dir).")
    ] = None,
) -> None:
    """Samples/s of the WebDataset reader vs reading PNG files and computing s on the fly."""
    run_loader_bench(sequences=sequences, crop=crop, batch_size=batch_size, epochs=epochs, work_dir=work_dir)


@bench.command("train")
def train_command(
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch of both codecs.")] = 4,
    crop: Annotated[int, typer.Option("--crop", help="Crop size.")] = 256,
    steps: Annotated[int, typer.Option("--steps", help="Timed steps per measurement (after 1 warm-up).")] = 3,
    shards: Annotated[
        str | None, typer.Option("--shards", help="Prepared shards (folder or URL) for the loader measurement.")
    ] = None,
    ddp_n: Annotated[int, typer.Option("--ddp-N", help="N of the codec in the DDP measurement.")] = 64,
    ddp_crop: Annotated[int, typer.Option("--ddp-crop", help="Crop of the DDP measurement.")] = 128,
    address: AddressOpt = None,
    n: Annotated[int, typer.Option("--N", help="N of both codecs in the single-process measurement.")] = 192,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda for the single-process measurement.")] = "cpu",
) -> None:
    """Training samples/s: proposed (64,192,2) vs CompressAI ScaleHyperprior(192,320); loader headroom; CPU DDP layouts."""
    run_train_bench(
        batch_size=batch_size,
        crop=crop,
        steps=steps,
        shards=shards,
        ddp_n=ddp_n,
        ddp_crop=ddp_crop,
        address=address,
        n=n,
        device=device,
    )


@bench.command("evaluate")
def evaluate_command(
    images: Annotated[int, typer.Option(help="Images per dataset.")] = 4,
    n: Annotated[int, typer.Option("--N", help="Codec width N of the random tiny codec.")] = 32,
    data: Annotated[Path | None, typer.Option(help="Sample data folder (generated when absent).")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address.")] = None,
) -> None:
    """Print images/s per stage for the COCO and Kodak paths with 1 and 2 Ray workers, and the ratios."""
    run_evaluate_bench(images=images, n=n, data=data, address=address)


@bench.command("loss-balance")
def loss_balance_command(
    checkpoint: Annotated[str, typer.Option(help="A two-layer checkpoint file or zoo:NAME.")] = "zoo:proposed-l0.0932",
    images: Annotated[int, typer.Option(help="Unseen test scenes of the synthetic world at 512x512.")] = 8,
    lambdas: Annotated[str, typer.Option(help="λ values, comma separated.")] = "0.0018,0.0067,0.025,0.0932",
    gamma: Annotated[float, typer.Option(help="γ, the weight on D_s.")] = 1.0,
    gamma_mode: Annotated[str, typer.Option(help="fixed (the paper's Eq. 2) or scaled (λ·γ).")] = "fixed",
) -> None:
    """Why a base layer follows λ or not: what g_s2 takes from ŷ1 (an ablation), and the pull of R, λ·D_x and γ·D_s
    on ŷ1 and ŷ2 (RMS gradients) at each λ."""
    from dvcm.loss import GAMMA_MODES
    from pipeline.bench.loss_balance import run_loss_balance
    from pipeline.training.grid import parse_lambdas, parse_list

    if images < 1 or gamma < 0 or gamma_mode not in GAMMA_MODES:
        raise typer.BadParameter(
            f"--images at least 1, --gamma at least 0, --gamma-mode one of {', '.join(GAMMA_MODES)}"
        )
    run_loss_balance(checkpoint, images, tuple(parse_lambdas(parse_list(lambdas))), gamma, gamma_mode)


@bench.command("redundancy")
def redundancy_command(
    checkpoint: Annotated[str, typer.Option(help="Checkpoint file or zoo:NAME.")] = "zoo:proposed-l0.0932",
    images: Annotated[
        int, typer.Option(help="Unseen test scenes of the synthetic world at 512x512 (the paper: 256).")
    ] = 256,
    clusters: Annotated[str, typer.Option(help="K values of the k-means grid, comma separated.")] = "4,8,16,32",
    fibers: Annotated[str, typer.Option(help="Fiber counts of the k-means grid, comma separated.")] = "512,2048,8192",
    k: Annotated[int, typer.Option("--k", help="K of the k-means estimate and its sanity checks.")] = 16,
    num_fibers: Annotated[
        int, typer.Option("--num-fibers", help="Fibers of the k-means estimate and its checks.")
    ] = 8192,
    learned_steps: Annotated[int, typer.Option(help="Fitting steps of each model of the learned estimator.")] = 400,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write every figure to this JSON file (README: schema).")
    ] = None,
    threads: Annotated[int, typer.Option(help="torch threads (0: torch's default).")] = 0,
) -> None:
    """Both redundancy estimators on one checkpoint: the k-means one over a grid of (K, fibers), each one's Rdn(ŷ1|ŷ2)
    and Rdn(ŷ2|ŷ1) with intervals, in-sample values, ceilings and entropies, and their sanity checks."""

    def ints(text: str, flag: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise typer.BadParameter(f"{flag} {text!r}: write integers such as 4,8,16") from None
        if not values or min(values) < 1:
            raise typer.BadParameter(f"{flag} {text!r}: give one or more positive integers")
        return values

    if images < 2 or k < 1 or num_fibers < 1 or learned_steps < 1:
        raise typer.BadParameter("--images needs at least 2, --k, --num-fibers and --learned-steps at least 1")
    run_redundancy_bench(
        checkpoint,
        images,
        ints(clusters, "--clusters"),
        ints(fibers, "--fibers"),
        threads,
        k,
        num_fibers,
        learned_steps,
        json_file,
    )


@bench.command("learning-curve")
def learning_curve_command(
    study: Annotated[Path, typer.Option(help="A reproduce study folder: its shards and held-out test images.")],
    models: Annotated[str, typer.Option(help="Codecs, comma separated (dvcm.registry).")] = "proposed,choi2022",
    lrs: Annotated[str, typer.Option(help="Learning rates, comma separated (constant: no plateau drops).")] = (
        "1e-3,1e-4"
    ),
    lmbda: Annotated[float, typer.Option("--lambda", help="λ of every run.")] = 0.0932,
    gamma: Annotated[float, typer.Option(help="γ of every run (Eq. 2, fixed).")] = 1.0,
    steps: Annotated[int, typer.Option(help="Training steps of each run, from scratch.")] = 4000,
    every: Annotated[int, typer.Option(help="Score a checkpoint every this many steps.")] = 500,
    coco_images: Annotated[int, typer.Option(help="COCO-like test images scored for mAP@0.5.")] = 50,
    kodak_images: Annotated[int, typer.Option(help="Kodak-like test images scored for PSNR.")] = 8,
    yolo_weights: Annotated[str, typer.Option(help="The study's detector (its shards were prepared with it).")] = (
        "mini-photographic"
    ),
    yolo_cfg: YoloCfgOpt = None,
    json_file: Annotated[Path, typer.Option("--json", help="Figures (a rerun keeps the runs it holds).")] = Path(
        "learning_curve.json"
    ),
    plot: Annotated[Path, typer.Option(help="PNG of PSNR, PSNR over JPEG and mAP against steps.")] = Path(
        "learning_curve.png"
    ),
    seed: Annotated[int, typer.Option(help="Seed of every run.")] = 0,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    init: Annotated[
        Path | None,
        typer.Option(help="Start every run from this dvcm checkpoint (a warm start, as a study's later rounds)."),
    ] = None,
    keep: Annotated[
        Path | None,
        typer.Option(help="Keep each run's last checkpoint in this folder as RUN.pt (to warm-start others from)."),
    ] = None,
) -> None:
    """How many steps a trial needs, and at which lr: each (model, lr) trained from scratch (or --init) on a study's shards,
    scored every few hundred steps as `evaluate` scores (PSNR and bpp, base-layer mAP@0.5)."""
    from dvcm.registry import codec_spec
    from pipeline.bench.learning_curve import CurveData, CurveRun, run_learning_curve
    from pipeline.training.grid import parse_list

    try:
        lr_values = [float(v) for v in parse_list(lrs)]
    except ValueError:
        raise typer.BadParameter(f"--lrs {lrs!r}: write numbers such as 1e-3,1e-4") from None
    names = parse_list(models)
    for name in names:
        codec_spec(name)  # an unknown codec: one line
    finite = [*lr_values, lmbda, gamma]
    if not names or not lr_values or not all(math.isfinite(v) for v in finite) or min(lr_values) <= 0 or lmbda <= 0:
        raise typer.BadParameter("give one or more models, finite positive --lrs and --lambda, and a finite --gamma")
    if gamma < 0 or coco_images < 1 or kodak_images < 1 or threads < 1:
        raise typer.BadParameter("--gamma at least 0; --coco-images, --kodak-images and --threads at least 1")
    if every < 1 or steps < 2 * every or steps % every:
        raise typer.BadParameter("--steps must be a multiple of --every, two or more of them, such as 4000 and 500")
    if init is not None and not init.is_file():
        raise typer.BadParameter(f"--init {init}: no such checkpoint file")
    start = str(init.resolve()) if init else None
    runs = [CurveRun(m, lr, lmbda, gamma, steps, every, seed, init=start) for m in names for lr in lr_values]
    run_learning_curve(
        CurveData.of_study(study, yolo_weights, yolo_cfg),
        runs,
        coco_images,
        kodak_images,
        json_file,
        plot,
        threads,
        keep,
    )
