"""Files of format version 1, written by the code before the latent codecs (tests/data/make_format_v1_files.py),
decode with today's code: the same fingerprint, the same base-layer symbols, the same image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dvcm import bitstream
from dvcm.models import build

DATA = Path(__file__).parent / "data" / "format_v1_files.pt"


@pytest.fixture(scope="module")
def entries() -> dict:
    return torch.load(DATA, weights_only=True)


@pytest.mark.parametrize("case", ["proposed-H2", "choi2022-H1"])
def test_a_format_v1_file_decodes_as_it_did(case: str, entries: dict, yolo) -> None:
    e = entries[case]
    # the Gaussian conditionals' tables are a function of CompressAI's default scale table: take them, and the
    # seeded front, from a fresh model whose tables are built; the rest of the state is the file's checkpoint
    tables = build(e["model"], front=yolo.front, **e["config"])
    tables.update(force=True)
    model = build(e["model"], front=yolo.front, **e["config"])
    model.load_state_dict({**tables.state_dict(), **e["state_dict_without_front"]})
    model.eval()
    assert model.fingerprint == e["fingerprint"]
    x_hat = bitstream.decode(model, e["file"])
    assert torch.allclose(x_hat, e["x_hat"], atol=1e-6, rtol=0)
    s_hat = bitstream.decode_base(model, e["file"])
    with torch.no_grad():
        expected = model.synthesize_features(e["symbols"]["y1_hat"])[..., : s_hat.shape[-2], : s_hat.shape[-1]]
    assert torch.allclose(s_hat, expected, atol=1e-6, rtol=0)
    # the base layer alone (what a machine receives) decodes to the same ŝ
    assert torch.equal(bitstream.decode_base(model, bitstream.base_layer(e["file"])), s_hat)
