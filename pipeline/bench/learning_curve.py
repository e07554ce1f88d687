"""``bench learning-curve``: how many steps a trial needs, and at which lr, measured on a study's own data.

Each (model, lr) trains from scratch (or from ``--init``, a warm start) at one (λ, γ) with the training loop the sweep runs
(:func:`pipeline.training.loop.setup` and :func:`~pipeline.training.loop.train_epoch`), at a constant lr (no
plateau drops, so the curve shows what steps alone buy). Every ``every`` steps it saves a checkpoint and scores it
the way ``evaluate`` does (:func:`pipeline.evaluation.tasks.run_codec_chunk`, real rANS bytes): PSNR and bpp on the
Kodak-like images, the base layer's bpp and mAP@0.5 (pycocotools, against the ground truth) on the COCO-like ones,
and the validation loss. It prints a table per run and draws PSNR, PSNR over JPEG's at the same bpp, and relative mAP against steps.

"train s" counts the training steps with their loader and each point's validation, not the scoring. The figures
are written to ``--json`` after every point (temp file, then rename); a rerun with the same file and the same data
keeps the runs it finished and redoes the others (a run of the same name with other steps is trained again).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.infra.errors import UserError


@dataclass(frozen=True)
class CurveData:
    """Where a learning curve trains and scores: a study's shards and held-out test images."""

    shards: Path
    coco_root: Path
    coco_annotations: Path
    kodak_root: Path
    yolo_weights: str | None  # a resolved file (pipeline.infra.yolo_files); None: the seeded random-weight YOLOv3
    yolo_cfg: str | None

    @classmethod
    def of_study(cls, study: Path, yolo_weights: str, yolo_cfg: str | None = None) -> CurveData:
        """The folders a ``reproduce`` run writes (``shards/``, ``data/coco2014``, ``data/kodak``); ``yolo_weights`` as
        every command takes it (a file, or a bundled detector's name)."""
        from pipeline.data.sample_data import SampleData
        from pipeline.infra.yolo_files import yolo_files

        weights, cfg = yolo_files(yolo_weights, yolo_cfg)
        sample = SampleData.at(study / "data")
        data = cls(study / "shards", sample.coco_root, sample.coco_annotations, sample.kodak_root, weights, cfg)
        missing = [str(p) for p in (data.shards, data.coco_annotations, data.kodak_root) if not p.exists()]
        if missing:
            raise UserError(
                f"{study} is not a reproduce study folder (missing {', '.join(missing)}); "
                "run `dvcm-pipeline reproduce --plan-only` or the study first, or give --study another folder"
            )
        return data


@dataclass(frozen=True)
class CurveRun:
    """One curve: a model trained from scratch at (λ, γ) and a constant lr."""

    model: str
    lr: float
    lmbda: float
    gamma: float
    steps: int
    every: int
    seed: int = 0
    preset: str = "mini"  # the training preset (pipeline.training.settings): crop, batch, N, the configuration
    init: str | None = None  # a dvcm checkpoint to start from (a warm start, as the study's later rounds)

    @property
    def key(self) -> str:
        start = f"-from-{Path(self.init).stem}" if self.init else ""
        return f"{self.model}-lr{self.lr:g}-l{self.lmbda:g}-g{self.gamma:g}-s{self.seed}{start}"


def _trial(run: CurveRun, data: CurveData, yolo_provenance: dict[str, Any], storage: str):  # -> TrialConfig
    from dvcm.registry import codec_spec
    from pipeline.training.settings import resolve
    from pipeline.training.trial import TrialConfig

    flags = {
        "shards": str(data.shards),
        "yolo_weights": data.yolo_weights,
        "yolo_cfg": data.yolo_cfg,
        "lr": run.lr,
        "gamma": run.gamma,
        "gamma_mode": "fixed",
        "steps_per_epoch": run.every,
        "epochs": max(1, run.steps // run.every),
        "seed": run.seed,
    }
    settings = resolve(run.preset, {}, flags)
    spec = codec_spec(run.model)
    config = spec.parse(spec.defaults(run.preset)[0])
    return TrialConfig(
        run.key, run.model, config, run.lmbda, settings.training, settings.resources, storage, yolo_provenance
    )


def _score(checkpoint: str, data: CurveData, coco: tuple[list, Any], kodak: list, threads: int) -> dict[str, float]:
    """PSNR/bpp on the Kodak-like images; base bpp and mAP@0.5 on the COCO-like ones (as ``evaluate`` scores)."""
    import numpy as np

    from pipeline.evaluation import coco as coco_eval
    from pipeline.evaluation.tasks import Settings, forget_codec, run_codec_chunk

    s = Settings(yolo_weights=data.yolo_weights, yolo_cfg=data.yolo_cfg, threads=threads)
    k = run_codec_chunk(checkpoint, "kodak", kodak, s)
    c = run_codec_chunk(checkpoint, "coco", coco[0], s)
    forget_codec(checkpoint)
    stats = coco_eval.evaluate(coco[1], c["detections"], [int(i.image_id) for i in coco[0]])
    return {
        "psnr": float(np.mean([r["psnr"] for r in k["rows"]])),
        "bpp": float(np.mean([r["bpp"] for r in k["rows"]])),
        "bpp_base": float(np.mean([r["bpp"] for r in c["rows"]])),
        "map50": float(stats["AP50"]),
    }


def uncompressed_map50(data: CurveData, coco: tuple[list, Any], threads: int) -> float:
    """The detector's mAP@0.5 on the original COCO-like images: the 100 % of the relative mAP."""
    from pipeline.evaluation import coco as coco_eval
    from pipeline.evaluation.tasks import Settings, run_anchor_chunk

    s = Settings(yolo_weights=data.yolo_weights, yolo_cfg=data.yolo_cfg, threads=threads)
    out = run_anchor_chunk("uncompressed", "coco", coco[0], s)
    dets = out["detections"]["None"]
    return float(coco_eval.evaluate(coco[1], dets, [int(i.image_id) for i in coco[0]])["AP50"])


JPEG_QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)


def jpeg_curve(data: CurveData, kodak: list, threads: int) -> list[dict[str, float]]:
    """Pillow JPEG's mean bpp and PSNR on the Kodak-like images at each quality (the anchor ``evaluate`` runs)."""
    import numpy as np

    from pipeline.evaluation.tasks import Settings, run_anchor_chunk

    s = Settings(yolo_weights=data.yolo_weights, yolo_cfg=data.yolo_cfg, threads=threads)
    rows = run_anchor_chunk("jpeg", "kodak", kodak, s, params=JPEG_QUALITIES)["rows"]
    return [
        {
            "quality": q,
            "bpp": float(np.mean([r["bpp"] for r in rows if r["param"] == q])),
            "psnr": float(np.mean([r["psnr"] for r in rows if r["param"] == q])),
        }
        for q in JPEG_QUALITIES
    ]


def jpeg_psnr_at(curve: list[dict[str, float]], bpp: float) -> float | None:
    """JPEG's PSNR at ``bpp``, interpolated in log bpp (None outside the qualities' range)."""
    from pipeline.evaluation import findings

    return findings.jpeg_psnr_at([(math.log(p["bpp"]), p["psnr"]) for p in curve], math.log(bpp))


def train_curve(
    run: CurveRun,
    data: CurveData,
    provenance: dict[str, Any],
    coco: tuple[list, Any],
    kodak: list,
    threads: int,
    on_point: Any = None,  # callable(point) after every scored point
    keep: Path | None = None,  # a folder: the run's last checkpoint is kept there as ``{run.key}.pt``
) -> list[dict[str, float]]:
    """Train ``run`` from scratch, scoring a checkpoint every ``run.every`` steps; returns the points."""
    import torch

    from dvcm.checkpoint import save_checkpoint
    from pipeline.training.loop import place, setup, train_epoch, validate, warm_start

    torch.set_num_threads(threads)
    points: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        w = setup(_trial(run, data, provenance, tmp), 0, 1, torch.device("cpu"))
        if run.init:
            warm_start(w, run.init)  # the weights only, with fresh optimizers, as a study's warm-started trial
        place(w, None)
        t0 = time.perf_counter()
        for epoch in range(1, run.steps // run.every + 1):
            train_epoch(w, epoch)
            val, _ = validate(w)
            train_seconds = time.perf_counter() - t0
            path = Path(tmp) / f"step{epoch * run.every}.pt"
            extra = {"trial": run.key, "lmbda": run.lmbda, "gamma": run.gamma, "gamma_mode": "fixed"}
            save_checkpoint(path, w.model, extra=extra)
            point = {"step": epoch * run.every, "train_seconds": train_seconds, "val_loss": float(val["loss"])}
            point |= _score(str(path), data, coco, kodak, threads)
            points.append(point)
            if on_point:
                on_point(point)
            t0 = time.perf_counter() - train_seconds  # scoring time is not training time
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            tmp_kept = keep / f".{run.key}.pt.tmp"
            try:
                shutil.copyfile(path, tmp_kept)
                tmp_kept.replace(keep / f"{run.key}.pt")
            finally:
                tmp_kept.unlink(missing_ok=True)
    return points


SCHEMA = "dvcm-bench-learning-curve/1"


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    from pipeline.infra.atomic import atomic_write_json, json_safe

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, json_safe(doc))


def _read_json(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The figures ``path`` holds for the same data, detector and images; refused in one line otherwise."""
    if not path.is_file():
        return {"schema": SCHEMA, "fingerprint": fingerprint, "runs": {}}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--json {path} is not a learning curve's JSON ({exc}); give another --json") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("runs"), dict):
        raise UserError(f"--json {path} is not a learning curve's JSON (no {SCHEMA} schema); give another --json")
    if doc.get("fingerprint") != fingerprint:
        raise UserError(
            f"--json {path} holds curves of other data, detector or images ({doc.get('fingerprint')}); "
            "give another --json, or the same --study, --yolo-weights and image counts"
        )
    return doc


def plateau_step(points: list[dict[str, float]], key: str, tolerance: float) -> int | None:
    """The first step after which ``key`` never rises by more than ``tolerance`` again (None: still rising at the
    end, within the run's steps)."""
    for i, p in enumerate(points[:-1]):
        if max(q[key] for q in points[i + 1 :]) - p[key] <= tolerance:
            return int(p["step"])
    return None


def relative(value: float, full: float) -> float:
    """``value`` in % of the uncompressed ``full`` (NaN where the detector finds nothing uncompressed either)."""
    return 100 * value / full if full > 0 else float("nan")


def plot_curves(doc: dict[str, Any], out: Path) -> None:
    """PSNR and the base layer's relative mAP@0.5 against training steps, a line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_psnr, ax_gain, ax_map) = plt.subplots(1, 3, figsize=(17, 4.5))
    full = doc["uncompressed_map50"]
    for key, run in doc["runs"].items():
        start = start_step(doc, run)  # a warm start is drawn (dashed) from where its checkpoint's run ended
        style = {"marker": "o", "label": key, "ls": "--" if run["run"].get("init") else "-"}
        steps = [start + p["step"] for p in run["points"]]
        ax_psnr.plot(steps, [p["psnr"] for p in run["points"]], **style)
        ax_map.plot(steps, [relative(p["map50"], full) for p in run["points"]], **style)
        gains = [
            (start + p["step"], p["psnr"] - p["jpeg_psnr"]) for p in run["points"] if p.get("jpeg_psnr") is not None
        ]
        if gains:
            ax_gain.plot(*zip(*gains), **style)
    ax_gain.axhline(0, color="grey", lw=0.8, ls=":")
    ax_gain.set(xlabel="training steps", ylabel="PSNR − JPEG's PSNR at the same bpp, dB", title="x̂ against JPEG")
    for level in (85, 98):  # the paper's region (Fig. 4a): the base-layer curve from at most 85 % to at least 98 %
        ax_map.axhline(level, color="grey", lw=0.8, ls=":")
        ax_map.annotate(f"{level} %", (1.0, level), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                        fontsize=8, color="grey")  # fmt: skip
    ax_psnr.set(xlabel="training steps", ylabel="PSNR dB (Kodak-like)", title="x̂ quality against steps")
    ax_map.set(xlabel="training steps", ylabel="base-layer mAP@0.5, % of uncompressed", title="ŝ → detector")
    ax_map.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle(doc["title"], fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def start_step(doc: dict[str, Any], run: dict[str, Any], depth: int = 0) -> int:
    """The steps behind a run's first one: 0 from scratch; for a warm start, where the run (in ``doc``) whose kept
    checkpoint it started from ended, that run's own start included; 0 where that run is not in ``doc``."""
    init = run["run"].get("init")
    before = doc["runs"].get(Path(init).stem) if init else None
    if not before or not before["points"] or depth > len(doc["runs"]):  # unknown, or a loop of names
        return 0
    return start_step(doc, before, depth + 1) + int(before["points"][-1]["step"])


def _print_run(con: Any, key: str, run: dict[str, Any], full: float) -> None:
    from rich.table import Table

    init = run["run"].get("init")
    table = Table(title=f"{key} (constant lr, {f'warm-started from {Path(init).name}' if init else 'from scratch'})")
    cols = ("step", "train s", "val loss", "PSNR dB", "bpp", "JPEG dB at bpp", "base bpp", "mAP@0.5", "% of uncompr.")
    for col in cols:
        table.add_column(col, justify="right")
    for p in run["points"]:
        table.add_row(
            str(p["step"]),
            f"{p['train_seconds']:.0f}",
            f"{p['val_loss']:.2f}",
            f"{p['psnr']:.2f}",
            f"{p['bpp']:.3f}",
            "n/a" if p.get("jpeg_psnr") is None else f"{p['jpeg_psnr']:.2f}",
            f"{p['bpp_base']:.4f}",
            f"{p['map50']:.3f}",
            f"{relative(p['map50'], full):.1f}",
        )
    con.print(table)
    if len(run["points"]) < 2:
        return
    psnr_at, map_at = plateau_step(run["points"], "psnr", 0.1), plateau_step(run["points"], "map50", 0.01)
    con.print(
        f"{key}: PSNR stops rising (by more than 0.1 dB) after step {psnr_at or 'n/a (still rising)'}; "
        f"mAP@0.5 (by more than 0.01) after step {map_at or 'n/a (still rising)'}"
    )


@contextlib.contextmanager
def _json_lock(json_file: Path) -> Iterator[None]:
    """One bench at a time per ``--json`` (each rewrites the whole file after every point)."""
    json_file.parent.mkdir(parents=True, exist_ok=True)
    with open(json_file.parent / f".{json_file.name}.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another bench learning-curve is writing --json {json_file}; wait for it (a rerun keeps its runs) or "
                "give another --json"
            ) from None
        yield


def run_learning_curve(
    data: CurveData,
    runs: list[CurveRun],
    coco_images: int,
    kodak_images: int,
    json_file: Path,
    plot_file: Path,
    threads: int = 2,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Train and score every run (module docstring); keeps the runs ``json_file`` already holds in full."""
    from rich.console import Console

    from dvcm.yolo import build_yolov3
    from pipeline.evaluation.targets import coco_items, folder_items
    from pipeline.training.sweep import check_shards

    con = Console()
    provenance = dict(build_yolov3(data.yolo_weights, cfg=data.yolo_cfg).provenance)
    check_shards(str(data.shards), provenance)  # shards of another detector: one line, before anything is scored
    items, gt = coco_items(data.coco_root, data.coco_annotations, None)
    coco, kodak = (items[:coco_images], gt), folder_items(data.kodak_root)[:kodak_images]
    fingerprint = {
        **{k: str(v) for k, v in dataclasses.asdict(data).items()},
        "coco_images": len(coco[0]),
        "kodak_images": len(kodak),
    }
    with _json_lock(json_file):
        doc = _read_json(json_file, fingerprint)
        doc["title"] = (
            f"learning curves on {data.shards} ({len(coco[0])} COCO-like, {len(kodak)} Kodak-like test images)"
        )
        if "uncompressed_map50" not in doc:
            doc["uncompressed_map50"] = uncompressed_map50(data, coco, threads)
        if "jpeg" not in doc:
            doc["jpeg"] = jpeg_curve(data, kodak, threads)
        full = doc["uncompressed_map50"]
        con.print(f"uncompressed mAP@0.5 of {data.yolo_weights} on the {len(coco[0])} COCO-like images: {full:.3f}")
        for run in runs:
            done = doc["runs"].get(run.key)
            if done and done.get("complete") and done["run"] == dataclasses.asdict(run):
                missing = keep is not None and not (keep / f"{run.key}.pt").is_file()
                con.print(
                    f"{run.key}: kept from {json_file}"
                    + (f" (its checkpoint was not kept: no {keep / f'{run.key}.pt'}; give another --json to train it)"
                       if missing else "")
                )  # fmt: skip
                continue
            if done:
                con.print(f"{run.key}: trained again (the file holds an unfinished run, or one with other steps)")
            entry: dict[str, Any] = {"run": dataclasses.asdict(run), "points": [], "complete": False}
            doc["runs"][run.key] = entry

            def on_point(point: dict[str, Any], key: str = run.key, entry: dict[str, Any] = entry) -> None:
                point["jpeg_psnr"] = jpeg_psnr_at(doc["jpeg"], point["bpp"])
                entry["points"].append(point)
                _write_json(json_file, doc)
                con.print(
                    f"{key} step {point['step']}: PSNR {point['psnr']:.2f} dB at {point['bpp']:.3f} bpp, base mAP@0.5 "
                    f"{point['map50']:.3f} ({relative(point['map50'], full):.1f} %) at {point['bpp_base']:.4f} bpp, "
                    f"val loss {point['val_loss']:.2f}, {point['train_seconds']:.0f} s of training"
                )

            train_curve(run, data, provenance, coco, kodak, threads, on_point, keep)
            entry["complete"] = True
            _write_json(json_file, doc)
        for key, entry in doc["runs"].items():
            _print_run(con, key, entry, full)
        plot_curves(doc, plot_file)
        con.print(f"figures: {json_file}; plot: {plot_file}")
        return doc
