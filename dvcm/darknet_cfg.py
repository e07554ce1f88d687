"""Darknet ``.cfg`` files of the YOLOv3 family: read one into :mod:`dvcm.yolo_layers` layer specs, write one back.

The sections of the family are ``[net]``, ``[convolutional]``, ``[shortcut]``, ``[route]``,
``[upsample]`` and ``[yolo]``, as darknet's ``parser.c`` reads them: relative layer references
(``from=-3``, ``layers=-1, 61``) count back from the section's own index, and indexes are 0-based
over every section after ``[net]``. What changes the network and dvcm does not build (another
activation, grouped or dilated convolutions, a shortcut with weights, another upsample stride,
another section) is refused, naming the file and the line. What only training reads (``[net]``
learning_rate, steps, …; ``[yolo]`` jitter, ignore_thresh, …) is read and kept, in its order.

:func:`yolov3_cfg` writes standard YOLOv3 with the sections, order and values of darknet's
published ``cfg/yolov3.cfg``; parsed back it gives exactly :func:`dvcm.yolo_layers.yolov3_layers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dvcm.errors import DarknetCfgError
from dvcm.yolo_layers import (
    ANCHORS,
    ConvSpec,
    LayerSpec,
    RouteSpec,
    ShortcutSpec,
    UpsampleSpec,
    YoloSpec,
    yolov3_layers,
)

# [net] of the published yolov3.cfg, in its order (training-time settings; dvcm keeps them).
YOLOV3_NET: tuple[tuple[str, str], ...] = (
    ("batch", "64"),
    ("subdivisions", "16"),
    ("width", "608"),
    ("height", "608"),
    ("channels", "3"),
    ("momentum", "0.9"),
    ("decay", "0.0005"),
    ("angle", "0"),
    ("saturation", "1.5"),
    ("exposure", "1.5"),
    ("hue", ".1"),
    ("learning_rate", "0.001"),
    ("burn_in", "1000"),
    ("max_batches", "500200"),
    ("policy", "steps"),
    ("steps", "400000,450000"),
    ("scales", ".1,.1"),
)
# [yolo] keys after mask/anchors/classes/num that only training reads, with the published values.
YOLOV3_YOLO_TRAINING: tuple[tuple[str, str], ...] = (
    ("jitter", ".3"),
    ("ignore_thresh", ".7"),
    ("truth_thresh", "1"),
    ("random", "1"),
)

_CONV_KEYS = {"batch_normalize", "filters", "size", "stride", "pad", "activation"}
_YOLO_NETWORK_KEYS = {"mask", "anchors", "classes", "num"}
_YOLO_TRAINING_KEYS = {
    "jitter",
    "ignore_thresh",
    "truth_thresh",
    "random",
    "iou_thresh",
    "iou_normalizer",
    "cls_normalizer",
    "iou_loss",
    "scale_x_y",
    "max_delta",
    "counters_per_class",
    "label_smooth_eps",
}


@dataclass
class DarknetCfg:
    """A parsed cfg: the layer specs, the classes and anchors of its ``[yolo]`` sections, and every
    setting that only training reads (``[net]``, and per ``[yolo]`` section)."""

    layers: tuple[LayerSpec, ...]
    num_classes: int
    anchors: tuple[tuple[int, int], ...]
    net: list[tuple[str, str]] = field(default_factory=list)
    yolo_training: list[list[tuple[str, str]]] = field(default_factory=list)


@dataclass
class _Section:
    kind: str
    line: int
    options: list[tuple[str, str, int]]  # key, value, line

    def line_of(self, key: str) -> int:
        """The line of ``key`` in the file (the section's own line when the key is absent)."""
        return next((n for k, _, n in self.options if k == key), self.line)

    def get(self, key: str, default: str | None = None) -> str | None:
        for k, v, _ in self.options:
            if k == key:
                return v
        return default


def _sections(text: str, where: str) -> list[_Section]:
    sections: list[_Section] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise DarknetCfgError(f"{where}:{number}: section header {line!r} has no closing ]")
            sections.append(_Section(line[1:-1].strip(), number, []))
        elif "=" in line:
            if not sections:
                raise DarknetCfgError(f"{where}:{number}: {line!r} comes before any [section]")
            key, value = (p.strip() for p in line.split("=", 1))
            sections[-1].options.append((key, value, number))
        else:
            raise DarknetCfgError(f"{where}:{number}: {line!r} is neither a [section] nor key=value")
    return sections


def _int(section: _Section, key: str, where: str, default: int | None = None) -> int:
    value = section.get(key)
    if value is None:
        if default is None:
            raise DarknetCfgError(f"{where}:{section.line}: [{section.kind}] needs {key}=")
        return default
    try:
        return int(value)
    except ValueError:
        line = next(n for k, _, n in section.options if k == key)
        raise DarknetCfgError(f"{where}:{line}: {key}={value} is not an integer") from None


def _ints(section: _Section, key: str, where: str) -> tuple[int, ...]:
    """A comma-separated list of integers (``mask = 6,7,8``, ``anchors = 10,13,  16,30``)."""
    try:
        return tuple(int(p) for p in (section.get(key) or "").replace(" ", "").split(",") if p)
    except ValueError:
        raise DarknetCfgError(
            f"{where}:{section.line_of(key)}: {key}={section.get(key)} is not a list of integers"
        ) from None


def _refuse_unknown(section: _Section, allowed: set[str], where: str) -> None:
    for key, value, line in section.options:
        if key not in allowed:
            raise DarknetCfgError(
                f"{where}:{line}: [{section.kind}] {key}={value} changes the network in a way "
                "dvcm does not build (the YOLOv3 family has no such setting)"
            )


def _ref(value: str, index: int, where: str, line: int) -> int:
    try:
        ref = int(value)
    except ValueError:
        raise DarknetCfgError(f"{where}:{line}: layer reference {value!r} is not an integer") from None
    absolute = index + ref if ref < 0 else ref
    if not 0 <= absolute < index:
        raise DarknetCfgError(
            f"{where}:{line}: layer {index} refers to layer {absolute}, which does not come before it"
        )
    return absolute


def _conv(section: _Section, where: str) -> ConvSpec:
    _refuse_unknown(section, _CONV_KEYS, where)
    bn = _int(section, "batch_normalize", where, 0) == 1
    activation = section.get("activation", "logistic")
    size = _int(section, "size", where, 1)
    if (bn, activation) not in ((True, "leaky"), (False, "linear")):
        raise DarknetCfgError(
            f"{where}:{section.line_of('activation')}: [convolutional] with batch_normalize={int(bn)} and "
            f"activation={activation}: dvcm builds BN+leaky or a linear conv with bias"
        )
    if _int(section, "pad", where, 0) != 1 or size % 2 == 0:
        raise DarknetCfgError(f"{where}:{section.line}: [convolutional] needs pad=1 and an odd size (got size={size})")
    return ConvSpec(_int(section, "filters", where), size, _int(section, "stride", where, 1), bn)


def _layer(section: _Section, index: int, where: str, layers: list[LayerSpec]) -> LayerSpec:
    kind = section.kind
    if kind == "convolutional":
        return _conv(section, where)
    if kind == "shortcut":
        _refuse_unknown(section, {"from", "activation"}, where)
        if section.get("activation", "linear") != "linear":
            raise DarknetCfgError(
                f"{where}:{section.line}: [shortcut] activation={section.get('activation')}: "
                "dvcm builds linear shortcuts"
            )
        return ShortcutSpec(_ref(section.get("from") or "", index, where, section.line_of("from")))
    if kind == "route":
        _refuse_unknown(section, {"layers"}, where)
        refs = [p for p in (section.get("layers") or "").split(",") if p.strip()]
        if not refs:
            raise DarknetCfgError(f"{where}:{section.line}: [route] needs layers=")
        return RouteSpec(tuple(_ref(p.strip(), index, where, section.line_of("layers")) for p in refs))
    if kind == "upsample":
        _refuse_unknown(section, {"stride"}, where)
        if _int(section, "stride", where, 2) != 2:
            raise DarknetCfgError(f"{where}:{section.line_of('stride')}: [upsample] stride other than 2 is not built")
        # the layer it is resized to match: the other input of the route that follows it
        return UpsampleSpec(match=-1)
    if kind == "yolo":
        _refuse_unknown(section, _YOLO_NETWORK_KEYS | _YOLO_TRAINING_KEYS, where)
        mask = _ints(section, "mask", where)
        anchors = _ints(section, "anchors", where)
        if len(mask) != 3:
            raise DarknetCfgError(f"{where}:{section.line_of('mask')}: [yolo] needs mask= with 3 anchor indexes")
        if not anchors or len(anchors) % 2:
            raise DarknetCfgError(f"{where}:{section.line_of('anchors')}: [yolo] anchors= needs width,height pairs")
        if _int(section, "num", where, len(anchors) // 2) != len(anchors) // 2:
            raise DarknetCfgError(
                f"{where}:{section.line_of('num')}: [yolo] num= must count the {len(anchors) // 2} anchors"
            )
        if not all(0 <= m < len(anchors) // 2 for m in mask):
            raise DarknetCfgError(
                f"{where}:{section.line_of('mask')}: [yolo] mask {mask} names anchors beyond the "
                f"{len(anchors) // 2} given"
            )
        return YoloSpec(mask)  # type: ignore[arg-type]
    raise DarknetCfgError(
        f"{where}:{section.line}: section [{kind}] is not in the YOLOv3 family "
        "(net, convolutional, shortcut, route, upsample, yolo)"
    )


def _match_upsamples(layers: list[LayerSpec], where: str) -> tuple[LayerSpec, ...]:
    """An upsample is resized to the other input of the route right after it (darknet's own layout)."""
    out = list(layers)
    for i, spec in enumerate(out):
        if isinstance(spec, UpsampleSpec) and spec.match == -1:
            nxt = out[i + 1] if i + 1 < len(out) else None
            partners = [j for j in nxt.sources if j != i] if isinstance(nxt, RouteSpec) and i in nxt.sources else []
            if len(partners) != 1:
                raise DarknetCfgError(
                    f"{where}: [upsample] layer {i} must be followed by a [route] of it and one "
                    "other layer (the size it is resized to)"
                )
            out[i] = UpsampleSpec(match=partners[0])
    return tuple(out)


def parse_cfg(text: str, where: str = "<cfg>") -> DarknetCfg:
    """Parse the text of a YOLOv3-family cfg; ``where`` names it in errors (``file:line``)."""
    sections = _sections(text, where)
    if not sections or sections[0].kind not in ("net", "network"):
        raise DarknetCfgError(f"{where}: a darknet cfg starts with [net]")
    net_section, body = sections[0], sections[1:]
    if _int(net_section, "channels", where, 3) != 3:
        raise DarknetCfgError(f"{where}:{net_section.line}: [net] channels must be 3 (RGB)")
    layers: list[LayerSpec] = []
    classes: set[int] = set()
    anchors: set[tuple[tuple[int, int], ...]] = set()
    yolo_training: list[list[tuple[str, str]]] = []
    for index, section in enumerate(body):
        layers.append(_layer(section, index, where, layers))
        if section.kind == "yolo":
            classes.add(_int(section, "classes", where, 80))
            values = _ints(section, "anchors", where)
            anchors.add(tuple(zip(values[0::2], values[1::2])))
            yolo_training.append([(k, v) for k, v, _ in section.options if k in _YOLO_TRAINING_KEYS])
    if len(classes) != 1 or len(anchors) != 1:
        raise DarknetCfgError(f"{where}: every [yolo] section must have the same classes and anchors")
    (num_classes,), (anchor_pairs,) = classes, anchors
    for i, spec in enumerate(layers):
        if isinstance(spec, YoloSpec):
            head = layers[i - 1] if i else None
            if not isinstance(head, ConvSpec) or head.filters != 3 * (5 + num_classes):
                raise DarknetCfgError(
                    f"{where}: the conv before [yolo] layer {i} needs filters={3 * (5 + num_classes)} "
                    f"(3 anchors x (5 + {num_classes} classes))"
                )
    net = [(k, v) for k, v, _ in net_section.options]  # input size and training settings: kept as they are
    return DarknetCfg(_match_upsamples(layers, where), num_classes, anchor_pairs, net, yolo_training)


def read_cfg(path: str | Path) -> DarknetCfg:
    """Read and parse a ``.cfg`` file; errors name the file and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DarknetCfgError(f"cannot read the darknet cfg {path} ({exc})") from None
    return parse_cfg(text, str(path))


def write_cfg(cfg: DarknetCfg) -> str:
    """The cfg text of ``cfg``: relative references where darknet's own files use them."""
    lines = ["[net]", *(f"{k}={v}" for k, v in cfg.net), ""]
    anchors = ",  ".join(f"{w},{h}" for w, h in cfg.anchors)
    yolo_count = 0
    for index, spec in enumerate(cfg.layers):
        if isinstance(spec, ConvSpec):
            lines += [
                "[convolutional]",
                *(["batch_normalize=1"] if spec.bn else []),
                f"filters={spec.filters}",
                f"size={spec.size}",
                f"stride={spec.stride}",
                "pad=1",
                f"activation={'leaky' if spec.bn else 'linear'}",
            ]
        elif isinstance(spec, ShortcutSpec):
            lines += ["[shortcut]", f"from={spec.source - index}", "activation=linear"]
        elif isinstance(spec, RouteSpec):
            # darknet's own style: relative back into the head's branch, absolute to Darknet-53's stage outputs
            refs = [str(j - index) if j >= index - 4 else str(j) for j in spec.sources]
            lines += ["[route]", f"layers = {', '.join(refs)}"]
        elif isinstance(spec, UpsampleSpec):
            lines += ["[upsample]", "stride=2"]
        else:
            training = cfg.yolo_training[yolo_count] if yolo_count < len(cfg.yolo_training) else []
            yolo_count += 1
            lines += [
                "[yolo]",
                f"mask = {','.join(str(m) for m in spec.mask)}",
                f"anchors = {anchors}",
                f"classes={cfg.num_classes}",
                f"num={len(cfg.anchors)}",
                *(f"{k}={v}" for k, v in training),
            ]
        lines.append("")
    return "\n".join(lines)


def yolov3_cfg(num_classes: int = 80) -> DarknetCfg:
    """Standard YOLOv3 as darknet publishes it (``cfg/yolov3.cfg``)."""
    return DarknetCfg(
        yolov3_layers(num_classes),
        num_classes,
        ANCHORS,
        list(YOLOV3_NET),
        [list(YOLOV3_YOLO_TRAINING) for _ in range(3)],
    )


def layer_facts(layers: Sequence[LayerSpec]) -> list[tuple]:
    """(type, filters, size, stride, activation, references) per layer: what a cfg's network is."""
    facts: list[tuple] = []
    for spec in layers:
        if isinstance(spec, ConvSpec):
            facts.append(("convolutional", spec.filters, spec.size, spec.stride, "leaky" if spec.bn else "linear", ()))
        elif isinstance(spec, ShortcutSpec):
            facts.append(("shortcut", None, None, None, "linear", (spec.source,)))
        elif isinstance(spec, RouteSpec):
            facts.append(("route", None, None, None, None, spec.sources))
        elif isinstance(spec, UpsampleSpec):
            facts.append(("upsample", None, None, 2, None, (spec.match,)))
        else:
            facts.append(("yolo", None, None, None, None, spec.mask))
    return facts
