"""Codec core: both models, the loss, checkpoints and the two-layer bitstream (real rANS bytes)."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvcm import bitstream
from dvcm.checkpoint import load_checkpoint, save_checkpoint
from dvcm.errors import BitstreamError, CheckpointError, ConfigError
from dvcm.loss import ScalableRDLoss
from dvcm.models import padded_size
from dvcm.registry import CODECS, build, codec_spec
from dvcm.train_utils import configure_optimizers
from tests.synthetic import natural_image

SMALL = {"proposed": dict(N=32, M1=16, M2=32), "choi2022": dict(N=32, M1=32, M2=16), "bmshj2018": dict(N=32, M=48)}
SMALL["choi2022rlst"] = SMALL["choi2022"]
# Every registered codec, with each value of H it has (a single-layer codec has no H): the tests below run on each.
CASES = [
    (name, H)
    for name, spec in CODECS.items()
    for H in next((h.choices for h in spec.hyperparameters if h.name == "H"), (None,))
]


def small_model(name: str, H: int | None, yolo, seed: int = 0):
    torch.manual_seed(seed)
    return build(
        name, front=yolo.front, yolo_provenance=yolo.provenance, **({} if H is None else {"H": H}), **SMALL[name]
    )


def test_every_registered_codec_has_a_small_test_configuration():
    assert set(SMALL) == set(CODECS)


@pytest.fixture(scope="module")
def trained(yolo, tmp_path_factory):
    """A small proposed (16,32,2) model trained for 300 steps on 64×64 images (CPU budget), and its checkpoint."""
    torch.manual_seed(0)
    model = small_model("proposed", 2, yolo)
    images = torch.stack([natural_image(i, 64, 64) for i in range(32)])
    features = model.features(images)  # s precomputed once, as the shards do
    crit = ScalableRDLoss(lmbda=0.01, gamma=1.0, s_std=torch.full((256,), 0.015))
    net_opt, aux_opt = configure_optimizers(model, lr=1e-3)
    model.train()
    for _ in range(300):
        idx = torch.randint(0, len(images), (4,))
        x = images[idx]
        out = model(x, s=features[idx])
        loss = crit(out, x)["loss"]
        net_opt.zero_grad()
        aux_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        net_opt.step()
        model.aux_loss().backward()
        aux_opt.step()
    model.eval()
    path = tmp_path_factory.mktemp("ckpt") / "proposed.pt"
    save_checkpoint(path, model, extra={"steps": 300})
    return model, path


# -- models ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "H"), CASES)
@pytest.mark.parametrize("hw", [(375, 500), (97, 131), (512, 768)])
def test_forward_shapes_any_size(yolo, name, H, hw):
    model = small_model(name, H, yolo)
    h, w = hw
    x = natural_image(1, h, w).unsqueeze(0)
    out = model(x)
    fh, fw = math.ceil(h / 8), math.ceil(w / 8)
    assert out["x_hat"].shape == (1, 3, h, w)
    assert out["s_hat"].shape == out["s"].shape == (1, 256, fh, fw)
    ph, pw = math.ceil(h / 64) * 64, math.ceil(w / 64) * 64
    lik = out["likelihoods"]
    if H is None:  # one layer: y and its hyperprior's z
        assert set(lik) == {"y", "z"}
        assert lik["y"].shape == (1, SMALL[name]["M"], ph // 16, pw // 16)
    else:
        assert set(lik) == ({"y1", "z1", "y2", "z2"} if H == 2 else {"y1", "y2", "z"})
        m1, m2 = SMALL[name]["M1"], SMALL[name]["M2"]
        assert lik["y1"].shape == (1, m1, ph // 16, pw // 16)
        assert lik["y2"].shape == (1, m2, ph // 16, pw // 16)
    for k in set(lik) - {"y1", "y2", "y"}:
        assert lik[k].shape[-2:] == (ph // 64, pw // 64)


@pytest.mark.parametrize("name", list(CODECS))
def test_gradients_reach_every_codec_parameter_and_no_front_parameter(yolo, name):
    model = small_model(name, 2 if "H" in codec_spec(name).config_form else None, yolo)
    x = torch.stack([natural_image(i, 128, 128) for i in range(2)])
    out = model(x)
    ScalableRDLoss(0.01, 1.0)(out, x)["loss"].backward()
    model.aux_loss().backward()
    front_ids = {id(p) for p in model.front.parameters()}
    assert front_ids, "the codec holds V_front"
    for n, p in model.named_parameters():
        if id(p) in front_ids:
            assert p.grad is None and not p.requires_grad, n
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {n}"


def test_front_stays_frozen_in_train_mode(yolo):
    model = small_model("proposed", 2, yolo).train()
    assert not model.front.training
    before = {k: v.clone() for k, v in model.front.state_dict().items()}
    model(natural_image(0, 64, 64).unsqueeze(0))
    for k, v in model.front.state_dict().items():
        assert torch.equal(v, before[k]), f"V_front state {k} moved"


def test_proposed_uses_s_and_choi_does_not(yolo):
    x = natural_image(3, 128, 128).unsqueeze(0)
    s = yolo.front(x)
    for name, uses_s in (("proposed", True), ("choi2022", False)):
        model = small_model(name, 2, yolo).eval()
        with torch.no_grad():
            a = model.analysis(x, s)[0]
            b = model.analysis(x, s * 2 + 0.5)[0]
        assert (not torch.equal(a, b)) == uses_s


def test_loss_reports_each_rate_term(yolo):
    model = small_model("proposed", 2, yolo)
    x = natural_image(0, 64, 64).unsqueeze(0)
    out = model(x)
    res = ScalableRDLoss(lmbda=0.5, gamma=2.0)(out, x)
    terms = [res[f"bpp_{k}"] for k in ("y1", "z1", "y2", "z2")]
    assert torch.allclose(res["bpp"], sum(terms))
    assert torch.allclose(res["bpp_base"], res["bpp_y1"] + res["bpp_z1"])
    d_x = 255**2 * torch.mean((out["x_hat"] - x) ** 2)
    d_s = torch.mean((out["s_hat"] - out["s"]) ** 2)
    assert torch.allclose(res["loss"], res["bpp"] + 0.5 * d_x + 2.0 * d_s)
    with pytest.raises(ValueError):
        ScalableRDLoss(lmbda=0.0, gamma=1.0)


def test_registry_and_config_parsing():
    spec = codec_spec("proposed")
    assert spec.parse("64,192,2") == {"M1": 64, "M2": 192, "H": 2}
    assert spec.parse("(128, 64, 1)") == {"M1": 128, "M2": 64, "H": 1}
    assert spec.text(spec.parse("64,192,2")) == "64,192,2"
    for bad in ("64,192", "a,b,c", "64,192,3", "0,1,1"):
        with pytest.raises(ConfigError):
            spec.parse(bad)
    assert codec_spec("bmshj2018").parse("192") == {"M": 192}
    with pytest.raises(ConfigError, match="M must be positive"):
        codec_spec("bmshj2018").parse("0")
    with pytest.raises(ConfigError, match="does not parse"):
        codec_spec("bmshj2018").parse("64,192,2")
    with pytest.raises(ConfigError, match="unknown model"):
        build("cheng2020", N=8, M1=8, M2=8, H=1)
    with pytest.raises(ConfigError, match="unknown config keys"):
        build("bmshj2018", N=8, M1=8)
    ids = [s.bitstream_id for s in CODECS.values()]
    assert len(set(ids)) == len(ids)  # a file names its codec by this id


# -- bitstream -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "H"), CASES)
def test_decode_matches_quantised_forward(yolo, name, H):
    model = small_model(name, H, yolo)
    model.update(force=True)
    model.eval()
    x = natural_image(5, 97, 131).unsqueeze(0)
    data = bitstream.compress(model, x)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(bitstream.decode_base(model, data), ref["s_hat"], rtol=0, atol=1e-5)
    torch.testing.assert_close(bitstream.decode(model, data), ref["x_hat"].clamp(0, 1), rtol=0, atol=1e-5)
    sizes = bitstream.layer_sizes(data)
    assert sizes["header"] + sizes["base"] + sizes["enhancement"] == len(data)


@pytest.mark.parametrize("H", [1, 2])
def test_base_layer_alone(yolo, H):
    model = small_model("proposed", H, yolo)
    model.update(force=True)
    x = natural_image(6, 128, 96).unsqueeze(0)
    data = bitstream.compress(model, x)
    base_only = bitstream.base_layer(data)
    assert len(base_only) < len(data)
    torch.testing.assert_close(bitstream.decode_base(model, base_only), bitstream.decode_base(model, data))
    with pytest.raises(BitstreamError, match="base layer only"):
        bitstream.decode(model, base_only)


def test_a_single_layer_codec_has_all_its_bits_in_the_base_layer_and_the_machine_sees_its_image(yolo):
    """bmshj2018: the file's enhancement layer is empty; a machine's ŝ is V_front of the decoded image."""
    model = small_model("bmshj2018", None, yolo)
    model.update(force=True)
    x = natural_image(6, 128, 96).unsqueeze(0)
    data = bitstream.compress(model, x)
    assert bitstream.layer_sizes(data)["enhancement"] == 0 and bitstream.base_layer(data) == data
    x_hat = bitstream.decode(model, data)
    torch.testing.assert_close(bitstream.decode_base(model, data), yolo.front(x_hat), rtol=0, atol=1e-5)
    assert bitstream.read_header(data).model == "bmshj2018" and bitstream.read_header(data).m2 == 0
    crit = ScalableRDLoss(lmbda=0.01, gamma=0.0)
    res = crit(model.train()(x), x)
    torch.testing.assert_close(res["bpp_base"], res["bpp"])  # its only layer


def test_real_rate_matches_estimate(trained):
    """After update(), file bits agree with the likelihood estimate plus the header (within 5%)."""
    model, _ = trained
    for seed, (h, w) in ((100, (256, 256)), (101, (320, 448))):
        x = natural_image(seed, h, w).unsqueeze(0)
        data = bitstream.compress(model, x)
        with torch.no_grad():
            lik = model(x)["likelihoods"]
        est_bits = sum(float(-torch.log2(v).sum()) for v in lik.values())
        overhead_bits = 8 * (bitstream.HEADER_SIZE + 4 * sum(model.segment_counts))
        real_bpp = len(data) * 8 / (h * w)
        est_bpp = (est_bits + overhead_bits) / (h * w)
        print(f"{h}x{w}: real {real_bpp:.4f} bpp, estimated {est_bpp:.4f} bpp, ratio {real_bpp / est_bpp:.4f}")
        assert abs(real_bpp / est_bpp - 1) < 0.05


def test_same_input_same_bytes(trained):
    model, path = trained
    x = natural_image(7, 200, 300).unsqueeze(0)
    first = bitstream.compress(model, x)
    again, _ = load_checkpoint(path)
    assert bitstream.compress(model, x) == first == bitstream.compress(again, x)


DECODE_SCRIPT = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from dvcm.checkpoint import load_checkpoint
from dvcm import bitstream
model, _ = load_checkpoint(sys.argv[2])
data = open(sys.argv[3], "rb").read()
torch.save({"x_hat": bitstream.decode(model, data), "s_hat": bitstream.decode_base(model, data)}, sys.argv[4])
"""


def test_decode_in_fresh_process_with_other_thread_count(trained, tmp_path):
    """Encode with 2 threads, decode in a new process with 1: identical scale indexes, same x̂ and ŝ."""
    model, path = trained
    torch.set_num_threads(2)
    x = natural_image(8, 512, 768).unsqueeze(0)
    data = bitstream.compress(model, x)
    (tmp_path / "img.dvcm").write_bytes(data)
    ref = {"x_hat": bitstream.decode(model, data), "s_hat": bitstream.decode_base(model, data)}
    out = tmp_path / "out.pt"
    subprocess.run(
        [sys.executable, "-c", DECODE_SCRIPT, "1", str(path), str(tmp_path / "img.dvcm"), str(out)], check=True
    )
    got = torch.load(out, weights_only=True)
    with torch.no_grad():
        quantised = model(x)
    # A wrong scale index would derail the rANS decoder: the result would be nowhere near the forward path.
    torch.testing.assert_close(got["x_hat"], quantised["x_hat"].clamp(0, 1), rtol=0, atol=1e-4)
    torch.testing.assert_close(got["x_hat"], ref["x_hat"], rtol=0, atol=1e-5)
    torch.testing.assert_close(got["s_hat"], ref["s_hat"], rtol=0, atol=1e-5)


# -- hostile bitstreams ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def coded(yolo):
    model = small_model("proposed", 2, yolo)
    model.update(force=True)
    return model, bitstream.compress(model, natural_image(9, 96, 160).unsqueeze(0))


def _expect_format_error(model, data: bytes) -> None:
    with pytest.raises(BitstreamError):
        bitstream.decode(model, data)
    try:
        bitstream.decode_base(model, data)
    except BitstreamError:
        pass  # a change in the enhancement layer leaves the base layer decodable


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_flipped_bytes_are_rejected(coded, data):
    model, good = coded
    pos = data.draw(st.integers(0, len(good) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(good)
    bad[pos] ^= 1 << bit
    _expect_format_error(model, bytes(bad))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10_000))
def test_truncated_files_are_rejected(coded, cut):
    model, good = coded
    cut = cut % len(good)
    _expect_format_error(model, good[:cut])


def _with_header(good: bytes, **fields: int) -> bytes:
    """Rewrite header fields and fix the header CRC, as a crafted file would."""
    names = ["magic", "version", "model", "H", "flags", "fp", "h", "w", "ph", "pw", "m1", "m2", "yh", "yw", "zh",
             "zw", "base_len", "base_crc", "enh_len", "enh_crc"]  # fmt: skip
    values = dict(zip(names, bitstream._HEADER.unpack_from(good, 0)))
    values.update(fields)
    head = bitstream._HEADER.pack(*values.values())
    return head + struct.pack(">I", zlib.crc32(head)) + good[bitstream.HEADER_SIZE :]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(["base_len", "enh_len", "h", "w", "ph", "yh", "zw", "m1", "version", "model"]),
    value=st.integers(0, 2**16 - 1),
)
def test_absurd_header_fields_are_rejected(coded, field, value):
    model, good = coded
    if field.endswith("_len"):
        value = min(value * 65537 + 1, 2**32 - 1)  # up to 4 GB
    if field in ("version", "model"):
        value %= 256
    crafted = _with_header(good, **{field: value})
    if crafted == good:
        return
    header = bitstream.read_header(good)
    if field in ("h", "w") and value >= 1:
        hw = (value, header.hw[1]) if field == "h" else (header.hw[0], value)
        if padded_size(*hw) == header.padded_hw:  # a consistent header: only the crop changes
            assert bitstream.decode(model, crafted).shape[-2:] == hw
            return
    _expect_format_error(model, crafted)


def test_wrong_magic_and_wrong_model(coded, yolo):
    model, good = coded
    with pytest.raises(BitstreamError, match="not a dvcm file"):
        bitstream.decode(model, b"JUNK" + good[4:])
    other = small_model("proposed", 2, yolo, seed=1)
    other.update(force=True)
    with pytest.raises(BitstreamError, match="fingerprint"):
        bitstream.decode_base(other, good)
    choi = small_model("choi2022", 2, yolo)
    choi.update(force=True)
    with pytest.raises(BitstreamError, match="coded by proposed"):
        bitstream.decode(choi, good)


def test_string_length_beyond_segment(coded):
    """A length field inside a layer that points past it (with valid CRCs) is refused."""
    model, good = coded
    h = bitstream.read_header(good)
    base = bytearray(good[bitstream.HEADER_SIZE : bitstream.HEADER_SIZE + h.base_length])
    base[0:4] = struct.pack(">I", 2**31)
    crafted = _with_header(
        good[: bitstream.HEADER_SIZE] + bytes(base) + good[bitstream.HEADER_SIZE + h.base_length :],
        base_crc=zlib.crc32(bytes(base)),
    )
    with pytest.raises(BitstreamError, match="claims"):
        bitstream.decode_base(model, crafted)


# -- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_round_trip_restores_config_and_tables(trained, yolo):
    model, path = trained
    loaded, meta = load_checkpoint(path, yolo_provenance=yolo.provenance)
    assert meta["model"] == "proposed" and meta["config"] == model.config and meta["extra"] == {"steps": 300}
    assert loaded.fingerprint == model.fingerprint
    x = natural_image(10, 64, 64).unsqueeze(0)
    torch.testing.assert_close(
        bitstream.decode(loaded, bitstream.compress(model, x)), bitstream.decode(model, bitstream.compress(model, x))
    )


def test_checkpoint_refuses_bad_files(trained, tmp_path):
    model, path = trained
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable"):
        load_checkpoint(junk)

    class Evil:  # an arbitrary object: weights_only loading must refuse to unpickle it
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "dvcm-checkpoint", "payload": Evil()}, evil)
    with pytest.raises(CheckpointError, match="not a loadable"):
        load_checkpoint(evil)
    content = torch.load(path, weights_only=True)
    content["model"] = "cheng2020"
    unknown = tmp_path / "unknown.pt"
    torch.save(content, unknown)
    with pytest.raises(CheckpointError, match="unknown model"):
        load_checkpoint(unknown)
    with pytest.raises(CheckpointError, match="YOLO weights"):
        load_checkpoint(path, yolo_provenance={"weights_sha256": "0" * 64})


def test_checkpoint_json_safe_metadata(trained):
    _, path = trained
    _, meta = load_checkpoint(path)
    json.dumps(meta)  # metadata is plain data (logged to MLflow as is)
    assert meta["yolo"]["split_layer"] == 12 and meta["yolo"]["random_weights"] is True


def test_uncompressed_checkpoint_is_small(trained):
    _, path = trained
    assert Path(path).stat().st_size < 20e6  # V_front (0.6M floats) travels with the codec, V_back does not


@pytest.mark.parametrize("H", [1, 2])
def test_under_autocast_the_entropy_models_run_in_float32(H: int) -> None:
    """AMP: the transforms may run in bf16, the likelihoods (and so the rates) are computed in float32,
    and they agree with a float32 pass to far better than bf16's 8 bits of mantissa would allow."""
    from dvcm.registry import build

    torch.manual_seed(0)
    model = build("proposed", N=8, M1=4, M2=8, H=H).train()
    x = torch.rand(1, 3, 64, 64)
    s = model.features(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, s)
        y1, y2 = model.analysis(*model._prepare(x, s)[:2])
    assert y1.dtype == torch.bfloat16  # the transforms did run in bf16
    for name, lik in out["likelihoods"].items():
        assert lik.dtype == torch.float32, name
    torch.manual_seed(1)  # the same uniform noise in both passes
    noisy = model.latent_codec(y1.float(), y2.float())["likelihoods"]
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        noisy_amp = model.latent_codec(y1, y2)["likelihoods"]
    for name in noisy:
        assert torch.allclose(noisy[name].log2().sum(), noisy_amp[name].log2().sum(), rtol=1e-5), name


# -- complexity ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "H"), [("proposed", 2), ("choi2022", 1)])
def test_complexity_counts_the_hyper_analysis_by_hand_and_splits_the_parts(yolo, name: str, H: int) -> None:
    from dvcm.complexity import PARTS, codec_complexity, module_macs, part_modules

    model = small_model(name, H, yolo)
    h, w = 256, 384
    macs = module_macs(model, h, w)
    # h_a: conv(M, N, 3x3, stride 1) on the latent (1/16), then conv(N, N, 5x5, stride 2) twice
    N, M = SMALL[name]["N"], SMALL[name]["M1"] + (0 if H == 2 else SMALL[name]["M2"])
    latent = (h // 16) * (w // 16)
    by_hand = latent * M * N * 9 + latent // 4 * N * N * 25 + latent // 16 * N * N * 25
    h_a = "latent_codec.hyper1.h_a" if H == 2 else "latent_codec.hyper.h_a"
    assert macs[h_a] == by_hand
    parts = codec_complexity(model, h, w)
    assert set(parts) == set(PARTS)
    assert h_a in part_modules(model)["encoder"]
    # a fully convolutional codec costs the same per pixel at any size (multiples of 64)
    bigger = codec_complexity(model, 2 * h, 2 * w)
    for part in PARTS:
        assert bigger[part]["kmac_per_pixel"] == pytest.approx(parts[part]["kmac_per_pixel"], rel=1e-6)
        assert parts[part]["params"] > 0
    # the base decoder is part of the full one; every part together is at most the whole forward pass
    assert parts["base_decoder"]["kmac_per_pixel"] < parts["full_decoder"]["kmac_per_pixel"]
    total = sum(parts[p]["kmac_per_pixel"] for p in ("front", "encoder", "full_decoder")) * h * w * 1e3
    assert total <= macs[""] + 1e-6
