"""BD-rate / BD-quality (pipeline.evaluation.bdrate) against hand-known and published values."""

from __future__ import annotations

import math

import pytest

from pipeline.evaluation.bdrate import (
    FITTED,
    STRICT,
    Curve,
    bd_delta,
    bd_quality,
    bd_rate,
    bd_table,
    bit_savings,
    monotone_fit,
    pick_row,
    rate_at_quality,
    rate_overlap_percent,
    table_csv,
    table_markdown,
    write_table,
)

REF = Curve("ref", (0.1, 0.2, 0.4, 0.8), (30.0, 32.5, 35.0, 37.0))


def test_identical_curves_give_zero() -> None:
    rate, qual, _ = bd_delta(REF, REF)
    assert rate == pytest.approx(0.0, abs=1e-9)
    assert qual == pytest.approx(0.0, abs=1e-9)


def test_half_the_rate_gives_minus_fifty_percent() -> None:
    half = Curve("half", tuple(r * 0.5 for r in REF.rates), REF.quality)
    assert bd_rate(REF, half) == pytest.approx(-50.0, abs=1e-9)
    # and the reverse comparison costs +100 %
    assert bd_rate(half, REF) == pytest.approx(100.0, abs=1e-9)


def test_quality_shift_gives_bd_quality() -> None:
    up = Curve("up", REF.rates, tuple(q + 0.7 for q in REF.quality))
    assert bd_quality(REF, up) == pytest.approx(0.7, abs=1e-9)
    assert bd_rate(REF, up) < 0


# Published worked examples: the JCT-VC common-test-condition spreadsheet (PCHIP) values
# that Netflix's VMAF repository checks its own BD-rate code against
# (github.com/Netflix/vmaf, python/test/bd_rate_calculator_test.py, class
# BDrateCalculatorJCTVCTest: -0.00465215420752807 and -0.018779823450567612 as fractions).
JCTVC_CASES = [
    (
        [(108048.8736, 43.6471), (61279.976, 40.3953), (33905.6656, 37.247), (18883.6928, 34.2911)],
        [(108061.2784, 43.6768), (61299.9936, 40.4232), (33928.7472, 37.2761), (18910.912, 34.3147)],
        -0.465215420752807,
    ),
    (
        [(40433.8848, 37.5761), (7622.7456, 35.3756), (2394.488, 33.8977), (1017.6184, 32.0603)],
        [(40370.12, 37.5982), (7587.0024, 35.4025), (2390.0944, 33.9194), (1017.0984, 32.0822)],
        -1.8779823450567612,
    ),
]


@pytest.mark.parametrize(("anchor", "test", "expected_percent"), JCTVC_CASES)
def test_matches_jctvc_spreadsheet(anchor: list, test: list, expected_percent: float) -> None:
    a = Curve("anchor", tuple(r for r, _ in anchor), tuple(q for _, q in anchor))
    t = Curve("test", tuple(r for r, _ in test), tuple(q for _, q in test))
    assert bd_rate(a, t) == pytest.approx(expected_percent, abs=1e-4)


def test_undefined_curves_are_nan_with_a_reason() -> None:
    one = Curve("one", (0.3,), (33.0,))
    rate, qual, note = bd_delta(REF, one)
    assert math.isnan(rate) and math.isnan(qual) and "fewer than 2" in note
    bumpy = Curve("bumpy", (0.1, 0.2, 0.3), (30.0, 29.0, 31.0))
    assert (
        bd_delta(REF, bumpy)[2]
        == "bumpy: quality is not strictly increasing with rate (30 at rate 0.1, 29 at rate 0.2)"
    )
    far = Curve("far", (10.0, 20.0), (60.0, 70.0))
    assert math.isnan(bd_rate(REF, far))


def test_table_files(tmp_path) -> None:
    half = Curve("half", tuple(r * 0.5 for r in REF.rates), REF.quality)
    rows = bd_table([REF, half], references=["ref", "missing"], metric="psnr")
    assert [(r["test"], r["method"]) for r in rows] == [("half", STRICT), ("half", FITTED)]
    md, cs = write_table(rows, tmp_path)
    assert "-50.00" in md.read_text() and md.read_text() == table_markdown(rows)
    assert cs.read_text() == table_csv(rows)


def test_disjoint_quality_ranges_say_so_in_our_words() -> None:
    low = Curve("low", (0.05, 0.06), (-0.02, 0.07))
    high = Curve("high", (0.05, 0.11), (0.76, 1.06))
    rate, _, note = bd_delta(low, high)
    assert math.isnan(rate)
    assert note == (
        "BD-rate: the quality ranges do not overlap (low: -0.02 to 0.07, high: 0.76 to 1.06); "
        "BD-quality: the curves overlap over 23.12 % of their range (the package asks for 75.00 %): n/a below that"
    )


def test_each_warning_is_said_of_the_figure_it_concerns() -> None:
    """The quickstart's base layer: proposed's rates all lie below choi2022's, the qualities overlap a little."""
    choi = Curve("choi", (0.046, 0.06, 0.08, 0.107), (1.83, 2.1, 2.5, 2.83))
    proposed = Curve("prop", (0.0027, 0.005, 0.01, 0.023), (1.91, 3.0, 4.0, 5.4))
    rate, quality, note = bd_delta(choi, proposed)
    assert math.isnan(rate) and math.isnan(quality)  # 26 % of shared quality is too little for a BD-rate
    assert note == (
        "BD-rate: the curves overlap over 25.77 % of their range (the package asks for 75.00 %): n/a below that; "
        "BD-quality: the rate ranges do not overlap (choi: 0.046 to 0.107, prop: 0.0027 to 0.023)"
    )


def test_two_points_at_one_rate_are_named() -> None:
    flat = Curve("flat", (0.1, 0.1, 0.3), (30.0, 31.0, 32.0))
    assert bd_delta(REF, flat)[2] == "flat: two points share the rate 0.1 (qualities 30 and 31)"


@pytest.mark.parametrize(("anchor", "test", "expected_percent"), JCTVC_CASES)
def test_a_monotone_curve_gives_the_same_figure_both_ways(anchor: list, test: list, expected_percent: float) -> None:
    a = Curve("anchor", tuple(r for r, _ in anchor), tuple(q for _, q in anchor))
    t = Curve("test", tuple(r for r, _ in test), tuple(q for _, q in test))
    strict, fitted = bd_delta(a, t), bd_delta(a, t, fit=True)
    assert fitted[0] == pytest.approx(strict[0], abs=1e-12) == pytest.approx(expected_percent, abs=1e-4)
    assert fitted[1] == pytest.approx(strict[1], abs=1e-12)
    assert monotone_fit(a).sorted()[1].tolist() == a.sorted()[1].tolist()


# The quickstart's JPEG mAP curve (issue 17): it saturates and dips by 0.003 at its top rate.
SATURATING = Curve("jpeg", (0.2, 0.35, 0.6, 1.1, 2.0), (0.61, 0.79, 0.86, 0.8847, 0.8815))


def test_a_saturating_curve_with_a_dip_has_a_fitted_figure_only() -> None:
    ref = Curve("ref", (0.15, 0.3, 0.5, 0.9, 1.6), (0.55, 0.75, 0.84, 0.87, 0.883))
    strict, fitted = bd_delta(ref, SATURATING), bd_delta(ref, SATURATING, fit=True)
    assert math.isnan(strict[0]) and "not strictly increasing" in strict[2]
    assert math.isfinite(fitted[0])
    # the fitted curve stops at 1.1 bpp: its rate range shares too little with ref's for a BD-quality
    assert math.isnan(fitted[1]) and "BD-quality: the curves overlap over" in fitted[2]
    # the fit pools the dip into one level at the lower rate: (1.1, 0.8831); the point at 2.0 bpp goes
    fit = monotone_fit(SATURATING)
    assert fit.rates == (0.2, 0.35, 0.6, 1.1)
    assert fit.quality[-1] == pytest.approx((0.8847 + 0.8815) / 2)
    # the fitted figure is the strict figure of the fitted curves
    assert fitted[0] == pytest.approx(bd_delta(ref, fit)[0])


def test_a_flat_curve_stays_undefined_after_the_fit() -> None:
    flat = Curve("flat", (0.1, 0.2, 0.4), (0.9, 0.9, 0.8))
    rate, _, note = bd_delta(REF, flat, fit=True)
    assert math.isnan(rate) and note == "flat: one quality level after the monotone fit (a flat curve)"


def test_the_shown_figure_is_strict_when_defined_else_fitted() -> None:
    rows = bd_table(
        [
            Curve("ref", (0.15, 0.3, 0.5, 0.9, 1.6), (0.55, 0.75, 0.84, 0.87, 0.883)),
            SATURATING,
            Curve("half", (0.075, 0.15, 0.25, 0.45, 0.8), (0.55, 0.75, 0.84, 0.87, 0.883)),
        ],
        ["ref"],
        "map50",
    )
    assert pick_row([r for r in rows if r["test"] == "half"])["method"] == STRICT
    assert pick_row([r for r in rows if r["test"] == "jpeg"])["method"] == FITTED
    legacy = [{"metric": "map50", "reference": "ref", "test": "x", "bd_rate_percent": "nan", "note": "why"}]
    assert pick_row(legacy) is legacy[0] and pick_row([]) is None


def test_bd_needs_three_quarters_of_shared_range() -> None:
    """Shifted copies of one curve: a BD-rate where they share at least 75 % of their joint quality range (the
    package's measure: the shared range over the union of both), n/a below."""
    base = Curve("base", (0.1, 0.2, 0.4, 0.8), (30.0, 32.0, 34.0, 36.0))
    near = Curve("near", (0.1, 0.2, 0.4, 0.8), (30.5, 32.5, 34.5, 36.5))  # shares 5.5 of 6.5 dB: 85 %
    far = Curve("far", (0.1, 0.2, 0.4, 0.8), (33.0, 35.0, 37.0, 39.0))  # shares 3 of 9 dB: 33 %
    assert math.isfinite(bd_rate(base, near)) and bd_rate(base, near) < 0
    rate, _, note = bd_delta(base, far)
    assert math.isnan(rate) and "overlap over 33.33 %" in note and rate_overlap_percent({"note": note}) == 33.33


def test_rate_at_quality_and_bit_savings() -> None:
    c = Curve("c", (0.1, 0.2, 0.4), (0.5, 0.7, 0.9))
    assert rate_at_quality(c, 0.7) == (0.2, "")
    r, note = rate_at_quality(c, 0.8)  # halfway in quality: halfway in log-rate
    assert note == "" and r == pytest.approx(math.sqrt(0.2 * 0.4))
    assert math.isnan(rate_at_quality(c, 0.95)[0]) and "reaches at most 0.9" in rate_at_quality(c, 0.95)[1]
    assert math.isnan(rate_at_quality(c, 0.4)[0]) and "cheapest point" in rate_at_quality(c, 0.4)[1]
    half = Curve("half", (0.05, 0.1, 0.2), (0.5, 0.7, 0.9))
    saving, note = bit_savings(c, half, 0.8)
    assert saving == pytest.approx(50.0) and note.startswith("half ")
    assert math.isnan(bit_savings(c, half, 0.95)[0])
    wobbly = Curve("w", (0.1, 0.2, 0.3, 0.4), (0.5, 0.72, 0.71, 0.9))  # read on its monotone fit
    assert math.isfinite(rate_at_quality(wobbly, 0.715)[0])


def test_the_overlap_is_measured_as_the_package_measures_it_and_read_back_from_the_note() -> None:
    import numpy as np

    from pipeline.evaluation.bdrate import overlap_percent, rate_overlap_percent

    assert overlap_percent(np.array([0.0, 1.0]), np.array([0.5, 1.5])) == pytest.approx(100 * 0.5 / 1.5)
    assert overlap_percent(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 0.0
    assert overlap_percent(np.array([0.0, np.nan, 1.0]), np.array([0.0, 1.0])) == 100.0  # NaN left out
    assert overlap_percent(np.array([]), np.array([0.0, 1.0])) == 0.0
    low, high = Curve("low", (0.05, 0.06), (-0.02, 0.07)), Curve("high", (0.05, 0.11), (0.76, 1.06))
    assert rate_overlap_percent({"note": bd_delta(low, high)[2]}) == 0.0  # disjoint: not "silent, so 100"
    assert rate_overlap_percent({"note": ""}) == 100.0
