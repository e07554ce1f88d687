"""Writes ``format_v1_files.pt``: dvcm files (format version 1) coded by tiny codecs, with what they decode to.

Run once, on the code before the latent codecs were introduced (main at 3cfb287 plus the CI fixes), with
``python tests/data/make_format_v1_files.py``; tests/test_format_compat.py decodes the files with today's
code. The codecs' weights are stored without V_front (the seeded random YOLOv3 front, seed 0, which the
test rebuilds) and without the Gaussian conditionals' tables (a function of CompressAI's default scale
table, which ``update(force=True)`` rebuilds), so the fixture stays small; the fingerprints in the files
cover both all the same.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dvcm import bitstream
from dvcm.registry import build
from dvcm.yolo import build_yolov3

OUT = Path(__file__).with_name("format_v1_files.pt")
CASES = {
    "proposed-H2": ("proposed", dict(N=4, M1=2, M2=4, H=2)),
    "choi2022-H1": ("choi2022", dict(N=4, M1=2, M2=4, H=1)),
}


def _symbols(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The decoded latents ŷ1 and ŷ2 (integers): what the two layers' rANS strings carry."""
    with torch.no_grad():
        coded = model.compress(x)
        out = model.decompress(coded["base"], coded["enhancement"], coded["hw"], tuple(coded["padded_hw"]))
    return {"y1_hat": out["y1_hat"], "y2_hat": out["y2_hat"]}


def main() -> None:
    front = build_yolov3(seed=0).front
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 96, 80, generator=g)  # padded to 128x128: y 8x8, z 2x2
    entries = {}
    for key, (name, config) in CASES.items():
        torch.manual_seed(2)
        model = build(name, front=front, **config)
        with torch.no_grad():  # move the entropy models off their initial state so the file is not trivial
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
        model.set_feature_stats(torch.rand(256) * 0.01, torch.rand(256) * 0.02 + 0.01)
        model.update(force=True)
        model.eval()
        data = bitstream.compress(model, x)
        state = {
            k: v.clone()
            for k, v in model.state_dict().items()
            if not k.startswith("front.") and ".gaussian_conditional." not in k
        }
        entries[key] = {
            "model": name,
            "config": config,
            "state_dict_without_front": state,
            "file": data,
            "symbols": _symbols(model, x),
            "x_hat": bitstream.decode(model, data),
            "fingerprint": model.fingerprint,
        }
    torch.save(entries, OUT)
    print(f"{OUT}: {OUT.stat().st_size} bytes; " + ", ".join(f"{k} {len(v['file'])} B" for k, v in entries.items()))


if __name__ == "__main__":
    main()
