"""The metric registry: every metric is computed, drawn, exported, read back and BD-scored from its one
declaration; results written before a COCO metric existed get it from their stored statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.evaluation.curves import export_curves, load_curves
from pipeline.evaluation.metrics import BD_METRICS, METRICS, point_qualities
from pipeline.evaluation.plots import PLOT_FILES, curves
from pipeline.evaluation.results import _mean, load_results


def _model(key: str, lam: float, scale: float) -> dict:
    stats = {"AP": 0.2 * scale, "AP50": 0.4 * scale}
    coco = {
        "codec": "model",
        "label": "m",
        "param": None,
        "bpp": 0.1 * scale,
        "bpp_base": 0.1 * scale,
        "coco_stats": stats,
        "map50": stats["AP50"],
        "map": stats["AP"],
        "s_psnr": 20 + scale,
        "s_snr": scale,
        "images": 2,
    }
    kodak = {
        "codec": "model",
        "label": "m",
        "param": None,
        "bpp": 0.3 * scale,
        "bpp_base": 0.1 * scale,
        "bpp_enh": 0.2 * scale,
        "psnr": 30 + scale,
        "ms_ssim": 0.9 + 0.01 * scale,
        "images": 1,
    }
    return {
        "schema": "dvcm-eval/1",
        "key": key,
        "kind": "model",
        "model": "bmshj2018",
        "lmbda": lam,
        "config": {"N": 32, "M": 43},
        "label": f"bmshj2018 (43) λ={lam:g}",
        "datasets": {"coco": {"points": [coco]}, "kodak": {"points": [kodak]}},
    }


def test_every_metric_is_a_curve_a_file_key_and_where_declared_a_plot_and_bd_rows(tmp_path: Path) -> None:
    results = [_model(f"r{i}", lam, i + 1) for i, lam in enumerate((0.0018, 0.0067, 0.025, 0.0932))]
    for key, m in METRICS.items():
        (c,) = curves(results, key)
        assert c.label == "bmshj2018 (43)" and len(c.rates) == 4
        assert list(c.quality) == sorted(r["datasets"][m.dataset]["points"][0][m.quality] for r in results)
        assert (key in PLOT_FILES) == (m.plot_file is not None) and (key in BD_METRICS) == m.bd
    assert {"coco_map", "coco_map50"} <= set(BD_METRICS)
    written = export_curves(results, tmp_path)
    base = json.loads(next(p for p in written if p.name.endswith("-base.json")).read_text())
    assert base["results"]["map"] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    back = load_curves([str(p) for p in written], taken=set())
    assert set(back) == set(METRICS)  # every metric comes back from the files we write


def test_a_points_qualities_come_from_its_rows_or_its_coco_statistics() -> None:
    rows = [{"psnr": 30.0, "ms_ssim": 0.9}, {"psnr": 32.0, "ms_ssim": None}]
    assert point_qualities("kodak", rows, None, _mean) == {"psnr": 31.0, "ms_ssim": 0.9}
    coco = point_qualities("coco", [{"s_psnr": 20.0, "s_snr": 2.0}], {"AP": 0.25, "AP50": 0.5}, _mean)
    assert coco == {"map50": 0.5, "map": 0.25, "s_psnr": 20.0, "s_snr": 2.0}


def test_results_written_before_a_coco_metric_existed_get_it_from_their_statistics(tmp_path: Path) -> None:
    old = _model("r0", 0.0018, 1)
    del old["datasets"]["coco"]["points"][0]["map"]
    (tmp_path / "results.json").write_text(json.dumps(old))
    assert load_results(tmp_path)["datasets"]["coco"]["points"][0]["map"] == pytest.approx(0.2)
