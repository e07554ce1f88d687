"""Hostile files, as an attacker writes them: dvcm files crafted with valid CRCs, image bombs, images whose
mode would be silently wrong, broken checkpoints and bad output paths. Each is decoded by the CLI in its
own process with a memory cap, as a user would run it: the answer is a correct result, or one line on
stderr and exit code 2; a crash, a hang or a traceback fails the test.
"""

from __future__ import annotations

import re
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dvcm import bitstream
from dvcm.checkpoint import save_checkpoint
from dvcm.limits import padded_rans_string, rans_padding
from dvcm.models import padded_size
from dvcm.registry import build

MEMORY_CAP = 8 << 30  # address space of each decoding process (torch alone maps about 4 GiB)
CONFIGS = {"proposed": dict(N=8, M1=4, M2=8, H=2), "choi2022": dict(N=8, M1=4, M2=8, H=1)}
MODEL_IDS = {"proposed": 1, "choi2022": 2}


# --------------------------------------------------------------------------------------------
# Crafting files: the layout of dvcm/bitstream.py's docstring, written out here on its own
# --------------------------------------------------------------------------------------------
def pack_strings(strings: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(s)) + s for s in strings)


def craft(model: str, cfg: dict, fingerprint: bytes, hw: tuple[int, int], base: list[bytes], enh: list[bytes]) -> bytes:
    """A dvcm file with every length and CRC right for what it holds, whatever it declares."""
    h, w = hw
    ph, pw = padded_size(h, w)
    b, e = pack_strings(base), pack_strings(enh)
    fields = struct.pack(
        ">4sBBBB8s" + "H" * 10 + "IIII",
        b"DVCM",
        1,
        MODEL_IDS[model],
        cfg["H"],
        0,
        fingerprint,
        h,
        w,
        ph,
        pw,
        cfg["M1"],
        cfg["M2"],
        ph // 16,
        pw // 16,
        ph // 64,
        pw // 64,
        len(b),
        zlib.crc32(b),
        len(e),
        zlib.crc32(e),
    )
    return fields + struct.pack(">I", zlib.crc32(fields)) + b + e


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI in its own process under the memory cap."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_cap_memory,
    )


def assert_refused_or_decoded(res: subprocess.CompletedProcess, *, refused: str | None = None) -> None:
    assert res.returncode in (0, 2), f"exit {res.returncode} (a crash is negative or 139):\n{res.stderr[-2000:]}"
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    if res.returncode == 2:
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, res.stderr
    if refused is not None:
        assert res.returncode == 2 and refused in res.stderr, res.stderr


@pytest.fixture(scope="module")
def codecs(tmp_path_factory: pytest.TempPathFactory, yolo) -> dict[str, tuple[Path, bytes]]:  # noqa: ANN001
    """A tiny checkpoint of each layout, and its fingerprint."""
    root = tmp_path_factory.mktemp("hostile")
    out = {}
    for name, cfg in CONFIGS.items():
        torch.manual_seed(0)
        model = build(name, front=yolo.front, yolo_provenance=yolo.provenance, **cfg)
        save_checkpoint(root / f"{name}.pt", model)
        out[name] = (root / f"{name}.pt", model.fingerprint)
    return out


def decode_both_ways(tmp_path: Path, checkpoint: Path, data: bytes) -> list[subprocess.CompletedProcess]:
    f = tmp_path / "crafted.dvcm"
    f.write_bytes(data)
    return decode_both_ways_from(f, tmp_path, checkpoint)


def decode_both_ways_from(path: Path, tmp_path: Path, checkpoint: Path) -> list[subprocess.CompletedProcess]:
    return [
        cli("decompress", str(path), "-o", str(tmp_path / "x.png"), "-c", str(checkpoint)),
        cli("decompress", str(path), "--base-only", "-o", str(tmp_path / "machine"), "-c", str(checkpoint)),
    ]


# --------------------------------------------------------------------------------------------
# The files of the issue (slow: every case decodes in a process of its own)
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("side", [4096, 16384])
def test_the_72_byte_file_with_empty_strings_is_refused_in_one_line(side: int, codecs: dict, tmp_path: Path) -> None:
    ckpt, fp = codecs["proposed"]
    data = craft("proposed", CONFIGS["proposed"], fp, (side, side), [b"", b""], [b"", b""])
    assert len(data) == 72
    for res in decode_both_ways(tmp_path, ckpt, data):
        assert_refused_or_decoded(res)
        assert res.returncode == 2  # empty strings, or (16384²) the memory estimate first


@pytest.mark.slow
def test_strings_too_short_for_their_symbols_decode_without_reading_past_them(codecs: dict, tmp_path: Path) -> None:
    # Without the padding this file crashes the process (measured: exit 139 at 1024x1024 and 4096x4096).
    for name in CONFIGS:
        ckpt, fp = codecs[name]
        word2 = bytes(8)  # the shortest string an rANS encoder writes: its final state
        enh = [word2, word2] if CONFIGS[name]["H"] == 2 else [word2]
        for res in decode_both_ways(tmp_path, ckpt, craft(name, CONFIGS[name], fp, (1024, 1024), [word2, word2], enh)):
            assert_refused_or_decoded(res)
            assert res.returncode == 0, res.stderr  # garbage, but decoded
    assert Image.open(tmp_path / "x.png").size == (1024, 1024)


@pytest.mark.slow
def test_a_huge_declared_size_is_refused_before_anything_is_allocated(codecs: dict, tmp_path: Path) -> None:
    ckpt, fp = codecs["proposed"]
    s = bytes(876)
    data = craft("proposed", CONFIGS["proposed"], fp, (16384, 16384), [s, s], [s, s])
    assert len(data) == 3576
    for res in decode_both_ways(tmp_path, ckpt, data):
        assert_refused_or_decoded(res, refused="would need about")
    f = tmp_path / "crafted.dvcm"
    res = cli("decompress", str(f), "-o", str(tmp_path / "x.png"), "-c", str(ckpt), "--max-pixels", "1000000")
    assert_refused_or_decoded(res, refused="more than --max-pixels 1,000,000")


@pytest.mark.slow
def test_swapped_layers_are_refused_or_decoded(codecs: dict, tmp_path: Path) -> None:
    from dvcm.checkpoint import load_checkpoint

    ckpt, fp = codecs["proposed"]
    x = torch.rand(1, 3, 100, 140)

    model, _ = load_checkpoint(ckpt)
    good = bitstream.compress(model, x)
    header = bitstream.read_header(good)
    base = good[bitstream.HEADER_SIZE : bitstream.HEADER_SIZE + header.base_length]
    enh = good[bitstream.HEADER_SIZE + header.base_length :]

    def unpack(seg: bytes) -> list[bytes]:
        out, pos = [], 0
        while pos < len(seg):
            (n,) = struct.unpack_from(">I", seg, pos)
            out.append(seg[pos + 4 : pos + 4 + n])
            pos += 4 + n
        return out

    swapped = craft("proposed", CONFIGS["proposed"], fp, (100, 140), unpack(enh), unpack(base))
    for res in decode_both_ways(tmp_path, ckpt, swapped):
        assert_refused_or_decoded(res)


# --------------------------------------------------------------------------------------------
# Structure-aware fuzzing: files that pass every CRC, with any declared size and any strings
# --------------------------------------------------------------------------------------------
def _strings() -> st.SearchStrategy[list[bytes]]:
    one = st.one_of(
        st.just(b""),
        st.binary(min_size=1, max_size=7),
        st.sampled_from([bytes(8), b"\xff" * 8, b"\xff" * 64]),
        st.binary(min_size=8, max_size=256).map(lambda b: b[: len(b) // 4 * 4]),
    )
    return st.lists(one, min_size=0, max_size=4)


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=st.sampled_from(sorted(CONFIGS)),
    hw=st.tuples(st.sampled_from([1, 7, 64, 333, 1024, 16384]), st.sampled_from([1, 64, 500, 2048, 16384])),
    base=_strings(),
    enh=_strings(),
    base_only=st.booleans(),
)
def test_crafted_files_are_refused_or_decoded_never_a_crash(
    model: str, hw: tuple[int, int], base: list[bytes], enh: list[bytes], base_only: bool, codecs: dict, tmp_path: Path
) -> None:
    ckpt, fp = codecs[model]
    f = tmp_path / "fuzz.dvcm"
    f.write_bytes(craft(model, CONFIGS[model], fp, hw, base, enh))
    args = ["decompress", str(f), "-c", str(ckpt)]
    args += ["--base-only", "-o", str(tmp_path / "m")] if base_only else ["-o", str(tmp_path / "x.png")]
    assert_refused_or_decoded(cli(*args))


# --------------------------------------------------------------------------------------------
# The padding bound itself, in process: what lies past the padding never changes a decode
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["gaussian", "bottleneck"])
@settings(max_examples=40, deadline=None)
@given(
    string=st.one_of(
        st.binary(min_size=2, max_size=64).map(lambda b: (b * 4)[: len(b) // 2 * 4 + 8]),
        st.integers(2, 40).map(lambda n: b"\xff" * 4 * n),
    ),
    symbols=st.integers(1, 400),
    seed=st.integers(0, 2**16),
)
def test_nothing_past_the_padding_is_ever_read(which: str, string: bytes, symbols: int, seed: int) -> None:
    """Two different tails after the padding give the same symbols: the decoder never reached them, even
    for strings of 0xff bytes, whose nibbles of 15 drive CompressAI's coder into its longest bypass reads."""
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional
    from compressai.models.base import get_scale_table

    symbols = max(symbols, -(-(len(string) - 16) // 8))  # strings longer than a coder writes are refused
    torch.manual_seed(0)
    if which == "gaussian":
        coder = GaussianConditional(None)
        coder.update_scale_table(get_scale_table(), force=True)
        indexes = torch.randint(0, len(get_scale_table()), (symbols,), generator=torch.Generator().manual_seed(seed))
    else:
        coder = EntropyBottleneck(1)
        coder.update(force=True)
        indexes = torch.zeros(symbols, dtype=torch.int32)
    padded = padded_rans_string(string, symbols)
    assert len(padded) == len(string) + rans_padding(len(string), symbols)
    rng = np.random.default_rng(seed)
    outs = []
    for tail in (bytes(4096), rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), b"\xff" * 4096):
        decoded = coder.entropy_coder.decode_with_indexes(
            padded + tail,
            indexes.int().tolist(),
            coder._quantized_cdf.tolist(),
            coder._cdf_length.reshape(-1).int().tolist(),
            coder._offset.reshape(-1).int().tolist(),
        )
        outs.append(decoded)
    assert outs[0] == outs[1] == outs[2]


# --------------------------------------------------------------------------------------------
# Images: bombs, huge but valid files, and modes that would be silently wrong
# --------------------------------------------------------------------------------------------
def png_declaring(width: int, height: int, mode_bits: tuple[int, int] = (1, 0)) -> bytes:
    """A PNG whose header declares ``width``×``height`` (bit depth, colour type) with an empty image stream."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, mode_bits[0], mode_bits[1], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.slow
def test_image_bombs_and_huge_images_are_refused_from_their_header(codecs: dict, tmp_path: Path) -> None:
    ckpt, _ = codecs["proposed"]
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(30000, 30000))
    assert len(bomb.read_bytes()) < 80
    res = cli("compress", str(bomb), "-o", str(tmp_path / "b.dvcm"), "-c", str(ckpt))
    assert_refused_or_decoded(res, refused="declares more pixels than Pillow opens safely")
    # a valid 12000x12000 bilevel PNG, below Pillow's limit: its coding would need far more than the cap
    Image.new("1", (12000, 12000)).save(tmp_path / "huge.png")
    assert (tmp_path / "huge.png").stat().st_size < 100_000
    res = cli("compress", str(tmp_path / "huge.png"), "-o", str(tmp_path / "h.dvcm"), "-c", str(ckpt))
    assert_refused_or_decoded(res, refused="would need about")
    res = cli(
        "compress",
        str(tmp_path / "huge.png"),
        "-o",
        str(tmp_path / "h.dvcm"),
        "-c",
        str(ckpt),
        "--max-pixels",
        "5000000",
    )
    assert_refused_or_decoded(res, refused="more than the limit of 5,000,000")
    assert not (tmp_path / "h.dvcm").exists()


def test_every_image_mode_maps_to_8_bit_rgb_or_is_refused(tmp_path: Path) -> None:
    from pipeline.data.images import UnsupportedImage, read_rgb8

    ramp16 = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    Image.fromarray(ramp16).save(tmp_path / "grey16.png")  # a 16-bit greyscale PNG
    rgb, notes = read_rgb8(tmp_path / "grey16.png")
    arr = np.asarray(rgb)
    assert arr.shape == (48, 64, 3) and not notes
    np.testing.assert_array_equal(arr[..., 0], np.rint(ramp16 / 65535 * 255).astype(np.uint8))  # scaled, not clipped
    assert arr.min() == 0 and arr.max() == 255 and len(np.unique(arr)) > 200

    colours = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    base = Image.fromarray(colours)
    base.convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    palette_rgb, _ = read_rgb8(tmp_path / "palette.png")
    assert (
        np.abs(
            np.asarray(palette_rgb).astype(int) - np.asarray(Image.open(tmp_path / "palette.png").convert("RGB"))
        ).max()
        == 0
    )
    rgba = base.copy()
    rgba.putalpha(128)
    rgba.save(tmp_path / "alpha.png")
    rgb, notes = read_rgb8(tmp_path / "alpha.png")
    np.testing.assert_array_equal(np.asarray(rgb), colours)  # the colour channels as they are
    assert notes and "alpha" in notes[0]
    base.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    rgb, _ = read_rgb8(tmp_path / "cmyk.jpg")
    assert np.abs(np.asarray(rgb).astype(int) - colours).mean() < 8  # CMYK converted back, not garbled
    base.convert("L").save(tmp_path / "grey.png")
    rgb, _ = read_rgb8(tmp_path / "grey.png")
    assert (np.asarray(rgb) == np.asarray(base.convert("L"))[..., None]).all()
    for mode, arr in (
        ("I", np.arange(48 * 64, dtype=np.int32).reshape(48, 64) * 70000),
        ("F", np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)),
    ):
        Image.fromarray(arr, mode).save(tmp_path / f"{mode}.tiff")
        with pytest.raises(UnsupportedImage, match="no defined 8-bit mapping"):
            read_rgb8(tmp_path / f"{mode}.tiff")


# --------------------------------------------------------------------------------------------
# Checkpoints and output paths: one whole line each
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_broken_checkpoints_and_bad_outputs_are_one_whole_line(codecs: dict, tmp_path: Path) -> None:
    ckpt, _ = codecs["proposed"]
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(tmp_path / "im.png")
    res = cli("compress", str(tmp_path / "im.png"), "-o", str(tmp_path / "im.dvcm"), "-c", str(ckpt))
    assert res.returncode == 0, res.stderr

    content = torch.load(ckpt, weights_only=True)
    (table,) = [k for k in content["state_dict"] if k.endswith("hyper1.entropy_bottleneck._quantized_cdf")]
    del content["state_dict"][table]
    torch.save(content, tmp_path / "no_table.pt")
    res = cli(
        "decompress", str(tmp_path / "im.dvcm"), "-o", str(tmp_path / "x.png"), "-c", str(tmp_path / "no_table.pt")
    )
    assert_refused_or_decoded(res, refused="it is incomplete")

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("pwned",))

    torch.save({"format": "dvcm-checkpoint", "payload": Evil()}, tmp_path / "evil.pt")
    res = cli("decompress", str(tmp_path / "im.dvcm"), "-o", str(tmp_path / "x.png"), "-c", str(tmp_path / "evil.pt"))
    assert_refused_or_decoded(res, refused="could run code")
    assert "weights_only=False" not in res.stderr and "pwned" not in res.stdout
    assert res.stderr.strip().endswith("use a checkpoint written by dvcm)")  # whole, not cut mid-sentence
    assert "allowlist" not in res.stderr  # nor torch's advice on how to load it unsafely

    (tmp_path / "folder").mkdir()
    res = cli("decompress", str(tmp_path / "im.dvcm"), "-o", str(tmp_path / "folder"), "-c", str(ckpt))
    assert_refused_or_decoded(res, refused="is a folder")
    res = cli("decompress", str(tmp_path / "im.dvcm"), "-o", "/proc/x.png", "-c", str(ckpt))
    assert_refused_or_decoded(res)
    assert res.returncode == 2
    (tmp_path / "out").mkdir()
    res = cli(
        "decompress",
        str(tmp_path / "im.dvcm"),
        "--base-only",
        "-o",
        str(tmp_path / "out" / "coffee.v2"),
        "-c",
        str(ckpt),
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "coffee.v2.npy").is_file() and (tmp_path / "out" / "coffee.v2.detections.json").is_file()


@pytest.mark.parametrize("damage", ["last value", "not rising", "rows", "length"])
def test_checkpoints_with_entropy_tables_that_would_misread_are_refused(damage: str, yolo, tmp_path: Path) -> None:  # noqa: ANN001
    from dvcm.checkpoint import load_checkpoint
    from dvcm.errors import CheckpointError

    torch.manual_seed(0)
    save_checkpoint(
        tmp_path / "good.pt",
        build("proposed", front=yolo.front, yolo_provenance=yolo.provenance, **CONFIGS["proposed"]),
    )
    load_checkpoint(tmp_path / "good.pt")  # the control: intact tables load
    content = torch.load(tmp_path / "good.pt", weights_only=True)
    sd = content["state_dict"]
    key = next(k for k in sd if k.endswith("hyper1.entropy_bottleneck._quantized_cdf"))
    lengths = key.replace("_quantized_cdf", "_cdf_length")
    if damage == "last value":
        sd[key][0, int(sd[lengths][0]) - 1] = 60000
    elif damage == "not rising":
        sd[key][1, 1] = sd[key][1, 2]
    elif damage == "rows":
        sd[key] = sd[key][:2].clone()
    else:
        sd[lengths][0] = sd[key].shape[1] + 5
    torch.save(content, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="entropy table") as info:
        load_checkpoint(tmp_path / "bad.pt")
    assert "\n" not in str(info.value)


def test_a_string_longer_than_any_coder_writes_for_its_symbols_is_refused(codecs: dict) -> None:
    from dvcm.checkpoint import load_checkpoint
    from dvcm.errors import BitstreamError

    ckpt, fp = codecs["proposed"]
    model, _ = load_checkpoint(ckpt)
    ok = bytes(8)
    huge = bytes(1 << 20)  # 1 MiB for ẑ1 of 8 channels x 1 x 1: at most 8·8 + 16 bytes are possible
    data = craft("proposed", CONFIGS["proposed"], fp, (64, 64), [huge, ok], [ok, ok])
    with pytest.raises(BitstreamError, match="more than an rANS coder writes"):
        bitstream.decode_base(model, data)


@pytest.mark.slow  # CLI subprocesses
@pytest.mark.parametrize("damage", ["NaN float16 weight", "NaN s_std", "zero s_std", "offset -2^30"])
def test_damaged_checkpoints_that_would_hang_the_encoder_are_refused_in_one_line(
    damage: str,
    yolo,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """Issue 28, defect 1: each of these made CompressAI's encode_with_indexes loop forever; now refused at load."""
    from dvcm.checkpoint import compact_checkpoint, load_checkpoint
    from dvcm.errors import CheckpointError

    torch.manual_seed(0)
    model = build("proposed", front=yolo.front, yolo_provenance=yolo.provenance, **CONFIGS["proposed"])
    save_checkpoint(tmp_path / "good.pt", model)
    compact_checkpoint(tmp_path / "good.pt", tmp_path / "compact.pt")
    src = tmp_path / ("compact.pt" if damage.startswith("NaN float16") else "good.pt")
    load_checkpoint(src)  # the control
    content = torch.load(src, weights_only=True)
    sd = content["state_dict"]
    if damage == "NaN float16 weight":
        key = next(k for k in sd if k.startswith("g_a1.") and sd[k].dtype == torch.float16)
        sd[key].view(-1)[0] = float("nan")
    elif damage == "NaN s_std":
        sd["s_std"][0, 0] = float("nan")
    elif damage == "zero s_std":
        sd["s_std"][0, 3] = 0.0
    else:
        key = next(k for k in sd if k.endswith("hyper1.entropy_bottleneck._offset"))
        sd[key][0] = -(1 << 30)
    torch.save(content, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "bad.pt")
    assert "\n" not in str(info.value) and "damaged" in str(info.value)
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(image)
    res = cli(
        "compress", str(image), "-o", str(tmp_path / "x.dvcm"), "--checkpoint", str(tmp_path / "bad.pt"), timeout=120
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr


def test_a_latent_the_coder_cannot_code_is_refused_before_rans(yolo) -> None:  # noqa: ANN001
    """A model whose weights went NaN after loading: compress refuses instead of looping in rANS."""
    torch.manual_seed(0)
    model = build("proposed", front=yolo.front, yolo_provenance=yolo.provenance, **CONFIGS["proposed"])
    model.update(force=True)
    with torch.no_grad():
        model.g_a2[0].weight.view(-1)[0] = float("nan")
    from dvcm.errors import BitstreamError

    with pytest.raises(BitstreamError, match="latent y2 is not finite"):
        bitstream.compress(model, torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)))


@pytest.mark.slow  # CLI subprocesses
def test_a_file_is_read_only_as_far_as_its_header_declares(codecs: dict, tmp_path: Path) -> None:
    """Issue 28, defect 6: a valid file followed by 256 MiB (it was read whole: 3.66 GB RSS at 12 GiB), and a link to
    /dev/zero, are refused in one line under the test's memory cap."""
    ckpt, _ = codecs["proposed"]
    from dvcm.checkpoint import load_checkpoint

    model, _ = load_checkpoint(ckpt)
    data = bitstream.compress(model, torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
    padded = tmp_path / "padded.dvcm"
    with open(padded, "wb") as f:
        f.write(data)
        f.truncate(len(data) + (256 << 20))  # a sparse tail of zeros
    zero = tmp_path / "zero.dvcm"
    zero.symlink_to("/dev/zero")
    for path, message in ((padded, "longer than the"), (zero, "not a dvcm file")):
        for res in decode_both_ways_from(path, tmp_path, ckpt):
            assert res.returncode == 2 and message in res.stderr and res.stderr.count("\n") == 1, res.stderr


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("N", "8", "is not an integer in 1..4096"),
        ("N", 8.0, "is not an integer in 1..4096"),
        ("N", 200_000, "is not an integer in 1..4096"),
        ("M1", 10**7, "is not an integer in 1..4096"),
        ("H", 3, "is not one of (1, 2)"),
        ("M", 8, "is not one of proposed's"),
        ("state key", 7, "only named tensors belong there"),
        ("string tensor", ["a", "b"], "only named tensors belong there"),
        ("yolo", ["a list"], "entry is a list, not a mapping"),
    ],
)
def test_crafted_checkpoint_fields_are_refused_at_load_in_one_line(
    field: str, value: object, message: str, codecs: dict, tmp_path: Path
) -> None:
    """Issue 28, defect 8: 19 such cases gave TypeError and allocator tracebacks."""
    from dvcm.checkpoint import load_checkpoint
    from dvcm.errors import CheckpointError

    ckpt, _ = codecs["proposed"]
    content = torch.load(ckpt, weights_only=True)
    if field == "state key":
        content["state_dict"][value] = torch.zeros(1)
    elif field == "string tensor":
        content["state_dict"]["g_a1.0.weight"] = value
    elif field == "yolo":
        content["yolo"] = value
    else:
        content["config"][field] = value
    torch.save(content, tmp_path / "crafted.pt")
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        load_checkpoint(tmp_path / "crafted.pt")
    assert "\n" not in str(info.value)


@pytest.mark.slow  # CLI subprocesses
def test_output_paths_the_file_system_refuses_are_one_line_and_leave_no_half_output(
    codecs: dict, tmp_path: Path
) -> None:
    """Issue 28, defect 9: OSError tracebacks, and the .npy left behind when the detections could not be written."""
    ckpt, _ = codecs["proposed"]
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image)
    cases = [
        (("compress", str(image), "-o", str(tmp_path / ("a" * 300 + ".dvcm")), "-c", str(ckpt)), "File name too long"),
        (("prepare", "--dataset", "sample", "--out", "/proc/x"), "--out /proc/x: cannot make the folder"),
        (("prepare", "--dataset", "sample", "--out", "/etc/hostname"), "--out /etc/hostname: cannot make the folder"),
        (("report", "--eval-dir", str(tmp_path), "--out", str(tmp_path)), "is a folder; give a file name"),
        (("demo", "--out", str(image)), "is a file; give a folder"),
    ]
    for args, message in cases:
        res = cli(*args, timeout=120)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
    data = tmp_path / "x.dvcm"
    assert cli("compress", str(image), "-o", str(data), "-c", str(ckpt)).returncode == 0
    (tmp_path / "out.detections.json").mkdir()  # the second output cannot be written
    res = cli("decompress", str(data), "--base-only", "-o", str(tmp_path / "out"), "-c", str(ckpt))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "out.npy").exists()  # both outputs or neither
