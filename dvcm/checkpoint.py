"""Codec checkpoints: configuration, YOLO provenance and entropy tables in one safe file.

Saved with ``torch.save`` (a plain dict of strings, numbers and tensors) and loaded with
``torch.load(weights_only=True)``: a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dvcm.errors import BitstreamError, CheckpointError, ConfigError
from dvcm.fileio import atomic_open
from dvcm.limits import check_entropy_tables
from dvcm.models import ScalableCodec
from dvcm.registry import MODEL_NAMES, build

FORMAT = "dvcm-checkpoint"
VERSION = 1


def checkpoint_dict(model: ScalableCodec, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint content; updates the entropy tables first (``update(force=True)``)."""
    model.update(force=True)
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model.name,
        "config": dict(model.config),
        "yolo": dict(model.yolo_provenance or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }


def save_checkpoint(path: str | Path, model: ScalableCodec, extra: dict[str, Any] | None = None) -> None:
    """Write a loadable, codable checkpoint atomically (temp file, then rename)."""
    content = checkpoint_dict(model, extra)
    with atomic_open(path) as f:
        torch.save(content, f)


# The Gaussian conditionals' CDF tables: a function of their scale table (CompressAI's ``update``), which
# every codec shares; a compact checkpoint leaves them out and :func:`load_checkpoint` computes them again.
GAUSSIAN_TABLES = (
    "gaussian_conditional._quantized_cdf",
    "gaussian_conditional._offset",
    "gaussian_conditional._cdf_length",
)


def compact_checkpoint(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Write ``src`` as a compact checkpoint: the transforms' float32 weights stored as float16 (the entropy models
    and the feature statistics stay float32), the Gaussian conditionals' CDF tables left out (rebuilt on load). What it decodes is what the float16 weights give, so a file coded with
    it decodes the same everywhere; how far that is from ``src`` is for the caller to measure. Returns its content."""
    content = read_checkpoint(src)
    state = {}
    for key, value in content["state_dict"].items():
        if key.endswith(GAUSSIAN_TABLES):
            continue
        entropy_model = "gaussian_conditional" in key or "entropy_bottleneck" in key or key in ("s_mean", "s_std")
        state[key] = value.half() if value.dtype == torch.float32 and not entropy_model else value
    content = {**content, "state_dict": state, "compact": {"float16": True, "rebuilt": list(GAUSSIAN_TABLES)}}
    with atomic_open(dst) as f:
        torch.save(content, f)
    return content


def _expand_compact(content: dict[str, Any]) -> dict[str, Any]:
    """The full state of a compact checkpoint: float32 tensors, and the Gaussian tables of dvcm's scale table
    (from a codec of the same configuration whose entropy tables are computed afresh)."""
    reference = build(content["model"], **content["config"])
    reference.update(force=True)
    own = reference.state_dict()
    state = content["state_dict"]
    for key, value in state.items():
        if key.endswith("gaussian_conditional.scale_table") and not torch.equal(value, own[key]):
            raise CheckpointError("a compact checkpoint of another scale table than dvcm's cannot rebuild its tables")
    full = {k: (v.float() if v.dtype == torch.float16 else v) for k, v in state.items()}
    full.update({k: v for k, v in own.items() if k.endswith(GAUSSIAN_TABLES)})
    return full


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint file without building the model (safe unpickling only).

    ``zoo:NAME`` reads the bundled checkpoint ``NAME`` (:mod:`dvcm.zoo`)."""
    from dvcm.zoo import ZOO_PREFIX, zoo_checkpoint

    path = zoo_checkpoint(str(path)) if str(path).startswith(ZOO_PREFIX) else Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a checkpoint we can trust"
        raise CheckpointError(f"{path} is not a loadable dvcm checkpoint ({_load_failure(exc)})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dvcm checkpoint (no '{FORMAT}' marker); pass a file written by dvcm")
    if content.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {content.get('version')}, this dvcm reads {VERSION}")
    if content.get("model") not in MODEL_NAMES:
        raise CheckpointError(
            f"{path} holds unknown model {content.get('model')!r}; this dvcm knows {', '.join(MODEL_NAMES)}"
        )
    for key in ("config", "state_dict"):
        if not isinstance(content.get(key), dict):
            raise CheckpointError(f"{path} has no valid '{key}' entry")
    check_fields(content, path)
    return content


MAX_CHANNELS = 4096  # N, C_s and latent channels beyond this are no codec's: refused before anything is allocated


def check_fields(content: dict[str, Any], path: str | Path) -> None:
    """Every field a checkpoint feeds the codec, by type and range (issue 28: a crafted config, a key that is not a
    string or a tensor of strings gave TypeError and allocator tracebacks)."""
    from dvcm.registry import codec_spec

    spec = codec_spec(content["model"])
    allowed = {"N", "C_s", *(h.name for h in spec.hyperparameters)}
    for key, value in content["config"].items():
        if key not in allowed:
            raise CheckpointError(
                f"{path}: config key {key!r} is not one of {content['model']}'s ({', '.join(sorted(allowed))})"
            )
        if type(value) is not int or not 1 <= value <= MAX_CHANNELS:
            raise CheckpointError(f"{path}: config {key} = {value!r} is not an integer in 1..{MAX_CHANNELS}")
        hyper = next((h for h in spec.hyperparameters if h.name == key), None)
        if hyper is not None and hyper.choices is not None and value not in hyper.choices:
            raise CheckpointError(f"{path}: config {key} = {value} is not one of {hyper.choices}")
    for key, value in content["state_dict"].items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: its state holds {key!r}: {type(value).__name__}; only named tensors belong there"
            )
    for key in ("yolo", "extra"):
        if content.get(key) is not None and not isinstance(content[key], dict):
            raise CheckpointError(f"{path}: its {key!r} entry is a {type(content[key]).__name__}, not a mapping")


def load_checkpoint(path: str | Path, yolo_provenance: dict[str, Any] | None = None) -> tuple[ScalableCodec, dict]:
    """Build the codec a checkpoint describes and restore its weights and entropy tables.

    With ``yolo_provenance`` (``YOLOv3.provenance``), refuse a checkpoint trained with
    another YOLO front. Returns ``(model in eval mode, metadata)``.
    """
    content = read_checkpoint(path)
    saved = content.get("yolo") or {}
    if (
        yolo_provenance
        and saved.get("weights_sha256")
        and saved["weights_sha256"] != yolo_provenance.get("weights_sha256")
    ):
        raise CheckpointError(
            f"{path} was trained with YOLO weights sha256 {saved['weights_sha256'][:12]}…, "
            f"but the YOLO in use has {str(yolo_provenance.get('weights_sha256'))[:12]}…; pass the same --yolo-weights"
        )
    try:
        model = build(content["model"], **content["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    expected = (yolo_provenance or {}).get("feature_channels")
    if expected is not None and int(expected) != model.C_s:
        raise CheckpointError(
            f"{path} is a codec for s with C_s = {model.C_s} channels, but the YOLO front in use gives "
            f"{expected}; pass the --yolo-weights/--yolo-cfg it was trained with"
        )
    state = _expand_compact(content) if content.get("compact") else content["state_dict"]
    try:
        model.load_state_dict(state)
    except KeyError as exc:  # CompressAI's buffer resizing looks up every entropy table by name
        raise CheckpointError(
            f"{path}: the checkpoint lacks {exc.args[0]!r} (an entropy table or weight of "
            f"{content['model']} {content['config']}); it is incomplete: save it again with "
            "dvcm.checkpoint.save_checkpoint"
        ) from None
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: weights do not fit {content['model']} {content['config']} ({_state_dict_problem(exc)})"
        ) from None
    try:
        check_entropy_tables(model)
    except BitstreamError as exc:
        raise CheckpointError(f"{path}: {exc}; the checkpoint is damaged or crafted") from None
    check_values(model, path)
    model.yolo_provenance = saved or None
    model.eval()
    meta = {k: v for k, v in content.items() if k != "state_dict"}
    return model, meta


def check_values(model: ScalableCodec, path: str | Path) -> None:
    """Refuse weights that cannot code an image: a NaN or infinite value anywhere in the state (a flipped float16
    weight makes every latent NaN, on which CompressAI's encoder never returns), or a feature scale s_std that is
    not positive."""
    for key, value in model.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: {key} holds NaN or infinite values; the checkpoint is damaged")
    if not bool((model.s_std > 0).all()):
        raise CheckpointError(f"{path}: s_std holds values that are not positive; the checkpoint is damaged")


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one whole sentence.

    For a pickle that needs arbitrary objects, torch's message leads with advice to pass
    ``weights_only=False`` (which would run the file's code); say what the file needs instead.
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if str(exc).startswith("Weights only load failed"):
        cause = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln or "WeightsUnpickler" in ln), "")
        cause = cause.split(" Please ")[0].split(" Check the ")[0]  # not torch's advice on how to allow it
        return (
            "it holds pickled Python objects that only an unsafe load could build, and loading it could run code"
            + (f": {cause.rstrip('.')}" if cause else "")
            + "; use a checkpoint written by dvcm"
        )
    return lines[0] if lines else type(exc).__name__


def _state_dict_problem(exc: Exception) -> str:
    """The first problem of a failed ``load_state_dict``, whole (torch lists every mismatch on its own line)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = next((ln for ln in lines[1:] if ln), "")
    head = lines[0].rstrip(":") if lines else type(exc).__name__
    return f"{head}: {detail}" if detail else head
