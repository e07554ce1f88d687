"""``bench redundancy``: how the Rdn estimate moves with the fiber count and the number of clusters K.

The estimator (``dvcm.redundancy``) fits K entropy bottlenecks on half the fibers; with too few
fibers per cluster each fit overstates H(y_i | y_j) and the estimate falls below 0. This measures, on
one checkpoint and the world's Kodak-like test images, the estimate and its 95 % interval over a grid
of (K, fibers), side by side, and names the smallest cell from which it stays within a tolerance of
the estimate at the most fibers of the same K.
"""

from __future__ import annotations

import time
from typing import Any

TOLERANCE = 0.02  # Rdn units: a cell is stable when both estimates are this close to the most-fibers cell


def run_redundancy_bench(
    checkpoint: str = "zoo:proposed-l0.0932",
    images: int = 4,
    clusters: tuple[int, ...] = (4, 8, 16, 32),
    fibers: tuple[int, ...] = (512, 2048, 8192),
    threads: int = 0,
) -> dict[str, Any]:
    """Print the (K, fibers) table of Rdn(ŷ1|ŷ2) and Rdn(ŷ2|ŷ1) with their intervals; returns the rows."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from dvcm.checkpoint import load_checkpoint
    from dvcm.redundancy import _latents, redundancy
    from pipeline.data.world import render_world_scene, split_seed

    if threads:
        torch.set_num_threads(threads)
    model, _ = load_checkpoint(checkpoint)
    model.eval()
    world = split_seed(0, "test")
    xs = [
        torch.from_numpy(render_world_scene(world, 1_000_000 + n, (768, 512)).image).permute(2, 0, 1).float() / 255
        for n in range(images)
    ]
    f1, f2 = _latents(model, xs)
    y1, y2 = f1.t()[None, :, :, None], f2.t()[None, :, :, None]
    available = f1.shape[0]
    rows: list[dict[str, Any]] = []
    for k in clusters:
        for n in fibers:
            t0 = time.perf_counter()
            r12 = redundancy(y1, y2, K=k, num_fibers=n)
            r21 = redundancy(y2, y1, K=k, num_fibers=n)
            rows.append(
                {"K": k, "fibers": min(n, available), "r12": r12, "r21": r21, "seconds": time.perf_counter() - t0}
            )
    table = Table(title=f"Rdn of {checkpoint} on {images} Kodak-like images ({available} fibers available)")
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
    console = Console()
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
    return {"rows": rows}
