"""``dvcm-pipeline quickstart``: the whole workflow on the embedded sample set, from one command.

In order, each step through the job's own Python function (no subprocess):

1. generate the download-free sample set (scenes of the synthetic world, :mod:`pipeline.data.world`) and
   ``prepare`` its Vimeo-like part into shards with Ray, s from the detector's front;
2. ``sweep`` ``proposed`` and ``choi2022`` at two λ each in the study's configurations (the ``mini``
   preset), trials in parallel, each fine-tuning the bundled zoo checkpoint of its model at the nearest λ
   (:mod:`dvcm.zoo`, trained by ``dvcm-pipeline reproduce`` with the same detector on the same world);
3. ``evaluate`` every trial on the sample's COCO-like and Kodak-like images (the world's test split)
   with the installed anchors;
4. write the HTML ``report``;
5. print a summary table and the BD-rate of ``proposed`` against ``choi2022`` on the base layer:
   on the feature SNR of ŝ against V_front(x) (real base-layer bitstreams, each channel's MSE
   normalised by its variance: the distortion D_s that training minimises), and on mAP@0.5
   (the BD-rate is "n/a" with the reason when a curve is not increasing in rate, never a number
   made up from it);
6. print the ``mlflow ui`` command that opens the runs.

The detector is the bundled mini YOLOv3 (``--yolo-weights mini``, :mod:`dvcm.zoo`: width 1/8, the
world's 8 classes, trained by ``train-detector``), and mAP is scored against the world's ground
truth. ``--yolo-weights random`` runs the seeded random-weight YOLOv3 instead; a random detector finds
none of the world's classes, so its mAP is scored against its own detections on the uncompressed
images, and every output says it is random.

Training: 3 epochs × 100 steps per trial at a tenth of the study's learning rate, from the zoo's
checkpoints: a few minutes of CPU rather than the hour the zoo's training took, so that the curves are
those of trained codecs. With another detector (``--yolo-weights random`` or a user's weights) the zoo's
codecs do not fit its s, and the trials train from scratch (4 × 200 steps at lr 1e-3): then the curves are
often not increasing in rate and the BD-rates "n/a". ``--seed`` (crops and order) shows the spread.

Everything lands in ``--out`` (default ``./dvcm-quickstart``). A rerun into the same folder
resumes: finished shards, trials and evaluations are skipped; a new folder starts afresh.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dvcm.zoo import MINI_DETECTOR
from pipeline.evaluation.anchors import DEFAULT_ANCHORS
from pipeline.infra.errors import UserError
from pipeline.infra.yolo_files import yolo_files
from pipeline.training.settings import LEGACY_SETTINGS, SweepSettings, resolve, resume_record
from pipeline.workflows import stages
from pipeline.workflows.stages import StudyContext, mlflow_ui_command

DEFAULT_OUT = Path("dvcm-quickstart")
DEFAULT_LAMBDAS = "0.0018,0.0932"
# Training per trial: each trial fine-tunes the zoo's checkpoint of its model and λ (dvcm.zoo, trained by
# `reproduce` on the same world with the same detector): 3 epochs x 100 steps of the mini preset's 128x128
# crops, batch 8, at a tenth of the study's learning rate, stopping earlier on the validation plateau.
# With another detector the zoo does not fit its s: the trials train from scratch, 4 x 200 steps at 1e-3.
TRAINING_PRESET = "mini"
FROM_ZOO_TRAINING: dict[str, Any] = {"epochs": 3, "steps_per_epoch": 100, "lr": 1e-4}
FROM_SCRATCH_TRAINING: dict[str, Any] = {"epochs": 4, "steps_per_epoch": 200, "lr": 1e-3}
# The sample set: many short scenes rather than a few long ones (the same prepare time; measured:
# ŝ SNR on unseen images 1.7 dB with 24 scenes x 2 frames against 0.3 dB with 4 scenes x 7 frames).
SAMPLE_TRAIN_SEQUENCES, SAMPLE_VAL_SEQUENCES, SAMPLE_FRAMES = 24, 4, 2
MODELS = ("proposed", "choi2022", "bmshj2018")  # bmshj2018: the single-layer codec, for the cost of scalability
SWEEP_NAME = "quickstart"
PAPER_BD_RATE = "-40.6 %"  # the paper's base-layer BD-rate of proposed against Choi & Bajić on mAP@0.5 (Sec. 4.2)
PAPER_SAVINGS = "about 55 %, at about 0.30 vs 0.58 bpp"  # the paper's bit savings at 2 % mAP loss (Sec. 4.2)
BASE_METRIC = "coco_s_snr"  # the base layer: COCO path, base-layer bpp vs feature SNR of ŝ (normalised per channel)
MAP_METRIC = "coco_map50"  # the base layer: COCO path, base-layer bpp vs mAP@0.5


@dataclass
class TrialSummary:
    """One row of the summary table."""

    trial: str
    model: str
    lmbda: float
    run_id: str | None
    gamma: float = math.nan
    gamma_mode: str = "fixed"
    bpp_base: float = math.nan
    bpp_enh: float = math.nan
    bpp_coco_base: float = math.nan
    psnr: float = math.nan
    d_s: float = math.nan
    map50: float = math.nan
    relative_map: float = math.nan
    s_psnr: float = math.nan
    s_snr: float = math.nan


@dataclass
class QuickstartResult:
    """What one quickstart run produced (returned for tests and notebooks)."""

    out: Path
    shards: Path
    eval_dir: Path
    report: Path
    tracking_uri: str
    sweep_state: dict[str, Any]
    trials: list[TrialSummary]
    uncompressed_map50: float
    bd_rate_base: float  # on feature SNR of ŝ
    bd_note: str
    bd_rate_map: float  # on mAP@0.5
    bd_note_map: str
    detector: str
    seconds: dict[str, float] = field(default_factory=dict)
    runs_url: str = ""
    map_reference: str = "gt"  # what mAP is scored against: "gt" (the world's annotations) or "uncompressed"
    from_zoo: bool = False  # the trials fine-tuned the zoo's checkpoints (else they trained from scratch)
    # BD-rate on Kodak PSNR of each scalable codec against bmshj2018, with its note: the cost of scalability
    scalability_cost: dict[str, tuple[float, str]] = field(default_factory=dict)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def mlflow_runs_url(tracking_uri: str, experiment_id: str) -> str:
    """The address of the experiment's runs view: on the tracking server itself, or where ``mlflow ui`` serves
    by default (127.0.0.1:5000).

    MLflow 3's UI takes its GenAI/model-training switch from this URL parameter, else from the browser's
    storage (GenAI by default) whatever the experiment's kind tag says: without it a fresh browser opens
    the experiment on the GenAI overview of traces (MLflow 3.17; mlflow/mlflow#24498)."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _points(res: dict[str, Any], dataset: str) -> list[dict[str, Any]]:
    return list((res.get("datasets", {}).get(dataset) or {}).get("points", []))


def summarize_trials(
    state: dict[str, Any], eval_results: dict[str, dict], tracking_uri: str
) -> tuple[list[TrialSummary], float]:
    """Per-trial rows (real-bitstream rates, PSNR, relative mAP; D_s from the last validation) and the uncompressed mAP."""
    from pipeline.infra import tracking

    unc = next(
        (p.get("map50") for p in _points(eval_results.get("anchors", {}), "coco") if p["codec"] == "uncompressed"),
        math.nan,
    )
    unc = float(unc) if _finite(unc) else math.nan
    c = tracking.client(tracking_uri)
    rows = []
    for name, entry in state["trials"].items():
        run_id = entry.get("run_id")
        res = eval_results.get(run_id or "", {})
        row = TrialSummary(
            name, str(res.get("model") or name.split("-")[0]), float(res.get("lmbda") or math.nan), run_id
        )
        for p in _points(res, "kodak"):
            row.bpp_base, row.bpp_enh, row.psnr = (
                p.get("bpp_base", math.nan),
                p.get("bpp_enh", math.nan),
                p.get("psnr", math.nan),
            )
        for p in _points(res, "coco"):
            row.bpp_coco_base, row.map50 = p.get("bpp_base", math.nan), p.get("map50", math.nan)
            row.s_psnr, row.s_snr = p.get("s_psnr", math.nan), p.get("s_snr", math.nan)
        if _finite(row.map50) and _finite(unc) and unc > 0:
            row.relative_map = row.map50 / unc
        if run_id:
            run = c.get_run(run_id)
            row.d_s = float(run.data.metrics.get("val/D_s", math.nan))
            row.gamma = float(run.data.params.get("gamma", math.nan))
            row.gamma_mode = run.data.params.get("gamma_mode", "fixed")
        rows.append(row)
    return rows, unc


def _training_key(settings: SweepSettings, lambdas: list[float]) -> dict[str, Any]:
    """What names a quickstart sweep; a setting at the value it had before it existed is left out, so that the
    sweeps of an earlier dvcm keep their names (and resume)."""
    record = {k: v for k, v in resume_record(settings).items() if LEGACY_SETTINGS.get(k, object()) != v}
    return json.loads(json.dumps({**record, "lambdas": sorted(float(v) for v in lambdas)}))


def sweep_name(settings: SweepSettings, lambdas: list[float]) -> str:
    """``quickstart`` for the default training settings, else ``quickstart-<digest of the settings>``.

    ``settings`` are the resolved ones (so ``--gamma 1`` is the default γ); λ order does not matter.
    Other settings train other trials: they get their own sweep (next to the default one in the same
    ``--out``) instead of resuming trials trained with different settings.
    """
    from pipeline.infra.tracking import text_digest

    given = _training_key(settings, lambdas)
    default = _training_key(
        resolve(TRAINING_PRESET, {}, {**default_training(), "shards": "-"}),
        [float(v) for v in DEFAULT_LAMBDAS.split(",")],
    )
    if given == default:
        return SWEEP_NAME
    return f"{SWEEP_NAME}-{text_digest(json.dumps(given, sort_keys=True))[:8]}"


def eval_folder(out: Path, name: str) -> Path:
    """Where a sweep's evaluation and report go: ``eval`` for the default sweep, ``eval-<name>`` for others
    (the report reads every result in its folder, so sweeps trained otherwise never share one)."""
    return out / "eval" if name == SWEEP_NAME else out / f"eval-{name}"


def base_layer_bd_rate(
    bd_rows: list[dict[str, Any]], metric: str = BASE_METRIC, test: str = "proposed", reference: str = "choi2022"
) -> tuple[float, str]:
    """BD-rate (%) of ``test`` against ``reference`` on ``metric`` (by default proposed against choi2022 on the base
    layer): the strict Bjøntegaard figure when it is defined, else the one on monotone fits, and a note that says
    which."""
    from pipeline.evaluation.bdrate import FITTED, STRICT, pick_row

    pair = [
        r
        for r in bd_rows
        if r["metric"] == metric and r["reference"].startswith(reference + " (") and r["test"].startswith(test + " (")
    ]
    row = pick_row(pair)
    if row is None:
        return math.nan, f"no {test}/{reference} pair in the BD table (a curve is missing)"
    value = float(row["bd_rate_percent"])
    if not _finite(value):
        return value, str(row.get("note") or "")
    if (row.get("method") or STRICT) == FITTED:
        strict = next((r for r in pair if r.get("method") == STRICT), {})
        return value, (
            f"{FITTED}: on monotone fits of both curves; the strict {STRICT} figure is n/a: "
            f"{strict.get('note') or 'undefined'}"
        )
    return value, f"{STRICT}, strict" + (f"; {row['note']}" if row.get("note") else "")


def base_layer_curve(rows: list[TrialSummary], model: str, quality: str) -> Any:
    """``model``'s base-layer curve (COCO-like bpp from real bitstreams, ``quality``) over the trials."""
    from pipeline.evaluation.bdrate import Curve

    pts = [(t.bpp_coco_base, getattr(t, quality)) for t in rows if t.model == model]
    pts = [(r, q) for r, q in pts if _finite(r) and _finite(q)]
    return Curve(model, tuple(r for r, _ in pts), tuple(q for _, q in pts))


def rates_at_shared_levels(rows: list[TrialSummary], quality: str, label: str, levels: int = 3) -> str:
    """Where no BD figure is defined: the base-layer bpp each of proposed and choi2022 needs for ``levels`` levels
    of ``quality`` that both curves reach (evenly spaced over their shared range), in words; "" if they share none."""
    from pipeline.evaluation.bdrate import monotone_fit, rate_at_quality

    curves = {m: base_layer_curve(rows, m, quality) for m in ("proposed", "choi2022")}
    if any(len(c.sorted()[0]) < 2 for c in curves.values()):
        return ""
    fitted = [monotone_fit(c).sorted()[1] for c in curves.values()]  # the range rate_at_quality reads from
    lo = max(float(q.min()) for q in fitted)
    hi = min(float(q.max()) for q in fitted)
    if hi <= lo:
        return ""
    parts = []
    for q in np.linspace(lo, hi, levels):
        rates = {m: rate_at_quality(c, float(q))[0] for m, c in curves.items()}
        if all(_finite(r) for r in rates.values()):
            parts.append(f"{label} {q:.3g}: " + ", ".join(f"{m} {r:.4f} bpp" for m, r in rates.items()))
    return "; ".join(parts)


def base_layer_savings(rows: list[TrialSummary], uncompressed_map50: float, loss: float = 0.02) -> tuple[float, str]:
    """Bits proposed saves against choi2022 at ``loss`` mAP loss (the paper's 55 %), and a note; n/a and why."""
    from pipeline.evaluation.bdrate import bit_savings

    if not _finite(uncompressed_map50):
        return math.nan, "no mAP on the uncompressed images"
    level = (1 - loss) * uncompressed_map50
    value, note = bit_savings(
        base_layer_curve(rows, "choi2022", "map50"), base_layer_curve(rows, "proposed", "map50"), level
    )
    return value, f"at mAP@0.5 {level:.3f}, {100 * (1 - loss):g} % of {uncompressed_map50:.3f}: {note}"


def base_layer_dominance(rows: list[TrialSummary], quality: str, label: str) -> str:
    """When proposed's base-layer points all lie above and left of choi2022's (or the other way), say so: the
    case in which no BD-rate exists because the curves share no quality range (see ``findings.dominance_text``)."""
    from pipeline.evaluation.findings import dominance_text

    def pairs(model: str) -> list[tuple[float, float]]:
        return [
            (t.bpp_coco_base, getattr(t, quality))
            for t in rows
            if t.model == model and _finite(t.bpp_coco_base) and _finite(getattr(t, quality))
        ]

    return dominance_text(pairs("proposed"), pairs("choi2022"), label)


SUMMARY_COLUMNS = (
    "trial",
    "model",
    "lambda",
    "gamma",
    "bpp_base",
    "bpp_enh",
    "bpp",
    "psnr",
    "d_s_val",
    "coco_bpp_base",
    "s_snr",
    "map50",
    "relative_map",
)


def write_summary_csv(result: QuickstartResult, path: Path) -> Path:
    """Every column of every trial (the terminal shows two narrower tables)."""
    import csv
    import io

    from pipeline.infra.atomic import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    for t in result.trials:
        total = t.bpp_base + t.bpp_enh if _finite(t.bpp_base) and _finite(t.bpp_enh) else math.nan
        w.writerow(
            [
                t.trial,
                t.model,
                t.lmbda,
                t.gamma,
                t.bpp_base,
                t.bpp_enh,
                total,
                t.psnr,
                t.d_s,
                t.bpp_coco_base,
                t.s_snr,
                t.map50,
                t.relative_map,
            ]
        )
    atomic_write_text(path, buf.getvalue())
    return path


def print_summary(result: QuickstartResult) -> None:
    """Two tables that fit 80 columns (the image for humans; the base layer for machines), the BD-rate
    lines and the MLflow UI command. Every column is in ``summary.csv`` and the report."""
    from rich.console import Console
    from rich.table import Table

    def fmt(v: float, spec: str) -> str:
        return format(v, spec) if _finite(v) else "-"

    con = Console()
    seed = (result.sweep_state.get("training_settings") or {}).get("seed", 0)
    gammas = sorted(
        {
            f"{t.gamma:.3g}" + (" scaled by λ" if t.gamma_mode == "scaled" else "")
            for t in result.trials
            if _finite(t.gamma)
        }
    )
    how = "fine-tuned from the zoo" if result.from_zoo else "trained from scratch"
    con.print(
        f"quickstart: {len(result.trials)} trials {how} ({TRAINING_PRESET} preset, seed {seed}, γ {', '.join(gammas) or '-'}, "
        f"sample data; detector: {result.detector})"
    )
    human = Table(title="humans: both layers, Kodak-like images")
    for col in ("trial", "bpp base", "bpp enh", "bpp", "PSNR dB"):
        human.add_column(col, justify="left" if col == "trial" else "right", no_wrap=True)
    machine = Table(title="machines: base layer only, COCO-like images at 512×512")
    for col in ("trial", "bpp", "D_s val", "ŝ SNR dB", "mAP@.5", "rel. mAP"):
        machine.add_column(col, justify="left" if col == "trial" else "right", no_wrap=True)
    for t in result.trials:
        total = t.bpp_base + t.bpp_enh if _finite(t.bpp_base) and _finite(t.bpp_enh) else math.nan
        human.add_row(t.trial, fmt(t.bpp_base, ".4f"), fmt(t.bpp_enh, ".4f"), fmt(total, ".4f"), fmt(t.psnr, ".2f"))
        machine.add_row(
            t.trial,
            fmt(t.bpp_coco_base, ".4f"),
            fmt(t.d_s, ".3f"),
            fmt(t.s_snr, ".2f"),
            fmt(t.map50, ".3f"),
            fmt(t.relative_map, ".3f"),
        )
    con.print(human)
    con.print(machine)
    scored = (
        "the world's ground truth"
        if result.map_reference == "gt"
        else "the uncompressed image's detections (a random detector has no ground truth it could find)"
    )
    con.print(
        "Rates from real bitstreams. D_s: last validation epoch (normalised s). ŝ SNR: feature SNR of the "
        "decoded base layer against V_front(x), -10·log10(mean over channels of MSE_c/Var_c(s)) (0 dB: no better "
        f"than each channel's mean; ŝ PSNR is in the report). mAP@.5 of {result.detector}, scored against "
        f"{scored}; rel. mAP: base-layer mAP / mAP on the uncompressed images "
        f"({fmt(result.uncompressed_map50, '.3f')})."
    )

    def bd_text(value: float, note: str) -> str:
        if _finite(value):
            return f"{value:+.2f} %" + (f"  ({note})" if note else "")
        return f"n/a ({note or 'undefined'})"

    con.print(
        "BD-rate of proposed vs choi2022 on the base layer (base layer, quality = feature SNR of ŝ, "
        f"base-layer bpp from real bitstreams): {bd_text(result.bd_rate_base, result.bd_note)}"
    )
    if not _finite(result.bd_rate_base) and (shared := rates_at_shared_levels(result.trials, "s_snr", "ŝ SNR dB")):
        con.print(f"  instead, the base-layer rate each needs where both reach: {shared}")
    con.print(
        f"BD-rate of proposed vs choi2022 on the base layer (COCO mAP@0.5 vs base-layer bpp, {result.detector}): "
        f"{bd_text(result.bd_rate_map, result.bd_note_map)}; the paper's (real YOLOv3, COCO 2014): {PAPER_BD_RATE}"
    )
    if not _finite(result.bd_rate_map) and (shared := rates_at_shared_levels(result.trials, "map50", "mAP@0.5")):
        con.print(f"  instead, the base-layer rate each needs where both reach: {shared}")
    saving, why = base_layer_savings(result.trials, result.uncompressed_map50)
    con.print(
        f"bits proposed saves against choi2022 at 2 % mAP loss (the paper: {PAPER_SAVINGS}): "
        + (f"{saving:+.1f} % ({why})" if _finite(saving) else f"n/a ({why})")
    )
    for model, (value, note) in result.scalability_cost.items():
        con.print(
            f"the cost of scalability: BD-rate of {model} vs the single-layer bmshj2018 on Kodak PSNR (total bpp): "
            f"{bd_text(value, note)}"
        )
    # paths and commands are printed whole on one line each (never wrapped), so that they can be copied
    con.print(f"report: {result.report}", soft_wrap=True)
    con.print(f"every column: {write_summary_csv(result, result.eval_dir / 'summary.csv')}", soft_wrap=True)
    con.print(f"results: {result.eval_dir}  shards: {result.shards}", soft_wrap=True)
    con.print("times: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()))
    con.print(f"open the runs: {mlflow_ui_command(result.tracking_uri)}", soft_wrap=True)
    if result.runs_url:
        con.print(f"then browse: {result.runs_url}", soft_wrap=True)


def prepare_stage(ctx: StudyContext) -> tuple[Any, Path]:
    """Step 1: the generated sample set, and its Vimeo-like clips into shards (Ray tasks)."""
    from pipeline.data.sample_data import generate_sample
    from pipeline.data.sources import list_source

    ctx.con.rule("1/5 prepare: sample data -> WebDataset shards (Ray)")
    sample = generate_sample(
        ctx.out / "data", train_sequences=SAMPLE_TRAIN_SEQUENCES, val_sequences=SAMPLE_VAL_SEQUENCES
    )
    listing = list_source("sample", sample.vimeo_root, SAMPLE_FRAMES)
    return sample, stages.prepare_stage(ctx, listing, SAMPLE_FRAMES, shard_size=8)


def zoo_start(model: str, lmbda: float) -> str | None:
    """The zoo checkpoint a quickstart trial fine-tunes: the zoo's of the same model at the nearest λ (in log
    scale), or None when this install ships no zoo checkpoint of that model."""
    from dvcm.zoo import codec_zoo

    entries = {name: e for name, e in codec_zoo().items() if e["model"] == model}
    if not entries:
        return None
    return min(entries, key=lambda n: abs(math.log(entries[n]["lmbda"] / lmbda)))


def default_training() -> dict[str, Any]:
    """The training flags of the default quickstart (see :func:`sweep_name`): the zoo's fine-tuning with its loss."""
    return {**FROM_ZOO_TRAINING, **zoo_loss(), "seed": 0}


def zoo_loss() -> dict[str, Any]:
    """γ and its mode as the zoo's codecs were trained (a fine-tuned trial keeps its checkpoint's loss);
    empty when this install ships no zoo."""
    from dvcm.zoo import codec_zoo

    losses = {(e["gamma"], e.get("gamma_mode", "fixed")) for e in codec_zoo().values()}
    if len(losses) != 1:
        return {}
    gamma, mode = losses.pop()
    return {"gamma": gamma, "gamma_mode": mode}


def quickstart_grid(lams: list[float], from_zoo: bool = True) -> list[dict[str, Any]]:
    """Every model of :data:`MODELS` at every λ in the study's configurations, each from its zoo checkpoint when
    ``from_zoo`` (the zoo's codecs take s from the bundled mini YOLOv3: another detector trains from scratch)."""
    from dvcm.zoo import ZOO_PREFIX, zoo_checkpoint
    from pipeline.training.grid import build_grid
    from pipeline.workflows.reproduce import PRESETS

    configs = {m: [c] for m, c in PRESETS[TRAINING_PRESET].configs.items()}
    grid = build_grid(list(MODELS), configs, lams)
    for entry in grid:
        start = zoo_start(entry["model"], entry["lmbda"]) if from_zoo else None
        if start is not None:
            zoo_checkpoint(start)  # checked here (sha256), resolved again on the worker's node
            entry["init_checkpoint"] = entry["zoo"] = ZOO_PREFIX + start
    return grid


def sweep_stage(ctx: StudyContext, flags: dict[str, Any], lams: list[float]) -> tuple[str, list[dict[str, Any]], dict]:
    """Step 2: every model of :data:`MODELS` at every λ, in parallel (Ray Tune + Ray Train), each fine-tuning its zoo
    checkpoint; returns (name, grid, record)."""
    from dvcm.zoo import codec_zoo_fits
    from pipeline.data.shards import read_dataset_info

    from_zoo = codec_zoo_fits(read_dataset_info(str(ctx.shards)).get("provenance", {}).get("yolo", {}))
    defaults = {**FROM_ZOO_TRAINING, **zoo_loss()} if from_zoo else FROM_SCRATCH_TRAINING
    flags = {**flags, **{k: v for k, v in defaults.items() if flags.get(k) is None}}
    settings = resolve(TRAINING_PRESET, {}, {"shards": str(ctx.shards), **flags})
    grid = quickstart_grid(lams, from_zoo=from_zoo)
    how = "fine-tuned from the zoo" if from_zoo else "from scratch"
    ctx.con.rule(f"2/5 sweep: {', '.join(MODELS)} {how} (Ray Tune + Ray Train)")
    scratch = "trains from scratch (the zoo's codecs are for the mini YOLOv3's s)"
    for entry in grid:
        ctx.con.print(f"{entry['trial_name']}: " + (f"fine-tunes {entry['zoo']}" if entry.get("zoo") else scratch))
    name = sweep_name(settings, lams)

    def changed(changes: str) -> str:  # the sweep's advice (--name) is not a quickstart option
        return (
            f"{ctx.out} holds a quickstart trained otherwise (an earlier dvcm?): sweep {name!r} was started with "
            f"other training settings ({changes}); pass a new --out"
        )

    rerun = f"see {mlflow_ui_command(ctx.uri)}, then rerun quickstart"
    state = stages.sweep_stage(ctx, name, grid, settings, changed, rerun)
    return name, grid, state


def evaluate_stage(
    ctx: StudyContext, eval_dir: Path, run_ids: list[str], sample: Any, anchors: list[str] | None, reference: str
) -> dict[str, Any]:
    """Step 3: every trial from real bitstreams, with the installed anchors (Ray tasks); returns the job's summary."""
    ctx.con.rule("3/5 evaluate: real bitstreams, anchors, BD-rate, plots (Ray tasks)")
    # the k-means estimator on every fiber of the sample's 6 COCO images (the paper's: 256 images), K 4 (evaluate's
    # 16 needs more fibers than 6 images have: bench redundancy); the learned one (about a minute a trial here) is
    # left out of the 5-minute quickstart: evaluate and reproduce run it
    redundancy = stages.RedundancySettings(images=6, k=4, fibers=6144, learned_steps=0)
    anchors = list(anchors) if anchors is not None else list(DEFAULT_ANCHORS)
    return stages.evaluate_stage(ctx, eval_dir, run_ids, sample, anchors, reference, redundancy)


def map_reference(yolo_weights: str | None, yolo_cfg: str | None) -> str:
    """What the quickstart scores mAP against: ``gt``, the world's annotations, for a detector of the world's
    classes (the mini YOLOv3, or one that ``train-detector`` wrote); else ``uncompressed``, the detector's own
    detections on the uncompressed images (a random or 80-class YOLOv3 finds none of the world's classes)."""
    from dvcm.darknet_cfg import read_cfg
    from pipeline.data.world import WORLD_CLASSES

    if yolo_weights is None or yolo_cfg is None:
        return "uncompressed"
    return "gt" if read_cfg(yolo_cfg).num_classes == len(WORLD_CLASSES) else "uncompressed"


def describe_detector(yolo_weights: str | None, yolo_cfg: str | None) -> str:
    """The detector's name before it is built (:func:`dvcm.zoo.detector_name` of its files)."""
    from dvcm.fileio import file_sha256
    from dvcm.zoo import detector_name

    if yolo_weights is None:
        return detector_name({"random_weights": True})
    return detector_name({"weights_sha256": file_sha256(Path(yolo_weights)), "cfg": yolo_cfg})


def run_quickstart(
    out: Path = DEFAULT_OUT,
    yolo_weights: str | None = MINI_DETECTOR,
    lambdas: list[float] | None = None,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    val_steps: int | None = None,
    lr: float | None = None,
    gamma: float | None = None,
    gamma_mode: str | None = None,
    seed: int = 0,
    anchors: list[str] | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    yolo_cfg: str | None = None,
) -> QuickstartResult:
    """Run the steps (see the module docstring); returns what was produced.

    ``yolo_cfg``: the Darknet ``.cfg`` of the YOLOv3 family ``yolo_weights`` belong to (default: standard YOLOv3).
    """
    from pipeline.evaluation.report import write_report
    from pipeline.infra import tracking
    from pipeline.training.grid import parse_lambdas, parse_list

    yolo_weights, yolo_cfg = yolo_files(yolo_weights, yolo_cfg)  # absolute: Ray workers build the YOLO
    ctx = StudyContext.open(out, tracking_uri, yolo_weights, yolo_cfg, address, num_cpus, progress)
    con, out, uri = ctx.con, ctx.out, ctx.uri
    out.mkdir(parents=True, exist_ok=True)
    reference = map_reference(yolo_weights, yolo_cfg)
    if yolo_weights is None:
        con.print(
            "[bold yellow]YOLOv3 runs with seeded random weights (seed 0)[/] (--yolo-weights random), so "
            "every detection and mAP below comes from a random-weight YOLOv3 and only shows that the path works."
        )
    else:
        con.print(f"detector: {describe_detector(yolo_weights, yolo_cfg)}", soft_wrap=True)
        con.print(f"  weights {yolo_weights}", soft_wrap=True)
    if yolo_cfg is not None:
        con.print(f"  network {yolo_cfg}", soft_wrap=True)
    tracking.check_reachable(uri)
    lams = parse_lambdas(lambdas if lambdas is not None else parse_list(DEFAULT_LAMBDAS))
    if len(lams) < 2:
        raise UserError("--lambdas needs at least two values for a rate curve and a BD-rate; write e.g. 0.0018,0.0483")
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    sample, shards = prepare_stage(ctx)
    seconds["prepare"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    flags = {
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "val_steps": val_steps,
        "lr": lr,
        "gamma": gamma,
        "gamma_mode": gamma_mode,
        "seed": seed,
        "yolo_weights": yolo_weights,
        "yolo_cfg": yolo_cfg,
    }
    name, grid, state = sweep_stage(ctx, flags, lams)
    seconds["sweep"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    eval_dir = eval_folder(out, name)
    run_ids = [state["trials"][t["trial_name"]]["run_id"] for t in grid]
    summary = evaluate_stage(ctx, eval_dir, run_ids, sample, anchors, reference)
    seconds["evaluate"] = time.perf_counter() - t0

    con.rule("4/5 report")
    report_path = write_report(eval_dir, eval_dir / "report.html")

    con.rule("5/5 summary")
    rows, unc = summarize_trials(state, summary["results"], uri)
    bd, note = base_layer_bd_rate(summary["bd_rows"], BASE_METRIC)
    bd_map, note_map = base_layer_bd_rate(summary["bd_rows"], MAP_METRIC)
    if not _finite(bd):
        note = "; ".join(n for n in (base_layer_dominance(rows, "s_snr", "ŝ SNR"), note) if n)
    if not _finite(bd_map):
        note_map = "; ".join(n for n in (base_layer_dominance(rows, "map50", "mAP@0.5"), note_map) if n)
    result = QuickstartResult(
        out,
        shards,
        eval_dir,
        report_path,
        uri,
        state,
        rows,
        unc,
        bd,
        note,
        bd_map,
        note_map,
        summary["results"]["anchors"].get("detector", "YOLOv3"),
        seconds,
        mlflow_runs_url(uri, tracking.experiment_id(uri)),
        reference,
        from_zoo=any(e.get("zoo") for e in grid),
        scalability_cost={
            m: base_layer_bd_rate(summary["bd_rows"], "kodak_psnr", m, "bmshj2018")
            for m in ("proposed", "choi2022")
            if "bmshj2018" in MODELS
        },
    )
    print_summary(result)
    return result
