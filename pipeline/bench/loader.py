"""``bench loader``: samples/s of the WebDataset reader in each feature encoding, of image-only shards with s
computed from each batch (``prepare --features none``), and of reading PNG files and computing s on the fly."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.bench.prepare import bench_setup
from pipeline.data.feature_encoding import DEFAULT_ENCODING, FEATURE_ENCODINGS, NO_FEATURES
from pipeline.data.prepare import run_prepare


def run_loader_bench(
    sequences: int = 4,
    crop: int = 256,
    batch_size: int = 8,
    epochs: int = 2,
    work_dir: Path | None = None,
) -> None:
    """Samples/s of the WebDataset reader (each encoding; image-only + V_front) vs PNG files + V_front."""
    import random as _random

    import torch
    from PIL import Image
    from rich.console import Console
    from rich.table import Table

    from pipeline.data.shards import make_loader

    console = Console(width=140)
    with bench_setup(work_dir, "dvcm-bench-loader-", sequences) as (work, listing, yolo):
        front = yolo.front.eval()
        rates: dict[str, tuple[int, float]] = {}
        for encoding in (*FEATURE_ENCODINGS, NO_FEATURES):
            out = work / f"shards-{encoding}"
            run_prepare(
                listing,
                out,
                shard_size=8,
                use_ray=False,
                front=front,
                feature_encoding=encoding,
                yolo_provenance=dict(yolo.provenance),
                progress=False,
            )
            t, n = time.perf_counter(), 0
            for epoch in range(epochs):
                for x, s in make_loader(
                    str(out), "train", crop=crop, batch_size=batch_size, shuffle_buffer=64, epoch=epoch
                ):
                    if not isinstance(s, torch.Tensor):  # image-only shards: s as a training worker computes it
                        s.features(front, torch.device("cpu"))
                    n += x.shape[0]
            rates[encoding] = (n, time.perf_counter() - t)
        refs = [r for r in listing.items if r.split == "train"]
        rng = _random.Random(0)
        t = time.perf_counter()
        n_png = 0
        for _ in range(epochs):
            order = refs[:]
            rng.shuffle(order)
            for i in range(0, len(order) - batch_size + 1, batch_size):
                crops = []
                for ref in order[i : i + batch_size]:
                    with Image.open(ref.path) as im:
                        arr = np.asarray(im.convert("RGB"))
                    h, w = arr.shape[:2]
                    top = rng.randrange(0, (h - crop) // 8 + 1) * 8
                    left = rng.randrange(0, (w - crop) // 8 + 1) * 8
                    crops.append(arr[top : top + crop, left : left + crop])
                x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255.0)
                with torch.no_grad():
                    front(x)
                n_png += len(crops)
        t_png = time.perf_counter() - t
        table = Table(title=f"loader throughput, {crop}x{crop} crops, batch {batch_size}, random-weight YOLOv3 front")
        for col in ("reader", "samples", "seconds", "samples/s"):
            table.add_column(col, justify="right" if col != "reader" else "left")
        for encoding, (n, secs) in rates.items():
            what = (
                f"WebDataset shards, s stored ({encoding})"
                if encoding != NO_FEATURES
                else "WebDataset image-only shards + V_front of each whole frame (--features none)"
            )
            table.add_row(what, str(n), f"{secs:.2f}", f"{n / secs:.1f}")
        table.add_row("PNG files + V_front on the fly", str(n_png), f"{t_png:.2f}", f"{n_png / t_png:.1f}")
        console.print(table)
        stored = rates[DEFAULT_ENCODING][0] / rates[DEFAULT_ENCODING][1]
        console.print(
            f"speed-up shards ({DEFAULT_ENCODING}) / on-the-fly: {stored / (n_png / t_png):.1f}x; "
            f"stored ({DEFAULT_ENCODING}) / image-only + V_front: "
            f"{stored / (rates[NO_FEATURES][0] / rates[NO_FEATURES][1]):.1f}x (on this machine's CPU: "
            "on a GPU worker V_front costs far less)"
        )
