"""A γ grid at every λ (the paper-faithful curve under Eq. 2 when a base layer ignores λ): the upper hull of a
cloud of points, the study's trials and their warm starts, per-trial γ, and findings read off the hulls."""

from __future__ import annotations

import dataclasses
import math

import pytest

from pipeline.evaluation.bdrate import Curve, upper_hull
from pipeline.evaluation.findings import StudyPoint, study_findings
from pipeline.workflows.reproduce import PRESETS, gamma_grid, plan_rounds, round_grid


def test_the_upper_hull_keeps_the_frontier_that_rises() -> None:
    cloud = Curve(
        "c",
        (0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6),
        (0.50, 0.60, 0.70, 0.66, 0.85, 0.84, 0.80),  # (0.2, 0.6) loses to (0.2, 0.7); 0.3 lies under the chord
    )
    hull = upper_hull(cloud)
    assert hull.rates == (0.1, 0.2, 0.4) and hull.quality == (0.5, 0.7, 0.85)  # stops at the best point
    line = Curve("line", (0.1, 0.2, 0.3), (1.0, 2.0, 3.0))  # collinear: the middle point adds nothing
    assert upper_hull(line).rates == (0.1, 0.3)


def _plan(gammas: tuple[float, ...]):
    preset = dataclasses.replace(
        PRESETS["mini"], configs={"proposed": "11,32,2"}, gammas=gammas, gamma_mode="fixed", seeds=(0,)
    )
    return plan_rounds(preset, (0.0018, 0.0932), (0,), {"proposed": 0.1}, 2, 10, 60, 60, 1)


def test_every_lambda_trains_each_gamma_warm_started_from_the_same_gamma_below() -> None:
    plan = _plan((0.3, 3.0))
    assert plan.trials == 4 and gamma_grid(plan.preset) == (0.3, 3.0)
    first = round_grid(plan, 0, {"trials": {}})
    assert [(t["trial_name"], t["gamma"]) for t in first] == [
        ("proposed-11-32-2-l0.0018-g0.3-s0", 0.3),
        ("proposed-11-32-2-l0.0018-g3-s0", 3.0),
    ]
    state = {"trials": {t["trial_name"]: {"final_checkpoint": f"/ck/{t['trial_name']}.pt"} for t in first}}
    second = round_grid(plan, 1, state)
    assert [t["init_checkpoint"] for t in second] == [
        "/ck/proposed-11-32-2-l0.0018-g0.3-s0.pt",
        "/ck/proposed-11-32-2-l0.0018-g3-s0.pt",
    ]
    # a study with its one γ names its trials as before
    assert [t["trial_name"] for t in round_grid(_plan(()), 0, {"trials": {}})] == ["proposed-11-32-2-l0.0018-s0"]


def test_with_a_trunk_every_trial_is_warm_started_from_its_model_and_seeds_trunk() -> None:
    from pipeline.workflows.reproduce import describe_plan, planned_trials

    preset = dataclasses.replace(
        PRESETS["mini"],
        configs={"proposed": "11,32,2", "bmshj2018": "43"},
        gammas=(1.0, 100.0),
        gamma_mode="fixed",
        seeds=(0, 1),
        trunk=(0.0932, 100.0),
    )
    # 2 models x 2 seeds trunks, then (2 γ + 1) x 2 λ x 2 seeds = 12 trials; 2 at a time: 2 and 6 waves
    plan = plan_rounds(preset, (0.0018, 0.0932), (0, 1), {"proposed": 0.1, "bmshj2018": 0.1}, 2, 10, 60, 60, 1)
    assert plan.trials_per_round == (4, 12) and plan.trials == 12
    epoch = 10 * 0.1 + 0.4 * 0.1 + 2.0
    assert plan.epoch_caps == (int((3540 * 0.4 / 2 - 20) // epoch), int((3540 * 0.6 / 6 - 20) // epoch))
    trunks = round_grid(plan, 0, {"trials": {}})
    assert [(t["trial_name"], t["lmbda"], t.get("gamma"), t["epochs"]) for t in trunks] == [
        ("proposed-11-32-2-l0.0932-g100-s0-trunk", 0.0932, 100.0, plan.epoch_caps[0]),
        ("proposed-11-32-2-l0.0932-g100-s1-trunk", 0.0932, 100.0, plan.epoch_caps[0]),
        ("bmshj2018-43-l0.0932-s0-trunk", 0.0932, None, plan.epoch_caps[0]),  # it ignores γ
        ("bmshj2018-43-l0.0932-s1-trunk", 0.0932, None, plan.epoch_caps[0]),
    ]
    assert not any("init_checkpoint" in t for t in trunks)  # from scratch
    state = {"trials": {t["trial_name"]: {"final_checkpoint": f"/ck/{t['trial_name']}.pt"} for t in trunks}}
    trials = round_grid(plan, 1, state)
    assert sorted(t["trial_name"] for t in trials) == sorted(planned_trials(plan))  # the study's points, no trunk
    for t in trials:
        seed, model = t["seed"], t["model"]
        trunk = next(n for n in state["trials"] if n.startswith(model) and n.endswith(f"-s{seed}-trunk"))
        assert t["init_checkpoint"] == f"/ck/{trunk}.pt" and t["epochs"] == plan.epoch_caps[1], t
    # the same (λ, γ) as a trunk is a study trial of its own name
    assert "proposed-11-32-2-l0.0932-g100-s0" in {t["trial_name"] for t in trials}
    text = "\n".join(describe_plan(plan, "mini"))
    assert "1. 4 trunks at λ 0.0932, γ 100" in text and "2. 12 trials at every λ and γ" in text
    # without a γ grid the trunk still trains at its own γ (the study's trials at the study's one γ)
    one = dataclasses.replace(plan, preset=dataclasses.replace(preset, gammas=()))
    assert round_grid(one, 0, {"trials": {}})[0]["gamma"] == 100.0
    assert "gamma" not in round_grid(one, 1, state)[0]


def test_a_study_resumed_with_another_layout_is_refused() -> None:
    from pipeline.workflows.reproduce import layout_change

    preset = dataclasses.replace(
        PRESETS["mini"], configs={"proposed": "11,32,2"}, gamma_mode="fixed", seeds=(0,), trunk=(0.0932, 100.0)
    )
    trunked = plan_rounds(preset, (0.0018, 0.0932), (0,), {"proposed": 0.1}, 2, 10, 60, 60, 1)
    chained = dataclasses.replace(trunked, preset=dataclasses.replace(preset, trunk=None))
    done = {"status": "finished"}
    chain_state = {"trials": {"proposed-11-32-2-l0.0018-s0": done}}
    trunk_state = {"trials": {"proposed-11-32-2-l0.0932-g100-s0-trunk": done}}
    assert layout_change(trunked, {"trials": {}}) is None and layout_change(trunked, trunk_state) is None
    assert layout_change(chained, chain_state) is None
    assert layout_change(trunked, chain_state) == "layout: λ rounds -> a trunk at λ 0.0932, γ 100"
    assert layout_change(chained, trunk_state) == "layout: a trunk -> λ rounds"
    other = dataclasses.replace(trunked, preset=dataclasses.replace(preset, trunk=(0.025, 10.0)))
    assert layout_change(other, trunk_state) == (
        "layout: a trunk of another (λ, γ), proposed-11-32-2-l0.0932-g100-s0-trunk -> a trunk at λ 0.025, γ 10"
    )
    # what never finished, and trunks of seeds or models the plan no longer trains, are no other layout
    assert layout_change(trunked, {"trials": {"proposed-11-32-2-l0.0018-s0": {"status": "pending"}}}) is None
    fewer = {"trials": {**trunk_state["trials"], "proposed-11-32-2-l0.0932-g100-s5-trunk": done}}
    assert layout_change(trunked, fewer) is None
    assert (
        layout_change(trunked, {"trials": {**fewer["trials"], "choi2022-21-11-1-l0.0932-g100-s0-trunk": done}}) is None
    )


def test_each_trial_trains_with_its_own_gamma() -> None:
    from pipeline.training.settings import resolve
    from pipeline.training.trial import trial_configs

    settings = resolve("tiny", {}, {"gamma": 1.0, "shards": "/shards"})
    grid = [
        {"trial_name": "a", "model": "proposed", "config": {"M1": 16, "M2": 32, "H": 2}, "lmbda": 0.01, "gamma": 0.3},
        {"trial_name": "b", "model": "proposed", "config": {"M1": 16, "M2": 32, "H": 2}, "lmbda": 0.01},
    ]
    a, b = trial_configs(grid, settings, "/shards", "/store", {}, {})
    assert a.training.gamma == 0.3 and b.training.gamma == 1.0 and a.to_dict()["gamma"] == 0.3


def test_findings_read_the_hull_of_a_gamma_grid() -> None:
    """proposed's base layer ignores λ and follows γ: its points lie on one curve only when read across γ."""

    def pt(model: str, lam: float, gamma: float, bpp: float, map50: float) -> StudyPoint:
        return StudyPoint(model, 0, lam, bpp, map50, 10 * map50, 0.1, 30.0, 0.9, gamma=gamma, uncompressed_map50=0.9)

    points = [
        # proposed: λ moves nothing, γ moves the base layer along one curve
        *(pt("proposed", lam, g, 0.01 * g, 0.6 + 0.1 * g) for lam in (0.0018, 0.0932) for g in (1.0, 2.0, 3.0)),
        # choi2022: twice the rate for the same mAP, spread over λ and γ, with a dominated point
        *(pt("choi2022", 0.0018, g, 0.02 * g, 0.6 + 0.1 * g) for g in (1.0, 2.0, 3.0)),
        pt("choi2022", 0.0932, 2.0, 0.07, 0.75),
    ]
    a_map = study_findings(points)[0]
    assert a_map.key == "a_map50" and a_map.ours == pytest.approx(-50.0) and math.isfinite(a_map.ours)


def test_a_codec_that_ignores_gamma_trains_once_per_lambda() -> None:
    preset = dataclasses.replace(
        PRESETS["mini"], configs={"proposed": "11,32,2", "bmshj2018": "43"}, gammas=(0.3, 3.0), seeds=(0,)
    )
    plan = plan_rounds(preset, (0.0018, 0.0932), (0,), {"proposed": 0.1, "bmshj2018": 0.1}, 2, 10, 60, 60, 1)
    names = [t["trial_name"] for t in round_grid(plan, 0, {"trials": {}})]
    assert names == ["proposed-11-32-2-l0.0018-g0.3-s0", "proposed-11-32-2-l0.0018-g3-s0", "bmshj2018-43-l0.0018-s0"]
    assert plan.trials == 6  # (2 γ + 1) x 2 λ


def test_acceptance_checks_each_gamma_along_lambda() -> None:
    from pipeline.evaluation.findings import rises_with_rate

    def pt(lam: float, gamma: float, bpp: float, map50: float) -> StudyPoint:
        return StudyPoint("proposed", 0, lam, bpp, map50, 1.0, 0.1, 30.0, 0.9, gamma=gamma)

    rising = [pt(0.01, 1, 0.01, 0.5), pt(0.1, 1, 0.02, 0.6), pt(0.01, 3, 0.03, 0.7), pt(0.1, 3, 0.04, 0.8)]
    assert rises_with_rate(rising, "coco_bpp_base", "map50")
    falling = rising[:3] + [pt(0.1, 3, 0.04, 0.65)]  # at γ 3 the higher λ loses mAP: the hull alone would not see it
    assert not rises_with_rate(falling, "coco_bpp_base", "map50")


def test_a_detector_folder_from_before_world_styles_resumes(tmp_path) -> None:  # noqa: ANN001
    import json

    from pipeline.detector.job import DetectorSettings, _check_or_record, _settings_file

    old = {k: v for k, v in dataclasses.asdict(DetectorSettings()).items() if k != "world_style"}
    _settings_file(tmp_path).write_text(json.dumps({"settings": old, "run_id": "r1"}))
    assert _check_or_record(tmp_path, DetectorSettings(), None) == "r1"
    with pytest.raises(Exception, match="other settings \\(world_style\\)"):
        _check_or_record(tmp_path, DetectorSettings(world_style="photographic"), None)


def test_a_set_that_never_reaches_the_psnr_says_so() -> None:
    from pipeline.evaluation.image_cost import CostComparison

    c = CostComparison(35.0, {"jpeg": math.inf}, {"jpeg": 1.8})
    assert not c.holds() and c.lines("world") == ["JPEG (Pillow) at 35 dB: world or the photos never reach it"]


def test_the_photographic_preset_is_the_paper_regime_of_the_design() -> None:
    """DESIGN.md's conditions that a preset can fix: images that cost what photos cost (the photographic world,
    with a detector trained on it), the paper's loss (Eq. 2, a γ grid since under it proposed's base layer follows
    γ only), at least 3 seeds, detection on at least 200 images and reconstruction on Kodak's 24."""
    from dvcm.zoo import WORLD_STYLE_DETECTORS, mini_detector
    from pipeline.workflows.reproduce import check_study_inputs, gamma_text, study_preset

    p = study_preset("mini-photographic", None, None, None, None, None, None)
    # the study takes the bundled detector trained on its world, which sees (held-out mAP far above random)
    assert p.world_style == "photographic" and not check_study_inputs(p, "mini-photographic", False, None, None, None)
    provenance = mini_detector(WORLD_STYLE_DETECTORS[p.world_style])[2]
    assert provenance["settings"]["world_style"] == "photographic"
    assert provenance["test_map50"] > 10 * provenance["random_weights_test_map50"] + 0.2
    assert p.gamma_mode == "fixed" and len(p.gammas) >= 3 and "upper hull" in gamma_text(p)
    assert len(p.seeds) >= 3 and p.coco_images >= 200 and p.kodak_images == 24
    assert study_preset("mini", None, None, None, None, None, None).world_style == "plain"  # the old study as it was


def test_a_gamma_grid_is_drawn_as_its_points_and_their_upper_hull() -> None:
    """In the rate–accuracy plot a model with several points per λ (a γ grid) is a cloud, not one zig-zag line:
    its points as markers, its curve (the upper hull the findings use) as the line."""
    import matplotlib.pyplot as plt

    from pipeline.evaluation.plots import _plot_cloud

    cloud = Curve(
        "proposed (11,32,2)",
        (0.02, 0.03, 0.04, 0.05, 0.09),
        (0.40, 0.33, 0.75, 0.53, 0.87),
        meta={"kind": "model", "points": ["λ=0.0018", "λ=0.0067", "λ=0.0018", "λ=0.0067", "λ=0.0018"]},
    )
    fig, ax = plt.subplots()
    _plot_cloud(ax, cloud)
    dots, hull = ax.get_lines()
    assert dots.get_linestyle() == "None" and len(dots.get_xdata()) == 5
    assert tuple(hull.get_xdata()) == upper_hull(cloud).rates == (0.02, 0.04, 0.09)
    assert [t.get_text() for t in ax.texts] == ["λ=0.0018", "λ=0.0018", "λ=0.0018"]
    plt.close(fig)


def test_each_trial_s_seed_and_gamma_come_from_the_plan_not_from_its_name() -> None:
    from pipeline.workflows.reproduce import planned_trials

    assert planned_trials(_plan((0.3, 3.0))) == {
        "proposed-11-32-2-l0.0018-g0.3-s0": (0, 0.3),
        "proposed-11-32-2-l0.0018-g3-s0": (0, 3.0),
        "proposed-11-32-2-l0.0932-g0.3-s0": (0, 0.3),
        "proposed-11-32-2-l0.0932-g3-s0": (0, 3.0),
    }
    assert planned_trials(_plan(())) == {
        "proposed-11-32-2-l0.0018-s0": (0, None),
        "proposed-11-32-2-l0.0932-s0": (0, None),
    }


def test_the_plan_says_when_round_one_gives_no_more_steps_than_the_learning_curve_was_short_of_its_ceiling_at() -> None:
    from pipeline.workflows.reproduce import ceiling_lines

    plan = _plan(())
    first = plan.epoch_caps[0] * plan.steps_per_epoch

    def measured(steps: int | None) -> list[str]:
        return ceiling_lines(
            dataclasses.replace(plan, preset=dataclasses.replace(plan.preset, steps_short_of_ceiling=steps))
        )

    (line,) = measured(4 * first)
    need = plan.seconds["training (at most)"] * 4 / 3600
    assert f"at most {first} steps" in line and f"after {4 * first} steps" in line and f"more than {need:.1f} h" in line
    assert len(measured(first)) == 1  # as many steps as the curve was still short at: still short
    assert measured(first - 1) == [] and measured(None) == []  # more steps than measured, or nothing measured


def test_the_trunk_option_reads_lambda_gamma_or_none_and_the_study_checks_it() -> None:
    import typer

    from pipeline.cli.reproduce import _trunk
    from pipeline.infra.errors import UserError
    from pipeline.workflows.reproduce import study_preset

    assert _trunk("0.0932,100") == (0.0932, 100.0) and _trunk("none") is None
    for bad in ("0.0932", "a,b", "1,2,3"):
        with pytest.raises(typer.BadParameter, match="--trunk"):
            _trunk(bad)
    assert study_preset("mini-photographic", None, None, None, None, None, None).trunk == (0.0932, 100.0)
    assert study_preset("mini-photographic", None, None, None, None, None, {"trunk": None}).trunk is None
    for bad_trunk in ((0.0, 1.0), (0.1, -1.0), (math.inf, 1.0)):
        with pytest.raises(UserError, match="the trunk's λ must be positive"):
            study_preset("mini", None, None, None, None, None, {"trunk": bad_trunk})
