"""Evaluation plots (matplotlib, headless): the paper's Fig. 4–6 and the redundancy curves.

* ``rate_accuracy.png``: mAP@0.5 against base-layer bpp on COCO (Fig. 4);
* ``feature_psnr_bpp.png``: feature PSNR of the base layer's ŝ against base-layer bpp on COCO;
* ``psnr_bpp.png`` and ``msssim_bpp.png``: Kodak PSNR / MS-SSIM against total bpp (Fig. 5);
* ``redundancy.png``: Rdn(ŷ1|ŷ2) and Rdn(ŷ2|ŷ1) over training epochs (and at evaluation);
* ``channels_<key>.png``: the top-8 channels by rate of ŷ1 and ŷ2 for one image (Fig. 6).

Every model curve is labelled with its model name and configuration (M1,M2,H), every point
with its λ; anchors with codec and parameter. When the detector has random weights the
COCO figure says "random-weight YOLOv3".
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dvcm.registry import config_text  # noqa: E402
from pipeline.evaluation.bdrate import Curve, upper_hull  # noqa: E402
from pipeline.evaluation.metrics import METRICS  # noqa: E402
from pipeline.infra.atomic import atomic_write_bytes  # noqa: E402


def _finish(fig: Any, ax: Any, path: Path, dpi: int = 110) -> Path:
    """Grid, legend and layout of a curve plot, then write it atomically and free the figure."""
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # beside: covers nothing
    fig.tight_layout()
    _save(fig, path, dpi=dpi)
    plt.close(fig)
    return path


def _save(fig: Any, path: Path, dpi: int) -> None:
    """Render a figure to PNG and write it atomically."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def model_curve_label(res: dict) -> str:
    """The label of a model's curve across λ: ``proposed (11,32,2)``."""
    return f"{res.get('model')} ({config_text(res.get('model'), res.get('config', {}))})"


def curves(results: list[dict], metric: str) -> list[Curve]:
    """Rate–quality curves for ``metric``: one per (model, configuration) across λ, one per anchor codec."""
    m = METRICS[metric]
    dataset, xkey, ykey = m.dataset, m.rate, m.quality
    groups: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    kinds: dict[str, str] = {}
    for res in results:
        entry = res.get("datasets", {}).get(dataset)
        if not entry:
            continue
        for p in entry["points"]:
            if p["codec"] == "uncompressed" or not (_finite(p.get(xkey)) and _finite(p.get(ykey))):
                continue
            if res["kind"] == "model":
                label = model_curve_label(res)
                lam = res.get("lmbda")
                point = f"λ={lam:g}" if _finite(lam) else res["key"][:8]
                kinds[label] = "model"
            else:
                label = p["label"].split(" quality=")[0].split(" qp=")[0]
                point = str(p["param"])
                kinds[label] = "anchor"
            groups[label].append((float(p[xkey]), float(p[ykey]), point))
    out = []
    for label, pts in groups.items():
        pts.sort()
        out.append(
            Curve(
                label,
                tuple(x for x, _, _ in pts),
                tuple(y for _, y, _ in pts),
                meta={"kind": kinds[label], "points": [n for _, _, n in pts]},
            )
        )
    # models first, by name, then the anchors in their own order: every plot gives a model the same colour
    out.sort(key=lambda c: (c.meta["kind"] != "model", c.label if c.meta["kind"] == "model" else ""))
    return out


def _uncompressed(results: list[dict], quality: str = "map50") -> float | None:
    for res in results:
        for p in res.get("datasets", {}).get("coco", {}).get("points", []):
            if p["codec"] == "uncompressed" and _finite(p.get(quality)):
                return float(p[quality])
    return None


def _detector(results: list[dict]) -> str:
    return next((r.get("detector") for r in results if r.get("detector")), "YOLOv3")


def plot_metric(results: list[dict], metric: str, path: Path, extra: Sequence[Curve] = ()) -> Path | None:
    """One rate–quality figure, with ``extra`` curves (``report --curves``) dotted; None when there is nothing to draw."""
    cs = curves(results, metric) + list(extra)
    m = METRICS[metric]
    dataset, xlabel, ylabel = m.dataset, m.rate_axis, m.label
    unc = _uncompressed(results, m.quality) if m.detection else None
    if not cs and unc is None:
        return None
    fig, ax = plt.subplots(figsize=(10, 5))
    for c in cs:
        if c.meta["kind"] == "model" and len(set(c.meta["points"])) < len(c.meta["points"]):
            _plot_cloud(ax, c)
            continue
        style = {"model": "o-", "external": "^:"}.get(c.meta["kind"], "s--")
        ax.plot(c.rates, c.quality, style, label=c.label, markersize=5)
        if c.meta["kind"] == "model":
            for x, y, n in zip(c.rates, c.quality, c.meta["points"]):
                ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    title = {"coco": "COCO rate–accuracy", "kodak": "Kodak rate–distortion"}[dataset]
    if dataset == "coco" and not m.detection:
        title = "COCO base layer: rate–feature fidelity (ŝ vs V_front(x))"
    if m.detection:
        det = _detector(results)
        if unc is not None:
            ax.axhline(unc, color="k", linestyle=":", label="uncompressed (the detector in the title)")
        title += f"\ndetector: {det}"  # its own line: the mini detector's name is long
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return _finish(fig, ax, path)


def _plot_cloud(ax: Any, c: Curve) -> None:
    """A model trained at several γ per λ (a γ grid): its points as markers, and its curve, the upper hull of the
    points (what the study reads its findings off), as the line; only the hull's points are named."""
    (dots,) = ax.plot(c.rates, c.quality, "o", label=f"{c.label}: every (λ, γ)", markersize=4, alpha=0.45)
    hull = upper_hull(c)
    ax.plot(hull.rates, hull.quality, "o-", color=dots.get_color(), label=f"{c.label}: upper hull", markersize=5)
    names = {(x, y): n for x, y, n in zip(c.rates, c.quality, c.meta["points"])}
    for x, y in zip(hull.rates, hull.quality):
        ax.annotate(names.get((x, y), ""), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)


REDUNDANCY_FLOOR = -1.0  # the redundancy plot's lowest value shown; lower ones are counted in a note on the plot


def plot_redundancy(
    results: list[dict], histories: dict[str, list[tuple[int, float, float]]], path: Path
) -> Path | None:
    """Rdn over epochs (training history, k-means) plus the values measured at evaluation by each estimator (markers
    at the last epoch: k-means filled, learned hollow)."""
    evals = [(r["label"], r["redundancy"]) for r in results if r.get("kind") == "model" and r.get("redundancy")]
    learned = {r["label"]: r["redundancy_learned"] for r in results if r.get("redundancy_learned")}
    if not histories and not evals:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, (label, hist) in enumerate(sorted(histories.items())):
        ep = [h[0] for h in hist]
        ax.plot(ep, [h[1] for h in hist], "o-", color=f"C{i}", label=f"{label}: Rdn(ŷ1|ŷ2)")
        ax.plot(ep, [h[2] for h in hist], "x--", color=f"C{i}", label=f"{label}: Rdn(ŷ2|ŷ1)")
    last = max((h[-1][0] for h in histories.values() if h), default=0)
    for j, (label, red) in enumerate(evals):
        c = f"C{len(histories) + j}"
        ax.plot(
            [last], [red["rdn_y1_given_y2"]], "*", color=c, markersize=11, label=f"{label}: Rdn(ŷ1|ŷ2) at evaluation"
        )
        ax.plot(
            [last], [red["rdn_y2_given_y1"]], "P", color=c, markersize=9, label=f"{label}: Rdn(ŷ2|ŷ1) at evaluation"
        )
        if label in learned:
            lr = learned[label]
            ax.plot(
                [last + 0.3],
                [lr["rdn_y1_given_y2"]],
                "*",
                mfc="none",
                color=c,
                markersize=11,
                label=f"{label}: Rdn(ŷ1|ŷ2), learned",
            )
            ax.plot(
                [last + 0.3],
                [lr["rdn_y2_given_y1"]],
                "P",
                mfc="none",
                color=c,
                markersize=9,
                label=f"{label}: Rdn(ŷ2|ŷ1), learned",
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("Rdn = 1 − H(y_i|y_j)/H(y_i)")
    low = min(0.0, ax.get_ylim()[0])
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()] or [np.zeros(0)])
    off = int(np.sum(values[np.isfinite(values)] < REDUNDANCY_FLOOR))  # None (null in results.json) reads as NaN
    if off:  # a few biased-low values (−3, say) would squeeze the readable range [0, 1] into a sliver
        low = REDUNDANCY_FLOOR
        ax.text(
            0.01, 0.02, f"{off} value(s) below {REDUNDANCY_FLOOR:g}, off the axis", transform=ax.transAxes, fontsize=7
        )
    if low < 0:  # no entropy gives Rdn < 0: there the estimate shows the estimator's bias at few fibers
        ax.axhspan(low, 0.0, color="0.92", zorder=0, label="below 0: impossible, the estimator's bias")
        ax.set_ylim(bottom=low, top=max(1.05, ax.get_ylim()[1]) if off else None)
    at_eval = (
        f"\nfilled markers at evaluation: k-means, K {evals[0][1].get('K')}, {evals[0][1].get('fibers')} fibers"
        + (", hollow: the learned estimator" if learned else "")
        if evals
        else ""
    )
    ax.set_title(
        "Redundancy between base and enhancement latents\n"
        f"lines per epoch: the k-means estimator, K 4, ≤ 512 fibers of the validation crops (few: biased low){at_eval}",
        fontsize=9,
    )
    return _finish(fig, ax, path)


def plot_channels(res: dict, path: Path) -> Path | None:
    """Top-8 channels by rate of ŷ1 (top row) and ŷ2 (bottom row) for one image (paper Fig. 6)."""
    cr = res.get("channel_rates")
    if not cr:
        return None
    fig, axes = plt.subplots(2, 8, figsize=(16, 4.6))
    for row, name in enumerate(("y1", "y2")):
        chans = cr.get(name, [])
        for col in range(8):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(chans):
                ch = chans[col]
                ax.imshow(ch["map"], cmap="coolwarm")
                ax.set_title(f"ŷ{name[1]} ch {ch['channel']}\n{ch['bits']:.0f} bits", fontsize=8)
    fig.suptitle(f"Top-8 channels by rate — {res['label']} — image {cr['image']}", fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi=100)
    plt.close(fig)
    return path


PLOT_FILES = {key: m.plot_file for key, m in METRICS.items() if m.plot_file}


def plot_all(
    results: list[dict], folder: Path, histories: dict | None = None, extra: dict[str, list[Curve]] | None = None
) -> list[Path]:
    """Every figure for these results into ``folder`` (with ``extra`` curves per metric); returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    extra = extra or {}
    paths = [
        *(plot_metric(results, metric, folder / name, extra.get(metric, ())) for metric, name in PLOT_FILES.items()),
        plot_redundancy(results, histories or {}, folder / "redundancy.png"),
    ]
    for res in results:
        if res.get("kind") == "model":
            paths.append(plot_channels(res, folder / f"channels_{res['key'][:16]}.png"))
    return [p for p in paths if p is not None]
