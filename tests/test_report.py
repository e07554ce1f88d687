"""``dvcm-pipeline report``: a self-contained HTML page, rendered in real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.evaluation.plots import plot_all
from pipeline.evaluation.report import build_report
from pipeline.infra.errors import UserError


def _results(tmp: Path) -> Path:
    """A small evaluate output folder: two model configurations over two λ, one anchor, a BD table."""
    out = tmp / "eval"
    models = []
    for key, name, cfg, lam, bpp, m, psnr in [
        ("r1", "proposed", (64, 192, 2), 0.0018, 0.05, 0.40, 29.0), ("r2", "proposed", (64, 192, 2), 0.0067, 0.09, 0.48, 31.0),
        ("r3", "choi2022", (128, 64, 1), 0.0018, 0.06, 0.36, 28.5), ("r4", "choi2022", (128, 64, 1), 0.0067, 0.11, 0.45, 30.6),
    ]:
        res = {"schema": "dvcm-eval/1", "key": key, "kind": "model", "model": name, "lmbda": lam, "detector": "random-weight YOLOv3",
               "config": {"N": 192, "M1": cfg[0], "M2": cfg[1], "H": cfg[2]}, "label": f"{name} {cfg} λ={lam:g}",
               "redundancy": {"rdn_y1_given_y2": 0.1, "rdn_y2_given_y1": 0.05, "K": 16, "fibers": 2048},
               "channel_rates": {"image": "kodim01.png", "y1": [{"channel": c, "bits": 100 - c, "map": [[0, 1], [1, c]]} for c in range(8)],
                                 "y2": [{"channel": c, "bits": 50 - c, "map": [[1, 0], [c, 1]]} for c in range(8)]},
               "datasets": {"coco": {"skipped": 0, "points": [{"codec": "model", "label": "m", "param": None, "bpp": bpp, "bpp_base": bpp, "map50": m, "images": 2}]},
                            "kodak": {"skipped": 1, "points": [{"codec": "model", "label": "m", "param": None, "bpp": 3 * bpp, "bpp_base": bpp, "bpp_enh": 2 * bpp, "psnr": psnr, "ms_ssim": 0.9, "images": 1}]}}}
        models.append(res)
    anchors = {"schema": "dvcm-eval/1", "key": "anchors", "kind": "anchors", "label": "anchors", "detector": "random-weight YOLOv3",
               "notices": ["anchor VVC-intra (vvenc) skipped: test notice"],
               "datasets": {"coco": {"skipped": 0, "points": [
                   {"codec": "uncompressed", "label": "uncompressed", "param": None, "bpp": None, "map50": 0.55, "images": 2},
                   {"codec": "jpeg", "label": "JPEG (Pillow) quality=10", "param": 10, "bpp": 0.2, "bpp_base": 0.2, "map50": 0.3, "images": 2},
                   {"codec": "jpeg", "label": "JPEG (Pillow) quality=40", "param": 40, "bpp": 0.4, "bpp_base": 0.4, "map50": 0.5, "images": 2}]}}}
    for res in [*models, anchors]:
        (out / res["key"]).mkdir(parents=True)
        (out / res["key"] / "results.json").write_text(json.dumps(res))
    plot_all([*models, anchors], out / "plots", histories={"proposed (64,192,2) λ=0.0067": [(0, 0.3, 0.2), (1, 0.2, 0.1)]})
    (out / "bd_table.csv").write_text("metric,reference,test,bd_rate_percent,bd_quality,note\n"
                                      "coco_map50,\"choi2022 (128,64,1)\",\"proposed (64,192,2)\",-23.5,0.031,\n")
    return out


def test_report_is_self_contained(tmp_path: Path) -> None:
    out = _results(tmp_path)
    res = CliRunner().invoke(app, ["report", "--eval-dir", str(out)])
    assert res.exit_code == 0, res.output
    page = (out / "report.html").read_text()
    assert len(re.findall(r"src='data:image/png;base64,", page)) == len(list((out / "plots").glob("*.png"))) >= 5
    assert not re.search(r"(src|href)=['\"]?(https?:|file:|/)", page)  # nothing outside the page
    assert "-23.50" in page and "random-weight YOLOv3" in page and "test notice" in page


def test_report_refuses_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no \\*/results.json"):
        build_report(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    out = _results(tmp_path)
    html_path = out / "report.html"
    html_path.write_text(build_report(out))
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chrome'}", f"--screenshot={shot}", "--window-size=1200,1600",
                    html_path.as_uri()], capture_output=True, timeout=120, check=False)
    assert shot.is_file()
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 1600)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text, tables and plots, not a blank page
    shutil.copy(shot, Path("/tmp") / "dvcm_report_screenshot.png")


def test_every_plot_lists_the_models_in_the_same_order_whatever_the_order_of_the_results(tmp_path: Path) -> None:
    from pipeline.evaluation.plots import curves

    results = [json.loads(p.read_text()) for p in sorted(_results(tmp_path).glob("*/results.json"))]
    for order in (results, results[::-1]):
        labels = [c.label for c in curves(order, "coco_map50")]
        assert labels == ["choi2022 (128,64,1)", "proposed (64,192,2)", "JPEG (Pillow)"]
