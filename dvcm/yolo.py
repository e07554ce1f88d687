"""YOLOv3 exactly as darknet's ``yolov3.cfg``, split at layer 12, with Darknet ``.weights`` IO.

Layers are numbered 0..106 as darknet numbers them (0-based)::

    x [B,3,H,W] RGB in [0,1]
      │  front = layers 0-12 (Darknet-53 up to the 3x3/2 conv with 256 filters, BN, leaky 0.1)
      ▼
    s [B,256,ceil(H/8),ceil(W/8)]
      │  back = layers 13-106 (rest of Darknet-53, three heads; routes to 36 and 61 are
      │         computed inside back from s; the shortcut of layer 15 adds s itself)
      ▼
    [head_82 (stride 32), head_94 (stride 16), head_106 (stride 8)]   raw conv outputs, 3*(5+C) channels

Any input size works: every conv uses darknet's ``pad = size // 2`` so a stride-2 conv maps n
to ceil(n/2), and each x2 upsample is resized to the exact size of the layer it is routed with
(nearest neighbour), which for sizes that are multiples of 32 is darknet's own upsample.

``.weights`` layout (darknet ``load_weights``/``load_convolutional_weights``): int32 major,
minor, revision; ``seen`` as int64 when ``major*10+minor >= 2`` (and both < 1000) else int32;
then for each convolutional layer in cfg order: biases (BN beta, or the conv bias for the three
detection convs that have no BN), then, with BN, scales (gamma), rolling mean, rolling
variance; then the weights in OIHW order. All little-endian float32.
"""

from __future__ import annotations

import hashlib
import math
import struct
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from dvcm.errors import DarknetWeightsError
from dvcm.fileio import atomic_open, file_sha256
from dvcm.yolo_layers import (
    ANCHORS,
    COCO80_TO_COCO91,
    HEAD_MASKS,
    HEAD_STRIDES,
    SPLIT_LAYER,
    ConvSpec,
    LayerSpec,
    RouteSpec,
    ShortcutSpec,
    UpsampleSpec,
    yolov3_layers,
)

__all__ = [
    "ANCHORS",
    "COCO80_TO_COCO91",
    "HEAD_MASKS",
    "HEAD_STRIDES",
    "SPLIT_LAYER",
    "DarknetConv",
    "DarknetHeader",
    "FrozenModule",
    "YOLOv3",
    "YoloBack",
    "YoloFront",
    "build_yolov3",
    "darknet_bytes",
    "darknet_float_count",
    "decode_detections",
    "detections_to_coco",
    "freeze",
    "load_darknet_weights",
    "save_darknet_weights",
    "seed_weights",
    "yolov3_layers",
]

_HEADER_INT64_SEEN = struct.Struct("<iiiq")
_HEADER_INT32_SEEN = struct.Struct("<iiii")
_MAX_CANDIDATES = 30_000  # boxes handed to NMS per image, highest scores first


class DarknetConv(nn.Module):
    """Darknet ``[convolutional]``: Conv2d(bias=False)+BN+LeakyReLU(0.1), or a biased linear conv."""

    def __init__(self, index: int, in_channels: int, spec: ConvSpec) -> None:
        super().__init__()
        self.index = index
        self.conv = nn.Conv2d(
            in_channels, spec.filters, spec.size, spec.stride, padding=spec.size // 2, bias=not spec.bn
        )
        self.bn = nn.BatchNorm2d(spec.filters) if spec.bn else None
        self.act = nn.LeakyReLU(0.1) if spec.bn else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.act(self.bn(x))
        return x

    def darknet_tensors(self) -> list[Tensor]:
        """Tensors in darknet's file order: biases, [scales, rolling mean, rolling var], weights."""
        if self.bn is None:
            return [self.conv.bias, self.conv.weight]
        return [self.bn.bias, self.bn.weight, self.bn.running_mean, self.bn.running_var, self.conv.weight]


class _DarknetSegment(nn.Module):
    """Layers ``start..end`` (inclusive) of a darknet network, run on the output of layer ``start-1``."""

    def __init__(self, specs: Sequence[LayerSpec], start: int, end: int, in_channels: int) -> None:
        super().__init__()
        self.start, self.end = start, end
        self.specs = tuple(specs[start : end + 1])
        channels: dict[int, int] = {start - 1: in_channels}
        self.convs = nn.ModuleDict()
        needed: set[int] = set()
        for i, spec in enumerate(self.specs, start=start):
            prev = channels[i - 1]
            if isinstance(spec, ConvSpec):
                self.convs[str(i)] = DarknetConv(i, prev, spec)
                channels[i] = spec.filters
            elif isinstance(spec, RouteSpec):
                needed.update(spec.sources)
                channels[i] = sum(channels[j] for j in spec.sources)
            elif isinstance(spec, ShortcutSpec):
                needed.add(spec.source)
                channels[i] = prev
            elif isinstance(spec, UpsampleSpec):
                needed.add(spec.match)
                channels[i] = prev
            else:
                channels[i] = prev
        missing = sorted(j for j in needed if j < start - 1)
        if missing:
            raise ValueError(f"layers {start}..{end} need outputs of earlier layers {missing}")
        self._needed = frozenset(needed)
        self.out_channels = channels[end]

    def _run(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        cache: dict[int, Tensor] = {self.start - 1: x}
        heads: list[Tensor] = []
        for i, spec in enumerate(self.specs, start=self.start):
            if isinstance(spec, ConvSpec):
                x = self.convs[str(i)](x)
            elif isinstance(spec, ShortcutSpec):
                x = x + cache[spec.source]
            elif isinstance(spec, RouteSpec):
                parts = [cache[j] for j in spec.sources]
                x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            elif isinstance(spec, UpsampleSpec):
                x = F.interpolate(x, size=cache[spec.match].shape[-2:], mode="nearest")
            else:
                heads.append(x)
            if i in self._needed:
                cache[i] = x
        return x, heads


class YoloFront(_DarknetSegment):
    """Layers 0..12: x [B,3,H,W] RGB in [0,1] -> s [B,256,ceil(H/8),ceil(W/8)]."""

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x)[0]


class YoloBack(_DarknetSegment):
    """Layers 13..106: s -> the three raw heads [B,3*(5+C),h,w] at strides 32, 16, 8."""

    def forward(self, s: Tensor) -> list[Tensor]:
        return self._run(s)[1]


class YOLOv3(nn.Module):
    """YOLOv3 as ``back(front(x))``; ``provenance`` says where its weights come from."""

    cfg_name = "yolov3.cfg"  # the network's cfg, named in errors

    def __init__(
        self,
        num_classes: int = 80,
        layers: Sequence[LayerSpec] | None = None,
        anchors: Sequence[tuple[int, int]] = ANCHORS,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        if len(anchors) != 9:
            raise ValueError(f"YOLOv3 has 9 anchors (3 per head), got {len(anchors)}")
        self.anchors: tuple[tuple[int, int], ...] = tuple((int(w), int(h)) for w, h in anchors)
        specs = tuple(layers) if layers is not None else yolov3_layers(num_classes)
        self.specs = specs
        self.front = YoloFront(specs, 0, SPLIT_LAYER, in_channels=3)
        self.back = YoloBack(specs, SPLIT_LAYER + 1, len(specs) - 1, in_channels=self.front.out_channels)
        self.provenance: dict[str, object] = {}

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.back(self.front(x))

    def darknet_convs(self) -> list[DarknetConv]:
        """Convolutional layers in cfg order (the order of the ``.weights`` file)."""
        return sorted((m for m in self.modules() if isinstance(m, DarknetConv)), key=lambda m: m.index)


# ---------------------------------------------------------------------------------------------
# Freezing
# ---------------------------------------------------------------------------------------------


class FrozenModule(nn.Module):
    """A module whose parameters never train and which stays in eval mode.

    ``parent.train()`` does not switch it back to training (BN keeps its running statistics),
    its parameters have ``requires_grad=False`` and its forward runs under ``torch.no_grad()``:
    its output is a constant input for whatever trains after it. The wrapped module is
    ``.module`` (state-dict keys gain the ``module.`` prefix).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        module.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenModule:  # noqa: ARG002 - mode is ignored on purpose
        return super().train(False)

    def forward(self, *args: object, **kwargs: object) -> object:
        with torch.no_grad():
            return self.module(*args, **kwargs)


def freeze(module: nn.Module) -> FrozenModule:
    """Freeze ``module`` (e.g. ``yolo.front`` inside a codec): no grads, eval mode for good."""
    return module if isinstance(module, FrozenModule) else FrozenModule(module)


# ---------------------------------------------------------------------------------------------
# Weights: seeded init and Darknet .weights IO
# ---------------------------------------------------------------------------------------------


class DarknetHeader(NamedTuple):
    """The header of a ``.weights`` file."""

    major: int
    minor: int
    revision: int
    seen: int

    @property
    def seen_is_int64(self) -> bool:
        return _seen_is_int64(self.major, self.minor)

    @property
    def nbytes(self) -> int:
        return 20 if self.seen_is_int64 else 16


def _seen_is_int64(major: int, minor: int) -> bool:
    return major * 10 + minor >= 2 and major < 1000 and minor < 1000


def _check_version(version: Sequence[int], where: str) -> None:
    if len(version) != 3 or any(not 0 <= int(v) < 1000 for v in version):
        raise DarknetWeightsError(
            f"{where}: darknet version {tuple(version)} is not a valid header (major, minor, revision must each "
            "be 0..999); this is not a darknet .weights file — use yolov3.weights for yolov3.cfg"
        )


@torch.no_grad()
def seed_weights(model: YOLOv3, seed: int) -> YOLOv3:
    """Re-initialise ``model`` deterministically from ``seed`` (same values in any process).

    Darknet-like init drawn from one ``torch.Generator``, layer by layer in cfg order: conv
    weights (and the detection convs' biases) ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's
    default conv init); BN at identity (gamma 1, beta 0, running mean 0, running var 1).
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    for layer in model.darknet_convs():
        weight = layer.conv.weight
        bound = 1.0 / math.sqrt(weight[0].numel())
        weight.uniform_(-bound, bound, generator=gen)
        if layer.conv.bias is not None:
            layer.conv.bias.uniform_(-bound, bound, generator=gen)
        if layer.bn is not None:
            layer.bn.reset_parameters()  # gamma 1, beta 0, mean 0, var 1, num_batches_tracked 0
    return model


def darknet_float_count(model: YOLOv3) -> int:
    """Number of float32 values after the header of the model's ``.weights`` file."""
    return sum(t.numel() for layer in model.darknet_convs() for t in layer.darknet_tensors())


def _header_bytes(version: Sequence[int], seen: int) -> bytes:
    _check_version(version, "writing .weights")
    major, minor, revision = (int(v) for v in version)
    if _seen_is_int64(major, minor):
        if not 0 <= seen < 2**63:
            raise DarknetWeightsError(f"seen={seen} does not fit the int64 header field; pass 0 <= seen < 2**63")
        return _HEADER_INT64_SEEN.pack(major, minor, revision, seen)
    if not 0 <= seen < 2**31:
        raise DarknetWeightsError(f"seen={seen} does not fit the int32 header of version {major}.{minor}")
    return _HEADER_INT32_SEEN.pack(major, minor, revision, seen)


def _darknet_chunks(model: YOLOv3, version: Sequence[int], seen: int) -> Iterator[bytes]:
    yield _header_bytes(version, seen)
    for layer in model.darknet_convs():
        for tensor in layer.darknet_tensors():
            yield tensor.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()


def darknet_bytes(model: YOLOv3, version: tuple[int, int, int] = (0, 2, 0), seen: int = 0) -> bytes:
    """The model as the bytes of a Darknet ``.weights`` file."""
    return b"".join(_darknet_chunks(model, version, seen))


def _darknet_sha256(model: YOLOv3, version: tuple[int, int, int] = (0, 2, 0), seen: int = 0) -> str:
    digest = hashlib.sha256()
    for chunk in _darknet_chunks(model, version, seen):
        digest.update(chunk)
    return digest.hexdigest()


def save_darknet_weights(
    model: YOLOv3, path: str | Path, version: tuple[int, int, int] = (0, 2, 0), seen: int = 0
) -> Path:
    """Write ``model`` as a Darknet ``.weights`` file, atomically (temp file, then rename)."""
    path = Path(path)
    with atomic_open(path) as f:
        for chunk in _darknet_chunks(model, version, seen):
            f.write(chunk)
    return path


def _read_header(f: BinaryIO, path: Path, size: int) -> DarknetHeader:
    head = f.read(12)
    if len(head) < 12:
        raise DarknetWeightsError(
            f"{path}: {size} bytes is shorter than a darknet header (16 or 20 bytes); "
            "the file is not a .weights file or was cut off — download it again"
        )
    major, minor, revision = struct.unpack("<iii", head)
    _check_version((major, minor, revision), str(path))
    wide = _seen_is_int64(major, minor)
    raw = f.read(8 if wide else 4)
    if len(raw) < (8 if wide else 4):
        raise DarknetWeightsError(
            f"{path}: {size} bytes is shorter than the {20 if wide else 16}-byte header of darknet version "
            f"{major}.{minor}.{revision}; the file was cut off — download it again"
        )
    seen = struct.unpack("<q" if wide else "<i", raw)[0]
    return DarknetHeader(major, minor, revision, seen)


@torch.no_grad()
def load_darknet_weights(model: YOLOv3, path: str | Path) -> DarknetHeader:
    """Read a Darknet ``.weights`` file into ``model`` (in place); returns the file's header.

    The size is checked against the network before anything large is read, so a wrong or
    bogus file costs no memory. Raises ``DarknetWeightsError`` naming both float counts.
    """
    path = Path(path)
    if not path.is_file():
        raise DarknetWeightsError(f"YOLOv3 weights file {path} does not exist; pass the path to yolov3.weights")
    expected = darknet_float_count(model)
    size = path.stat().st_size
    with path.open("rb") as f:
        header = _read_header(f, path, size)
        payload = size - header.nbytes
        found, stray = divmod(payload, 4)
        if found != expected or stray:
            extra = f" plus {stray} stray bytes" if stray else ""
            raise DarknetWeightsError(
                f"{path}: the network ({model.cfg_name}, {model.num_classes} classes) "
                f"expects {expected:,} floats, "
                f"the file holds {found:,} floats{extra} after its {header.nbytes}-byte header "
                f"(version {header.major}.{header.minor}.{header.revision}); it is truncated, has extra data or is "
                f"for another network — use the weights that match {model.cfg_name}"
            )
        data = np.fromfile(f, dtype="<f4", count=expected)
    if data.size != expected:  # the file changed under us
        raise DarknetWeightsError(f"{path}: expected {expected:,} floats, read {data.size:,}; read it again")
    values = torch.from_numpy(data.astype(np.float32, copy=False))
    offset = 0
    for layer in model.darknet_convs():
        for tensor in layer.darknet_tensors():
            n = tensor.numel()
            tensor.copy_(values[offset : offset + n].view_as(tensor))
            offset += n
    for layer in model.darknet_convs():
        if layer.bn is not None:
            layer.bn.num_batches_tracked.zero_()  # not in the file; may be uninitialised memory
    return header


def _network_from_cfg(cfg: str | Path) -> tuple[tuple[LayerSpec, ...], int, tuple[tuple[int, int], ...], str]:
    """The layers, classes and anchors of a YOLOv3-family ``.cfg``, and the file's sha256; the split after
    layer 12 must be the stride-8 conv whose output the back reads alone."""
    from dvcm.darknet_cfg import read_cfg
    from dvcm.errors import DarknetCfgError

    parsed = read_cfg(cfg)
    layers = parsed.layers
    split = layers[SPLIT_LAYER] if len(layers) > SPLIT_LAYER else None
    if not isinstance(split, ConvSpec) or split.stride != 2:
        raise DarknetCfgError(f"{cfg}: layer {SPLIT_LAYER} must be the stride-2 conv after which dvcm splits YOLOv3")
    try:
        with torch.device("meta"):  # the graph's check, without allocating its weights
            YOLOv3(parsed.num_classes, layers, parsed.anchors)
    except ValueError as exc:  # the back reads outputs of the front other than layer 12
        raise DarknetCfgError(f"{cfg}: {exc}; dvcm splits the network after layer {SPLIT_LAYER}") from None
    return layers, parsed.num_classes, parsed.anchors, file_sha256(Path(cfg))


def build_yolov3(
    weights: str | Path | None = None, seed: int = 0, num_classes: int = 80, cfg: str | Path | None = None
) -> YOLOv3:
    """YOLOv3 in eval mode: from a Darknet ``.weights`` file, or from ``seed`` when ``weights`` is None.

    ``cfg`` (a Darknet ``.cfg`` of the YOLOv3 family, :mod:`dvcm.darknet_cfg`) gives the network,
    classes included; without it the network is standard YOLOv3 with ``num_classes``. Weights that
    do not fit the network are refused, naming both float counts.

    A seeded model warns that its detections are meaningless. ``model.provenance`` holds
    ``weights`` (the path, or ``"seeded-random:<seed>"``), ``weights_sha256`` (of the file, or of
    ``darknet_bytes(model)`` for a seeded model, so saving it with the default header gives a file
    with the same digest), ``split_layer`` (12) and ``random_weights``.
    """
    layers, anchors, cfg_sha256 = None, ANCHORS, None
    if cfg is not None:
        layers, num_classes, anchors, cfg_sha256 = _network_from_cfg(cfg)
    with torch.device("meta"):
        model = YOLOv3(num_classes, layers, anchors)
    model.to_empty(device="cpu")
    if cfg is not None:
        model.cfg_name = Path(cfg).name
    if weights is None:
        seed_weights(model, seed)
        warnings.warn(
            f"YOLOv3 uses seeded random weights (seed {seed}): detections are meaningless; pass --yolo-weights",
            UserWarning,
            stacklevel=2,
        )
        source, digest = f"seeded-random:{seed}", _darknet_sha256(model)
    else:
        path = Path(weights)
        load_darknet_weights(model, path)  # sets every float; ``seed`` is unused
        source, digest = str(path), file_sha256(path)
    model.provenance = {
        "weights": source,
        "weights_sha256": digest,
        "split_layer": SPLIT_LAYER,
        "random_weights": weights is None,
        "feature_channels": model.front.out_channels,
        **({"cfg": str(cfg), "cfg_sha256": cfg_sha256} if cfg is not None else {}),
    }
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Post-processing
# ---------------------------------------------------------------------------------------------


def _decode_heads(
    heads: Sequence[Tensor], input_hw: tuple[int, int], anchor_sizes: Sequence[tuple[int, int]] = ANCHORS
) -> tuple[Tensor, Tensor, Tensor]:
    """All anchors of all heads: boxes xyxy [B,N,4] (input pixels), objectness [B,N], class probs [B,N,C]."""
    if len(heads) != len(HEAD_STRIDES):
        raise ValueError(f"expected {len(HEAD_STRIDES)} heads (strides 32, 16, 8), got {len(heads)}")
    height, width = input_hw
    boxes, objs, clss = [], [], []
    for head, stride, mask in zip(heads, HEAD_STRIDES, HEAD_MASKS):
        b, c, h, w = head.shape
        if (h, w) != (math.ceil(height / stride), math.ceil(width / stride)) or c % 3:
            raise ValueError(f"head of shape {tuple(head.shape)} does not match stride {stride} of a {input_hw} input")
        t = head.float().view(b, 3, c // 3, h, w).permute(0, 1, 3, 4, 2)  # [B,3,h,w,5+C]
        gy, gx = torch.meshgrid(torch.arange(h, device=head.device), torch.arange(w, device=head.device), indexing="ij")
        anchors = torch.tensor([anchor_sizes[m] for m in mask], dtype=torch.float32, device=head.device).view(
            1, 3, 1, 1, 2
        )
        cx = (gx + torch.sigmoid(t[..., 0])) * stride
        cy = (gy + torch.sigmoid(t[..., 1])) * stride
        wh = torch.exp(t[..., 2:4]) * anchors
        xyxy = torch.stack((cx - wh[..., 0] / 2, cy - wh[..., 1] / 2, cx + wh[..., 0] / 2, cy + wh[..., 1] / 2), dim=-1)
        boxes.append(xyxy.reshape(b, -1, 4))
        objs.append(torch.sigmoid(t[..., 4]).reshape(b, -1))
        clss.append(torch.sigmoid(t[..., 5:]).reshape(b, -1, c // 3 - 5))
    return torch.cat(boxes, 1), torch.cat(objs, 1), torch.cat(clss, 1)


@torch.no_grad()
def decode_detections(
    heads: Sequence[Tensor],
    input_hw: tuple[int, int],
    conf_thres: float = 0.001,
    nms_iou: float = 0.5,
    max_det: int = 300,
    anchors: Sequence[tuple[int, int]] = ANCHORS,
) -> list[dict[str, Tensor]]:
    """Detections per image from the three raw heads of ``YOLOv3.back`` (in its output order).

    Boxes: ``(grid + sigmoid(t_xy)) * stride`` and ``exp(t_wh) * anchor``, in input pixels,
    xyxy, clipped to the image. Scoring is multi-label like darknet: every (box, class) pair
    with objectness > ``conf_thres`` and objectness*class_prob > ``conf_thres`` is a candidate
    (at most 30,000 per image, highest first); then class-wise NMS (``batched_nms``) and the
    ``max_det`` best. ``anchors`` are the network's (``YOLOv3.anchors``; standard YOLOv3's by default).
    Returns per image ``boxes`` [K,4], ``scores`` [K], ``labels`` [K] (0..C-1).
    """
    height, width = input_hw
    boxes, obj, cls = _decode_heads(heads, input_hw, anchors)
    results: list[dict[str, Tensor]] = []
    for bxs, ob, cl in zip(boxes, obj, cls):
        scores = ob[:, None] * cl
        anchor_idx, labels = torch.nonzero((scores > conf_thres) & (ob[:, None] > conf_thres), as_tuple=True)
        cand_scores = scores[anchor_idx, labels]
        if cand_scores.numel() > _MAX_CANDIDATES:
            top = cand_scores.topk(_MAX_CANDIDATES).indices
            anchor_idx, labels, cand_scores = anchor_idx[top], labels[top], cand_scores[top]
        cand_boxes = bxs[anchor_idx].clone()
        cand_boxes[:, 0::2] = cand_boxes[:, 0::2].clamp(0, width)
        cand_boxes[:, 1::2] = cand_boxes[:, 1::2].clamp(0, height)
        keep = batched_nms(cand_boxes, cand_scores, labels, nms_iou)[:max_det]
        results.append({"boxes": cand_boxes[keep], "scores": cand_scores[keep], "labels": labels[keep]})
    return results


def detections_to_coco(
    det: dict[str, Tensor], image_id: int, scale_xy: tuple[float, float] = (1.0, 1.0)
) -> list[dict[str, object]]:
    """COCO result dicts (``bbox`` xywh in original pixels) for one image's detections.

    ``scale_xy = (original_width / input_width, original_height / input_height)`` maps the
    input pixels the boxes are in back to the original image; labels become COCO category ids.
    """
    sx, sy = scale_xy
    boxes = det["boxes"].detach().cpu().double()
    out: list[dict[str, object]] = []
    for (x1, y1, x2, y2), score, label in zip(
        boxes.tolist(), det["scores"].detach().cpu().tolist(), det["labels"].detach().cpu().tolist()
    ):
        out.append(
            {
                "image_id": int(image_id),
                "category_id": COCO80_TO_COCO91[int(label)],
                "bbox": [round(x1 * sx, 3), round(y1 * sy, 3), round((x2 - x1) * sx, 3), round((y2 - y1) * sy, 3)],
                "score": round(float(score), 6),
            }
        )
    return out
