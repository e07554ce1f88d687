"""Structure-aware fuzzing of shard samples (issue 28): a valid sample's members dropped, truncated, swapped,
byte-flipped, or replaced by arrays of other shapes, dtypes and values. The reader gives either a sample it can
train on (an image in [0, 1] and finite features of the image's feature size) or one clear line that names the
shard; never another exception.

Hypothesis draws new cases on every run (each CI run fuzzes afresh); a failure prints the seed that reproduces it:
``pytest tests/test_fuzz_shards.py --hypothesis-seed=N``. ``DVCM_FUZZ_EXAMPLES`` sets how many cases a run draws
(default 150: a few seconds)."""

from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.data.shards import _decode_sample
from pipeline.infra.errors import UserError

EXAMPLES = int(os.environ.get("DVCM_FUZZ_EXAMPLES", "150"))
URL = "train/shard-000007.tar"


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _valid() -> dict[str, bytes | str]:
    png = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(png, format="PNG")
    return {
        "__key__": "k9",
        "__url__": URL,
        "png": png.getvalue(),
        "s.npy": _npy(np.zeros((4, 8, 8), np.uint8)),
        "s_range.npy": _npy(np.tile(np.array([[0.0, 1.0]], np.float32), (4, 1))),
    }


MEMBERS = ("png", "s.npy", "s_range.npy")
ARRAYS = st.one_of(
    st.builds(
        lambda shape, dtype, fill: np.full(shape, fill).astype(dtype),
        st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple),
        st.sampled_from(["uint8", "float16", "float32", "int64", "bool", "complex64"]),
        st.sampled_from([0, 1, -1, 255, 1e30, float("nan"), float("inf")]),
    ),
    st.just(np.array(["text"])),
)
EDITS = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(MEMBERS)),
    st.tuples(st.just("truncate"), st.sampled_from(MEMBERS), st.integers(0, 300)),
    st.tuples(st.just("flip"), st.sampled_from(MEMBERS), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("swap"), st.sampled_from(MEMBERS), st.sampled_from(MEMBERS)),
    st.tuples(st.just("array"), st.sampled_from(("s.npy", "s_range.npy")), ARRAYS),
    st.tuples(st.just("garbage"), st.sampled_from(MEMBERS), st.binary(max_size=64)),
)


def _apply(sample: dict, edit: tuple) -> None:
    kind, member = edit[0], edit[1]
    if kind == "drop":
        sample.pop(member, None)
    elif kind == "truncate" and member in sample:
        sample[member] = sample[member][: edit[2]]
    elif kind == "flip" and member in sample and sample[member]:
        data = bytearray(sample[member])
        data[edit[2] % len(data)] ^= edit[3]
        sample[member] = bytes(data)
    elif kind == "swap" and member in sample and edit[2] in sample:
        sample[member], sample[edit[2]] = sample[edit[2]], sample[member]
    elif kind == "array":
        sample[member] = _npy(edit[2])
    elif kind == "garbage":
        sample[member] = edit[2]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # casts of inf / nan in the drawn arrays
@pytest.mark.timeout(600)  # a hang fails with the case drawn so far, not a stalled CI
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EDITS, min_size=1, max_size=3))
def test_a_damaged_sample_trains_correctly_or_is_one_line_naming_its_shard(edits: list[tuple]) -> None:
    sample = _valid()
    for edit in edits:
        _apply(sample, edit)
    try:
        x, s = _decode_sample(sample, None, random.Random(0))
    except UserError as e:
        assert URL in str(e) and "\n" not in str(e), str(e)
        return
    x, s = np.asarray(x), np.asarray(s)
    assert x.shape == (3, 64, 64) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert s.shape == (4, 8, 8) and np.isfinite(s).all()
