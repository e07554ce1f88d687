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

_TEMPLATE: Path | None = None  # _build_results's folder, made once per module (its plots take seconds)


@pytest.fixture(scope="module", autouse=True)
def _template(tmp_path_factory: pytest.TempPathFactory):
    global _TEMPLATE
    _TEMPLATE = _build_results(tmp_path_factory.mktemp("report-template"))
    yield
    _TEMPLATE = None


def _results(tmp: Path) -> Path:
    """A copy, under ``tmp``, of a small evaluate output folder (see :func:`_build_results`)."""
    assert _TEMPLATE is not None
    return Path(shutil.copytree(_TEMPLATE, tmp / "eval"))


def _build_results(tmp: Path) -> Path:
    """A small evaluate output folder: two model configurations over two λ, one anchor, a BD table."""
    out = tmp / "eval"
    models = []
    for key, name, cfg, lam, bpp, m, psnr in [
        ("r1", "proposed", (64, 192, 2), 0.0018, 0.05, 0.40, 29.0),
        ("r2", "proposed", (64, 192, 2), 0.0067, 0.09, 0.48, 31.0),
        ("r3", "choi2022", (128, 64, 1), 0.0018, 0.06, 0.36, 28.5),
        ("r4", "choi2022", (128, 64, 1), 0.0067, 0.11, 0.45, 30.6),
    ]:
        res = {
            "schema": "dvcm-eval/1",
            "key": key,
            "kind": "model",
            "model": name,
            "lmbda": lam,
            "detector": "random-weight YOLOv3",
            "config": {"N": 192, "M1": cfg[0], "M2": cfg[1], "H": cfg[2]},
            "label": f"{name} {cfg} λ={lam:g}",
            "redundancy": {"rdn_y1_given_y2": 0.1, "rdn_y2_given_y1": 0.05, "K": 16, "fibers": 2048},
            "channel_rates": {
                "image": "kodim01.png",
                "y1": [{"channel": c, "bits": 100 - c, "map": [[0, 1], [1, c]]} for c in range(8)],
                "y2": [{"channel": c, "bits": 50 - c, "map": [[1, 0], [c, 1]]} for c in range(8)],
            },
            "datasets": {
                "coco": {
                    "skipped": 0,
                    "points": [
                        {
                            "codec": "model",
                            "label": "m",
                            "param": None,
                            "bpp": bpp,
                            "bpp_base": bpp,
                            "map50": m,
                            "images": 2,
                        }
                    ],
                },
                "kodak": {
                    "skipped": 1,
                    "points": [
                        {
                            "codec": "model",
                            "label": "m",
                            "param": None,
                            "bpp": 3 * bpp,
                            "bpp_base": bpp,
                            "bpp_enh": 2 * bpp,
                            "psnr": psnr,
                            "ms_ssim": 0.9,
                            "images": 1,
                        }
                    ],
                },
            },
        }
        models.append(res)
    anchors = {
        "schema": "dvcm-eval/1",
        "key": "anchors",
        "kind": "anchors",
        "label": "anchors",
        "detector": "random-weight YOLOv3",
        "notices": ["anchor VVC-intra (vvenc) skipped: test notice"],
        "datasets": {
            "coco": {
                "skipped": 0,
                "points": [
                    {
                        "codec": "uncompressed",
                        "label": "uncompressed",
                        "param": None,
                        "bpp": None,
                        "map50": 0.55,
                        "images": 2,
                    },
                    {
                        "codec": "jpeg",
                        "label": "JPEG (Pillow) quality=10",
                        "param": 10,
                        "bpp": 0.2,
                        "bpp_base": 0.2,
                        "map50": 0.3,
                        "images": 2,
                    },
                    {
                        "codec": "jpeg",
                        "label": "JPEG (Pillow) quality=40",
                        "param": 40,
                        "bpp": 0.4,
                        "bpp_base": 0.4,
                        "map50": 0.5,
                        "images": 2,
                    },
                ],
            }
        },
    }
    for res in [*models, anchors]:
        (out / res["key"]).mkdir(parents=True)
        (out / res["key"] / "results.json").write_text(json.dumps(res))
    plot_all(
        [*models, anchors], out / "plots", histories={"proposed (64,192,2) λ=0.0067": [(0, 0.3, 0.2), (1, 0.2, 0.1)]}
    )
    (out / "bd_table.csv").write_text(
        "metric,reference,test,bd_rate_percent,bd_quality,note\n"
        'coco_map50,"choi2022 (128,64,1)","proposed (64,192,2)",-23.5,0.031,\n'
    )
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
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome'}",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            html_path.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
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


def test_the_report_opens_on_plots_and_summaries_and_folds_the_long_tables(tmp_path: Path) -> None:
    out = _results(tmp_path)
    # the field's extras on one model: per-class AP and complexity
    res = json.loads((out / "r2" / "results.json").read_text())
    res["datasets"]["coco"]["points"][0]["per_class_ap"] = [
        {"category_id": 1, "name": "person", "ap50": 0.61, "ap": 0.3},
        {"category_id": 3, "name": "car", "ap50": None, "ap": None},
    ]
    res["complexity"] = {
        "input": "768x512",
        "parts": {
            p: {"params": 1000.0 * (i + 1), "kmac_per_pixel": 1.5 * (i + 1)}
            for i, p in enumerate(("front", "encoder", "base_decoder", "full_decoder"))
        },
    }
    res["datasets"]["kodak"]["points"][0].update(encode_ms=12.5, decode_ms=7.25)
    res["redundancy"].update(
        rdn_y1_given_y2_ci95=[-0.05, 0.2], rdn_y2_given_y1_ci95=[0.01, 0.09], impossible=["rdn_y1_given_y2"]
    )
    (out / "r2" / "results.json").write_text(json.dumps(res))
    page = build_report(out)
    order = [
        "<h2>Plots</h2>",
        "<h2>BD-rate summary</h2>",
        "AP@0.5 per class",
        "<h2>Complexity</h2>",
        "<summary>Operating points (11)</summary>",
        "<summary>Every BD-rate pair (1 rows)</summary>",
    ]
    assert [page.index(s) for s in order] == sorted(page.index(s) for s in order)
    assert '<th class="">person</th><th class="">car</th>' in page and ">0.610</span>" in page
    assert "2.0k / 3.00" in page and ">12.5<" in page and ">7.2<" in page  # encoder params / kMAC; median ms
    assert '0.100 [-0.050, 0.200]</td><td class="">0.050 [0.010, 0.090]' in page
    assert "reaches below 0: not told from 0 (y1|y2)" in page and "below 0 throughout: the estimator" not in page
    # the summary: proposed against its baseline (the legacy table's figure counts as the strict one)
    assert re.search(
        r"proposed \(64,192,2\)</td><td class=\"l\">choi2022 \(128,64,1\) \(baseline\)</td>"
        r"<td class=\"l\">pchip</td><td class=\"\">-23.50",
        page,
    )


def test_curves_in_compressai_format_go_out_and_come_back_in(tmp_path: Path) -> None:
    from pipeline.evaluation.curves import export_curves, load_curves

    out = _results(tmp_path)
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*/results.json"))]
    files = {p.name: json.loads(p.read_text()) for p in export_curves(results, tmp_path / "curves")}
    assert sorted(files) == [
        "choi2022-128-64-1-base.json",
        "choi2022-128-64-1.json",
        "proposed-64-192-2-base.json",
        "proposed-64-192-2.json",
    ]
    kodak = files["proposed-64-192-2.json"]
    assert kodak["name"] == "proposed (64,192,2)" and kodak["results"]["bpp"] == pytest.approx([0.15, 0.27])
    assert kodak["results"]["psnr-rgb"] == [29.0, 31.0] and kodak["results"]["lambda"] == [0.0018, 0.0067]
    assert files["proposed-64-192-2-base.json"]["results"]["map50"] == [0.40, 0.48]
    # a user's curve: CompressAI's older keys ("psnr") read as well
    user = tmp_path / "user.json"
    user.write_text(
        json.dumps(
            {"name": "bmshj2018-hyperprior", "results": {"bpp": [0.2, 0.1, 0.4, 0.8], "psnr": [30.0, 28.0, 32.5, 35.0]}}
        )
    )
    (curve,) = load_curves([user])["kodak_psnr"]
    assert curve.rates == (0.1, 0.2, 0.4, 0.8) and curve.quality == (28.0, 30.0, 32.5, 35.0)
    res = CliRunner().invoke(
        app, ["report", "--eval-dir", str(out), "--out", str(tmp_path / "r.html"), "--curves", str(user)]
    )
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r.html").read_text()
    assert "Overlaid curves (dotted): bmshj2018-hyperprior (user.json)" in page
    assert re.search(
        r"kodak_psnr</td><td class=\"l\">pchip</td><td class=\"l\">bmshj2018-hyperprior</td>"
        r"<td class=\"l\">proposed \(64,192,2\)</td>",
        page,
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "expected a JSON object with 'results'"),
        ('{"results": {"psnr-rgb": [1, 2, 3, 4]}}', "no 'bpp' list under 'results'"),
        ('{"results": {"bpp": [], "psnr-rgb": []}}', "the curve 'c' is empty"),
        (
            '{"results": {"bpp": [0.1, 0.2, 0.3], "psnr-rgb": [30, 31, 32]}}',
            "the curve 'c' has 3 points; a BD-rate needs at least 4",
        ),
        (
            '{"results": {"bpp": [0.1, 0.2, 0.3, 0.4], "psnr-rgb": [30, 31]}}',
            "'psnr-rgb' must be a list as long as 'bpp' (4 points)",
        ),
        ('{"results": {"bpp": [0.1, 0.2, 0.3, 0.4], "lpips": [1, 2, 3, 4]}}', "no quality list next to 'bpp'"),
        ("{not json", "not a JSON file"),
        # issue 28, defect 10: a hang, a RecursionError and a ValueError traceback before
        (
            '{"name": "' + "n" * 1_000_000 + '", "results": {"bpp": [0.1, 0.2, 0.3, 0.4], "psnr": [1, 2, 3, 4]}}',
            "the curve's name is 1000000 characters",
        ),
        ("[" * 200_000 + "]" * 200_000, "nested too deep"),
        ('{"results": {"bpp": [0.1, 0.2, 0.3, 1e308], "psnr": [1, 2, 3, 4]}}', "'bpp' must lie in (0, 64]"),
        ('{"results": {"bpp": [0.1, 0.2, 0.3, 0.4], "psnr": [1, 2, 3, 1e308]}}', "within ±1e+06"),
    ],
)
def test_a_bad_curves_file_is_one_line(tmp_path: Path, content: str, message: str) -> None:
    out = _results(tmp_path)
    bad = tmp_path / "c.json"
    bad.write_text(content)
    res = CliRunner().invoke(app, ["report", "--eval-dir", str(out), "--curves", str(bad)])
    assert res.exit_code != 0 and isinstance(res.exception, UserError) and message in str(res.exception), res.output
    assert "\n" not in str(res.exception)


def test_the_summary_picks_the_strongest_other_codec_among_curves_that_overlap() -> None:
    """An anchor whose curve shares a sliver of quality range with the model's is not named the strongest; when
    no other codec overlaps enough, the summary says so."""
    from pipeline.evaluation.report import bd_summary_section

    def row(ref: str, bd: str, note: str = "") -> dict[str, str]:
        return {
            "metric": "psnr",
            "test": "proposed",
            "reference": ref,
            "method": "pchip",
            "bd_rate_percent": bd,
            "bd_quality": "0.5",
            "note": note,
        }

    sliver = row("webp", "-5.0", "BD-rate: the curves overlap over 12.0 % of their range (the package asks for 75.0 %)")
    wide = row("jpeg", "-40.0")
    html_both = "".join(bd_summary_section([sliver, wide], ["proposed"]))
    assert "jpeg (strongest other codec)" in html_both and "webp (strongest other codec)" not in html_both
    html_alone = "".join(bd_summary_section([sliver], ["proposed"]))
    assert "webp" not in html_alone and "no other codec&#x27;s curve shares 50 %" in html_alone


def test_a_curves_file_is_read_only_up_to_its_limit(tmp_path: Path) -> None:
    """A link to /dev/zero (or any huge file) is refused after 16 MiB, not read whole."""
    out = _results(tmp_path)
    link = tmp_path / "zero.json"
    link.symlink_to("/dev/zero")
    res = CliRunner().invoke(app, ["report", "--eval-dir", str(out), "--curves", str(link)])
    assert isinstance(res.exception, UserError) and "larger than 16 MiB" in str(res.exception)


def test_a_kmeans_reading_above_its_ceiling_is_flagged_as_an_artefact() -> None:
    from pipeline.evaluation.report import redundancy_row

    red = {"rdn_y1_given_y2": 0.1, "rdn_y2_given_y1": 0.13, "rdn_y1_given_y2_ceiling": 0.105,
           "rdn_y2_given_y1_ceiling": 0.09, "K": 16, "fibers": 8192}  # fmt: skip
    flag = redundancy_row({"label": "proposed (11,32,2)", "redundancy": red})[-1]
    assert "above its ceiling" in flag and "(y2|y1)" in flag and "within 10 % of its ceiling" in flag
    learned = redundancy_row({"label": "p", "redundancy_learned": {"rdn_y1_given_y2": 0.9}}, "redundancy_learned")
    assert learned[1] == "learned" and "ceiling" not in learned[-1]
