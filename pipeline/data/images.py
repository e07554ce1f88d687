"""Image files in and out: 8-bit RGB, as ``[1,3,H,W]`` tensors in [0,1], PNG written atomically.

Every reader of image files in dvcm (the codec commands, prepare, evaluate) converts through
:func:`to_rgb8`, so that no mode is silently wrong:

- 16-bit greyscale (``I;16*``, and ``I`` from a 16-bit PNG) is scaled to 8 bits (x·255/65535,
  rounded), not clipped (Pillow's ``convert("RGB")`` clips it to white);
- 16-bit RGB PNGs are read by Pillow as 8-bit RGB (their high bytes): already scaled;
- palette images expand through their palette; greyscale repeats into three channels;
- alpha (``RGBA``, ``LA``, ``PA``, palette transparency) is dropped: the colour channels are coded
  as they are, and :func:`load_image` says so;
- CMYK and YCbCr are converted by Pillow;
- 32-bit integer and floating-point images are refused with the reason.

Sizes are checked from the header, before any pixel is decoded: above ``max_pixels``
(``--max-pixels``) an image is refused in one line, as are Pillow's decompression bombs; the
codec commands also check the memory that coding the declared size needs (:mod:`dvcm.limits`)
before they read a pixel (:func:`image_size`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.infra.atomic import atomic_write_bytes
from pipeline.infra.errors import UserError

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


class UnsupportedImage(UserError):
    """An image mode dvcm cannot map to 8-bit RGB without losing what the image means."""


def _is_16bit_png(im: Any) -> bool:
    return getattr(im, "format", None) == "PNG" and im.mode == "I" and (im.info.get("bits") == 16 or _max_of(im) > 255)


def _max_of(im: Any) -> int:
    lo, hi = im.getextrema()
    return int(hi)


def to_rgb8(im: Any, name: str = "image") -> tuple[Any, list[str]]:
    """``im`` (a PIL image) as 8-bit RGB, and notes on what was dropped (alpha); see the module doc."""
    from PIL import Image

    notes: list[str] = []
    mode = im.mode
    if mode in SIXTEEN_BIT_MODES or _is_16bit_png(im):
        arr = np.asarray(im, dtype=np.float64)
        grey = np.clip(np.rint(arr * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB"), notes
    if mode in ("I", "F"):
        kind = "32-bit integer" if mode == "I" else "floating-point"
        raise UnsupportedImage(
            f"{name} is a {kind} image (mode {mode}), which has no defined 8-bit mapping; "
            "convert it to an 8- or 16-bit PNG first"
        )
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        notes.append(f"{name} has an alpha channel; it is ignored (the colour channels are coded as they are)")
    if mode == "P":
        im = im.convert("RGBA")
    return (im if im.mode == "RGB" else im.convert("RGB")), notes


def open_checked(path: Path, max_pixels: int | None = None) -> Any:
    """Open an image file lazily (header only), refusing what is missing, unreadable or too large."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise UserError(f"image not found: {path}")
    if not path.is_file():
        raise UserError(f"{path} is not a file; pass an image file (PNG, JPEG, ...)")
    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; below its refusal, dvcm's own
    # limits decide (max_pixels, or the memory that coding needs), and --max-pixels may raise Pillow's.
    raise_limit = bool(max_pixels and Image.MAX_IMAGE_PIXELS and max_pixels > Image.MAX_IMAGE_PIXELS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if not raise_limit:
                im = Image.open(path)
            else:  # the user's --max-pixels is above Pillow's: let Pillow open what the user allows
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
                try:
                    im = Image.open(path)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
    except Image.DecompressionBombError as exc:
        raise UserError(
            f"{path} declares more pixels than Pillow opens safely ({_first(exc)}); downscale it, or split it "
            "into tiles and code each (dvcm has no tiled coding)"
        ) from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UserError(f"cannot read {path} as an image ({_first(exc)}); pass a PNG or JPEG file") from None
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        im.close()
        raise UserError(
            f"{path} is {w}x{h} = {w * h:,} pixels, more than the limit of {max_pixels:,} (--max-pixels); "
            "downscale it or split it into tiles, or raise --max-pixels if this machine has the memory"
        )
    return im


def image_size(path: Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(height, width) from the file's header alone; bombs and unreadable files refused in one line."""
    im = open_checked(Path(path), max_pixels)
    w, h = im.size
    im.close()
    return h, w


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


def read_rgb8(path: Path, max_pixels: int | None = None) -> tuple[Any, list[str]]:
    """The image file as an 8-bit RGB PIL image, and notes (see :func:`to_rgb8`); one-line errors."""
    im = open_checked(path, max_pixels)
    try:
        with im:
            im.load()
            return to_rgb8(im, path.name)
    except UserError:
        raise
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot decode {path} ({_first(exc)}); the file is damaged or not an image") from None


def load_image(path: Path, max_pixels: int | None = None):  # -> torch.Tensor [1,3,H,W] in [0,1]
    """Read an image file as RGB in [0,1]; one-line errors, and a warning when alpha is dropped."""
    from torchvision.transforms.functional import to_tensor

    rgb, notes = read_rgb8(Path(path), max_pixels)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return to_tensor(rgb).unsqueeze(0)


def save_png(x, path: Path) -> None:  # x: torch.Tensor [1,3,H,W] in [0,1]
    """Write x̂ as an 8-bit RGB PNG, atomically."""
    import io

    from torchvision.transforms.functional import to_pil_image

    buf = io.BytesIO()
    to_pil_image(x[0].clamp(0, 1)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
