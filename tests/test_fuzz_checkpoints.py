"""Structure-aware fuzzing of checkpoints (issue 28): a tiny valid checkpoint with tensors replaced by non-finite,
huge or misshapen ones, tensors dropped, and configuration fields changed. Loading gives either a codec that codes
an image to real rANS bytes and back, or one clear line (CheckpointError); never another exception, never a hang.

Hypothesis draws new cases on every run; a failure prints the seed that reproduces it
(``pytest tests/test_fuzz_checkpoints.py --hypothesis-seed=N``). ``DVCM_FUZZ_EXAMPLES`` sets how many (default 40).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvcm.checkpoint import load_checkpoint, save_checkpoint
from dvcm.errors import BitstreamError, CheckpointError
from dvcm.registry import build

pytestmark = pytest.mark.slow  # each case builds, saves, loads and codes a codec: about 30 s a run
EXAMPLES = int(os.environ.get("DVCM_FUZZ_EXAMPLES", "40"))
CONFIG = dict(N=8, M1=4, M2=8, H=2)


@pytest.fixture(scope="module")
def content(yolo) -> dict:  # noqa: ANN001
    torch.manual_seed(0)
    model = build("proposed", front=yolo.front, yolo_provenance=yolo.provenance, **CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp) / "c.pt", model)
        return torch.load(Path(tmp) / "c.pt", weights_only=True)


VALUES = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.0, -1.0, 2.0**20])
EDITS = st.one_of(
    st.tuples(st.just("fill"), st.integers(0, 10_000), VALUES),
    st.tuples(st.just("one"), st.integers(0, 10_000), st.integers(0, 10_000), VALUES),
    st.tuples(st.just("reshape"), st.integers(0, 10_000), st.lists(st.integers(0, 6), min_size=0, max_size=4)),
    st.tuples(st.just("drop"), st.integers(0, 10_000)),
    st.tuples(st.just("dtype"), st.integers(0, 10_000), st.sampled_from([torch.float16, torch.int64, torch.bool])),
    st.tuples(st.just("config"), st.sampled_from(["N", "M1", "M2", "H"]), st.integers(-2, 70)),
)


def _apply(c: dict, edit: tuple) -> None:
    keys = sorted(c["state_dict"])
    kind = edit[0]
    if kind == "config":
        c["config"][edit[1]] = edit[2]
        return
    key = keys[edit[1] % len(keys)]
    t = c["state_dict"][key]
    if kind == "fill" and t.is_floating_point():
        c["state_dict"][key] = torch.full_like(t, edit[2])
    elif kind == "one" and t.is_floating_point() and t.numel():
        flat = t.clone().flatten()
        flat[edit[2] % flat.numel()] = edit[3]
        c["state_dict"][key] = flat.reshape(t.shape)
    elif kind == "reshape":
        c["state_dict"][key] = torch.zeros(edit[2])
    elif kind == "drop":
        del c["state_dict"][key]
    elif kind == "dtype":
        c["state_dict"][key] = t.to(edit[2])


@pytest.mark.filterwarnings("ignore")
@pytest.mark.timeout(600)  # a hang fails with the case drawn so far, not a stalled CI
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(EDITS, min_size=1, max_size=3))
def test_a_damaged_checkpoint_codes_an_image_or_is_one_line(content: dict, edits: list[tuple]) -> None:
    c = {**content, "config": dict(content["config"]), "state_dict": dict(content["state_dict"])}
    for edit in edits:
        _apply(c, edit)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "damaged.pt"
        torch.save(c, path)
        try:
            model, _ = load_checkpoint(path)
        except CheckpointError as e:
            assert "\n" not in str(e), str(e)
            return
    model.eval()
    if os.environ.get("DVCM_FUZZ_LOG"):  # the case about to be coded (a hang leaves it as the last line)
        with open(os.environ["DVCM_FUZZ_LOG"], "a") as log:
            log.write(f"{edits}\n")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    try:
        coded = model.compress(x)
    except (CheckpointError, BitstreamError) as e:  # a latent the coder cannot code, refused before rANS
        assert "\n" not in str(e), str(e)
        return
    out = model.decompress(coded["base"], coded["enhancement"], coded["hw"], coded["padded_hw"])
    assert out["x_hat"].shape == (1, 3, 64, 64)


def test_a_hyper_latent_beyond_what_rans_codes_is_refused_before_the_coder(yolo) -> None:  # noqa: ANN001
    """The case the fuzzer found hanging CompressAI's entropy bottleneck: damaged h_a weights that leave z finite
    but huge (the bypass coder then never returns). Refused in one line before any rANS call."""
    torch.manual_seed(0)
    model = build("proposed", front=yolo.front, yolo_provenance=yolo.provenance, **CONFIG).eval()
    model.update(force=True)
    last = [m for m in model.latent_codec.hyper1.h_a.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.fill_(1e9)
    with pytest.raises(BitstreamError, match="latent z1 reaches") as info:
        model.compress(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert "\n" not in str(info.value)
