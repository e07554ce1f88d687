"""The scalable file format: header, then the base layer, then the enhancement layer.

A machine-side decoder reads only the header and the base layer and returns ŝ; a file cut
right after the base layer is still a valid base-layer file. A human-side decoder reads
both layers and returns x̂. All integers are big-endian.

Header (56 bytes)::

    offset size field
     0     4    magic            b"DVCM"
     4     1    format version   1
     5     1    model id         1 = proposed, 2 = choi2022
     6     1    H                hyperprior blocks (1 or 2)
     7     1    flags            0 (reserved)
     8     8    model fingerprint (sha256 of name, config and weights, first 8 bytes)
    16     2+2  original height, width   (1..16384)
    20     2+2  padded height, width     (next multiple of 64)
    24     2+2  M1, M2                   (latent channels)
    28     2+2  y latent height, width   (padded / 16)
    32     2+2  z latent height, width   (padded / 64)
    36     4+4  base layer length, CRC-32
    44     4+4  enhancement layer length, CRC-32
    52     4    CRC-32 of bytes 0..51

Each layer is a sequence of strings, each a 4-byte length then the rANS bytes:
base = [ẑ1 (or the shared ẑ), ŷ1], enhancement = [ẑ2, ŷ2] (H=2) or [ŷ2] (H=1).
Every length is checked against the bytes present and every layer against its CRC before
any of it reaches the entropy decoder.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from dvcm.errors import BitstreamError
from dvcm.limits import check_coding_size, decode_base_bytes, decode_bytes, encode_bytes
from dvcm.models import ScalableCodec, padded_size
from dvcm.registry import CODECS, codec_spec, spec_by_bitstream_id

MAGIC = b"DVCM"
FORMAT_VERSION = 1
MODEL_IDS = {name: spec.bitstream_id for name, spec in CODECS.items()}  # the header's model ids (dvcm.registry)
MAX_SIDE = 16384
_HEADER = struct.Struct(">4sBBBB8s" + "H" * 10 + "IIII")
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEADER.size + _CRC.size
_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class Header:
    """The parsed, validated header of a dvcm file."""

    model: str
    hyperpriors: int
    fingerprint: bytes
    hw: tuple[int, int]
    padded_hw: tuple[int, int]
    m1: int
    m2: int
    y_hw: tuple[int, int]
    z_hw: tuple[int, int]
    base_length: int
    base_crc: int
    enhancement_length: int
    enhancement_crc: int

    @property
    def total_length(self) -> int:
        return HEADER_SIZE + self.base_length + self.enhancement_length


def _pack_strings(strings: list[bytes]) -> bytes:
    return b"".join(_LEN.pack(len(s)) + s for s in strings)


def _unpack_strings(segment: bytes, count: int, layer: str) -> list[bytes]:
    strings, pos = [], 0
    for i in range(count):
        if pos + _LEN.size > len(segment):
            raise BitstreamError(f"{layer} layer ends inside the length of string {i + 1} of {count}")
        (n,) = _LEN.unpack_from(segment, pos)
        pos += _LEN.size
        if n > len(segment) - pos:
            raise BitstreamError(f"{layer} layer string {i + 1} claims {n} bytes but only {len(segment) - pos} remain")
        strings.append(bytes(segment[pos : pos + n]))
        pos += n
    if pos != len(segment):
        raise BitstreamError(f"{layer} layer has {len(segment) - pos} unexpected trailing bytes")
    return strings


@contextmanager
def _eval_mode(model: ScalableCodec) -> Iterator[None]:
    """Code in eval mode (quantisation by rounding, float64 scales), then restore the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _require_ready(model: ScalableCodec) -> bytes:
    if model.fingerprint is None:
        raise BitstreamError("the model has no entropy tables yet: call model.update(force=True) or load a checkpoint")
    return model.fingerprint


@torch.no_grad()
def compress(model: ScalableCodec, x: Tensor, max_pixels: int | None = None) -> bytes:
    """Code one RGB image in [0,1] (shape [1,3,H,W] or [3,H,W], any size) into a dvcm file.

    Refuses, before coding, an image whose coding would need more memory than this process has
    (``dvcm.limits``), or more than ``max_pixels`` pixels when that is given instead."""
    fingerprint = _require_ready(model)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise BitstreamError(f"compress takes one RGB image [1,3,H,W], got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise BitstreamError(f"image size {h}x{w} is outside 1..{MAX_SIDE} pixels per side")
    check_coding_size((h, w), encode_bytes((h, w), model.N), "image", max_pixels)
    with _eval_mode(model):
        coded = model.compress(x)
    base, enhancement = _pack_strings(coded["base"]), _pack_strings(coded["enhancement"])
    ph, pw = coded["padded_hw"]
    fields = _HEADER.pack(
        MAGIC, FORMAT_VERSION, codec_spec(model.name).bitstream_id, model.H, 0, fingerprint,
        h, w, ph, pw, model.M1, model.M2, ph // 16, pw // 16, ph // 64, pw // 64,
        len(base), zlib.crc32(base), len(enhancement), zlib.crc32(enhancement),
    )  # fmt: skip
    return fields + _CRC.pack(zlib.crc32(fields)) + base + enhancement


def read_header(data: bytes) -> Header:
    """Parse and validate the header alone (no model needed)."""
    if len(data) < HEADER_SIZE:
        raise BitstreamError(f"file is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte dvcm header")
    fields = _HEADER.unpack_from(data, 0)
    magic, version, model_id, hyper, flags, fingerprint = fields[:6]
    if magic != MAGIC:
        raise BitstreamError(f"not a dvcm file (magic {magic!r}, expected {MAGIC!r})")
    (crc,) = _CRC.unpack_from(data, _HEADER.size)
    if zlib.crc32(data[: _HEADER.size]) != crc:
        raise BitstreamError("header checksum mismatch: the file is corrupted")
    if version != FORMAT_VERSION:
        raise BitstreamError(f"dvcm format version {version} is not supported (this decoder reads {FORMAT_VERSION})")
    spec = spec_by_bitstream_id(model_id)
    if spec is None or hyper not in (1, 2) or flags != 0:
        raise BitstreamError(f"header names unknown model id {model_id}, H={hyper} or flags {flags}")
    h, w, ph, pw, m1, m2, yh, yw, zh, zw = fields[6:16]
    base_len, base_crc, enh_len, enh_crc = fields[16:20]
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise BitstreamError(f"header image size {h}x{w} is outside 1..{MAX_SIDE}")
    if (ph, pw) != padded_size(h, w) or (yh, yw) != (ph // 16, pw // 16) or (zh, zw) != (ph // 64, pw // 64):
        raise BitstreamError(
            f"header sizes are inconsistent (image {h}x{w}, padded {ph}x{pw}, y {yh}x{yw}, z {zh}x{zw})"
        )
    if m1 < 1 or (m2 < 1 if spec.layers == 2 else m2 != 0):
        raise BitstreamError(f"header latent channels M1={m1}, M2={m2} are invalid for {spec.name}")
    return Header(
        model=spec.name, hyperpriors=hyper, fingerprint=fingerprint, hw=(h, w), padded_hw=(ph, pw),
        m1=m1, m2=m2, y_hw=(yh, yw), z_hw=(zh, zw),
        base_length=base_len, base_crc=base_crc, enhancement_length=enh_len, enhancement_crc=enh_crc,
    )  # fmt: skip


def _check_model(header: Header, model: ScalableCodec) -> None:
    fingerprint = _require_ready(model)
    expected = (model.name, model.H, model.M1, model.M2)
    if (header.model, header.hyperpriors, header.m1, header.m2) != expected:
        raise BitstreamError(
            f"file was coded by {header.model} (M1={header.m1}, M2={header.m2}, H={header.hyperpriors}), "
            f"but the checkpoint is {model.name} (M1={model.M1}, M2={model.M2}, H={model.H})"
        )
    if header.fingerprint != fingerprint:
        raise BitstreamError(
            f"file was coded with model fingerprint {header.fingerprint.hex()}, the checkpoint has "
            f"{fingerprint.hex()}: decode with the checkpoint that encoded it"
        )


def _segment(data: bytes, start: int, length: int, crc: int, layer: str) -> bytes:
    available = len(data) - start
    if length > available:
        hint = (
            "; the file holds the base layer only, use decode_base" if layer == "enhancement" and available == 0 else ""
        )
        raise BitstreamError(f"{layer} layer is {length} bytes but the file has {max(available, 0)} bytes left{hint}")
    segment = data[start : start + length]
    if zlib.crc32(segment) != crc:
        raise BitstreamError(f"{layer} layer checksum mismatch: the file is corrupted")
    return segment


def _base_strings(data: bytes, model: ScalableCodec) -> tuple[Header, list[bytes]]:
    header = read_header(data)
    _check_model(header, model)
    base = _segment(data, HEADER_SIZE, header.base_length, header.base_crc, "base")
    return header, _unpack_strings(base, model.segment_counts[0], "base")


@torch.no_grad()
def decode_base(model: ScalableCodec, data: bytes, max_pixels: int | None = None) -> Tensor:
    """Machine side: read the header and base layer only, return ŝ [1,C_s,⌈H/8⌉,⌈W/8⌉].

    The declared size is checked against memory first, as in :func:`decode`."""
    header, base = _base_strings(data, model)
    need = (
        decode_base_bytes(header.hw, model.N, model.M1)
        if model.layers == 2  # one layer: x̂, then V_front
        else max(decode_bytes(header.hw, model.N, model.M1, model.M2), encode_bytes(header.hw, model.N))
    )
    check_coding_size(header.hw, need, "the file's image", max_pixels)
    with _eval_mode(model):
        return model.decompress_base(base, header.hw, header.padded_hw)["s_hat"]


@torch.no_grad()
def decode(model: ScalableCodec, data: bytes, max_pixels: int | None = None) -> Tensor:
    """Human side: read both layers, return x̂ [1,3,H,W] clamped to [0,1].

    Refuses, before decoding, a declared image size whose decoding would need more memory than this
    process has (``dvcm.limits``), or more than ``max_pixels`` pixels when that is given instead."""
    header, base = _base_strings(data, model)
    start = HEADER_SIZE + header.base_length
    enh = _segment(data, start, header.enhancement_length, header.enhancement_crc, "enhancement")
    if len(data) != header.total_length:
        raise BitstreamError(f"file has {len(data) - header.total_length} unexpected trailing bytes")
    enhancement = _unpack_strings(enh, model.segment_counts[1], "enhancement")
    check_coding_size(header.hw, decode_bytes(header.hw, model.N, model.M1, model.M2), "the file's image", max_pixels)
    with _eval_mode(model):
        return model.decompress(base, enhancement, header.hw, header.padded_hw)["x_hat"].clamp_(0, 1)


def base_layer(data: bytes) -> bytes:
    """The header and base layer of a file: what is sent to a machine-only receiver."""
    header = read_header(data)
    if len(data) < HEADER_SIZE + header.base_length:
        raise BitstreamError("file is shorter than its base layer")
    return bytes(data[: HEADER_SIZE + header.base_length])


def layer_sizes(data: bytes) -> dict[str, int]:
    """Bytes of the header, the base layer and the enhancement layer, from the header."""
    header = read_header(data)
    return {"header": HEADER_SIZE, "base": header.base_length, "enhancement": header.enhancement_length}
