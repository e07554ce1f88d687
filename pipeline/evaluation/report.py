"""``dvcm-pipeline report``: one self-contained HTML page from an ``evaluate`` output folder.

The page inlines every plot as a base64 PNG and carries the BD-rate table and a summary of
each operating point, so it can be mailed or opened offline (no external resource).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from pipeline.evaluation.bdrate import Curve
from pipeline.evaluation.metrics import METRICS
from pipeline.infra.atomic import atomic_write_text
from pipeline.infra.errors import UserError

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1150px}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:right} th{background:#eee}
td.l,th.l,td:last-child{text-align:left} .note{color:#a40;font-size:13px}
img{max-width:100%;border:1px solid #ddd;margin:6px 0}
details{margin:14px 0} summary{cursor:pointer;font-weight:600;font-size:15px}
"""


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or v == "":
        return "–"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return html.escape(str(v))
    return "n/a" if math.isnan(f) else f"{f:.{digits}f}"


def _table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def findings_section(findings: dict[str, Any]) -> str:
    """The paper's findings next to ours (``findings.json`` of ``dvcm-pipeline reproduce``), and the acceptance checks."""
    rows = []
    for f in findings.get("findings", []):
        unit = f.get("unit", "")

        def val(v: Any, unit: str = unit) -> str:
            return "–" if v is None else (f"{v:+.2f} {unit}" if unit in ("%", "dB") else f"{v:+.3f}")

        methods = (f.get("detail") or {}).get("methods", {})
        seeds = ", ".join(
            f"{s}: {val(v)}" + (" (fitted)" if methods.get(s) == "pchip-isotonic" else "")
            for s, v in f.get("per_seed", {}).items()
        )
        rows.append(
            [
                f"({html.escape(f['key'])}) {html.escape(f['claim'])}",
                html.escape(f["paper"]),
                val(f.get("ours")),
                "–" if f.get("spread") is None else f"{f['spread']:.2f}",
                html.escape(seeds),
                f"<b>{html.escape(f['verdict'])}</b>",
            ]
        )
    out = [
        "<h2>Findings, side by side with the paper</h2>",
        f"<p>{html.escape(findings.get('summary', ''))}</p>",
        _table(["finding", "paper", "ours (mean over seeds)", "spread (sd)", "per seed", "verdict"], rows),
    ]
    checks = findings.get("acceptance", [])
    if checks:
        axes = list(checks[0]["rises"])
        out.append("<h3>Acceptance of the training</h3>")
        out.append(
            _table(
                ["model", "seed", *axes, "PSNR at the highest λ vs JPEG"],
                [
                    [
                        html.escape(c["model"]),
                        str(c["seed"]),
                        *("rises" if c["rises"][a] else "<b>does not rise</b>" for a in axes),
                        html.escape(
                            c.get("jpeg_text")
                            or (
                                "outside JPEG's range"
                                if c.get("jpeg_psnr") is None
                                # older files
                                else f"{c['top_psnr']:.2f} vs {c['jpeg_psnr']:.2f} dB at {c['top_bpp']:.3f} bpp"
                            )
                        ),
                    ]
                    for c in checks
                ],
                left=2,
            )
        )
    return "\n".join(out)


def build_report(eval_dir: Path, findings: dict[str, Any] | None = None, curve_files: list[Path] | None = None) -> str:
    """The HTML text for the results under ``eval_dir``; with ``findings`` (a study's ``findings.json``) they come
    first; ``curve_files`` (CompressAI-style JSON curves) are overlaid on the plots and added to the BD tables."""
    if not eval_dir.is_dir():
        raise UserError(f"{eval_dir} is not a folder; pass the --out folder of 'dvcm-pipeline evaluate'")
    results = []
    for p in sorted(eval_dir.glob("*/results.json")):
        try:
            results.append(json.loads(p.read_text()))
        except ValueError:
            raise UserError(f"{p} is not valid JSON; rerun evaluate with --overwrite") from None
    if not results:
        raise UserError(f"no */results.json under {eval_dir}; run 'dvcm-pipeline evaluate --out {eval_dir}' first")
    detector = next((r.get("detector") for r in results if r.get("detector")), "YOLOv3")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>dvcm evaluation</title><style>{CSS}</style></head><body>",
        "<h1>dvcm evaluation report</h1>",
        f"<p>Detector on the COCO path: <b>{html.escape(detector)}</b>. Rates come from real bitstreams; "
        "anchors count codestream bytes only (container in its own column).</p>",
    ]
    if detector.startswith("random-weight"):
        parts.append(
            "<p class='note'>These COCO accuracies use a random-weight YOLOv3: they measure how compression "
            "moves its detections, not real detection accuracy.</p>"
        )
    if findings:
        parts.append(findings_section(findings))
    notices = [n for r in results for n in r.get("notices", [])]
    if notices:
        parts.append("<ul class='note'>" + "".join(f"<li>{html.escape(n)}</li>" for n in notices) + "</ul>")

    bd_rows: list[dict[str, str]] = []
    bd = eval_dir / "bd_table.csv"
    if bd.is_file():
        with open(bd, newline="") as f:
            bd_rows = list(csv.DictReader(f))
    if curve_files:
        extra, bd_rows = with_curves(results, bd_rows, curve_files)
        parts.append(
            "<p>Overlaid curves (dotted): "
            + ", ".join(
                f"{html.escape(c.label)} ({html.escape(Path(c.meta['file']).name)})"
                for c in {c.label: c for cs in extra.values() for c in cs}.values()
            )
            + "</p>"
        )
        with tempfile.TemporaryDirectory() as tmp:  # the evaluation's plots, the rate curves redrawn with the files'
            from pipeline.evaluation.plots import PLOT_FILES, plot_metric

            if (eval_dir / "plots").is_dir():
                shutil.copytree(eval_dir / "plots", tmp, dirs_exist_ok=True)
            for metric, name in PLOT_FILES.items():
                plot_metric(results, metric, Path(tmp) / name, extra.get(metric, ()))
            parts += plots_section(Path(tmp), plots_dir=Path(tmp))
    else:
        parts += plots_section(eval_dir)
    models = sorted({_curve_label(r) for r in results if r.get("kind") == "model"})
    parts += bd_summary_section(bd_rows, models)
    parts += per_class_section(results)
    parts += complexity_section(results)
    parts += redundancy_section(results)
    parts += operating_points_section(results, detector)
    if bd_rows:
        parts.append(
            _fold(
                f"Every BD-rate pair ({len(bd_rows)} rows)",
                BD_METHODS_NOTE
                + _table(
                    ["metric", "method", "reference", "test", "BD-rate %", "BD-quality", "note"],
                    [
                        [
                            html.escape(b["metric"]),
                            html.escape(b.get("method") or "pchip"),
                            html.escape(b["reference"]),
                            html.escape(b["test"]),
                            _fmt(b["bd_rate_percent"], 2),
                            _fmt(b["bd_quality"], 4),
                            html.escape(b["note"]),
                        ]
                        for b in bd_rows
                    ],
                    left=4,
                ),
            )
        )
    else:
        parts.append("<p class='note'>no bd_table.csv in this folder</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


BD_METHODS_NOTE = (
    "<p>Negative BD-rate: the test curve needs fewer bits than the reference for the same quality. "
    "Method <i>pchip</i>: the strict Bjøntegaard figure on the raw points (n/a when a curve is not "
    "monotone); <i>pchip-isotonic</i>: on a monotone (isotonic) fit of each curve first, as task "
    "curves that saturate are reported in feature coding.</p>"
)
PLOT_ORDER = ["rate_accuracy", "psnr_bpp", "msssim_bpp", "redundancy"]


def _curve_label(result: dict[str, Any]) -> str:
    """A model's curve label in the BD table (``proposed (11,32,2)``)."""
    from pipeline.evaluation.plots import model_curve_label

    return model_curve_label(result)


def redundancy_section(results: list[dict[str, Any]]) -> list[str]:
    """The redundancy table: one row per model and estimator, with how to read it."""
    parts: list[str] = []
    red_rows = [
        redundancy_row(r, key)
        for r in sorted(results, key=lambda r: r.get("label", ""))
        for key in ("redundancy", "redundancy_learned")
        if r.get(key)
    ]
    if red_rows:
        parts.append("<h2>Redundancy</h2>")
        parts.append(
            "<p>Rdn = 1 − H(y_i|y_j)/H(y_i) on held-out data with its 95 % interval, by two estimators. "
            "<b>k-means</b> (the paper's): fibers of y_j in K clusters, entropy bottlenecks fitted on half the "
            "fibers, the interval a bootstrap over the other half; a cluster index carries at most log2 K bits, "
            "so it cannot read above its <i>ceiling</i> min(log2 K, H(y_j)) / H(y_i). <b>learned</b>: a conditional "
            "entropy model of y_i given the neighbourhood of y_j, fitted on half the images and scored in bits on "
            "the others (interval: bootstrap over those images); it reads 1 for Rdn(ŷ|ŷ) and 0 for independent "
            "noise (bench redundancy). In-sample: scored on what it was fitted to. H in bits per fiber. "
            "An interval that reaches below 0 cannot be told from 0.</p>"
        )
        parts.append(
            _table(
                [
                    "model",
                    "estimator",
                    "Rdn(ŷ1|ŷ2) [95 % CI]",
                    "Rdn(ŷ2|ŷ1) [95 % CI]",
                    "in-sample",
                    "ceiling",
                    "H(ŷ1), H(ŷ2)",
                    "images",
                    "settings",
                    "flag",
                ],
                red_rows,
            )
        )
    return parts


def operating_points_section(results: list[dict[str, Any]], detector: str) -> list[str]:
    """Every operating point of every codec, folded away: its rates and each metric's quality."""
    parts: list[str] = []
    rows = []
    for r in results:
        for d, entry in sorted(r.get("datasets", {}).items()):
            for p in entry.get("points", []):
                rows.append(
                    [
                        html.escape(p["label"]),
                        d,
                        _fmt(p.get("bpp"), 4),
                        _fmt(p.get("bpp_base"), 4),
                        _fmt(p.get("bpp_enh"), 4),
                        _fmt(p.get("container_bpp"), 4),
                        *(
                            _fmt(p.get(m.quality), 2 if "dB" in m.label else 4 if "SSIM" in m.label else 3)
                            for m in METRICS.values()
                        ),
                        str(p.get("images")),
                        str(entry.get("skipped", 0)),
                    ]
                )
    rows.sort(key=lambda row: (row[1], row[0]))  # by dataset, then codec and its rate point
    parts.append(
        _fold(
            f"Operating points ({len(rows)})",
            _table(
                [
                    "codec",
                    "dataset",
                    "bpp",
                    "bpp base",
                    "bpp enh",
                    "container bpp",
                    *(f"{m.label} ({detector})" if m.detection else html.escape(m.label) for m in METRICS.values()),
                    "images",
                    "skipped",
                ],
                rows,
                left=2,
            ),
        )
    )
    return parts


def redundancy_row(result: dict[str, Any], estimate: str = "redundancy") -> list[str]:
    """One model's redundancies by one estimator with their intervals, in-sample values, ceilings and entropies,
    and which are flagged as impossible."""
    red = result[estimate]
    learned = estimate == "redundancy_learned"

    def value(key: str) -> str:
        ci = red.get(f"{key}_ci95")
        return _fmt(red.get(key)) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")

    def names(keys: list[str]) -> str:
        return ", ".join(k.replace("rdn_", "").replace("_given_", "|") for k in keys)

    biased = red.get("biased") or []
    below = [k for k in red.get("impossible") or [] if k not in biased]
    flags = ([f"<b>below 0 throughout: the estimator's bias</b> ({names(biased)})"] if biased else []) + (
        [f"reaches below 0: not told from 0 ({names(below)})"] if below else []
    )
    if not learned:
        for key in ("rdn_y1_given_y2", "rdn_y2_given_y1"):
            top = red.get(f"{key}_ceiling")
            if not (isinstance(top, (int, float)) and isinstance(red.get(key), (int, float))):
                continue
            if red[key] > top:
                flags.append(f"<b>above its ceiling</b>: no information can give it, an artefact ({names([key])})")
            elif red[key] > 0.9 * top:
                flags.append(f"within 10 % of its ceiling: it cannot read more ({names([key])})")
    flag = "; ".join(flags)

    def pair(suffix: str) -> str:
        a, b = red.get(f"rdn_y1_given_y2{suffix}"), red.get(f"rdn_y2_given_y1{suffix}")
        return "–" if a is None and b is None else f"{_fmt(a)} / {_fmt(b)}"

    settings = (
        f"{red.get('train_images')} fitted, {red.get('test_images')} scored, {red.get('steps')} steps"
        if learned
        else f"K {red.get('K')}, {red.get('fibers')} fibers"
    )
    return [
        html.escape(result["label"]),
        "learned" if learned else "k-means",
        value("rdn_y1_given_y2"),
        value("rdn_y2_given_y1"),
        pair("_in_sample"),
        "– (reads 1)" if learned else pair("_ceiling"),
        f"{_fmt(red.get('H_y1'), 2)}, {_fmt(red.get('H_y2'), 2)}",
        str(red.get("images", "–")) + (f" {red['dataset']}" if red.get("dataset") else ""),
        settings,
        flag,
    ]


def _fold(summary: str, body: str) -> str:
    """A long table folded away (``<details>``): the report opens on the plots and the summaries."""
    return f"<details><summary>{html.escape(summary)}</summary>{body}</details>"


def with_curves(
    results: list[dict[str, Any]], bd_rows: list[dict[str, str]], curve_files: list[Path]
) -> tuple[dict[str, list[Curve]], list[dict[str, Any]]]:
    """The files' curves by metric, and the BD rows with them: each file's curve as a reference for every
    curve of ours, and as a test against every reference of the table."""
    from pipeline.evaluation.bdrate import bd_table
    from pipeline.evaluation.curves import FILE_KEYS, load_curves
    from pipeline.evaluation.plots import curves

    ours_by_metric = {metric: curves(results, metric) for metric in FILE_KEYS}
    extra = load_curves(curve_files, taken={c.label for cs in ours_by_metric.values() for c in cs})
    rows: list[dict[str, Any]] = list(bd_rows)
    for metric, external in extra.items():
        ours = ours_by_metric[metric]
        references = sorted({r["reference"] for r in bd_rows if r["metric"] == metric})
        for c in external:
            rows += bd_table([c, *ours], [c.label], metric)  # the file's curve as the reference
            rows += [r for r in bd_table([*ours, c], references, metric) if r["test"] == c.label]
    return extra, rows


def plots_section(eval_dir: Path, plots_dir: Path | None = None) -> list[str]:
    """The plots (of ``eval_dir/plots`` or ``plots_dir``), rate–accuracy and RD first, inlined; the per-model
    channel maps folded after them."""
    pngs = sorted(
        (plots_dir or eval_dir / "plots").glob("*.png"),
        key=lambda p: (PLOT_ORDER.index(p.stem) if p.stem in PLOT_ORDER else 9, p.stem),
    )

    def img(png: Path) -> str:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        return f"<h3>{html.escape(png.stem)}</h3><img alt='{html.escape(png.stem)}' src='data:image/png;base64,{data}'>"

    curves = [img(p) for p in pngs if not p.stem.startswith("channels_")]
    channels = [img(p) for p in pngs if p.stem.startswith("channels_")]
    parts = (["<h2>Plots</h2>"] + curves) if curves else []
    if channels:
        parts.append(_fold(f"Channel maps of each model's top-rate channels ({len(channels)})", "".join(channels)))
    return parts


MIN_SUMMARY_OVERLAP = 50.0  # %: the strongest other codec is chosen among pairs sharing this much quality range


def _reference_role(label: str) -> str:
    """What a model curve is as a BD reference: the single-layer codec's is the cost of scalability."""
    from dvcm.registry import CODECS

    spec = CODECS.get(label.split(" (")[0])
    return "single-layer: the cost of scalability" if spec is not None and spec.layers == 1 else "baseline"


def bd_summary_section(bd_rows: list[dict[str, str]], models: list[str]) -> list[str]:
    """Per metric, each learned model against the baseline model and against the strongest other codec (an
    anchor or an overlaid curve: the one it saves least against, among those whose curves share at least
    ``MIN_SUMMARY_OVERLAP`` % of their quality range; a row saying so when none does): the strict figure where
    defined, else the fitted one, with its method."""
    from pipeline.evaluation.bdrate import is_finite, pick_row, rate_overlap_percent

    if not bd_rows:
        return []
    baselines = {r["reference"] for r in bd_rows if r["reference"] in models}
    out = []
    for metric in dict.fromkeys(r["metric"] for r in bd_rows):
        for model in models:
            pairs: dict[str, list[dict[str, str]]] = {}
            for r in bd_rows:
                if r["metric"] == metric and r["test"] == model:
                    pairs.setdefault(r["reference"], []).append(r)
            shown = {ref: pick_row(rows) for ref, rows in pairs.items()}
            for ref in sorted(baselines & set(shown)):
                out.append((metric, model, ref, _reference_role(ref), shown[ref]))
            anchors = {
                ref: row
                for ref, row in shown.items()
                if ref not in models and row is not None and is_finite(row["bd_rate_percent"])
            }
            # a figure over a sliver of shared quality says little: only those overlapping enough compete
            enough = {ref: row for ref, row in anchors.items() if rate_overlap_percent(row) >= MIN_SUMMARY_OVERLAP}
            if enough:
                ref = max(enough, key=lambda k: float(enough[k]["bd_rate_percent"]))
                out.append((metric, model, ref, "strongest other codec", enough[ref]))
            elif anchors:
                out.append(
                    (
                        metric,
                        model,
                        "none",
                        "strongest other codec",
                        {
                            "method": "",
                            "note": f"no other codec's curve shares {MIN_SUMMARY_OVERLAP:.0f} % of this model's "
                            f"quality range ({len(anchors)} share less; every pair is in the full table)",
                        },
                    )
                )
    if not out:
        return []
    rows = [
        [
            html.escape(m),
            html.escape(t),
            html.escape(f"{ref} ({role})"),
            html.escape((b or {}).get("method", "pchip") or "–"),
            _fmt((b or {}).get("bd_rate_percent"), 2),
            _fmt((b or {}).get("bd_quality"), 4),
            html.escape((b or {}).get("note", "")),
        ]
        for m, t, ref, role, b in out
    ]
    return [
        "<h2>BD-rate summary</h2>",
        BD_METHODS_NOTE,
        _table(["metric", "model", "against", "method", "BD-rate %", "BD-quality", "note"], rows, left=4),
    ]


def _coco_points(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for r in results for p in r.get("datasets", {}).get("coco", {}).get("points", [])]


def per_class_section(results: list[dict[str, Any]]) -> list[str]:
    """AP@0.5 per class (COCOeval's precision array) of every COCO operating point, shaded as a heatmap:
    which classes the base layer loses first. Learned codecs open; the anchors' points fold."""
    points = [p for p in _coco_points(results) if p.get("per_class_ap")]
    if not points:
        return []
    names = [c["name"] for c in points[0]["per_class_ap"]]

    def cell(v: Any) -> str:
        if v is None:
            return "–"
        shade = int(255 - 120 * max(0.0, min(1.0, float(v))))
        return f"<span style='display:block;background:rgb({shade},{255},{shade})'>{float(v):.3f}</span>"

    def table(pts: list[dict[str, Any]]) -> str:
        rows = [
            [
                html.escape(p["label"]),
                _fmt(p.get("bpp_base", p.get("bpp")), 4),
                _fmt(p.get("map50")),
                *(cell(c["ap50"]) for c in p["per_class_ap"]),
            ]
            for p in pts
        ]
        return _table(["codec", "bpp (base)", "mAP@0.5", *names], rows)

    learned = sorted((p for p in points if p.get("codec") == "model"), key=lambda p: p["label"])
    others = sorted((p for p in points if p.get("codec") != "model"), key=lambda p: p["label"])
    out = ["<h2>AP@0.5 per class (COCO path)</h2>"]
    if learned:
        out.append(table(learned))
    if others:
        out.append(_fold(f"Anchors and uncompressed, per class ({len(others)} points)", table(others)))
    return out


COMPLEXITY_PARTS = (
    ("front", "V_front"),
    ("encoder", "encoder"),
    ("base_decoder", "base decoder"),
    ("full_decoder", "full decoder"),
)


def complexity_section(results: list[dict[str, Any]]) -> list[str]:
    """Parameters and kMAC per pixel of each part (counted by torch's FlopCounterMode at 768×512), with the
    median encode and decode time per image, one row per model configuration."""
    rows, seen = [], set()
    for r in sorted(results, key=lambda r: r.get("label", "")):
        cx = (r.get("complexity") or {}).get("parts")
        if r.get("kind") != "model" or not cx or _curve_label(r) in seen:
            continue
        seen.add(_curve_label(r))
        times = [
            p
            for res in results
            if res.get("kind") == "model" and _curve_label(res) == _curve_label(r)
            for p in res.get("datasets", {}).get("kodak", {}).get("points", [])
        ]

        def median_ms(key: str, times: list[dict] = times) -> float | None:
            vals = [p[key] for p in times if isinstance(p.get(key), (int, float)) and math.isfinite(p[key])]
            return statistics.median(vals) if vals else None

        rows.append(
            [
                html.escape(_curve_label(r)),
                *(f"{cx[k]['params'] / 1e3:.1f}k / {cx[k]['kmac_per_pixel']:.2f}" for k, _ in COMPLEXITY_PARTS),
                _fmt(median_ms("encode_ms"), 1),
                _fmt(median_ms("decode_ms"), 1),
            ]
        )
    if not rows:
        return []
    return [
        "<h2>Complexity</h2>",
        "<p>Parameters / kMAC per pixel, counted by torch.utils.flop_counter.FlopCounterMode on one 768×512 "
        "image. Encoder: the analysis transforms and every h_a; base decoder: the base layer's h_s and g_s1 "
        "(ŝ); full decoder: every h_s, g_s1 and g_s2. Times: median per Kodak-like image over the rate points, this machine, "
        "entropy coding included (encode: V_front, the encoder and rANS).</p>",
        _table(["model", *(label for _, label in COMPLEXITY_PARTS), "encode ms", "decode ms"], rows),
    ]


def write_report(
    eval_dir: Path,
    out: Path | None = None,
    findings: dict[str, Any] | None = None,
    curve_files: list[Path] | None = None,
) -> Path:
    """Write the report of ``eval_dir`` to ``out`` (default ``<eval_dir>/report.html``) atomically; returns its path."""
    target = out or eval_dir / "report.html"
    atomic_write_text(target, build_report(eval_dir, findings, curve_files))
    return target
