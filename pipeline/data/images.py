"""Image files in and out: RGB in [0,1] as ``[1,3,H,W]`` tensors, PNG written atomically."""

from __future__ import annotations

from pathlib import Path

from pipeline.infra.atomic import atomic_write_bytes
from pipeline.infra.errors import UserError


def load_image(path: Path):  # -> torch.Tensor [1,3,H,W] in [0,1]
    """Read an image file as RGB in [0,1]; a clear error for a missing or unreadable file."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import to_tensor

    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return to_tensor(im.convert("RGB")).unsqueeze(0)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UserError(f"cannot read {path} as an image ({exc}); pass a PNG or JPEG file") from None


def save_png(x, path: Path) -> None:  # x: torch.Tensor [1,3,H,W] in [0,1]
    import io

    from torchvision.transforms.functional import to_pil_image

    buf = io.BytesIO()
    to_pil_image(x[0].clamp(0, 1)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
