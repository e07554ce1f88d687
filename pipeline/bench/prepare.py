"""``bench prepare``: frames/s of prepare on Ray against the same code in one plain process, stage
times, and peak RSS at 1x and 8x the fixture."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.data.prepare import run_prepare
from pipeline.data.sources import Listing, list_source
from pipeline.infra.errors import UserError


def _fixture(work: Path, name: str, sequences: int) -> Listing:
    from pipeline.data.sample_data import generate_sample

    parts = generate_sample(
        work / name, seed=0, train_sequences=sequences, val_sequences=1, coco_images=0, kodak_images=0
    )
    return list_source("vimeo90k", parts.vimeo_root, "all")


@contextmanager
def bench_setup(work_dir: Path | None, prefix: str, sequences: int) -> Iterator[tuple[Path, Listing, Any]]:
    """(work folder, 1x fixture listing, seeded YOLOv3) for a benchmark; a temp folder unless given."""
    import tempfile

    from dvcm.yolo import build_yolov3

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(work_dir or tmp)
        listing = _fixture(work, "fixture-1x", sequences)
        yield work, listing, build_yolov3(None, seed=0)


def _peak_rss_of(cmd: list[str]) -> tuple[float, int]:
    """Run ``cmd``; return (peak RSS in MiB summed over its process tree, exit code)."""
    import subprocess

    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    peak = 0
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        total = 0
        try:
            for p in [parent, *parent.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(0.05)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode:
        print(err[-2000:], file=sys.stderr)
    return peak / 2**20, proc.returncode


def _warm_worker(front_box: list) -> None:
    import ray

    ray.get(front_box[0])
    time.sleep(1.0)  # hold this CPU so that the next warm-up lands on another worker


def run_prepare_bench(
    sequences: int = 4,
    shard_size: int = 2,
    num_cpus: int | None = None,
    memory: bool = True,
    work_dir: Path | None = None,
) -> None:
    """Frames/s of prepare: Ray on all cores vs the same code in one plain process; stage times; peak RSS."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.infra.ray_runtime import init_ray

    console = Console(width=140)
    with bench_setup(work_dir, "dvcm-bench-prepare-", sequences) as (work, listing, yolo):
        front, prov = yolo.front, dict(yolo.provenance)
        common = dict(shard_size=shard_size, front=front, yolo_provenance=prov, progress=False, overwrite=True)
        plain = run_prepare(listing, work / "out-plain", use_ray=False, **common)
        plain1 = run_prepare(listing, work / "out-plain-1t", use_ray=False, torch_threads=1, **common)
        t = time.perf_counter()
        init_ray(None, num_cpus)
        import ray
        import torch

        cpus = int(ray.cluster_resources().get("CPU", 1))
        # Start one worker per CPU and import torch/dvcm there, as the plain process already did.
        ray.get([ray.remote(num_cpus=1)(_warm_worker).remote([ray.put(front)]) for _ in range(cpus)])
        ray_start = time.perf_counter() - t
        on_ray = run_prepare(listing, work / "out-ray", use_ray=True, **common)
        n = plain.frames_written
        table = Table(title=f"prepare throughput, {n} frames of 448x256, random-weight YOLOv3 front")
        for col in (
            "run",
            "processes x torch threads",
            "seconds",
            "frames/s",
            "decode s",
            "V_front s",
            "encode s",
            "write s",
            "front fetch s",
        ):
            table.add_column(col, justify="right" if col != "run" else "left")
        runs = (
            ("plain process, torch default threads", plain, f"1 x {torch.get_num_threads()}"),
            ("plain process, 1 thread (as one Ray task)", plain1, "1 x 1"),
            ("Ray tasks", on_ray, f"{cpus} x 1"),
        )
        for label, rep, workers in runs:
            tm = rep.timings
            table.add_row(
                label,
                workers,
                f"{rep.seconds:.2f}",
                f"{rep.frames_written / rep.seconds:.2f}",
                *(f"{tm.get(k, 0.0):.2f}" for k in ("decode", "v_front", "encode", "write", "load_front")),
            )
        console.print(table)
        stages = {k: on_ray.timings.get(k, 0.0) for k in ("decode", "v_front", "encode", "write")}
        bound = max(stages, key=stages.get)
        share = stages[bound] / max(sum(stages.values()), 1e-9)
        console.print(
            f"speed-up Ray / plain 1-thread: {plain1.seconds / on_ray.seconds:.2f}x; Ray / plain default threads: "
            f"{plain.seconds / on_ray.seconds:.2f}x; on {cpus} CPUs (Ray start and worker warm-up {ray_start:.1f} s, "
            f"not counted); bound by {bound} ({share:.0%} of task time); front fetch per task "
            f"{on_ray.timings.get('load_front', 0.0) / max(on_ray.shards_written, 1):.2f} s vs "
            f"{sum(stages.values()) / max(on_ray.shards_written, 1):.2f} s of work per shard"
        )
        ray.shutdown()
        if not memory:
            return
        big = _fixture(work, "fixture-8x", sequences * 8)
        rows = []
        for label, lst in (("1x", listing), ("8x", big)):
            cmd = [
                sys.executable,
                "-m",
                "pipeline.cli",
                "prepare",
                "--dataset",
                "vimeo90k",
                "--root",
                lst.root,
                "--out",
                str(work / f"out-mem-{label}"),
                "--shard-size",
                str(shard_size),
                "--overwrite",
            ]
            if num_cpus:
                cmd += ["--num-cpus", str(num_cpus)]
            peak, rc = _peak_rss_of(cmd)
            if rc:
                raise UserError(f"bench prepare: the {label} prepare run failed (exit {rc})")
            rows.append((label, len(lst.items), peak))
        mem = Table(title="peak RSS of prepare (driver + Ray processes), same workers")
        for col in ("fixture", "frames", "peak RSS MiB"):
            mem.add_column(col, justify="right")
        for label, frames_n, peak in rows:
            mem.add_row(label, str(frames_n), f"{peak:.0f}")
        console.print(mem)
        console.print(f"peak 8x / peak 1x: {rows[1][2] / rows[0][2]:.2f} (target <= 1.2)")
