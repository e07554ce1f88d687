"""Write ``zoo_bitstream.dvcm`` and ``zoo_bitstream.pt``: a file coded with the bundled checkpoint
``zoo:proposed-l0.0932`` and what it decodes to (x̂ as 8-bit RGB, the base layer's ŝ in float16), so that a
change that breaks the decoding of published files fails ``tests/test_zoo.py``. Rerun only when the zoo
itself is replaced:

    python tests/data/make_zoo_bitstream.py
"""

from __future__ import annotations

from pathlib import Path

import torch

from dvcm import bitstream
from dvcm.checkpoint import load_checkpoint
from pipeline.data.sample_data import sample_image

NAME = "zoo:proposed-l0.0932"
HERE = Path(__file__).resolve().parent


def decoded(model: torch.nn.Module, data: bytes) -> dict[str, torch.Tensor]:
    """x̂ as 8-bit RGB (what a PNG holds) and the base layer's ŝ, decoded from the base layer alone."""
    x_hat = bitstream.decode(model, data)
    s_hat = bitstream.decode_base(model, bitstream.base_layer(data))
    return {"x_hat": (x_hat.clamp(0, 1) * 255).round().to(torch.uint8), "s_hat": s_hat.to(torch.float16)}


def main() -> None:
    model, _ = load_checkpoint(NAME)
    image = torch.from_numpy(sample_image(seed=7, size=(256, 192))).permute(2, 0, 1)[None].float() / 255
    data = bitstream.compress(model, image)
    (HERE / "zoo_bitstream.dvcm").write_bytes(data)
    torch.save({"checkpoint": NAME, **decoded(model, data)}, HERE / "zoo_bitstream.pt")


if __name__ == "__main__":
    main()
