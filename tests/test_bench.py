"""Every ``bench`` command at tiny sizes: it runs, prints its table and its ratios. No timing is asserted
(benchmarks measure speed; tests check that they work). Each runs as the CLI in a subprocess with its
own local Ray, as a user runs it (``bench prepare`` shuts its Ray down)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each starts Ray

REPO = Path(__file__).resolve().parent.parent
RATIO = r"\d+\.\d+x"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["codec", "--repeats", "1", "--N", "16", "--threads", "2"],
            [
                "Codec timing",
                r"proposed \(64,192,2\)",
                r"choi2022 \(128,64,1\)",
                f"proposed full decode / reference decode: {RATIO}",
                "Complexity at 768×512",
                r"proposed \(64,192,2\) +│ +\d+\.\d\dM / \d+\.\d",
            ],
        ),
        (
            ["prepare", "--sequences", "1", "--shard-size", "2", "--no-memory", "--num-cpus", "2"],
            ["prepare throughput", "Ray tasks", f"speed-up Ray / plain 1-thread: {RATIO}"],
        ),
        (
            ["loader", "--sequences", "1", "--crop", "128", "--batch-size", "2", "--epochs", "1"],
            [
                "loader throughput",
                r"WebDataset shards, s stored \(uint8-zstd\)",
                "image-only shards",
                rf"speed-up shards \(\S+\) / on-the-fly: {RATIO}",
                rf"/ image-only \+ V_front: {RATIO}",
            ],
        ),
        (
            [
                "train",
                "--batch-size",
                "1",
                "--crop",
                "128",
                "--steps",
                "1",
                "--N",
                "16",
                "--ddp-N",
                "16",
                "--ddp-crop",
                "128",
            ],
            [
                "bench train",
                "train step on cpu",
                "DDP CPU 2 workers x 1 thread",
                r"proposed/hyperprior = \d+\.\d+",
                r"stored s / computed s = \d+\.\d+",
                r"2x1 / 1x2 = \d+\.\d+",
                r"without / with the unused-parameter search = \d+\.\d+",
            ],
        ),
        (["evaluate", "--images", "2", "--N", "16"], ["bench evaluate", "coco", "kodak", RATIO]),
        (
            [
                "redundancy",
                "--images",
                "4",
                "--clusters",
                "2,4",
                "--fibers",
                "128,256",
                "--threads",
                "1",
                "--learned-steps",
                "20",
                "--k",
                "4",
                "--num-fibers",
                "512",
                "--json",
                "bench.json",
            ],
            [
                r"k-means Rdn of zoo:proposed-l0\.0932",
                r"Rdn\(ŷ1\|ŷ2\) \[95 % CI\]",
                r"(stable \(within 0\.02|no cell below)",
                r"Rdn\(ŷ2\|ŷ1\) at the most fibers, K 2 -> 4: ",
                r"k-means \(paper\), K 4 +│ +[+-]\d\.\d{3}",
                r"learned, 20 steps",
                r"learned +│ ŷ2 +│ Rdn\(ŷ\|noise\) +│ 0 ",
                r"written: bench\.json",
            ],
        ),
        (
            ["shards", "--sequences", "3", "--steps", "2", "--seeds", "0,1"],
            [
                r"feature encodings, mini YOLOv3",
                r"standard YOLOv3, RANDOM weights",
                r"uint8-zstd +│ +\d+\.\d",
                r"training effect: proposed \(mini\)",
                r"smallest stored encoding within noise on both: \S+",
                r"noise \(2 SE\)",
            ],
        ),
    ],
    ids=["codec", "prepare", "loader", "train", "evaluate", "redundancy", "shards"],
)
def test_bench_prints_its_table_and_ratios(args: list[str], expected: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "", "COLUMNS": "160"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "bench", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for pattern in expected:
        assert re.search(pattern, proc.stdout), f"{pattern!r} not in the output of bench {args[0]}:\n{proc.stdout}"
    assert "Traceback" not in proc.stderr
    if args[0] == "redundancy":  # the --json schema the README documents
        data = json.loads((tmp_path / "bench.json").read_text())
        assert data["schema"] == "dvcm-bench-redundancy/1" and set(data["estimators"]) == {"kmeans", "learned"}
        for e in data["estimators"].values():
            assert {"rdn_y1_given_y2", "rdn_y2_given_y1", "rdn_y1_given_y2_ci95", "H_y1", "H_y2", "sanity"} <= set(e)
            assert [len(rows) for rows in e["sanity"].values()] == [3, 3]
        assert data["estimators"]["kmeans"]["rdn_y2_given_y1_ceiling"] <= 1
