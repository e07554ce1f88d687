"""The paper's findings from a study's points: worked examples whose verdicts follow from the numbers,
and a study in which a finding does not hold is reported as such."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline.evaluation.findings import (
    DOES_NOT_HOLD,
    HOLDS,
    StudyPoint,
    acceptance,
    jpeg_comparison,
    jpeg_psnr_at,
    study_findings,
    write_findings,
)

LAMBDAS = (0.0067, 0.025, 0.0932, 0.18)


def _points(model: str, seed: int, base_scale: float, psnr_shift: float, rdn: tuple[float, float]) -> list[StudyPoint]:
    """A model whose base layer needs ``base_scale`` times the bits for the same mAP and ŝ SNR."""
    out = []
    for i, lam in enumerate(LAMBDAS):
        bpp_base = 0.01 * (i + 1) * base_scale
        quality = i + 1  # the same qualities for every model: only the rates differ
        out.append(
            StudyPoint(
                model,
                seed,
                lam,
                bpp_base,
                0.5 + 0.1 * quality,
                2.0 * quality,
                0.1 * (i + 1),
                30.0 + 2 * i + psnr_shift,
                0.9 + 0.01 * i,
                *rdn,
                uncompressed_map50=0.8 / 0.98,  # 2 % mAP loss: the level 0.8 that every curve reaches
            )
        )
    return out


def _study(proposed_scale: float = 0.5, proposed_psnr: float = -1.0) -> list[StudyPoint]:
    pts = []
    for seed in (0, 1):
        pts += _points("proposed", seed, proposed_scale, proposed_psnr, (0.05, 0.9))
        pts += _points("choi2022", seed, 1.0, 0.0, (0.4, 0.05))
    return pts


def test_a_proposed_base_layer_at_half_the_rate_is_a_minus_fifty_percent_bd_rate() -> None:
    a_map, savings, a_snr, b, c = study_findings(_study())
    # same qualities at half the rate: the BD-rate is -50 % exactly, on both axes, on every seed
    for f in (a_map, a_snr):
        assert f.per_seed == {"0": pytest.approx(-50.0), "1": pytest.approx(-50.0)}
        assert f.ours == pytest.approx(-50.0) and f.spread == pytest.approx(0.0, abs=1e-9) and f.verdict == HOLDS
    # and half the bits at 2 % mAP loss: 50 % saved (proposed 0.015 bpp against choi2022's 0.03 at mAP 0.8)
    assert savings.key == "a_savings" and savings.ours == pytest.approx(50.0) and savings.verdict == HOLDS
    assert "proposed 0.015 vs choi2022 0.03" in savings.detail["notes"]["0"]
    assert b.verdict == HOLDS and b.per_seed["0"] == pytest.approx(min(0.4 - 0.05, 0.9 - 0.05))
    assert c.per_seed["0"] == pytest.approx(-1.0) and c.verdict == HOLDS  # 1 dB below at equal bpp


def test_findings_that_do_not_hold_are_reported_as_measured() -> None:
    a_map, savings, _, _, c = study_findings(_study(proposed_scale=2.0, proposed_psnr=+0.5))
    assert a_map.ours == pytest.approx(100.0) and a_map.verdict == DOES_NOT_HOLD
    assert savings.ours == pytest.approx(-100.0) and savings.verdict == DOES_NOT_HOLD
    assert c.ours == pytest.approx(0.5) and c.verdict == DOES_NOT_HOLD


def test_a_curve_that_falls_makes_the_finding_undefined_with_its_reason() -> None:
    pts = _study()
    # seed 1's choi2022 mAP falls at its highest rate
    pts = [
        StudyPoint(**{**p.__dict__, "map50": 0.1}) if (p.model, p.seed, p.lmbda) == ("choi2022", 1, 0.18) else p
        for p in pts
    ]
    a_map = study_findings(pts)[0]
    assert a_map.per_seed["1"] is None and a_map.ours is None
    assert a_map.verdict.startswith("undefined (seed 1: choi2022: quality is not strictly increasing")


def test_acceptance_checks_every_axis_and_jpeg_at_the_same_rate() -> None:
    jpeg = [(0.05, 28.0), (0.2, 34.0), (0.5, 40.0)]
    assert jpeg_psnr_at(jpeg, 0.4) == pytest.approx(38.0) and jpeg_psnr_at(jpeg, 0.6) is None
    pts = _study()
    checks = acceptance(pts, jpeg)
    assert len(checks) == 4 and all(all(c["rises"].values()) for c in checks)
    top = next(c for c in checks if c["model"] == "choi2022" and c["seed"] == 0)
    # choi2022's highest λ: 0.4 bpp at 36 dB against JPEG's 38 dB there
    assert (top["top_bpp"], top["top_psnr"], top["beats_jpeg"]) == (pytest.approx(0.4), 36.0, False)


def test_below_jpegs_lowest_rate_a_point_is_compared_by_the_rate_jpeg_needs() -> None:
    jpeg = [(0.15, 27.5), (0.17, 35.3), (0.22, 37.3), (0.36, 38.7)]  # JPEG cannot go below 0.15 bpp
    above = jpeg_comparison(jpeg, 0.13, 37.2)
    assert above["beats_jpeg"] is True and above["jpeg_psnr"] is None
    assert above["jpeg_bpp_for_psnr"] == pytest.approx(0.17 + 0.05 * (37.2 - 35.3) / 2.0)
    assert above["jpeg_text"].startswith(
        "above: 37.20 dB at 0.130 bpp, less than JPEG's lowest rate (0.150 bpp, 27.50 dB)"
    )
    assert "JPEG needs 0.218 bpp for 37.20 dB" in above["jpeg_text"]
    # below JPEG's lowest rate and below its PSNR there: undecided, never a guess
    assert jpeg_comparison(jpeg, 0.10, 20.0)["beats_jpeg"] is None
    # above its highest rate and below its PSNR there: below JPEG
    assert jpeg_comparison(jpeg, 0.5, 38.0)["beats_jpeg"] is False
    inside = jpeg_comparison(jpeg, 0.22, 36.0)
    assert inside["beats_jpeg"] is False and inside["jpeg_text"].startswith("36.00 vs 37.30 dB at 0.220 bpp: below")


def test_curves_that_share_no_quality_range_say_which_model_dominates() -> None:
    # proposed below choi2022's lowest rate and above its best quality, its base rate nearly fixed over λ
    pts = [
        StudyPoint(**{**p.__dict__, "coco_bpp_base": 0.005 + 0.0001 * i, "map50": 0.95 + 0.001 * i})
        if p.model == "proposed"
        else p
        for i, p in enumerate(_study())
    ]
    a_map = study_findings(pts)[0]
    assert a_map.ours is None and a_map.verdict.startswith("undefined (seed 0: proposed dominates choi2022: mAP@0.5 ")
    assert "share no range for a Bjøntegaard figure" in a_map.verdict
    # overlapping curves: no dominance is claimed
    assert "dominates" not in study_findings(_study())[0].verdict


def test_files_hold_a_value_or_a_reason_for_each_finding(tmp_path: Path) -> None:
    findings, _ = write_findings(tmp_path, _study(), [(0.05, 28.0), (0.5, 40.0)], "# study", {"seeds": [0, 1]})
    data = json.loads((tmp_path / "findings.json").read_text())
    assert [f["key"] for f in data["findings"]] == ["a_map50", "a_savings", "a_s_snr", "b", "c"]
    assert data["seeds"] == [0, 1]
    md = (tmp_path / "findings.md").read_text()
    assert "| (a_map50)" in md and "−40.6 %" in md and "-50.00 %" in md and "PSNR vs total bpp" in md
    assert "| (a_savings)" in md and "about 55 % (at about 0.30 vs 0.58 bpp)" in md and "+50.00 %" in md
    # each curve's mAP runs from 0.6 to 0.9 of 0.816: 73.5 % to 110.2 %, so it spans the paper's region
    assert "73.5% to 110.2%: spans it" in md
    assert all(f.verdict in (HOLDS, DOES_NOT_HOLD) or f.verdict.startswith("undefined (") for f in findings)
    assert not any(isinstance(v, float) and math.isnan(v) for f in data["findings"] for v in f["per_seed"].values())


def test_the_cost_of_scalability_is_each_scalable_codecs_bd_rate_against_the_single_layer_codec() -> None:
    """(d): the single-layer bmshj2018 reaches each PSNR at 0.8x choi2022's total rate and at proposed's own:
    choi2022 pays +25 %, proposed nothing; a study without bmshj2018 has no (d)."""

    def kodak(model: str, seed: int, scale: float) -> list[StudyPoint]:
        return [
            StudyPoint(model, seed, lam, 0.01 * (i + 1), 0.5, 1.0, 0.1 * (i + 1) * scale, 30.0 + 2 * i, 0.9)
            for i, lam in enumerate(LAMBDAS)
        ]

    pts = [
        p
        for seed in (0, 1)
        for p in kodak("proposed", seed, 0.8) + kodak("choi2022", seed, 1.0) + kodak("bmshj2018", seed, 0.8)
    ]
    d = {f.key: f for f in study_findings(pts) if f.key.startswith("d_")}
    assert d["d_choi2022"].per_seed == {"0": pytest.approx(25.0), "1": pytest.approx(25.0)}
    assert d["d_choi2022"].verdict == HOLDS
    assert d["d_proposed"].ours == pytest.approx(0.0, abs=1e-9) and d["d_proposed"].verdict == DOES_NOT_HOLD
    assert not [f for f in study_findings(_study()) if f.key.startswith("d_")]


def test_b_is_read_per_estimator_and_not_testable_where_a_bound_keeps_rdn_y2_given_y1_from_1() -> None:
    """k-means with a ceiling of 0.9 on proposed's Rdn(ŷ2|ŷ1): the ordering decides; the learned estimator with a rate
    split of 0.2: "near 1" cannot be read, so (b) by it is not testable, whatever its ordering."""
    import dataclasses

    pts = [
        dataclasses.replace(
            p,
            kmeans_ceiling_y2_given_y1=0.9,
            rate_split=0.2,
            learned_rdn_y1_given_y2=0.01 if p.model == "proposed" else 0.3,
            learned_rdn_y2_given_y1=0.15 if p.model == "proposed" else 0.02,
        )
        for p in _study()
    ]
    by_key = {f.key: f for f in study_findings(pts)}
    assert by_key["b"].verdict == HOLDS
    learned = by_key["b_learned"]
    assert learned.verdict.startswith("not testable (proposed's Rdn(ŷ2|ŷ1) cannot exceed 0.20 here: the rate split")
    assert "the ordering alone holds" in learned.verdict and learned.per_seed["0"] == pytest.approx(0.13)
    assert "b_learned" not in {f.key for f in study_findings(_study())}  # no learned estimate: no row for it


def test_the_residual_lst_ablation_gets_its_own_row() -> None:
    """A study that trained choi2022rlst (the baseline with a residual LST) reports (a) against it as well."""
    pts = _study() + [
        p for seed in (0, 1) for p in _points("choi2022rlst", seed, 0.8, 0.0, (0.3, 0.05))
    ]  # rlst at 0.8x choi2022's base rate: proposed at 0.5x is 37.5 % below it
    rows = {f.key: f for f in study_findings(pts)}
    assert "a_map50_rlst" not in {f.key for f in study_findings(_study())}
    assert rows["a_map50_rlst"].ours == pytest.approx(-37.5) and rows["a_map50_rlst"].verdict == HOLDS
    assert {c["model"] for c in acceptance(pts, [])} == {"proposed", "choi2022", "choi2022rlst"}
