"""The paper's findings, measured: what ``dvcm-pipeline reproduce`` reports side by side with the paper.

Input: one :class:`StudyPoint` per evaluated (model, seed, λ): real-bitstream rates and qualities
from ``evaluate`` and the redundancy of its latents. Output: :class:`Finding` (a), (b), (c), each with
our value, its spread over seeds, the paper's value and a verdict — "holds", "does not hold" or
"undefined (reason)" — and the acceptance checks of the training (:func:`acceptance`).

- (a) base-layer BD-rate of proposed against choi2022 on detection (paper: −40.6 %), on mAP@0.5 and on
  the feature SNR of ŝ, per seed (the strict Bjøntegaard figure of :mod:`pipeline.evaluation.bdrate`);
  holds when it is negative on every seed.
- (b) redundancy (paper Sec. 5, Fig. 5, no exact figures): for proposed Rdn(ŷ1|ŷ2) settles near 0 and
  Rdn(ŷ2|ŷ1) near 1; for choi2022 Rdn(ŷ1|ŷ2) is larger and Rdn(ŷ2|ŷ1) near 0. Averaged over λ per
  seed; holds when proposed's Rdn(ŷ1|ŷ2) is below choi2022's and its Rdn(ŷ2|ŷ1) above, on every seed.
- (c) proposed's PSNR sits below choi2022's at equal total bpp (paper: yes): BD-PSNR on the Kodak-like
  images; holds when it is negative on every seed.
- (d) the cost of scalability (not in the paper): BD-rate on Kodak PSNR of proposed and of choi2022 against
  the single-layer bmshj2018 of the same family; holds when it is positive on every seed.

A finding that does not hold is a result, reported as measured; nothing here decides what a study should find.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation.bdrate import FITTED, STRICT, Curve, bd_delta, bit_savings, upper_hull
from pipeline.infra.atomic import atomic_write_json, atomic_write_text

PROPOSED, BASELINE, SINGLE_LAYER = "proposed", "choi2022", "bmshj2018"
RESIDUAL_LST = "choi2022rlst"  # the baseline with a residual LST of proposed's feature-path capacity (an ablation)
HOLDS, DOES_NOT_HOLD = "holds", "does not hold"


@dataclass(frozen=True)
class StudyPoint:
    """One evaluated (model, seed, λ): rates in bpp from real bitstreams."""

    model: str
    seed: int
    lmbda: float
    coco_bpp_base: float  # base layer, COCO-like images at 512×512
    map50: float  # base layer, against the world's ground truth
    s_snr: float  # feature SNR of ŝ, dB
    kodak_bpp: float  # both layers, Kodak-like images
    psnr: float
    ms_ssim: float
    rdn_y1_given_y2: float = math.nan  # the paper's k-means estimator
    rdn_y2_given_y1: float = math.nan
    kmeans_ceiling_y2_given_y1: float = math.nan  # the most it can read: min(log2 K, H(ŷ1)) / H(ŷ2)
    learned_rdn_y1_given_y2: float = math.nan  # the learned estimator (dvcm.conditional_entropy)
    learned_rdn_y2_given_y1: float = math.nan
    rate_split: float = math.nan  # H(ŷ1) / H(ŷ2) by the learned reference: I(ŷ1;ŷ2)/H(ŷ2) cannot exceed it
    uncompressed_map50: float = math.nan  # the detector's mAP@0.5 on the uncompressed images (the same for all)
    gamma: float = math.nan  # the trial's own γ in a study with a γ grid (nan: the study's one γ)


@dataclass
class Finding:
    """One of the paper's findings: our value (mean over seeds), its spread, the paper's, a verdict."""

    key: str
    claim: str
    paper: str
    unit: str
    ours: float | None
    spread: float | None  # sample standard deviation over seeds (None with one seed)
    per_seed: dict[str, float | None]
    verdict: str
    detail: dict[str, Any] = field(default_factory=dict)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _curve(points: Sequence[StudyPoint], label: str, rate: str, quality: str) -> Curve:
    """The curve of ``points``; with a γ grid (points of several γ) the upper hull of the cloud, as the paper's
    λ-only sweep cannot trace a base layer that ignores λ (README, "Why proposed's base layer ignores λ")."""
    curve = Curve(label, tuple(getattr(p, rate) for p in points), tuple(getattr(p, quality) for p in points))
    if len({p.gamma for p in points if _finite(p.gamma)}) > 1:
        return upper_hull(curve)
    return curve


def _by(points: Sequence[StudyPoint], model: str, seed: int) -> list[StudyPoint]:
    return sorted((p for p in points if p.model == model and p.seed == seed), key=lambda p: p.lmbda)


def seeds_of(points: Sequence[StudyPoint]) -> list[int]:
    return sorted({p.seed for p in points})


def _summary(values: dict[str, float | None]) -> tuple[float | None, float | None]:
    finite = [v for v in values.values() if _finite(v)]
    if not finite or len(finite) < len(values):
        return None, None
    return float(statistics.fmean(finite)), (float(statistics.stdev(finite)) if len(finite) > 1 else None)


def _sign_verdict(values: dict[str, float | None], notes: dict[str, str], negative_holds: bool = True) -> str:
    """``holds`` when every seed's value has the claimed sign; ``undefined (reason)`` when a seed has none."""
    missing = [s for s, v in values.items() if not _finite(v)]
    if not values:
        return "undefined (no seed has both models)"
    if missing:
        return f"undefined (seed {missing[0]}: {notes.get(missing[0]) or 'no value'})"
    good = [(v < 0) if negative_holds else (v > 0) for v in values.values()]  # type: ignore[operator]
    if all(good):
        return HOLDS
    return DOES_NOT_HOLD + ("" if not any(good) else " (the sign changes across seeds)")


def _bd_finding(
    points: Sequence[StudyPoint],
    key: str,
    claim: str,
    paper: str,
    rate: str,
    quality: str,
    pick: int,
    unit: str,
    test_model: str = PROPOSED,
    ref_model: str = BASELINE,
    negative_holds: bool = True,
) -> Finding:
    """BD figure ``pick`` (0: BD-rate %, 1: BD-quality) of ``test_model`` against ``ref_model``, per seed."""
    values: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    methods: dict[str, str] = {}
    for seed in seeds_of(points):
        ref, test = _by(points, ref_model, seed), _by(points, test_model, seed)
        if not ref or not test:
            continue
        curves = (_curve(ref, ref_model, rate, quality), _curve(test, test_model, rate, quality))
        figures = bd_delta(*curves)
        value, note = figures[pick], figures[2]
        methods[str(seed)] = STRICT
        if not _finite(value):
            fitted = bd_delta(*curves, fit=True)
            if _finite(fitted[pick]):  # the strict figure is undefined (a wobble), the fitted one exists
                value, note = fitted[pick], f"{FITTED} (monotone fits; strict {STRICT} n/a: {note})"
                methods[str(seed)] = FITTED
        values[str(seed)] = float(value) if _finite(value) else None
        if not _finite(value):
            note = "; ".join(n for n in (dominance(test, ref, rate, quality), note) if n)
        if note:
            notes[str(seed)] = note
    ours, spread = _summary(values)
    return Finding(
        key,
        claim,
        paper,
        unit,
        ours,
        spread,
        values,
        _sign_verdict(values, notes, negative_holds),
        {"notes": notes, "methods": methods},
    )


QUALITY_NAMES = {"map50": "mAP@0.5", "s_snr": "ŝ SNR (dB)", "psnr": "PSNR (dB)", "ms_ssim": "MS-SSIM"}


def _span(values: Sequence[float], digits: int) -> str:
    lo, hi = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return lo if lo == hi else f"{lo}–{hi}"


def dominance_text(
    test: Sequence[tuple[float, float]],
    ref: Sequence[tuple[float, float]],
    quality: str,
    names: tuple[str, str] = (PROPOSED, BASELINE),
) -> str:
    """When one curve's every (rate, quality) point has a higher quality at a lower rate than every point of the
    other, say so with both ranges: what a BD-rate cannot say when the curves share no quality range; else ""."""

    def usable(pts: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(r, q) for r, q in pts if _finite(r) and r > 0 and _finite(q)]

    test, ref = usable(test), usable(ref)
    for a, b, (name_a, name_b) in ((test, ref, names), (ref, test, names[::-1])):
        if a and b and max(r for r, _ in a) < min(r for r, _ in b) and min(q for _, q in a) > max(q for _, q in b):
            return (
                f"{name_a} dominates {name_b}: {quality} {_span([q for _, q in a], 3)} at "
                f"{_span([r for r, _ in a], 4)} bpp against {_span([q for _, q in b], 3)} at "
                f"{_span([r for r, _ in b], 4)} bpp, so the curves share no range for a Bjøntegaard figure"
            )
    return ""


def dominance(test: Sequence[StudyPoint], ref: Sequence[StudyPoint], rate: str, quality: str) -> str:
    """:func:`dominance_text` on two models' study points."""

    def pairs(points: Sequence[StudyPoint]) -> list[tuple[float, float]]:
        return [(getattr(p, rate), getattr(p, quality)) for p in points]

    names = (test[0].model, ref[0].model) if test and ref else (PROPOSED, BASELINE)
    return dominance_text(pairs(test), pairs(ref), QUALITY_NAMES.get(quality, quality), names)


def _mean_over_lambdas(points: Sequence[StudyPoint], attr: str) -> float | None:
    values = [getattr(p, attr) for p in points]
    return float(np.mean(values)) if values and all(_finite(v) for v in values) else None


ESTIMATORS = {  # (b)'s key, the estimator, its StudyPoint fields, the bound on proposed's Rdn(ŷ2|ŷ1) and why
    "b": ("k-means (the paper's)", "", "kmeans_ceiling_y2_given_y1", "its ceiling min(log2 K, H(ŷ1)) / H(ŷ2)"),
    "b_learned": ("learned", "learned_", "rate_split", "the rate split H(ŷ1) / H(ŷ2)"),
}
TESTABLE_BOUND = 0.5  # below it, "Rdn(ŷ2|ŷ1) near 1" cannot be read whatever the codec does


def redundancy_findings(points: Sequence[StudyPoint]) -> list[Finding]:
    """(b) once per estimator; the learned one only where the study computed it."""
    out = [redundancy_finding(points, "b")]
    if any(_finite(p.learned_rdn_y1_given_y2) for p in points):
        out.append(redundancy_finding(points, "b_learned"))
    return out


def redundancy_finding(points: Sequence[StudyPoint], key: str = "b") -> Finding:
    """(b) by one estimator: Rdn(ŷ1|ŷ2) and Rdn(ŷ2|ŷ1) of both models, each averaged over λ, per seed. Holds when
    proposed's Rdn(ŷ1|ŷ2) is below choi2022's and its Rdn(ŷ2|ŷ1) above on every seed; "not testable" when what
    bounds proposed's Rdn(ŷ2|ŷ1) (the k-means ceiling, or the rate split) is below 0.5: the paper's "near 1"
    cannot be read, whatever the ordering says (given with the margin)."""
    name, prefix, bound_field, bound_text = ESTIMATORS[key]
    table: dict[str, dict[str, float | None]] = {}
    gaps: dict[str, float | None] = {}  # proposed's margin on the weaker of the two orderings
    notes: dict[str, str] = {}
    bounds = [getattr(p, bound_field) for p in points if p.model == PROPOSED and _finite(getattr(p, bound_field))]
    for seed in seeds_of(points):
        row = {
            f"{m}_{attr}": _mean_over_lambdas(_by(points, m, seed), prefix + attr)
            for m in (PROPOSED, BASELINE)
            for attr in ("rdn_y1_given_y2", "rdn_y2_given_y1")
        }
        table[str(seed)] = row
        if any(v is None for v in row.values()):
            gaps[str(seed)] = None
            notes[str(seed)] = "a redundancy estimate is missing"
            continue
        below = row[f"{BASELINE}_rdn_y1_given_y2"] - row[f"{PROPOSED}_rdn_y1_given_y2"]  # type: ignore[operator]
        above = row[f"{PROPOSED}_rdn_y2_given_y1"] - row[f"{BASELINE}_rdn_y2_given_y1"]  # type: ignore[operator]
        gaps[str(seed)] = float(min(below, above))
    verdict = _sign_verdict(gaps, notes, negative_holds=False)
    bound = float(np.mean(bounds)) if bounds else None
    if bound is not None and bound < TESTABLE_BOUND and not verdict.startswith("undefined"):
        verdict = (
            f"not testable (proposed's Rdn(ŷ2|ŷ1) cannot exceed {bound:.2f} here: {bound_text}; "
            f"the ordering alone {verdict})"
        )
    means = {k: _summary({s: r[k] for s, r in table.items()}) for k in next(iter(table.values()), {})}
    return Finding(
        key,
        f"by the {name} estimator: proposed: Rdn(ŷ1|ŷ2) near 0, Rdn(ŷ2|ŷ1) near 1; choi2022: Rdn(ŷ1|ŷ2) larger, "
        "Rdn(ŷ2|ŷ1) near 0",
        "Fig. 5, no exact figures",
        "margin",
        *_summary(gaps),
        gaps,
        verdict,
        {
            "estimator": name,
            "bound_on_proposed_rdn_y2_given_y1": bound,
            "bound": bound_text,
            "per_seed": table,
            "mean_and_spread": {k: list(v) for k, v in means.items()},
            "notes": notes,
            "margin": "the smaller of choi2022's Rdn(ŷ1|ŷ2) − proposed's and proposed's Rdn(ŷ2|ŷ1) − choi2022's; "
            "positive on every seed: holds",
        },
    )


def scalability_cost_findings(points: Sequence[StudyPoint]) -> list[Finding]:
    """(d) the cost of scalability: BD-rate on Kodak PSNR (total bpp) of each scalable codec against the
    single-layer bmshj2018 of the same family, trained on the same shards with L = R + λ·D_x; positive: the
    scalable codec spends more bits for the same PSNR. Empty when the study has no single-layer codec."""
    if not any(p.model == SINGLE_LAYER for p in points):
        return []
    return [
        _bd_finding(
            points,
            f"d_{model}",
            f"{model} spends more total bits than the single-layer {SINGLE_LAYER} "
            "at equal PSNR (BD-rate > 0: the cost of scalability)",
            "not reported (the paper has no single-layer learned anchor)",
            "kodak_bpp",
            "psnr",
            0,
            "%",
            test_model=model,
            ref_model=SINGLE_LAYER,
            negative_holds=False,
        )
        for model in (PROPOSED, BASELINE)
        if any(p.model == model for p in points)
    ]


MAP_LOSS = 0.02  # the paper's second figure: bits saved at 2 % mAP loss (Sec. 4.2)


def bit_savings_finding(points: Sequence[StudyPoint], loss: float = MAP_LOSS) -> Finding:
    """(a'), the paper's second figure: how many percent fewer base-layer bits proposed needs than choi2022 to
    reach (1 − ``loss``) of the uncompressed detector's mAP@0.5, read off each seed's curves
    (:func:`pipeline.evaluation.bdrate.bit_savings`); undefined where a curve does not reach that level."""
    values: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    for seed in seeds_of(points):
        ref, test = _by(points, BASELINE, seed), _by(points, PROPOSED, seed)
        if not ref or not test:
            continue
        unc = ref[0].uncompressed_map50
        if not _finite(unc):
            values[str(seed)], notes[str(seed)] = None, "no mAP on the uncompressed images"
            continue
        level = (1 - loss) * unc
        saving, note = bit_savings(
            _curve(ref, BASELINE, "coco_bpp_base", "map50"), _curve(test, PROPOSED, "coco_bpp_base", "map50"), level
        )
        values[str(seed)] = saving if _finite(saving) else None
        notes[str(seed)] = f"at mAP@0.5 {level:.3f} ({100 * (1 - loss):g} % of {unc:.3f}): " + note
    ours, spread = _summary(values)
    return Finding(
        "a_savings",
        f"base-layer bits proposed saves against choi2022 at {100 * loss:g} % mAP loss",
        "about 55 % (at about 0.30 vs 0.58 bpp)",
        "%",
        ours,
        spread,
        values,
        _sign_verdict(values, notes, negative_holds=False),
        {"notes": notes},
    )


def residual_lst_findings(points: Sequence[StudyPoint]) -> list[Finding]:
    """(a) again against choi2022 with a residual LST (:mod:`dvcm.residual_lst`): is the gap of (a) the LST's
    capacity? Empty when the study did not train that ablation."""
    if not any(p.model == RESIDUAL_LST for p in points):
        return []
    return [
        _bd_finding(
            points,
            "a_map50_rlst",
            f"base-layer BD-rate of proposed vs {RESIDUAL_LST} (choi2022 with a residual LST of proposed's "
            "feature-path capacity) on mAP@0.5",
            "not in the paper (an ablation)",
            "coco_bpp_base",
            "map50",
            0,
            "%",
            ref_model=RESIDUAL_LST,
        )
    ]


def study_findings(points: Sequence[StudyPoint]) -> list[Finding]:
    """(a) on mAP@0.5, the bit savings at 2 % mAP loss and (a) on ŝ SNR, (b), (c), and (d) when the study trained the
    single-layer codec."""
    return [
        _bd_finding(
            points,
            "a_map50",
            "base-layer BD-rate of proposed vs choi2022 on detection (mAP@0.5)",
            "−40.6 %",
            "coco_bpp_base",
            "map50",
            0,
            "%",
        ),
        bit_savings_finding(points),
        _bd_finding(
            points,
            "a_s_snr",
            "base-layer BD-rate of proposed vs choi2022 on the feature SNR of ŝ",
            "not reported (the paper's (a) is on mAP)",
            "coco_bpp_base",
            "s_snr",
            0,
            "%",
        ),
        *redundancy_findings(points),
        _bd_finding(
            points,
            "c",
            "proposed's PSNR sits below choi2022's at equal total bpp (BD-PSNR < 0)",
            "yes (Fig. 4b)",
            "kodak_bpp",
            "psnr",
            1,
            "dB",
        ),
        *scalability_cost_findings(points),
        *residual_lst_findings(points),
    ]


# --------------------------------------------------------------------------------------------
# Acceptance of the training (every model and seed)
# --------------------------------------------------------------------------------------------
AXES: tuple[tuple[str, str, str], ...] = (
    ("coco_bpp_base", "map50", "mAP@0.5 vs base bpp"),
    ("coco_bpp_base", "s_snr", "ŝ SNR vs base bpp"),
    ("kodak_bpp", "psnr", "PSNR vs total bpp"),
    ("kodak_bpp", "ms_ssim", "MS-SSIM vs total bpp"),
)


def rises_with_rate(points: Sequence[StudyPoint], rate: str, quality: str) -> bool:
    """Quality strictly increases with rate (points ordered by rate); with a γ grid, along λ at every γ (the hull
    rises by construction: it would check nothing)."""
    groups: dict[float, list[StudyPoint]] = {}
    for p in points:
        groups.setdefault(p.gamma if _finite(p.gamma) else math.nan, []).append(p)
    return bool(points) and all(_rises(g, rate, quality) for g in groups.values())


def _rises(points: Sequence[StudyPoint], rate: str, quality: str) -> bool:
    pairs = sorted((getattr(p, rate), getattr(p, quality)) for p in points)
    return len(pairs) >= 2 and all(r1 > r0 and q1 > q0 for (r0, q0), (r1, q1) in zip(pairs, pairs[1:]))


def jpeg_psnr_at(jpeg: Sequence[tuple[float, float]], bpp: float) -> float | None:
    """JPEG's PSNR at ``bpp``, linearly interpolated on its (bpp, PSNR) curve; None outside its range."""
    pts = sorted(jpeg)
    if len(pts) < 2 or not pts[0][0] <= bpp <= pts[-1][0]:
        return None
    return float(np.interp(bpp, [p[0] for p in pts], [p[1] for p in pts]))


def jpeg_bpp_for(jpeg: Sequence[tuple[float, float]], psnr: float) -> float | None:
    """The bpp JPEG needs for ``psnr``, linearly interpolated on its curve when PSNR rises with its rate;
    None outside its PSNR range or when its curve is not increasing."""
    pts = sorted(jpeg)
    rising = len(pts) >= 2 and all(b[1] > a[1] for a, b in zip(pts, pts[1:]))
    if not rising or not pts[0][1] <= psnr <= pts[-1][1]:
        return None
    return float(np.interp(psnr, [p[1] for p in pts], [p[0] for p in pts]))


def jpeg_comparison(jpeg: Sequence[tuple[float, float]], bpp: float, psnr: float) -> dict[str, Any]:
    """A rate point against the JPEG anchor: JPEG's PSNR at the same bpp, the bpp JPEG needs for the same PSNR,
    whether the point is at or above JPEG (None when undecided) and a sentence saying so.

    Below JPEG's lowest rate the point is above JPEG when its PSNR is at least JPEG's at that lowest rate
    (JPEG's PSNR only falls as its rate does); above JPEG's highest rate it is below when its PSNR is less
    than JPEG's there."""
    pts = sorted(jpeg)
    at, needs = jpeg_psnr_at(pts, bpp), jpeg_bpp_for(pts, psnr)
    if at is not None:
        beats: bool | None = psnr >= at
        text = f"{psnr:.2f} vs {at:.2f} dB at {bpp:.3f} bpp: " + ("at or above" if beats else "below")
    elif len(pts) >= 2 and bpp < pts[0][0] and psnr >= pts[0][1]:
        beats = True
        text = (
            f"above: {psnr:.2f} dB at {bpp:.3f} bpp, less than JPEG's lowest rate "
            f"({pts[0][0]:.3f} bpp, {pts[0][1]:.2f} dB)"
        )
    elif len(pts) >= 2 and bpp > pts[-1][0] and psnr < pts[-1][1]:
        beats = False
        text = (
            f"below: {psnr:.2f} dB at {bpp:.3f} bpp, more than JPEG's highest rate "
            f"({pts[-1][0]:.3f} bpp, {pts[-1][1]:.2f} dB)"
        )
    else:
        beats, text = None, f"– (outside JPEG's range: {psnr:.2f} dB at {bpp:.3f} bpp)"
    if needs is not None:
        text += f"; JPEG needs {needs:.3f} bpp for {psnr:.2f} dB"
    return {"jpeg_psnr": at, "jpeg_bpp_for_psnr": needs, "beats_jpeg": beats, "jpeg_text": text}


SPAN_LOW, SPAN_HIGH = 0.85, 0.98  # a base-layer curve should run from at most 85 % to at least 98 % of the mAP


def relative_map_span(pts: Sequence[StudyPoint]) -> dict[str, Any]:
    """The lowest and highest base-layer mAP@0.5 of one curve over the uncompressed mAP, and whether it spans the
    paper's region (from at most :data:`SPAN_LOW` to at least :data:`SPAN_HIGH`, as the paper's Fig. 4a)."""
    unc = pts[0].uncompressed_map50 if pts else math.nan
    rel = [p.map50 / unc for p in pts if _finite(p.map50) and _finite(unc) and unc > 0]
    if not rel:
        return {"relative_map_low": None, "relative_map_high": None, "spans_paper_region": None}
    return {
        "relative_map_low": min(rel),
        "relative_map_high": max(rel),
        "spans_paper_region": min(rel) <= SPAN_LOW and max(rel) >= SPAN_HIGH,
    }


def span_text(check: dict[str, Any]) -> str:
    """A curve's relative mAP range in words, for the acceptance table."""
    lo, hi = check.get("relative_map_low"), check.get("relative_map_high")
    if lo is None or hi is None:
        return "–"
    where = "spans it" if check.get("spans_paper_region") else "does not span it"
    return f"{lo:.1%} to {hi:.1%}: {where}"


def acceptance(points: Sequence[StudyPoint], jpeg: Sequence[tuple[float, float]]) -> list[dict[str, Any]]:
    """Per (model, seed): which axes rise with rate, and the highest λ's PSNR against JPEG (:func:`jpeg_comparison`)."""
    rows = []
    for model in (PROPOSED, BASELINE, SINGLE_LAYER, RESIDUAL_LST):
        for seed in seeds_of(points):
            pts = _by(points, model, seed)
            if not pts:
                continue
            top = pts[-1]
            rows.append(
                {
                    "model": model,
                    "seed": seed,
                    "rises": {label: rises_with_rate(pts, r, q) for r, q, label in AXES},
                    "top_lambda": top.lmbda,
                    "top_bpp": top.kodak_bpp,
                    "top_psnr": top.psnr,
                    **relative_map_span(pts),
                    **jpeg_comparison(jpeg, top.kodak_bpp, top.psnr),
                }
            )
    return rows


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    return f"{v:+.2f} {unit}" if unit in ("%", "dB") else f"{v:+.3f}"


def findings_markdown(findings: Sequence[Finding], checks: Sequence[dict[str, Any]], header: str) -> str:
    """``findings.md``: the findings table, then the acceptance checks."""
    lines = [
        header,
        "",
        "| finding | paper | ours (mean over seeds) | spread (sd) | per seed | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for f in findings:
        methods = f.detail.get("methods", {})
        seeds = (
            ", ".join(
                f"{s}: {_fmt(v, f.unit)}" + (" (fitted)" if methods.get(s) == FITTED else "")
                for s, v in f.per_seed.items()
            )
            or "–"
        )
        spread = "–" if f.spread is None else f"{f.spread:.2f}"
        lines.append(f"| ({f.key}) {f.claim} | {f.paper} | {_fmt(f.ours, f.unit)} | {spread} | {seeds} | {f.verdict} |")
    for b in (f for f in findings if f.key.startswith("b") and f.detail.get("mean_and_spread")):
        bound = b.detail.get("bound_on_proposed_rdn_y2_given_y1")
        lines += [
            "",
            f"Redundancy by the {b.detail.get('estimator', 'k-means')} estimator, mean over λ and seeds "
            "(sd over seeds)"
            + ("" if bound is None else f"; proposed's Rdn(ŷ2|ŷ1) ≤ {bound:.3f} ({b.detail['bound']})")
            + ":",
            "",
        ]
        for k, (mean, sd) in b.detail["mean_and_spread"].items():
            lines.append(f"- {k}: {'–' if mean is None else f'{mean:.3f}'}" + ("" if sd is None else f" (sd {sd:.3f})"))
    lines += [
        "",
        "Acceptance of the training (every model and seed):",
        "",
        "| model | seed | " + " | ".join(label for _, _, label in AXES) + " | PSNR at the highest λ vs JPEG "
        f"| base-layer mAP / uncompressed (the paper's region: ≤ {SPAN_LOW:.0%} to ≥ {SPAN_HIGH:.0%}) |",
        "|---|---|" + "---|" * len(AXES) + "---|---|",
    ]
    for c in checks:
        jpeg = c["jpeg_text"]
        lines.append(
            f"| {c['model']} | {c['seed']} | "
            + " | ".join("rises" if c["rises"][label] else "does not rise" for _, _, label in AXES)
            + f" | {jpeg} | {span_text(c)} |"
        )
    return "\n".join(lines) + "\n"


def write_findings(
    out: Path,
    points: Sequence[StudyPoint],
    jpeg: Sequence[tuple[float, float]],
    header: str,
    extra: dict[str, Any] | None = None,
) -> tuple[list[Finding], list[dict[str, Any]]]:
    """``out/findings.json`` and ``out/findings.md``; returns (findings, acceptance checks)."""
    findings = study_findings(points)
    checks = acceptance(points, jpeg)
    atomic_write_json(
        out / "findings.json",
        {
            "schema": "dvcm-findings/1",
            **(extra or {}),
            "findings": [asdict(f) for f in findings],
            "acceptance": checks,
            "points": [asdict(p) for p in points],
            "jpeg": [list(p) for p in jpeg],
        },
    )
    atomic_write_text(out / "findings.md", findings_markdown(findings, checks, header))
    return findings, checks


def points_from_results(
    results: dict[str, dict], trials: dict[str, dict[str, Any]], uncompressed_map50: float = math.nan
) -> list[StudyPoint]:
    """:class:`StudyPoint` per evaluated run: ``results`` by run id (``evaluate``'s results.json), ``trials`` by
    run id: {"model", "seed", "lmbda"}; ``uncompressed_map50``: the detector's mAP on the uncompressed images."""

    def point(res: dict, dataset: str) -> dict[str, Any]:
        pts = ((res.get("datasets") or {}).get(dataset) or {}).get("points") or [{}]
        return pts[0]

    def num(v: Any) -> float:
        return float(v) if _finite(v) else math.nan

    out = []
    for run_id, t in trials.items():
        res = results.get(run_id)
        if not res:
            continue
        coco, kodak = point(res, "coco"), point(res, "kodak")
        rdn = res.get("redundancy") or {}
        learned = res.get("redundancy_learned") or {}
        split = (num(learned.get("H_y1")) / num(learned.get("H_y2"))) if num(learned.get("H_y2")) > 0 else math.nan
        out.append(
            StudyPoint(
                t["model"],
                int(t["seed"]),
                float(t["lmbda"]),
                num(coco.get("bpp_base")),
                num(coco.get("map50")),
                num(coco.get("s_snr")),
                num(kodak.get("bpp")),
                num(kodak.get("psnr")),
                num(kodak.get("ms_ssim")),
                num(rdn.get("rdn_y1_given_y2")),
                num(rdn.get("rdn_y2_given_y1")),
                num(rdn.get("rdn_y2_given_y1_ceiling")),
                num(learned.get("rdn_y1_given_y2")),
                num(learned.get("rdn_y2_given_y1")),
                split,
                num(uncompressed_map50),
                num(t.get("gamma")),
            )
        )
    return out


def read_findings(folder: Path) -> dict[str, Any] | None:
    """``findings.json`` of a study's evaluation folder, if there is one (the report shows it)."""
    path = folder / "findings.json"
    return json.loads(path.read_text()) if path.is_file() else None
