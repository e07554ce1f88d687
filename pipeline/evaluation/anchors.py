"""Standard-codec anchors: JPEG, WebP, AVIF (Pillow), HEVC-intra (x265) and VVC-intra (vvenc).

Each anchor encodes an RGB image at a fixed quality parameter and decodes it back; the
evaluation then runs the full YOLOv3 (COCO) or measures PSNR/MS-SSIM (Kodak) on the result.

Rates count **codestream bytes only**: the entropy-coded picture data and the parameter
sets the decoder needs, without the file container. The container's bytes are reported
beside them (``container_bytes``):

* JPEG: APPn and COM segments (JFIF/EXIF headers) are container, everything else codestream;
* WebP: the ``VP8 ``/``VP8L`` chunk payload is codestream, RIFF and chunk headers container;
* AVIF: the ``mdat`` payload (the AV1 OBUs) is codestream, the ISOBMFF boxes container;
* HEVC / VVC: raw Annex-B streams written by ffmpeg (``libx265`` / ``libvvenc``), so the
  container is empty. 4:2:0 chroma (8-bit for x265; 10-bit, the only format vvenc takes,
  for VVC); every frame intra (x265 ``keyint=1``); the QP is fixed (x265 ``qp=``, vvenc
  ``-qp`` with ``-qpa 0``, no perceptual QP adaptation).

Encoders come from maintained packages: Pillow (with its bundled libwebp/libavif) and the
ffmpeg binary of ``imageio-ffmpeg``. An anchor whose encoder is missing is skipped with a
one-line notice (:func:`available_anchors`), never a crash.
"""

from __future__ import annotations

import io
import struct
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, features

from pipeline.infra.errors import UserError


class AnchorEncodeError(UserError):
    """An anchor encoder or decoder failed on an image."""


@dataclass(frozen=True)
class Encoded:
    """One anchor-coded image: byte counts and the decoded RGB image."""

    codestream_bytes: int
    container_bytes: int
    decoded: Image.Image

    @property
    def file_bytes(self) -> int:
        return self.codestream_bytes + self.container_bytes


@dataclass(frozen=True)
class AnchorCodec:
    """A standard codec at a list of fixed parameters (quality for Pillow codecs, QP for video codecs)."""

    name: str
    label: str
    param_name: str
    params: tuple[int, ...]
    missing: Callable[[], str | None]
    encode: Callable[[Image.Image, int], Encoded]

    def point_label(self, param: int) -> str:
        return f"{self.label} {self.param_name}={param}"


# -- container parsing ---------------------------------------------------------------------


def jpeg_container_bytes(data: bytes) -> int:
    """Bytes of APPn/COM segments (marker + length) in a JPEG file, up to the first SOS."""
    i, over = 2, 0
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise AnchorEncodeError("JPEG marker expected; the file is not a baseline JPEG")
        marker = data[i + 1]
        if marker == 0xDA:  # SOS: entropy-coded data follows
            break
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            over += 2 + length
        i += 2 + length
    return over


def webp_codestream_bytes(data: bytes) -> int:
    """Payload bytes of the VP8/VP8L chunk(s) of a RIFF WebP file."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise AnchorEncodeError("not a RIFF WebP file")
    i, total = 12, 0
    while i + 8 <= len(data):
        tag = data[i : i + 4]
        (size,) = struct.unpack("<I", data[i + 4 : i + 8])
        if tag in (b"VP8 ", b"VP8L"):
            total += size
        i += 8 + size + (size & 1)
    return total


def isobmff_mdat_bytes(data: bytes) -> int:
    """Payload bytes of the top-level ``mdat`` box(es) of an ISOBMFF (AVIF/HEIF) file."""
    i, total = 0, 0
    while i + 8 <= len(data):
        size, tag = struct.unpack(">I4s", data[i : i + 8])
        header = 8
        if size == 1:
            (size,) = struct.unpack(">Q", data[i + 8 : i + 16])
            header = 16
        elif size == 0:
            size = len(data) - i
        if tag == b"mdat":
            total += size - header
        i += size
    return total


# -- Pillow codecs ---------------------------------------------------------------------------


def _pillow(fmt: str, codestream: Callable[[bytes], int], **opts: object) -> Callable[[Image.Image, int], Encoded]:
    def encode(img: Image.Image, quality: int) -> Encoded:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format=fmt, quality=int(quality), **opts)
        data = buf.getvalue()
        cs = codestream(data)
        decoded = Image.open(io.BytesIO(data))
        decoded.load()
        return Encoded(cs, len(data) - cs, decoded.convert("RGB"))

    return encode


def _pillow_missing(feature: str) -> Callable[[], str | None]:
    return lambda: None if features.check(feature) else f"Pillow was built without {feature}"


# -- ffmpeg codecs ---------------------------------------------------------------------------


def ffmpeg_exe() -> str | None:
    """The ffmpeg binary bundled with imageio-ffmpeg (None when absent)."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


_ENCODER_CACHE: dict[tuple[str, str], bool] = {}


def _ffmpeg_has(exe: str, encoder: str) -> bool:
    key = (exe, encoder)
    if key not in _ENCODER_CACHE:
        try:
            out = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True, check=False).stdout
        except OSError:
            out = ""
        _ENCODER_CACHE[key] = any(line.split()[1:2] == [encoder] for line in out.splitlines())
    return _ENCODER_CACHE[key]


def _ffmpeg_missing(encoder: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        exe = ffmpeg_exe()
        if exe is None:
            return "no ffmpeg binary (install imageio-ffmpeg)"
        return None if _ffmpeg_has(exe, encoder) else f"ffmpeg ({exe}) has no {encoder} encoder"

    return missing


def _run(cmd: Sequence[str]) -> None:
    res = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no message"])[-1]
        raise AnchorEncodeError(f"{Path(cmd[0]).name} failed: {last}")


def _ffmpeg(
    codec_args: Callable[[int], list[str]], pix_fmt: str, muxer: str, align: int
) -> Callable[[Image.Image, int], Encoded]:
    def encode(img: Image.Image, qp: int) -> Encoded:
        exe = ffmpeg_exe()
        if exe is None:
            raise AnchorEncodeError("no ffmpeg binary (install imageio-ffmpeg)")
        img = img.convert("RGB")
        w, h = img.size
        with tempfile.TemporaryDirectory(prefix="dvcm-anchor-") as tmp:
            src, bit, dec = Path(tmp) / "in.png", Path(tmp) / f"out.{muxer}", Path(tmp) / "dec.png"
            img.save(src)
            pad = f"pad=ceil(iw/{align})*{align}:ceil(ih/{align})*{align}"
            _run(
                [
                    exe,
                    "-hide_banner",
                    "-loglevel",
                    "error",
                    "-y",
                    "-i",
                    str(src),
                    "-vf",
                    pad,
                    "-pix_fmt",
                    pix_fmt,
                    *codec_args(int(qp)),
                    "-frames:v",
                    "1",
                    "-f",
                    muxer,
                    str(bit),
                ]
            )
            _run(
                [
                    exe,
                    "-hide_banner",
                    "-loglevel",
                    "error",
                    "-y",
                    "-i",
                    str(bit),
                    "-frames:v",
                    "1",
                    "-pix_fmt",
                    "rgb24",
                    str(dec),
                ]
            )
            decoded = Image.open(dec).convert("RGB").crop((0, 0, w, h))
            return Encoded(bit.stat().st_size, 0, decoded)

    return encode


def _x265(qp: int) -> list[str]:
    return ["-c:v", "libx265", "-x265-params", f"qp={qp}:keyint=1:info=0:log-level=error"]


def _vvenc(qp: int) -> list[str]:
    return ["-c:v", "libvvenc", "-preset", "faster", "-qpa", "0", "-qp", str(qp)]


ANCHORS: dict[str, AnchorCodec] = {
    "jpeg": AnchorCodec(
        "jpeg",
        "JPEG (Pillow)",
        "quality",
        (5, 10, 20, 40, 70),
        lambda: None,
        _pillow("JPEG", lambda d: len(d) - jpeg_container_bytes(d)),
    ),
    "webp": AnchorCodec(
        "webp",
        "WebP (Pillow)",
        "quality",
        (5, 10, 20, 40, 70),
        _pillow_missing("webp"),
        _pillow("WEBP", webp_codestream_bytes, method=4),
    ),
    "avif": AnchorCodec(
        "avif",
        "AVIF (Pillow)",
        "quality",
        (10, 25, 40, 55, 70),
        _pillow_missing("avif"),
        _pillow("AVIF", isobmff_mdat_bytes, speed=8),
    ),
    "hevc": AnchorCodec(
        "hevc",
        "HEVC-intra (x265)",
        "qp",
        (47, 42, 37, 32, 27),
        _ffmpeg_missing("libx265"),
        _ffmpeg(_x265, "yuv420p", "hevc", 8),
    ),
    "vvc": AnchorCodec(
        "vvc",
        "VVC-intra (vvenc)",
        "qp",
        (47, 42, 37, 32, 27),
        _ffmpeg_missing("libvvenc"),
        _ffmpeg(_vvenc, "yuv420p10le", "vvc", 8),
    ),
}


DEFAULT_ANCHORS: tuple[str, ...] = tuple(ANCHORS)  # what evaluate, the quickstart and reproduce try by default
ANCHOR_LIST = ",".join(DEFAULT_ANCHORS)  # the same, as a flag's value


def available_anchors(names: Sequence[str] | None = None) -> tuple[list[AnchorCodec], list[str]]:
    """The requested anchors whose encoder is installed, and one notice line per skipped one."""
    chosen, notices = [], []
    for name in names if names is not None else list(ANCHORS):
        codec = ANCHORS.get(name)
        if codec is None:
            raise UserError(f"unknown anchor {name!r}; choose from {', '.join(ANCHORS)}")
        why = codec.missing()
        if why:
            notices.append(f"anchor {codec.label} skipped: {why}")
        else:
            chosen.append(codec)
    return chosen, notices


def parse_anchor_params(text: str | None) -> dict[str, tuple[int, ...]]:
    """``jpeg=10,40;hevc=37,32`` → {"jpeg": (10, 40), "hevc": (37, 32)}."""
    out: dict[str, tuple[int, ...]] = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        name, _, values = part.partition("=")
        try:
            out[name.strip()] = tuple(int(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise UserError(f"--anchor-params {part!r} does not parse; write e.g. 'jpeg=10,40;hevc=37,32'") from None
        if not out[name.strip()]:
            raise UserError(f"--anchor-params {part!r} gives no values; write e.g. 'jpeg=10,40'")
    from pipeline.evaluation.anchors import ANCHORS

    unknown = sorted(set(out) - set(ANCHORS))
    if unknown:
        raise UserError(f"--anchor-params names unknown codecs {unknown}; choose from {', '.join(ANCHORS)}")
    return out
