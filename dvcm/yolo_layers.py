"""YOLOv3's architecture as data: darknet's ``yolov3.cfg`` as a list of layer specs, its anchors and heads.

Read by :mod:`dvcm.yolo` (the network and its weights) and by :mod:`dvcm.darknet_cfg` (``.cfg`` files), which
import this module and not each other's.
"""

from __future__ import annotations

from dataclasses import dataclass

SPLIT_LAYER = 12
"""Last layer of the front: the 3x3 stride-2 conv with 256 filters (output stride 8)."""

ANCHORS: tuple[tuple[int, int], ...] = (
    (10, 13),
    (16, 30),
    (33, 23),
    (30, 61),
    (62, 45),
    (59, 119),
    (116, 90),
    (156, 198),
    (373, 326),
)
HEAD_MASKS: tuple[tuple[int, int, int], ...] = ((6, 7, 8), (3, 4, 5), (0, 1, 2))
"""Anchor indexes of the yolo layers 82, 94, 106 (the order ``back`` returns the heads in)."""
HEAD_STRIDES: tuple[int, ...] = (32, 16, 8)

# COCO category ids of the 80 YOLO classes: 1-11, 13-25, 27, 28, 31-44, 46-65, 67, 70, 72-82, 84-90.
COCO80_TO_COCO91: list[int] = [
    *range(1, 12),
    *range(13, 26),
    27,
    28,
    *range(31, 45),
    *range(46, 66),
    67,
    70,
    *range(72, 83),
    *range(84, 91),
]


# ---------------------------------------------------------------------------------------------
# Architecture: yolov3.cfg as a list of layer specs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvSpec:
    """``[convolutional]``: BN + leaky 0.1 when ``bn``, else a linear conv with bias."""

    filters: int
    size: int
    stride: int = 1
    bn: bool = True


@dataclass(frozen=True)
class ShortcutSpec:
    """``[shortcut] from=-3`` with the source as an absolute layer index (linear activation)."""

    source: int


@dataclass(frozen=True)
class RouteSpec:
    """``[route]``: channel concat of absolute layer indexes, in the listed order."""

    sources: tuple[int, ...]


@dataclass(frozen=True)
class UpsampleSpec:
    """``[upsample] stride=2``, resized to the size of layer ``match`` (the route partner)."""

    match: int


@dataclass(frozen=True)
class YoloSpec:
    """``[yolo]``: marks the previous output as a detection head (decoding is post-processing)."""

    mask: tuple[int, int, int]


LayerSpec = ConvSpec | ShortcutSpec | RouteSpec | UpsampleSpec | YoloSpec


def yolov3_layers(num_classes: int = 80, width: float = 1.0) -> tuple[LayerSpec, ...]:
    """The 107 layers (0..106) of darknet's ``yolov3.cfg``, with absolute layer references.

    ``width`` multiplies the filters of every layer but the three detection convs (which keep
    3·(5 + classes)), as the narrow members of the family do: the graph, its routes and its split
    after layer 12 stay the same, and s has 256·width channels."""
    layers: list[LayerSpec] = []
    if not (width > 0 and round(32 * width) >= 1):
        raise ValueError(f"width {width} leaves the first layer without filters")

    def conv(filters: int, size: int, stride: int = 1) -> None:
        layers.append(ConvSpec(max(1, round(filters * width)), size, stride))

    def residual(blocks: int, channels: int) -> None:
        for _ in range(blocks):
            conv(channels // 2, 1)
            conv(channels, 3)
            layers.append(ShortcutSpec(len(layers) - 3))

    head = 3 * (5 + num_classes)
    # Darknet-53 backbone: layers 0..74 (stage outputs at 36 = stride 8, 61 = stride 16).
    conv(32, 3)
    conv(64, 3, 2)
    residual(1, 64)
    conv(128, 3, 2)
    residual(2, 128)
    conv(256, 3, 2)  # layer 12: the split point
    residual(8, 256)
    conv(512, 3, 2)
    residual(8, 512)
    conv(1024, 3, 2)
    residual(4, 1024)
    # Three heads: 75..82 (stride 32), 83..94 (stride 16), 95..106 (stride 8).
    for channels, mask, skip in ((512, HEAD_MASKS[0], None), (256, HEAD_MASKS[1], 61), (128, HEAD_MASKS[2], 36)):
        if skip is not None:
            layers.append(RouteSpec((len(layers) - 4,)))  # back to the last 1x1 conv before the head
            conv(channels, 1)
            layers.append(UpsampleSpec(match=skip))
            layers.append(RouteSpec((len(layers) - 1, skip)))
        for _ in range(3):
            conv(channels, 1)
            conv(channels * 2, 3)
        layers.append(ConvSpec(head, 1, 1, bn=False))
        layers.append(YoloSpec(mask))
    return tuple(layers)
