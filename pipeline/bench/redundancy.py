"""``bench redundancy``: both redundancy estimators on one checkpoint, side by side, with their sanity checks.

1. The paper's k-means estimator (``dvcm.redundancy``) over a grid of (K, fibers): it fits K entropy bottlenecks on
   half the fibers; with too few fibers per cluster each fit overstates H(y_i | y_j) and the estimate falls below
   0. The table names the smallest cell from which it stays within a tolerance of the estimate at the most fibers
   of the same K, and whether it still moves with K.
2. Each estimator's Rdn(ŷ1|ŷ2) and Rdn(ŷ2|ŷ1) (held-out and in-sample), with the k-means ceiling
   min(log2 K, H(ŷj)) / H(ŷi), and H(ŷ1), H(ŷ2) in bits per fiber.
3. Sanity checks of each estimator on the model's own ŷ1 and ŷ2: Rdn(ŷ|ŷ) (truth 1), Rdn(ŷ|independent noise)
   (truth 0), Rdn(ŷ|half of ŷ's channels, noise elsewhere) (at least those channels' share of the bits). The learned
   estimator must pass the first two (≥ 0.9, |Rdn| ≤ 0.05); the k-means one reports what it reads.

The images are the synthetic world's unseen test scenes at 512×512 (as COCO images are coded), 256 by default
as the paper samples its fibers. ``--json FILE`` writes all of it (schema ``dvcm-bench-redundancy/1``, README).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

TOLERANCE = 0.02  # Rdn units: a cell is stable when both estimates are this close to the most-fibers cell
SCHEMA = "dvcm-bench-redundancy/1"
IDENTITY_AT_LEAST, NOISE_AT_MOST = 0.9, 0.05  # the learned estimator's sanity checks


def run_redundancy_bench(
    checkpoint: str = "zoo:proposed-l0.0932",
    images: int = 256,
    clusters: tuple[int, ...] = (4, 8, 16, 32),
    fibers: tuple[int, ...] = (512, 2048, 8192),
    threads: int = 0,
    K: int = 16,
    num_fibers: int = 8192,
    learned_steps: int = 400,
    json_path: Path | None = None,
) -> dict[str, Any]:
    """Print the three tables (module docstring); returns what ``--json`` writes."""
    import torch
    from rich.console import Console

    from dvcm.checkpoint import load_checkpoint
    from dvcm.conditional_entropy import codec_maps
    from dvcm.redundancy import fibers as to_fibers
    from pipeline.data.world import render_world_scene, split_seed

    if threads:
        torch.set_num_threads(threads)
    model, _ = load_checkpoint(checkpoint)
    model.eval()
    if model.layers != 2:
        from pipeline.infra.errors import UserError

        raise UserError(f"{checkpoint} is a single-layer codec ({model.name}): it has no (ŷ1, ŷ2) pair to measure")
    console = Console()
    console.log(f"coding {images} unseen scenes at 512x512 with {checkpoint} ...")
    world = split_seed(0, "test")
    xs = [
        torch.from_numpy(render_world_scene(world, 1_000_000 + n, (512, 512)).image).permute(2, 0, 1).float() / 255
        for n in range(images)
    ]
    maps = codec_maps(model, xs)
    f1 = torch.cat([to_fibers(y) for y in maps["y1_hat"]])
    f2 = torch.cat([to_fibers(y) for y in maps["y2_hat"]])
    y1, y2 = f1.t()[None, :, :, None], f2.t()[None, :, :, None]
    grid = _grid_table(console, checkpoint, images, y1, y2, clusters, fibers)
    console.log(f"k-means estimate at K {K}, {num_fibers} fibers, and its sanity checks ...")
    kmeans = _kmeans(y1, y2, K, num_fibers)
    console.log(f"learned estimator: both directions and 6 sanity fits, {learned_steps} steps each ...")
    estimators = {"kmeans": kmeans, "learned": _learned(maps, learned_steps)}
    console.print(_directions_table(estimators))
    console.print(_sanity_table(estimators))
    report = {
        "schema": SCHEMA,
        "checkpoint": checkpoint,
        "images": images,
        "image_size": [512, 512],
        "estimators": estimators,
        "grid": [
            {
                "K": r["K"],
                "fibers": r["fibers"],
                "stable": r["stable"],
                "seconds": r["seconds"],
                "rdn_y1_given_y2": r["r12"]["rdn"],
                "rdn_y2_given_y1": r["r21"]["rdn"],
                "rdn_y1_given_y2_ci95": r["r12"].get("ci95"),
                "rdn_y2_given_y1_ci95": r["r21"].get("ci95"),
            }
            for r in grid
        ],
    }
    if json_path is not None:
        from pipeline.infra.atomic import atomic_write_json, json_safe

        atomic_write_json(Path(json_path), json_safe(report))
        console.print(f"written: {json_path}")
    return report


def _kmeans(y1: Any, y2: Any, K: int, num_fibers: int) -> dict[str, Any]:
    from dvcm.redundancy import ceiling, redundancy, sanity_checks

    t0 = time.perf_counter()
    r12 = redundancy(y1, y2, K=K, num_fibers=num_fibers)
    r21 = redundancy(y2, y1, K=K, num_fibers=num_fibers)
    out = _directions(r12, r21, time.perf_counter() - t0)
    out.update(
        K=r12["K"],
        fibers=r12["fibers"],
        rdn_y1_given_y2_ceiling=ceiling(r12["K"], r12["H_i"], r21["H_i"]),
        rdn_y2_given_y1_ceiling=ceiling(r21["K"], r21["H_i"], r12["H_i"]),
        sanity={
            "y1": sanity_checks(y1, K=K, num_fibers=num_fibers),
            "y2": sanity_checks(y2, K=K, num_fibers=num_fibers),
        },
    )
    for rows in out["sanity"].values():
        for row in rows:
            row["passes"] = None  # the paper's estimator reports what it reads: its ceiling bounds it
    return out


def _learned(maps: dict[str, list[Any]], steps: int) -> dict[str, Any]:
    from dvcm.conditional_entropy import learned_redundancy, sanity_checks

    t0 = time.perf_counter()
    r12 = learned_redundancy(maps["y1_hat"], maps["sigma1"], maps["y2_hat"], steps=steps)
    r21 = learned_redundancy(maps["y2_hat"], maps["sigma2"], maps["y1_hat"], steps=steps)
    out = _directions(r12, r21, time.perf_counter() - t0)
    out.update(
        steps=steps,
        train_images=r12["train_images"],
        test_images=r12["test_images"],
        H_y1_codec=r12["H_i_codec"],
        H_y2_codec=r21["H_i_codec"],
        rdn_y1_given_y2_vs_codec=r12["rdn_vs_codec"],
        rdn_y2_given_y1_vs_codec=r21["rdn_vs_codec"],
        sanity={
            "y1": sanity_checks(maps["y1_hat"], maps["sigma1"], steps=steps),
            "y2": sanity_checks(maps["y2_hat"], maps["sigma2"], steps=steps),
        },
    )
    for rows in out["sanity"].values():
        for row in rows:
            if row["truth"] == "1":
                row["passes"] = bool(row["rdn"] >= IDENTITY_AT_LEAST)
            elif row["truth"] == "0":
                row["passes"] = bool(abs(row["rdn"]) <= NOISE_AT_MOST)
            else:
                row["passes"] = None
    return out


def _directions(r12: dict[str, Any], r21: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {
        "rdn_y1_given_y2": r12["rdn"],
        "rdn_y2_given_y1": r21["rdn"],
        "rdn_y1_given_y2_ci95": r12.get("ci95"),
        "rdn_y2_given_y1_ci95": r21.get("ci95"),
        "rdn_y1_given_y2_in_sample": r12.get("rdn_in_sample"),
        "rdn_y2_given_y1_in_sample": r21.get("rdn_in_sample"),
        "H_y1": r12["H_i"],
        "H_y2": r21["H_i"],
        "seconds": seconds,
    }


def _cell(value: float, ci: list[float] | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci and all(map(math.isfinite, ci)) else "")


def _directions_table(estimators: dict[str, dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="Rdn by estimator (held-out [95 % CI]; in-sample; the k-means ceiling); H in bits per fiber")
    for col in ("estimator", "Rdn(ŷ1|ŷ2)", "Rdn(ŷ2|ŷ1)", "in-sample", "ceiling", "H(ŷ1)", "H(ŷ2)", "seconds"):
        table.add_column(col, justify="left" if col == "estimator" else "right")
    for name, e in estimators.items():
        ceiling = (
            f"{e['rdn_y1_given_y2_ceiling']:.3f} / {e['rdn_y2_given_y1_ceiling']:.3f}" if name == "kmeans" else "1"
        )
        table.add_row(
            "k-means (paper), K " + str(e["K"]) if name == "kmeans" else f"learned, {e['steps']} steps",
            _cell(e["rdn_y1_given_y2"], e["rdn_y1_given_y2_ci95"]),
            _cell(e["rdn_y2_given_y1"], e["rdn_y2_given_y1_ci95"]),
            f"{e['rdn_y1_given_y2_in_sample']:+.3f} / {e['rdn_y2_given_y1_in_sample']:+.3f}",
            ceiling,
            f"{e['H_y1']:.2f}",
            f"{e['H_y2']:.2f}",
            f"{e['seconds']:.0f}",
        )
    return table


def _sanity_table(estimators: dict[str, dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="Sanity checks on the model's own latents (the learned estimator must pass the first two)")
    for col in ("estimator", "latent", "check", "truth", "reads [95 % CI]", "ceiling", "passes"):
        table.add_column(col, justify="right" if col in ("reads [95 % CI]", "ceiling") else "left")
    for name, e in estimators.items():
        for latent, rows in e["sanity"].items():
            for row in rows:
                passes = {True: "yes", False: "NO", None: "– (reports what it reads)"}[row["passes"]]
                top = row.get("ceiling")
                table.add_row(
                    name,
                    "ŷ" + latent[1],
                    row["check"],
                    row["truth"],
                    _cell(row["rdn"], row["ci95"]),
                    "–" if top is None else f"{top:.3f}",
                    passes,
                )
    return table


def _grid_table(
    console: Any, checkpoint: str, images: int, y1: Any, y2: Any, clusters: tuple[int, ...], fibers: tuple[int, ...]
) -> list[dict[str, Any]]:
    """The k-means estimate over (K, fibers), printed; returns the rows."""
    from rich.table import Table

    from dvcm.redundancy import redundancy

    available = y1.shape[2]
    rows: list[dict[str, Any]] = []
    for k in clusters:
        for n in fibers:
            console.log(f"k-means grid: K {k}, {n} fibers ({len(rows) + 1} of {len(clusters) * len(fibers)})")
            t0 = time.perf_counter()
            r12 = redundancy(y1, y2, K=k, num_fibers=n)
            r21 = redundancy(y2, y1, K=k, num_fibers=n)
            rows.append(
                {"K": k, "fibers": min(n, available), "r12": r12, "r21": r21, "seconds": time.perf_counter() - t0}
            )
    table = Table(title=f"k-means Rdn of {checkpoint} over (K, fibers), {images} images ({available} fibers)")
    for col in ("K", "fibers", "Rdn(ŷ1|ŷ2) [95 % CI]", "Rdn(ŷ2|ŷ1) [95 % CI]", "seconds", "stable"):
        table.add_column(col, justify="right")
    most = {k: next(r for r in reversed(rows) if r["K"] == k) for k in clusters}
    for r in rows:
        ref = most[r["K"]]
        r["stable"] = all(abs(r[d]["rdn"] - ref[d]["rdn"]) <= TOLERANCE for d in ("r12", "r21"))

        def cell(e: dict[str, Any]) -> str:
            lo, hi = e.get("ci95", [float("nan")] * 2)
            return f"{e['rdn']:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (" <0" if e.get("biased") else "")

        table.add_row(
            str(r["K"]),
            str(r["fibers"]),
            cell(r["r12"]),
            cell(r["r21"]),
            f"{r['seconds']:.1f}",
            "reference" if r is ref else ("yes" if r["stable"] else "no"),
        )
    console.print(table)
    stable = [r for r in rows if r["stable"] and r is not most[r["K"]]]
    if stable:
        first = min(stable, key=lambda r: (r["fibers"], r["K"]))
        console.print(
            f"stable (within {TOLERANCE} of the most fibers at the same K) from {first['fibers']} fibers "
            f"at K {first['K']}"
        )
    else:
        console.print(f"no cell below the most fibers is within {TOLERANCE} of it: give the estimate more fibers")
    at_most = [most[k] for k in clusters]
    for d, name in (("r12", "Rdn(ŷ1|ŷ2)"), ("r21", "Rdn(ŷ2|ŷ1)")):
        values = [r[d]["rdn"] for r in at_most]
        verdict = "stable in K" if max(values) - min(values) <= TOLERANCE else "not stable in K: it still moves with K"
        console.print(
            f"{name} at the most fibers, K {clusters[0]} -> {clusters[-1]}: "
            + " / ".join(f"{v:+.3f}" for v in values)
            + f" ({verdict})"
        )
    settled = next(
        (
            k
            for i, k in enumerate(clusters[:-1])
            if all(
                max(r[d]["rdn"] for r in at_most[i:]) - min(r[d]["rdn"] for r in at_most[i:]) <= TOLERANCE
                for d in ("r12", "r21")
            )
        ),
        None,
    )
    console.print(
        f"at the most fibers both directions stop moving (within {TOLERANCE} for every larger K) from K {settled}"
        if settled is not None
        else "at the most fibers the estimate still moves between the two largest K: try larger K and more fibers"
    )
    return rows
