"""``bench shards``: the feature encodings against each other, side by side in one run.

For each encoding of :mod:`pipeline.data.feature_encoding` (and ``none``, image-only shards whose s
training computes on the worker): bytes per frame in the tar, encode and decode time per frame, the
error of s relative to each channel's std (max and RMS), and its effect on training: the proposed
codec trained from the same seed for the same steps on shards of that encoding, then validated on
the same crops of the float16 validation shards (val D_s and val loss). Noise comes from the
seed-to-seed spread: an encoding is "within noise" when its mean over seeds differs from float16's
by no more than twice the standard error of that difference (both encodings' seed-to-seed sd: a
run on other features follows another trajectory from the same seed). The smallest stored
encoding within noise on both metrics is the one to use by default.

The world's shards carry the features of the bundled mini YOLOv3 (trained on the world, 32
channels); the byte table is repeated with a random-weight standard YOLOv3 (256 channels, the
channel count of real YOLOv3 features), labelled as such.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.feature_encoding import FEATURE_ENCODINGS, NO_FEATURES, decode_features, encode_features
from pipeline.data.size_estimate import tar_bytes
from pipeline.infra.errors import UserError
from pipeline.training.settings import PRESETS

ENCODINGS: tuple[str, ...] = (*FEATURE_ENCODINGS, NO_FEATURES)


def _frames(listing: Any, n: int) -> list[np.ndarray]:
    from pipeline.data.prepare import _decode

    out = []
    for ref in listing.items[:n]:
        decoded = _decode(ref)
        if not isinstance(decoded, str):
            out.append(decoded)
    return out


def codec_rows(front: Any, frames: list[tuple[np.ndarray, bytes]]) -> dict[str, dict[str, float]]:
    """Per encoding: bytes per frame (tar), encode/decode ms (median), max and RMS error of s / channel std."""
    from pipeline.data.prepare import front_features

    feats = [front_features(front, [a])[0] for a, _ in frames]
    std = np.maximum(np.stack(feats).std(axis=(0, 2, 3)), 1e-8)[:, None, None]
    rows: dict[str, dict[str, float]] = {}
    png = float(np.mean([len(p) for _, p in frames]))
    for encoding in ENCODINGS:
        sizes, enc_ms, dec_ms, err_max, err_rms = [], [], [], [], []
        for (_, png_bytes), s in zip(frames, feats):
            t = time.perf_counter()
            members = {} if encoding == NO_FEATURES else encode_features(s, encoding)
            enc_ms.append((time.perf_counter() - t) * 1e3)
            sizes.append(tar_bytes({"png": png_bytes, "json": b"x" * 160, **members}))
            if encoding == NO_FEATURES:
                continue
            t = time.perf_counter()
            back = decode_features(members)
            dec_ms.append((time.perf_counter() - t) * 1e3)
            err = np.abs(back - s) / std
            err_max.append(float(err.max()))
            err_rms.append(float((err**2).mean()))  # mean square per frame: the RMS is over all frames
        rows[encoding] = {
            "bytes": float(np.mean(sizes)),
            "x_png": float(np.mean(sizes)) / png,
            "encode_ms": statistics.median(enc_ms),
            "decode_ms": statistics.median(dec_ms) if dec_ms else 0.0,
            "err_max": max(err_max, default=0.0),
            "err_rms": float(np.sqrt(np.mean(err_rms))) if err_rms else 0.0,
        }
    return rows


def train_effect(
    shards: str,
    reference: str,
    seed: int,
    steps: int,
    lmbda: float,
    gamma: float,
    gamma_mode: str,
    start: str | None = None,
) -> dict[str, float]:
    """Train proposed (the mini study's configuration) ``steps`` steps from ``seed`` (and from the weights of the
    zoo checkpoint ``start``, at the quickstart's fine-tuning lr, when given) on ``shards`` (s stored, or
    computed from x on image-only shards), then its val D_s and loss on one fixed crop of every validation frame
    of ``reference`` (float16 shards); both prepared from the same frames and front, so the statistics agree."""
    import torch

    from dvcm.checkpoint import load_checkpoint
    from dvcm.loss import ScalableRDLoss, feature_weight
    from dvcm.registry import build, codec_spec
    from dvcm.train_utils import configure_optimizers
    from dvcm.yolo import build_yolov3
    from dvcm.zoo import mini_detector, zoo_checkpoint
    from pipeline.data.shards import feature_stats, make_loader, read_dataset_info
    from pipeline.training.loop import batch_on_device
    from pipeline.training.step import train_step

    mini = PRESETS["mini"]
    weights, cfg, _ = mini_detector()
    front = build_yolov3(weights, cfg=cfg).front
    s_mean, s_std = feature_stats(read_dataset_info(reference))
    torch.manual_seed(seed)
    model = build(
        "proposed", front=front, N=mini["N"], **codec_spec("proposed").parse(codec_spec("proposed").defaults("mini")[0])
    )
    model.set_feature_stats(s_mean, s_std)
    if start is not None:  # as a fine-tuned trial starts (pipeline.training.loop.warm_start)
        model.load_state_dict(load_checkpoint(zoo_checkpoint(start))[0].state_dict())
    loss = ScalableRDLoss(lmbda, feature_weight(lmbda, gamma, gamma_mode), s_mean=s_mean, s_std=s_std)
    net_opt, aux_opt = configure_optimizers(model, 1e-4 if start else 1e-3, 1e-3)
    model.train()
    cpu = torch.device("cpu")
    loader = make_loader(
        shards,
        "train",
        crop=mini["crop"],
        batch_size=mini["batch_size"],
        shuffle_buffer=mini["shuffle_buffer"],
        seed=seed,
        repeat=True,
    )
    for step, (x, s) in enumerate(loader):
        if step >= steps:
            break
        train_step(model, model, loss, net_opt, aux_opt, batch_on_device(x, s, cpu, model.front))
    model.eval()
    sums = {"D_s": 0.0, "loss": 0.0}
    n = 0
    with torch.no_grad():  # every validation frame, one fixed crop each (the loader's seed 0)
        for x, s in make_loader(reference, "val", crop=mini["crop"], batch_size=1, shuffle_buffer=0, seed=0):
            terms = loss(model(x, s), x)
            for k in sums:
                sums[k] += float(terms[k])
            n += 1
    if n == 0:
        raise RuntimeError(f"{reference} has no validation frame of at least {mini['crop']} pixels")
    return {k: v / n for k, v in sums.items()}


def run_shards_bench(
    sequences: int = 12,
    frames_per_sequence: int = 3,
    steps: int = 400,
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    lmbda: float = 0.0932,
    threads: int = 2,
    work_dir: Path | None = None,
    training: bool = True,
    start: str = "zoo",
) -> dict[str, Any]:
    """Print the encodings table (bytes, time, error, training effect) and the default it supports."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from dvcm.yolo import build_yolov3
    from dvcm.zoo import codec_zoo, mini_detector
    from pipeline.data.prepare import run_prepare
    from pipeline.data.sample_data import generate_sample
    from pipeline.data.sources import list_source

    torch.set_num_threads(threads)
    console = Console(width=160)
    zoo_name, zoo = min(
        ((n, e) for n, e in codec_zoo().items() if e["model"] == "proposed"),
        key=lambda ne: abs(math.log(ne[1]["lmbda"] / lmbda)),
    )  # its loss: the mini study's, γ 10 scaled
    if start not in ("zoo", "scratch"):
        raise UserError(f"--start {start!r} is not one of: zoo, scratch")
    init = zoo_name if start == "zoo" else None
    with tempfile.TemporaryDirectory(prefix="dvcm-bench-shards-") as tmp:
        work = Path(work_dir or tmp)
        sample = generate_sample(
            work / "data",
            seed=0,
            train_sequences=sequences,
            val_sequences=max(2, sequences // 3),
            coco_images=0,
            kodak_images=0,
        )
        listing = list_source("sample", sample.vimeo_root, frames_per_sequence)
        batch = PRESETS["mini"]["batch_size"]
        if training and sum(r.split == "train" for r in listing.items) < batch:
            raise UserError(
                f"--sequences {sequences} gives fewer training frames than a batch ({batch}); "
                f"use at least {-(-batch // frames_per_sequence)}"
            )
        weights, cfg, _ = mini_detector()
        mini = build_yolov3(weights, cfg=cfg)
        frames = _frames(listing, 8)
        fronts = {
            "mini YOLOv3 (trained on the world, 32 channels)": mini.front,
            "standard YOLOv3, RANDOM weights (256 channels)": build_yolov3(None, seed=0).front,
        }
        codec = {name: codec_rows(front.eval(), frames) for name, front in fronts.items()}
        effect: dict[str, list[dict[str, float]]] = {}
        if training:
            shards = {}
            for encoding in ENCODINGS:
                shards[encoding] = str(work / f"shards-{encoding}")
                run_prepare(
                    listing,
                    shards[encoding],
                    frames=frames_per_sequence,
                    shard_size=16,
                    feature_encoding=encoding,
                    use_ray=False,
                    progress=False,
                    front=mini.front,
                    yolo_provenance=dict(mini.provenance),
                )
            with console.status("") as status:
                for encoding in ENCODINGS:
                    for seed in seeds:
                        status.update(f"training proposed {steps} steps on {encoding} shards, seed {seed}")
                        effect.setdefault(encoding, []).append(
                            train_effect(
                                shards[encoding],
                                shards["float16"],
                                seed,
                                steps,
                                lmbda,
                                zoo["gamma"],
                                zoo.get("gamma_mode", "fixed"),
                                init,
                            )
                        )
    png = len(frames) and float(np.mean([len(p) for _, p in frames]))
    for name, rows in codec.items():
        table = Table(
            title=f"feature encodings, {name}: {len(frames)} world frames of 448x256 (PNG {png / 1e3:.0f} KB)"
        )
        for col in ("encoding", "KB/frame", "× PNG", "encode ms", "decode ms", "max |err|/σ", "RMS err/σ"):
            table.add_column(col, justify="left" if col == "encoding" else "right")
        for encoding, r in rows.items():
            table.add_row(
                encoding,
                f"{r['bytes'] / 1e3:.1f}",
                f"{r['x_png']:.2f}",
                f"{r['encode_ms']:.2f}",
                f"{r['decode_ms']:.2f}" if encoding != NO_FEATURES else "(V_front)",
                f"{r['err_max']:.4f}",
                f"{r['err_rms']:.5f}",
            )
        console.print(table)
    result: dict[str, Any] = {"codec": codec, "effect": effect}
    if effect:
        what = f"fine-tuned from zoo:{init} at lr 1e-4" if init else "from scratch at lr 1e-3"
        result["default"] = _effect_table(
            console, effect, codec[next(iter(codec))], f"{steps} steps {what}", seeds, lmbda
        )
    return result


def within_noise(runs: list[float], reference: list[float]) -> tuple[float, float, bool]:
    """(difference of means, its noise, whether it is within it): the noise is twice the standard error of the
    difference, from both encodings' seed-to-seed sd (a run on other features follows another trajectory, so
    its own spread counts as much as float16's)."""
    n, m = len(runs), len(reference)
    delta = statistics.fmean(runs) - statistics.fmean(reference)
    if n < 2 or m < 2:
        return delta, float("nan"), False
    noise = 2 * math.sqrt(statistics.variance(runs) / n + statistics.variance(reference) / m)
    return delta, noise, abs(delta) <= noise


def _effect_table(
    console: Any,
    effect: dict[str, list[dict[str, float]]],
    sizes: dict[str, dict[str, float]],
    steps: str,
    seeds: tuple[int, ...],
    lmbda: float,
) -> str:
    """Print each encoding's training effect (per seed, mean, difference from float16 and its noise); return the
    smallest stored encoding within noise on both metrics."""
    from rich.table import Table

    table = Table(
        title=f"training effect: proposed (mini), λ {lmbda}, {steps}, seeds "
        f"{', '.join(map(str, seeds))}; validated on one fixed crop of each float16 validation frame"
    )
    for col in ("encoding", "metric", "per seed", "mean", "Δ vs float16", "noise (2 SE)", "within noise"):
        table.add_column(col, justify="left" if col in ("encoding", "metric", "per seed") else "right")
    within: dict[str, bool] = {}
    for encoding, runs in effect.items():
        ok = True
        for k in ("D_s", "loss"):
            values = [e[k] for e in runs]
            delta, noise, inside = within_noise(values, [e[k] for e in effect["float16"]])
            ok = ok and inside
            table.add_row(
                encoding if k == "D_s" else "",
                f"val {k}",
                " ".join(f"{v:.3f}" for v in values),
                f"{statistics.fmean(values):.4f}",
                f"{delta:+.4f}",
                f"{noise:.4f}",
                "yes" if inside else "no",
                end_section=k == "loss",
            )
        within[encoding] = ok
    console.print(table)
    stored = [e for e in FEATURE_ENCODINGS if within.get(e)]
    best = min(stored, key=lambda e: sizes[e]["bytes"]) if stored else "float16"
    console.print(
        f"smallest stored encoding within noise on both: {best} ({sizes[best]['bytes'] / 1e3:.1f} KB per "
        f"frame with the mini YOLOv3's features); image-only shards (none): "
        f"{'within' if within.get(NO_FEATURES) else 'not within'} noise"
    )
    return best
