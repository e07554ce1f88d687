"""Coding files: an image into a two-layer ``.dvcm`` file, a file back into x̂ or (base layer only)
into ŝ and YOLOv3 detections, and the demo round trip. The ``compress``, ``decompress`` and ``demo``
commands (``pipeline.cli.codec``) call these and print what they return."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

from dvcm.zoo import detector_name
from pipeline.data.images import image_size, load_image, save_png
from pipeline.infra.atomic import atomic_write_bytes
from pipeline.infra.errors import UserError


def resolve_yolo(provenance: dict[str, Any], weights: Path | None, cfg: Path | None = None):  # -> dvcm.yolo.YOLOv3
    """The YOLOv3 a checkpoint was trained with: ``--yolo-weights`` (of the network ``--yolo-cfg``
    describes, standard YOLOv3 without), the bundled mini YOLOv3 when it records that, or the seed it records."""
    from dvcm.yolo import build_yolov3
    from dvcm.zoo import bundled_detector
    from pipeline.infra.yolo_files import yolo_files

    bundled = bundled_detector(provenance)
    if weights is None and cfg is None and bundled is not None:
        weights = Path(bundled)

    weights_path, cfg_path = yolo_files(weights, cfg)  # checked, absolute; ``mini`` brings its cfg
    if cfg_path is None and provenance.get("cfg_sha256"):
        raise UserError(
            f"the checkpoint was trained with the YOLO cfg {provenance.get('cfg')}; pass it with --yolo-cfg"
        )
    if weights_path is None:
        source = str(provenance.get("weights", "seeded-random:0"))
        if not source.startswith("seeded-random:"):
            raise UserError(f"the checkpoint was trained with YOLO weights {source}; pass them with --yolo-weights")
        yolo = build_yolov3(None, seed=int(source.split(":", 1)[1]), cfg=cfg_path)
    else:
        yolo = build_yolov3(weights_path, cfg=cfg_path)
    want_cfg = provenance.get("cfg_sha256")
    if want_cfg and want_cfg != yolo.provenance.get("cfg_sha256"):
        raise UserError(
            f"the YOLO cfg's sha256 {str(yolo.provenance.get('cfg_sha256'))[:12]}… differs from the "
            f"checkpoint's {want_cfg[:12]}…; pass the --yolo-cfg the codec was trained with"
        )
    want = provenance.get("weights_sha256")
    if want and want != yolo.provenance["weights_sha256"]:
        raise UserError(
            f"YOLO weights sha256 {yolo.provenance['weights_sha256'][:12]}… differ from the checkpoint's "
            f"{want[:12]}…; pass the weights the codec was trained with"
        )
    return yolo


def check_output(path: Path, flag: str = "-o", example: str = "out.dvcm") -> Path:
    """Refuse, before any work, an output path that names a folder, lies in a folder that cannot be written, or whose
    name the file system refuses (too long)."""
    try:
        if path.is_dir():
            raise UserError(f"{flag} {path} is a folder; give a file name, e.g. {path / example}")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise UserError(f"{flag} {path}: folder {parent} does not exist; create it or choose another {flag}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {path}: folder {parent} is not writable; choose another {flag}")
        limit = os.pathconf(parent, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    except OSError as exc:
        raise UserError(f"{flag} {path}: {exc.strerror or exc}; choose another {flag}") from None
    if len(os.fsencode(path.name)) + len(".tmp.XXXXXXXX.tmp") > limit:  # the temp file's name must fit too
        raise UserError(f"{flag} {path}: its name is longer than this file system allows ({limit} bytes); shorten it")
    return path


def make_out_folder(out: Path) -> Path:
    """An ``--out`` folder, made if missing; one line when it is a file or cannot be made (issue 28: tracebacks)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot make the folder ({exc.strerror or exc}); choose another --out") from None
    return check_output(out / "x", "--out").parent


def write_output(path: Path, data: bytes) -> None:
    """Write an output file atomically; a refusal by the file system is one line."""
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}); choose another -o") from None


def compress_file(image: Path, output: Path, checkpoint: Path, max_pixels: int | None = None) -> str:
    """Code ``image`` with ``checkpoint`` into ``output``; returns the line that reports sizes and rates.

    The image's declared size is checked against the memory its coding needs (or ``max_pixels``)
    from its header, before a pixel is read."""
    from dvcm import bitstream
    from dvcm.checkpoint import load_checkpoint
    from dvcm.limits import check_coding_size, encode_bytes

    check_output(output)
    model, _ = load_checkpoint(checkpoint)
    hw = image_size(image, max_pixels)
    if max(hw) > bitstream.MAX_SIDE:  # the format's limit, from the header, before any pixel is decoded
        raise UserError(f"{image} is {hw[1]}x{hw[0]}; a dvcm file holds at most {bitstream.MAX_SIDE} pixels a side")
    check_coding_size(hw, encode_bytes(hw, model.N), str(image), max_pixels)
    x = load_image(image, max_pixels)
    data = bitstream.compress(model, x, max_pixels)
    write_output(output, data)
    sizes = bitstream.layer_sizes(data)
    pixels = x.shape[-2] * x.shape[-1]
    return (
        f"{output}: {len(data)} bytes, {len(data) * 8 / pixels:.4f} bpp "
        f"(header {sizes['header']} B, base {sizes['base'] * 8 / pixels:.4f} bpp, "
        f"enhancement {sizes['enhancement'] * 8 / pixels:.4f} bpp)"
    )


def read_stream(path: Path) -> bytes:
    """The bytes of a ``.dvcm`` file, reading no more than its header declares: a file longer than that (a valid
    file with gigabytes appended, a link to /dev/zero) is refused before the rest is read; a one-line error when
    it is missing."""
    from dvcm import bitstream

    if not path.exists():
        raise UserError(f"bitstream not found: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(bitstream.HEADER_SIZE)
            total = bitstream.read_header(head).total_length if len(head) == bitstream.HEADER_SIZE else len(head)
            data = head + f.read(max(0, total - len(head)))
            if f.read(1):
                raise UserError(
                    f"{path} is longer than the {total} bytes its header declares: not one dvcm file (trailing data)"
                )
    except IsADirectoryError:
        raise UserError(f"bitstream not found: {path} is a folder") from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc})") from None
    return data


def decompress_file(file: Path, output: Path, checkpoint: Path, max_pixels: int | None = None) -> str:
    """Human side: decode both layers of ``file`` into the PNG ``output``; returns the report line."""
    from dvcm import bitstream
    from dvcm.checkpoint import load_checkpoint

    check_output(output)
    data = read_stream(file)
    model, _ = load_checkpoint(checkpoint)
    x_hat = bitstream.decode(model, data, max_pixels)
    try:
        save_png(x_hat, output)
    except OSError as exc:
        raise UserError(f"cannot write {output} ({exc.strerror or exc}); choose another -o") from None
    return f"{output}: {x_hat.shape[-1]}x{x_hat.shape[-2]} image from {len(data)} bytes"


def decompress_base_file(
    file: Path,
    output: Path,
    checkpoint: Path,
    yolo_weights: Path | None,
    conf_thres: float,
    nms_iou: float,
    max_pixels: int | None = None,
    yolo_cfg: Path | None = None,
) -> str:
    """Machine side: decode the base layer of ``file`` into ŝ (``.npy``) and YOLOv3 detections (``.detections.json``)."""
    import numpy as np
    import torch

    from dvcm import bitstream
    from dvcm.checkpoint import load_checkpoint
    from dvcm.limits import check_coding_size, decode_base_bytes, detect_bytes
    from dvcm.yolo import COCO80_TO_COCO91, decode_detections

    npy, det_path = base_outputs(output)
    check_output(npy)
    data = read_stream(file)
    model, meta = load_checkpoint(checkpoint)
    yolo = resolve_yolo(meta.get("yolo") or {}, yolo_weights, yolo_cfg)  # a wrong YOLO is refused before any output
    header = bitstream.read_header(data)
    # the detector runs on ŝ too: refuse, before decoding, a declared size whose detection would not fit
    check_coding_size(
        header.hw,
        max(decode_base_bytes(header.hw, model.N, model.M1), detect_bytes(header.hw)),
        "the file's image",
        max_pixels,
    )
    s_hat = bitstream.decode_base(model, data, max_pixels)
    buf = io.BytesIO()
    np.save(buf, s_hat[0].numpy())
    write_output(npy, buf.getvalue())
    with torch.no_grad():
        (det,) = decode_detections(
            yolo.back(s_hat), header.hw, conf_thres=conf_thres, nms_iou=nms_iou, anchors=yolo.anchors
        )
    detections = [
        {"bbox_xyxy": [round(float(v), 2) for v in box], "score": float(score), "label": int(label),
         "category_id": COCO80_TO_COCO91[int(label)]}
        for box, score, label in zip(det["boxes"], det["scores"], det["labels"])
    ]  # fmt: skip
    random = bool(yolo.provenance.get("random_weights"))
    name = detector_name(yolo.provenance)
    report = json.dumps({
        "image_hw": list(header.hw),
        "base_layer_bytes": bitstream.HEADER_SIZE + header.base_length,
        "yolo": {**yolo.provenance, "name": name,
                 "note": f"{name}: detections are meaningless" if random else ""},
        "detections": detections,
    }, indent=2) + "\n"  # fmt: skip
    try:
        write_output(det_path, report.encode())
    except UserError:
        npy.unlink(missing_ok=True)  # both outputs or neither (issue 28: the .npy was left behind)
        raise
    return f"{npy}: ŝ {tuple(s_hat.shape[1:])}; {det_path}: {len(detections)} detections ({name})"


def base_outputs(output: Path) -> tuple[Path, Path]:
    """``-o OUT`` of a base-layer decode: ``OUT.npy`` (ŝ) and ``OUT.detections.json``. A ``.npy`` or
    ``.json`` suffix is taken off first; any other suffix is part of the name (``coffee.v2`` stays)."""
    stem = output.with_suffix("") if output.suffix in (".npy", ".json") else output
    return stem.parent / f"{stem.name}.npy", stem.parent / f"{stem.name}.detections.json"


DEMO_NOTICE = "YOLOv3 uses seeded random weights (seed 0); the codec is untrained: this shows the file format only."


def run_demo(out: Path) -> list[str]:
    """Round trip on an embedded image with untrained codecs: compress, base-only decode, full decode.

    Writes ``<out>/<model>.dvcm``; returns one line per model.
    """
    import torch

    from dvcm import bitstream
    from dvcm.registry import CODECS, build
    from dvcm.yolo import build_yolov3
    from pipeline.data.sample_data import sample_image

    torch.manual_seed(0)
    x = torch.from_numpy(sample_image(seed=1, size=(768, 512))).permute(2, 0, 1).unsqueeze(0).float() / 255
    yolo = build_yolov3(None, seed=0)
    lines = []
    for spec in CODECS.values():
        name, text = spec.name, spec.defaults("paper")[0]
        model = build(name, front=yolo.front, yolo_provenance=yolo.provenance, N=64, **spec.parse(text))
        model.update(force=True)
        data = bitstream.compress(model, x)
        s_hat = bitstream.decode_base(model, bitstream.base_layer(data))
        x_hat = bitstream.decode(model, data)
        sizes = bitstream.layer_sizes(data)
        pixels = x.shape[-1] * x.shape[-2]
        mse = torch.mean((x - x_hat) ** 2).item()
        path = out / f"{name}.dvcm"
        atomic_write_bytes(path, data)
        lines.append(
            f"{name} ({spec.config_form})=({text}): base {sizes['base'] * 8 / pixels:.4f} bpp, "
            f"enhancement {sizes['enhancement'] * 8 / pixels:.4f} bpp, total {len(data) * 8 / pixels:.4f} bpp; "
            f"ŝ {tuple(s_hat.shape[1:])} from the base layer alone; PSNR {10 * math.log10(1 / mse):.2f} dB -> {path}"
        )
    return lines


DEMO_CHECKPOINT = "zoo:proposed-l0.0932"
DEMO_CONF, DEMO_IOU = 0.25, 0.45  # as decompress --base-only


def run_trained_demo(out: Path) -> list[str]:
    """The bundled zoo codec and mini detector on an unseen scene of the synthetic world: one file coded, its base
    layer decoded alone to detections (next to the detections on the original image), both layers to the image
    (PSNR); ``<out>/proposed.dvcm``, ``original_detections.png`` and ``base_layer_detections.png`` (the decoded
    image with the boxes found from the base layer alone). Returns the lines to print."""
    import math

    import torch

    from dvcm import bitstream
    from dvcm.checkpoint import load_checkpoint
    from dvcm.yolo import build_yolov3, decode_detections
    from dvcm.zoo import detector_name, mini_detector
    from pipeline.data.world import render_world_scene, split_seed

    weights, cfg, _ = mini_detector()
    yolo = build_yolov3(weights, cfg=cfg)
    model, _ = load_checkpoint(DEMO_CHECKPOINT, yolo_provenance=yolo.provenance)
    scene = render_world_scene(split_seed(0, "test"), 7, (512, 512))  # unseen by the detector and the codec
    x = torch.from_numpy(scene.image).permute(2, 0, 1).unsqueeze(0).float() / 255
    data = bitstream.compress(model, x)
    path = out / "proposed.dvcm"
    atomic_write_bytes(path, data)
    with torch.no_grad():
        s_hat = bitstream.decode_base(model, bitstream.base_layer(data))
        x_hat = bitstream.decode(model, data)
        found = {
            "original": decode_detections(
                yolo.back(yolo.front(x)), (512, 512), DEMO_CONF, DEMO_IOU, anchors=yolo.anchors
            )[0],
            "base layer": decode_detections(yolo.back(s_hat), (512, 512), DEMO_CONF, DEMO_IOU, anchors=yolo.anchors)[0],
        }
    sizes, pixels = bitstream.layer_sizes(data), 512 * 512
    psnr = 10 * math.log10(1 / float(torch.mean((x - x_hat) ** 2)))
    lines = [
        f"{DEMO_CHECKPOINT} on an unseen 512x512 scene of the synthetic world -> {path}",
        f"  base layer {sizes['base'] * 8 / pixels:.4f} bpp (the machine's part), enhancement "
        f"{sizes['enhancement'] * 8 / pixels:.4f} bpp, total {len(data) * 8 / pixels:.4f} bpp with the "
        f"{bitstream.HEADER_SIZE}-byte header",
        f"  both layers decoded: PSNR {psnr:.2f} dB",
        f"  detections of {detector_name(yolo.provenance)} (confidence >= {DEMO_CONF}):",
    ]
    for where, det in found.items():
        lines.append(
            f"    {where + ':':12} " + (", ".join(_describe(det, i) for i in range(len(det["labels"]))) or "none")
        )
    truth = ", ".join(f"{_class_name(o.category_id - 1)}" for o in scene.objects)
    lines.append(f"    {'truth:':12} {truth or 'none'}")
    lines += [
        f"  {_draw(scene.image, found['original'], out / 'original_detections.png')}: the original, its detections",
        f"  {_draw((x_hat[0].permute(1, 2, 0).numpy() * 255).round().astype('uint8'), found['base layer'], out / 'base_layer_detections.png')}"
        ": the decoded image, boxes from the base layer alone",
    ]
    return lines


def _class_name(label: int) -> str:
    from pipeline.data.world import WORLD_CLASSES

    return WORLD_CLASSES[label][1] if 0 <= label < len(WORLD_CLASSES) else f"class {label}"


def _describe(det: dict, i: int) -> str:
    return f"{_class_name(int(det['labels'][i]))} {float(det['scores'][i]):.2f}"


def _draw(image: Any, det: dict, path: Path) -> Path:  # image: H×W×3 uint8 numpy
    """The image with its boxes and labels, written as a PNG."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    for i, box in enumerate(det["boxes"].tolist()):
        draw.rectangle(box, outline=(255, 255, 255), width=2)
        draw.text((box[0] + 2, box[1] + 2), _describe(det, i), fill=(255, 255, 255))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path
