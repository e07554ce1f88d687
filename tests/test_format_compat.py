"""Files of format version 1, written by the code before the latent codecs (tests/data/make_format_v1_files.py),
decode with today's code: the same fingerprint, the same base-layer symbols, the same image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dvcm import bitstream
from dvcm.checkpoint import load_checkpoint
from dvcm.registry import build

DATA = Path(__file__).parent / "data" / "format_v1_files.pt"


@pytest.fixture(scope="module")
def entries() -> dict:
    return torch.load(DATA, weights_only=True)


def _v1_state(e: dict, yolo) -> dict:  # noqa: ANN001
    """The file's whole checkpoint state, named as format version 1 named it: its own tensors, and the seeded
    front and the Gaussian conditionals' tables (a function of CompressAI's default scale table) from a fresh
    model whose tables are built."""
    tables = build(e["model"], front=yolo.front, **e["config"])
    tables.update(force=True)
    v1 = {k.removeprefix("latent_codec."): v for k, v in tables.state_dict().items()}
    assert set(e["state_dict_without_front"]) <= set(v1)  # the fixture's keys are format version 1's
    return {**v1, **e["state_dict_without_front"]}


@pytest.mark.parametrize("case", ["proposed-H2", "choi2022-H1"])
def test_a_format_v1_file_decodes_as_it_did(case: str, entries: dict, yolo, tmp_path: Path) -> None:  # noqa: ANN001
    e = entries[case]
    # a checkpoint file as format version 1 wrote it, loaded the way every command loads one
    path = tmp_path / "v1.pt"
    torch.save(
        {
            "format": "dvcm-checkpoint",
            "version": 1,
            "model": e["model"],
            "config": e["config"],
            "yolo": dict(yolo.provenance),
            "state_dict": _v1_state(e, yolo),
            "extra": {},
        },
        path,
    )
    model, _ = load_checkpoint(path)
    assert any(k.startswith("latent_codec.coder1.") for k in model.state_dict())  # the coders' keys were mapped
    assert model.fingerprint == e["fingerprint"]
    x_hat = bitstream.decode(model, e["file"])
    assert torch.allclose(x_hat, e["x_hat"], atol=1e-6, rtol=0)
    s_hat = bitstream.decode_base(model, e["file"])
    with torch.no_grad():
        expected = model.synthesize_features(e["symbols"]["y1_hat"])[..., : s_hat.shape[-2], : s_hat.shape[-1]]
    assert torch.allclose(s_hat, expected, atol=1e-6, rtol=0)
    # the base layer alone (what a machine receives) decodes to the same ŝ
    assert torch.equal(bitstream.decode_base(model, bitstream.base_layer(e["file"])), s_hat)


def test_a_state_with_both_namings_is_refused(entries: dict, yolo) -> None:  # noqa: ANN001
    from dvcm.errors import ConfigError

    e = entries["proposed-H2"]
    model = build(e["model"], front=yolo.front, **e["config"])
    mixed = {**_v1_state(e, yolo), "latent_codec.hyper1.entropy_bottleneck.quantiles": torch.zeros(4, 1, 3)}
    with pytest.raises(ConfigError, match="both"):
        model.load_state_dict(mixed)
