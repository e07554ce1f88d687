"""How much memory coding an image takes, estimated from its size before anything is allocated.

A file declares its image size in 56 bytes, and an image file in a few more: what a decoder or an
encoder allocates follows from that size, not from the bytes that arrive. So both refuse, in one
line, a size whose estimate exceeds what this process can hold, before they allocate, as Pillow
refuses decompression bombs. ``max_pixels`` (the ``--max-pixels`` flag) replaces the default limit.

The estimate is linear in the padded pixels. Measured on CPU with one thread (peak resident memory
above the loaded model, ``/proc/self/status`` VmHWM), in bytes per pixel:

==========================  ======  ======
model, N                    encode  decode
==========================  ======  ======
proposed (16,32,2), N=16       401      63
proposed (64,192,2), N=64      401     281
proposed (64,192,2), N=192     677     638
choi2022 (128,64,1), N=192     619     644
==========================  ======  ======

The synthesis g_s2 holds a few N-channel tensors at half resolution (≈ 3.4·N bytes per pixel);
the encoder also runs V_front at full resolution (≈ 400 bytes per pixel whatever N). The model
below, ``4·N + 64`` (decode) and ``max(4·N + 64, 448) + 16`` (encode), is above every row. The
decoder adds the zero padding of its rANS strings (:func:`rans_padding`), up to 240 bytes per
latent symbol with its string, twice (the C++ coder takes a copy), while the entropy decoding runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dvcm.errors import BitstreamError

MEMORY_SHARE = 0.75  # of the memory available when coding starts
# the largest padded rANS string per symbol: the string (8 B), its padding (88 B + 18 B per string byte)
RANS_STRING_BYTES_PER_SYMBOL = 8 + 88 + 18 * 8


def padded_pixels(hw: tuple[int, int], multiple: int = 64) -> int:
    h, w = (-(-int(v) // multiple) * multiple for v in hw)
    return h * w


def latent_symbols(padded: int, N: int, M1: int, M2: int) -> int:
    """rANS symbols of one image: ŷ1, ŷ2 at 1/16 of each side, and at most two ẑ of N channels at 1/64."""
    return padded * (M1 + M2) // 256 + 2 * padded * N // 4096


def decode_bytes(hw: tuple[int, int], N: int, M1: int, M2: int) -> int:
    """Estimated peak bytes to decode an image of ``hw`` (both layers)."""
    padded = padded_pixels(hw)
    synthesis = (4 * N + 64) * padded
    entropy = 2 * RANS_STRING_BYTES_PER_SYMBOL * latent_symbols(padded, N, M1, M2)  # padded string + its C++ copy
    return max(synthesis, entropy)


def decode_base_bytes(hw: tuple[int, int], N: int, M1: int) -> int:
    """Estimated peak bytes to decode the base layer alone (ŷ1, then g_s1 at 1/16 and 1/8 of each side)."""
    padded = padded_pixels(hw)
    synthesis = (N // 4 + 32) * padded
    entropy = 2 * RANS_STRING_BYTES_PER_SYMBOL * (padded * M1 // 256 + padded * N // 4096)
    return max(synthesis, entropy)


def detect_bytes(hw: tuple[int, int]) -> int:
    """Estimated peak bytes of YOLOv3's back (layers 13-106) on the ŝ of an image of ``hw``: measured
    314-336 bytes per image pixel (512² and 1024², 2 threads); 384 is the model."""
    return 384 * padded_pixels(hw)


def encode_bytes(hw: tuple[int, int], N: int) -> int:
    """Estimated peak bytes to encode an image of ``hw`` (V_front, then the analysis transforms)."""
    return (max(4 * N + 64, 448) + 16) * padded_pixels(hw)


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_kb(field: str, path: str = "/proc/meminfo") -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory() -> int:
    """Bytes this process can still allocate: the least of the machine's available memory, the cgroup's
    room (containers, Kubernetes pods) and the address-space limit (``ulimit -v``)."""
    candidates: list[int] = []
    kb = _meminfo_kb("MemAvailable")
    if kb is not None:
        candidates.append(kb * 1024)
    else:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    for limit_file, used_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",  # cgroup v1
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        limit, used = _read_int(limit_file), _read_int(used_file)
        if limit is not None and used is not None and limit < 1 << 60:  # v1 writes a huge number for "no limit"
            candidates.append(max(limit - used, 0))
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            vm_kb = _meminfo_kb("VmSize", "/proc/self/status") or 0
            candidates.append(max(soft - vm_kb * 1024, 0))
    except (ImportError, OSError, ValueError):
        pass
    return min(candidates) if candidates else 1 << 62


def check_coding_size(hw: tuple[int, int], needed: int, what: str, max_pixels: int | None = None) -> None:
    """Refuse, in one line, an image whose coding needs more memory than this process has (or that is
    larger than ``max_pixels``, when given: the user's own limit)."""
    h, w = hw
    pixels = h * w
    if max_pixels is not None:
        if pixels > max_pixels:
            raise BitstreamError(
                f"{what} {h}x{w} = {pixels:,} pixels is more than --max-pixels {max_pixels:,}; "
                "downscale the image or split it into tiles (dvcm has no tiled coding)"
            )
        return
    room = int(available_memory() * MEMORY_SHARE)
    if needed > room:
        raise BitstreamError(
            f"{what} {h}x{w} would need about {needed / 2**30:.1f} GiB to code, more than the "
            f"{room / 2**30:.1f} GiB this process can use; downscale the image or split it into tiles "
            "(dvcm has no tiled coding), or pass --max-pixels to take the risk on a machine with the memory"
        )


# ---------------------------------------------------------------------------------------------
# rANS strings: no read past their end
# ---------------------------------------------------------------------------------------------
# CompressAI's RansDecoder.decode_with_indexes (cpp_exts/rans/rans_interface.cpp, ryg's rans64.h)
# reads the string through a bare uint32 pointer with no end check: 2 words to start, then at most
# one word per Rans64DecAdvance (one per symbol) and per Rans64DecGetBits (the bypass of values
# outside the table). A string that is too short for the symbols asked of it is read past its end.
#
# Padded with zero words, every read lands in the padding when the padding covers the worst case
# (the argument below was checked by an independent reading of the source, with a model of the
# read pointer; tests/test_hostile_files.py checks that bytes past the padding never change a decode):
# - 8 bytes of initial state;
# - per symbol inside the zero region, the Advance's word, and for a symbol decoded in bypass mode
#   at most 9 length nibbles of 15 (a state above 2^31 holds at most 8 nibbles before a refill
#   shifts in a zero word, whose nibbles are 0), so at most 15·9 = 135 value nibbles, read in at
#   most 18 words: 88 bytes per symbol covers it (72 are enough);
# - the bypass lengths that the string's own nibbles can declare, for the symbol that crosses the
#   string's end: at most 15 per nibble of the string and of the initial state, 4 bits each,
#   15·(2·L + 16)·4 bits, read in words of at least 28 fresh bits: 18·L + 320 bytes for L bytes
#   (measured: 15·L + 20 for a string of 0xff bytes). The decoder's int32 bypass count stays below
#   2^31 for L below 2^26, which the length limit below keeps for every image dvcm codes.
# The bound assumes valid tables (strictly increasing CDFs from 0 to 2^16, lengths within their
# rows): :func:`check_entropy_tables` checks them when a checkpoint is loaded.
#
# A real string needs at most about 7 bytes per symbol (16 bits of the table's precision, and for
# a value outside the table at most 9 nibbles of bypass), plus the coder's 8-byte final state: a
# longer one is refused, so that neither its padding nor its decoding time can be inflated.
RANS_PAD_PER_SYMBOL = 88
RANS_MAX_BYTES_PER_SYMBOL = 8


def rans_padding(length: int, symbols: int) -> int:
    """Zero bytes to append to an rANS string of ``length`` bytes decoded into ``symbols`` symbols so that
    CompressAI's decoder cannot read past the end (the bound above)."""
    return 8 + RANS_PAD_PER_SYMBOL * symbols + 18 * length + 320


def padded_rans_string(string: bytes, symbols: int, what: str = "rANS string") -> bytes:
    """``string`` followed by its :func:`rans_padding`; refuses strings that no encoder writes."""
    if len(string) > RANS_MAX_BYTES_PER_SYMBOL * symbols + 16:
        raise BitstreamError(
            f"{what} is {len(string):,} bytes for {symbols:,} symbols, more than an rANS coder "
            f"writes ({RANS_MAX_BYTES_PER_SYMBOL} bytes a symbol at most): the file is damaged or crafted"
        )
    if len(string) < 8 or len(string) % 4:
        raise BitstreamError(
            f"{what} is {len(string)} bytes; an rANS string is whole 32-bit words, at least two "
            "(the coder's final state): the file is damaged or crafted"
        )
    return string + bytes(rans_padding(len(string), symbols))


# CompressAI's rANS coder turns each symbol minus its table's offset into an int32 and codes what falls outside a
# table by shifting it until it is 0: a NaN, a huge latent or a huge offset makes that value negative, the shift never
# reaches 0, and encode_with_indexes never returns. Latents and offsets are kept well inside int32.
SYMBOL_LIMIT = 1 << 20


def check_latent(y: torch.Tensor, name: str) -> None:
    """Refuse, before rANS, a latent that would make the coder loop forever (NaN, infinite, or beyond ±2^20)."""
    if not bool(torch.isfinite(y).all()):
        raise BitstreamError(f"the codec's latent {name} is not finite: its checkpoint is damaged; use an intact one")
    if y.numel() and float(y.abs().max()) > SYMBOL_LIMIT:
        raise BitstreamError(
            f"the codec's latent {name} reaches {float(y.abs().max()):.3g}, beyond what rANS codes (±{SYMBOL_LIMIT}): "
            "its checkpoint is damaged or was not trained for such images"
        )


def check_entropy_tables(model: torch.nn.Module) -> None:
    """Refuse entropy tables that would let CompressAI's decoder read outside them or outside a string:
    each CDF must rise strictly from 0 to 2^16 within its row, and there must be a row for every index
    the model can ask for (a channel of an EntropyBottleneck, a scale of a GaussianConditional)."""
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional

    for name, module in model.named_modules():
        if not isinstance(module, (EntropyBottleneck, GaussianConditional)) or module._quantized_cdf.numel() == 0:
            continue
        cdf, lengths, offsets = module._quantized_cdf, module._cdf_length.reshape(-1), module._offset.reshape(-1)
        rows = cdf.shape[0] if cdf.dim() == 2 else 0
        wanted = module.quantiles.shape[0] if isinstance(module, EntropyBottleneck) else module.scale_table.numel()
        problem = ""
        if cdf.dim() != 2 or rows != wanted or lengths.numel() != rows or offsets.numel() != rows:
            problem = f"{rows} CDF rows, {lengths.numel()} lengths and {offsets.numel()} offsets for {wanted} entries"
        elif bool(((lengths < 2) | (lengths > cdf.shape[1])).any()):
            problem = "a CDF length outside its row"
        elif bool((offsets.abs() > SYMBOL_LIMIT).any()):
            problem = f"an offset beyond ±{SYMBOL_LIMIT} (the coder would loop forever)"
        else:
            col = torch.arange(cdf.shape[1]).expand_as(cdf)
            inside = col < lengths[:, None]
            last = cdf.gather(1, (lengths - 1).long()[:, None]).squeeze(1)
            steps = cdf[:, 1:] - cdf[:, :-1]
            rising = (steps > 0) | ~inside[:, 1:]
            if bool((cdf[:, 0] != 0).any()) or bool((last != 1 << 16).any()) or not bool(rising.all()):
                problem = "a CDF that does not rise strictly from 0 to 65536"
        if problem:
            raise BitstreamError(f"entropy table {name}: {problem}")
