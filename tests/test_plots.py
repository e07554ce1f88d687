"""Plots a person reads: what they show when the data would otherwise hide the readable range."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_biased_low_redundancies_do_not_squeeze_the_readable_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A k-means estimate of −3 at few fibers (the quickstart's proposed at λ 0.0018) set the y-axis, so that
    everything in [0, 1] was a sliver; values below −1 now leave the axis and are counted on the plot."""
    import matplotlib.pyplot as plt

    from pipeline.evaluation import plots

    seen = {}
    finish = plots._finish

    def keep(fig, ax, path):
        seen["ylim"], seen["texts"] = ax.get_ylim(), [t.get_text() for t in ax.texts]
        return finish(fig, ax, path)

    monkeypatch.setattr(plots, "_finish", keep)
    hist = {"proposed": [(1, -2.0, 0.05), (2, -3.3, 0.06), (3, 0.02, 0.1)], "choi2022": [(1, 0.05, 0.0), (2, 0.2, 0.3)]}
    assert plots.plot_redundancy([], hist, tmp_path / "r.png").is_file()
    assert seen["ylim"][0] == plots.REDUNDANCY_FLOOR and seen["ylim"][1] >= 1.0
    assert seen["texts"] == ["2 value(s) below -1, off the axis"]
    seen.clear()
    plots.plot_redundancy([], {"choi2022": [(1, -0.2, 0.1), (2, 0.2, 0.3)]}, tmp_path / "s.png")
    assert -1.0 < seen["ylim"][0] < -0.2 and not seen["texts"]  # nothing off the axis: drawn as it is
    plt.close("all")


def test_a_missing_redundancy_is_drawn_as_a_gap(tmp_path: Path) -> None:
    """An Rdn that could not be estimated is NaN, written as null in results.json and read back as None."""
    from pipeline.evaluation.plots import plot_redundancy

    res = [{"kind": "model", "label": "proposed", "redundancy": {"rdn_y1_given_y2": None, "rdn_y2_given_y1": 0.1}}]
    assert plot_redundancy(res, {"proposed": [(1, float("nan"), 0.05), (2, -2.0, 0.06)]}, tmp_path / "r.png").is_file()
