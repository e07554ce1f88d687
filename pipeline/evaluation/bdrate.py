"""Bjøntegaard delta rate and delta quality between rate–quality curves.

The arithmetic is the ``bjontegaard`` package's (FAU-LMS), with piecewise cubic Hermite
interpolation (``pchip``), the method of the JCT-VC / JVET common-test-condition
spreadsheets. This module only orders the points, rejects curves that cannot be
interpolated (fewer than two points, not monotone, no overlap) with ``nan`` and a reason,
and writes the table (Markdown and CSV).

Two figures per pair of curves (the table's ``method`` column):

- ``pchip`` (strict): on the raw points, ``n/a (reason)`` when a curve is not monotone;
- ``pchip-isotonic`` (fitted): on a monotone fit of each curve first, as the feature-coding
  community reports saturating task curves (mAP that wobbles by a few thousandths at the top):
  the isotonic regression of quality on rate (``scipy.optimize.isotonic_regression``), then, of
  points fitted to the same quality, the one of lowest rate. On a curve that is already
  strictly increasing the fit changes nothing, so both figures agree.

Sign convention: BD-rate < 0 means the test curve needs fewer bits than the reference
for the same quality; BD-quality > 0 means it reaches a higher quality at the same rate.
"""

from __future__ import annotations

import csv
import io
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import bjontegaard
import numpy as np

from pipeline.infra.atomic import atomic_write_text

MIN_OVERLAP_PERCENT = 75.0  # the share of their range two curves must share for a BD figure (the package's minimum)
METHOD = "pchip"
STRICT = "pchip"
FITTED = "pchip-isotonic"
METHODS = (STRICT, FITTED)


@dataclass(frozen=True)
class Curve:
    """One rate–quality curve: ``rates`` (bpp or bits) and ``quality`` (PSNR, mAP, ...)."""

    label: str
    rates: tuple[float, ...]
    quality: tuple[float, ...]
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """Points ordered by increasing rate, non-finite points dropped."""
        r = np.asarray(self.rates, dtype=np.float64)
        q = np.asarray(self.quality, dtype=np.float64)
        keep = np.isfinite(r) & np.isfinite(q) & (r > 0)
        r, q = r[keep], q[keep]
        order = np.argsort(r, kind="stable")
        return r[order], q[order]


def _why_not(curve: Curve) -> str | None:
    r, q = curve.sorted()
    if len(r) < 2:
        return f"{curve.label}: fewer than 2 points"
    bad = np.flatnonzero((np.diff(r) <= 0) | (np.diff(q) <= 0))
    if len(bad):
        i = int(bad[0])
        if r[i + 1] == r[i]:
            return f"{curve.label}: two points share the rate {r[i]:.4g} (qualities {q[i]:.4g} and {q[i + 1]:.4g})"
        return (
            f"{curve.label}: quality is not strictly increasing with rate "
            f"({q[i]:.4g} at rate {r[i]:.4g}, {q[i + 1]:.4g} at rate {r[i + 1]:.4g})"
        )
    return None


def monotone_fit(curve: Curve) -> Curve:
    """``curve`` made strictly increasing: isotonic regression of quality on rate, then of points fitted to
    the same quality only the lowest rate (the others cost more bits for nothing)."""
    from scipy.optimize import isotonic_regression

    r, q = curve.sorted()
    if len(r) == 0:
        return curve
    fitted = isotonic_regression(q, increasing=True).x
    keep = np.concatenate(([True], np.diff(fitted) > 1e-12 * np.maximum(1.0, np.abs(fitted[1:]))))
    return Curve(curve.label, tuple(map(float, r[keep])), tuple(map(float, fitted[keep])), dict(curve.meta))


def bd_delta(reference: Curve, test: Curve, method: str = METHOD, fit: bool = False) -> tuple[float, float, str]:
    """(BD-rate in %, BD-quality in quality units, note). ``nan`` with a note when undefined.

    ``fit``: on :func:`monotone_fit` of both curves (the ``pchip-isotonic`` figure)."""
    if fit:
        for c in (reference, test):
            if len(c.sorted()[0]) < 2:
                return math.nan, math.nan, f"{c.label}: fewer than 2 points"
        reference, test = monotone_fit(reference), monotone_fit(test)
        for c in (reference, test):
            if len(c.sorted()[0]) < 2:
                return math.nan, math.nan, f"{c.label}: one quality level after the monotone fit (a flat curve)"
    for c in (reference, test):
        why = _why_not(c)
        if why:
            return math.nan, math.nan, why
    r0, q0 = reference.sorted()
    r1, q1 = test.sorted()
    with warnings.catch_warnings(record=True) as rate_warnings:
        warnings.simplefilter("always")
        rate = float(bjontegaard.bd_rate(r0, q0, r1, q1, method=method, require_matching_points=False))
    with warnings.catch_warnings(record=True) as quality_warnings:
        warnings.simplefilter("always")
        qual = float(bjontegaard.bd_psnr(r0, q0, r1, q1, method=method, require_matching_points=False))
    # a figure over too small a shared range is extrapolation: the Bjøntegaard package warns and still returns one;
    # it is n/a here, with the overlap in its note. The overlap is measured here as the package measures it (BD-rate
    # over quality, BD-quality over log10 rate), so the rule and the notes do not hang on the wording of its warning.
    note = _overlap_note("BD-rate", "quality", overlap_percent(q0, q1), reference, test, q0, q1)
    words = _overlap_note("BD-quality", "rate", overlap_percent(np.log10(r0), np.log10(r1)), reference, test, r0, r1)
    if note:
        rate = math.nan
    if words:
        qual = math.nan
    others = [
        f"{figure}: {_package_words(w.message)}"
        for figure, caught in (("BD-rate", rate_warnings), ("BD-quality", quality_warnings))
        for w in caught
        if not _is_overlap_warning(w.message)
    ]
    return rate, qual, "; ".join(n for n in (note, words, *others) if n)


def _overlap_note(
    figure: str, axis: str, percent: float, reference: Curve, test: Curve, a: np.ndarray, b: np.ndarray
) -> str:
    """Why ``figure`` is n/a when its curves share too little of their ``axis`` range; empty when it is defined."""
    if percent <= 0:
        return (
            f"{figure}: the {axis} ranges do not overlap ({reference.label}: {a.min():.4g} to {a.max():.4g}, "
            f"{test.label}: {b.min():.4g} to {b.max():.4g})"
        )
    if percent < MIN_OVERLAP_PERCENT:
        return (
            f"{figure}: the curves overlap over {percent:.2f} % of their range (the package asks for "
            f"{MIN_OVERLAP_PERCENT:.2f} %): n/a below that"
        )
    return ""


def _is_overlap_warning(message: Warning | str) -> bool:
    """The package's own overlap warnings, which :func:`_overlap_note` replaces."""
    text = str(message)
    return text.startswith("Insufficient curve overlap") or "do not overlap" in text


def overlap_percent(a: np.ndarray, b: np.ndarray) -> float:
    """The share of their joint range that two sets of values (two curves' qualities, or log rates) both cover, in
    % (the Bjøntegaard package's measure: shared interval over joint interval)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not (a.size and b.size):
        return 0.0  # nothing to share
    joint = max(a.max(), b.max()) - min(a.min(), b.min())
    shared = max(min(a.max(), b.max()) - max(a.min(), b.min()), 0.0)
    return 100.0 * float(shared / joint) if joint > 0 else 100.0  # both at one value: the same


def _package_words(message: Warning | str) -> str:
    """A ``bjontegaard`` warning (other than on the overlap, said by :func:`_overlap_note`), less its advice to
    callers of the package."""
    return str(message).split(" You can silence")[0]


def upper_hull(curve: Curve) -> Curve:
    """The operational rate–quality curve of a cloud of points (a γ grid at every λ, say): the upper concave hull
    of (rate, quality), from the cheapest point to the best one, so that quality rises with rate along it. A point
    below the hull is one that another mix of settings beats (the lower convex hull in rate–distortion terms)."""
    r, q = curve.sorted()
    hull: list[tuple[float, float]] = []
    for point in zip(r.tolist(), q.tolist()):
        while len(hull) >= 2:
            (r0, q0), (r1, q1) = hull[-2], hull[-1]
            # drop the middle point when it lies on or below the chord from hull[-2] to the new point
            if (q1 - q0) * (point[0] - r0) <= (point[1] - q0) * (r1 - r0):
                hull.pop()
            else:
                break
        if hull and point[0] == hull[-1][0]:  # two points at one rate: the better one
            if point[1] > hull[-1][1]:
                hull[-1] = point
            continue
        hull.append(point)
    best = max(range(len(hull)), key=lambda i: hull[i][1]) if hull else -1
    hull = hull[: best + 1]
    return Curve(curve.label, tuple(p[0] for p in hull), tuple(p[1] for p in hull), dict(curve.meta))


def rate_at_quality(curve: Curve, level: float) -> tuple[float, str]:
    """The rate at which ``curve`` reaches quality ``level``, and an empty note; ``nan`` and the reason when it
    does not reach it, or when its cheapest point already lies above it (no extrapolation either way).

    On :func:`monotone_fit` of the curve, log-rate is interpolated linearly in quality between the two points that
    bracket ``level`` (bit savings at a fixed mAP loss, as the feature-coding literature reads them off a curve).
    """
    if len(curve.sorted()[0]) < 1:
        return math.nan, f"{curve.label}: no point"
    r, q = monotone_fit(curve).sorted() if len(curve.sorted()[0]) >= 2 else curve.sorted()
    if level > q.max():
        return math.nan, f"{curve.label} reaches at most {q.max():.4g} (the level is {level:.4g})"
    if level < q.min():
        return math.nan, f"{curve.label}'s cheapest point ({r[0]:.4g}) already reaches {q.min():.4g} > {level:.4g}"
    k = int(np.searchsorted(q, level))  # q[k - 1] < level <= q[k]
    if k == 0 or q[k] == level:
        return float(r[k]), ""
    t = (level - q[k - 1]) / (q[k] - q[k - 1])
    return float(np.exp(np.log(r[k - 1]) + t * (np.log(r[k]) - np.log(r[k - 1])))), ""


def bit_savings(reference: Curve, test: Curve, level: float) -> tuple[float, str]:
    """How many percent fewer bits ``test`` needs than ``reference`` to reach ``level`` (negative: more), and a
    note; ``nan`` and the reason when either curve does not reach it (:func:`rate_at_quality`)."""
    r_ref, why_ref = rate_at_quality(reference, level)
    r_test, why_test = rate_at_quality(test, level)
    if not (math.isfinite(r_ref) and math.isfinite(r_test)):
        return math.nan, "; ".join(w for w in (why_ref, why_test) if w)
    return 100.0 * (1.0 - r_test / r_ref), f"{test.label} {r_test:.4g} vs {reference.label} {r_ref:.4g}"


def bd_rate(reference: Curve, test: Curve, method: str = METHOD) -> float:
    """BD-rate of ``test`` against ``reference`` in percent."""
    return bd_delta(reference, test, method)[0]


def bd_quality(reference: Curve, test: Curve, method: str = METHOD) -> float:
    """BD-quality (BD-PSNR, BD-mAP, ...) of ``test`` against ``reference``."""
    return bd_delta(reference, test, method)[1]


TABLE_COLUMNS = ("metric", "method", "reference", "test", "bd_rate_percent", "bd_quality", "note")


def bd_table(curves: list[Curve], references: list[str], metric: str) -> list[dict]:
    """Two rows (``pchip``, then ``pchip-isotonic``) per (reference, other curve) pair, for every reference
    label present."""
    by_label = {c.label: c for c in curves}
    rows: list[dict] = []
    for ref_label in references:
        ref = by_label.get(ref_label)
        if ref is None:
            continue
        for c in curves:
            if c.label == ref_label:
                continue
            for method in METHODS:
                rate, qual, note = bd_delta(ref, c, fit=method == FITTED)
                rows.append(
                    {
                        "metric": metric,
                        "method": method,
                        "reference": ref_label,
                        "test": c.label,
                        "bd_rate_percent": rate,
                        "bd_quality": qual,
                        "note": note,
                    }
                )
    return rows


def pick_row(pair: list[dict]) -> dict | None:
    """Of one pair's rows, the figure to show: the strict one when it is defined, else the fitted one (its
    ``method`` says which); ``None`` when there is no row. Rows of tables written before the ``method``
    column count as strict."""
    for method in METHODS:
        for r in pair:
            if (r.get("method") or STRICT) == method and is_finite(r.get("bd_rate_percent")):
                return r
    return next((r for r in pair if (r.get("method") or STRICT) == STRICT), pair[0] if pair else None)


def rate_overlap_percent(row: dict) -> float:
    """How much of their quality range the two curves of a BD row share, in %, as its note says (:func:`bd_delta`
    writes it below :data:`MIN_OVERLAP_PERCENT`): 0 for ranges that do not overlap, 100 when the note is silent
    (at least the 75 % a BD figure needs)."""
    note = str(row.get("note") or "")
    if "BD-rate: the quality ranges do not overlap" in note:
        return 0.0
    m = re.search(r"BD-rate: the curves overlap over ([\d.]+) %", note)
    return float(m.group(1)) if m else 100.0


def is_finite(v: object) -> bool:
    """A table cell (number or CSV text) that holds a finite number."""
    try:
        return math.isfinite(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:+.2f}"
    return str(v).replace("|", "/")


def table_markdown(rows: list[dict]) -> str:
    """The BD table as a Markdown table."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in TABLE_COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def table_csv(rows: list[dict]) -> str:
    """The BD table as CSV text."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(TABLE_COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_table(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    """Write ``bd_table.md`` and ``bd_table.csv`` atomically into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, cs = out_dir / "bd_table.md", out_dir / "bd_table.csv"
    atomic_write_text(md, table_markdown(rows))
    atomic_write_text(cs, table_csv(rows))
    return md, cs
