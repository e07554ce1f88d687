"""Rate–quality curves in CompressAI's convention, written for others and read from others.

CompressAI's ``eval_model`` writes, and its ``plot`` and ``results/image/kodak/*.json`` read, one JSON
object per codec: ``{"name", "description", "results": {"bpp": [...], "psnr-rgb": [...],
"ms-ssim-rgb": [...], ...}}``, one list entry per rate point. ``dvcm-pipeline evaluate`` writes one
such file per model (``curves/<model>.json``: both layers on the Kodak-like images) and one for its base
layer (``curves/<model>-base.json``: ``bpp`` of the base layer and ``map50``, ``s_snr``, ``s_psnr`` on
COCO). ``dvcm-pipeline report --curves FILE.json ...`` overlays any such file, ours or a user's
(CompressAI's published curves, a paper's points), on the plots and in the BD table.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from pipeline.evaluation.bdrate import Curve
from pipeline.evaluation.metrics import METRICS, metrics_of
from pipeline.evaluation.plots import curves, model_curve_label
from pipeline.infra.atomic import atomic_write_json
from pipeline.infra.errors import UserError

# Our metric -> the keys a CompressAI-style file may use for it (the first is what we write).
FILE_KEYS: dict[str, tuple[str, ...]] = {key: m.file_keys for key, m in METRICS.items()}
BD_MIN_POINTS = 4
MAX_CURVES_BYTES = 16 << 20  # CompressAI's curve files are a few kB
MAX_NAME = 200  # characters of a curve's name (a legend entry)
MAX_BPP, MAX_QUALITY = (
    64.0,
    1e6,
)  # rates beyond 64 bpp or qualities beyond ±10^6 are not an image codec's  # a Bjøntegaard figure on fewer points is an extrapolation of a guess


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-").lower()


def export_curves(results: list[dict[str, Any]], folder: Path) -> list[Path]:
    """One CompressAI-style JSON file per model (Kodak, both layers) and one per model's base layer (COCO)."""
    written = []
    detector = next((r.get("detector") for r in results if r.get("detector")), "YOLOv3")
    for dataset, suffix, what in (
        ("kodak", "", "both layers, Kodak-like images"),
        ("coco", "-base", f"base layer, COCO, {detector}"),
    ):
        metrics = [m.key for m in metrics_of(dataset)]
        by_label: dict[str, dict[str, Any]] = {}
        for metric in metrics:
            for c in curves(results, metric):
                if c.meta.get("kind") != "model":
                    continue
                entry = by_label.setdefault(
                    c.label,
                    {
                        "bpp": list(c.rates),
                        "lambda": [float(p[2:]) if p.startswith("λ=") else None for p in c.meta["points"]],
                    },
                )
                if list(c.rates) == entry["bpp"]:
                    entry[FILE_KEYS[metric][0]] = list(c.quality)
        for label, values in by_label.items():
            if dataset == "kodak":
                values.update(_times(results, label, values["bpp"]))
            path = folder / f"{_slug(label)}{suffix}.json"
            atomic_write_json(
                path,
                {
                    "name": label + (" base layer" if suffix else ""),
                    "description": f"dvcm-pipeline evaluate: {what}; bpp from real bitstreams",
                    "results": values,
                },
            )
            written.append(path)
    return written


def _times(results: list[dict[str, Any]], label: str, rates: list[float]) -> dict[str, list[float]]:
    """Median encode and decode seconds per image at each rate point (``rates``) of ``label``, in CompressAI's
    keys; none when a point has no time (results of an earlier dvcm)."""
    by_rate = {
        p.get("bpp"): p
        for r in results
        if r.get("kind") == "model" and model_curve_label(r) == label
        for p in r.get("datasets", {}).get("kodak", {}).get("points", [])
    }
    points = [by_rate.get(rate, {}) for rate in rates]
    if not all(
        isinstance(p.get(k), (int, float)) and math.isfinite(p[k]) for p in points for k in ("encode_ms", "decode_ms")
    ):
        return {}
    return {
        "encoding_time": [p["encode_ms"] / 1e3 for p in points],
        "decoding_time": [p["decode_ms"] / 1e3 for p in points],
    }


def load_curves(paths: list[Path], taken: set[str] | None = None) -> dict[str, list[Curve]]:
    """The curves of each file by our metric; anything malformed is refused in one line naming the file.

    A name that ``taken`` (our own curves' labels) or an earlier file already holds gets its file name too."""
    out: dict[str, list[Curve]] = {}
    owners: dict[str, Path] = {name: Path() for name in taken or ()}
    for path in paths:
        try:
            with open(path, "rb") as f:  # bounded: a link to /dev/zero or a huge file is refused, not read whole
                raw = f.read(MAX_CURVES_BYTES + 1)
            if len(raw) > MAX_CURVES_BYTES:
                raise UserError(f"--curves {path}: larger than {MAX_CURVES_BYTES >> 20} MiB; a curves file is small")
            data = json.loads(raw.decode("utf-8"))
        except RecursionError:
            raise UserError(f"--curves {path}: nested too deep to be a curves file") from None
        except FileNotFoundError:
            raise UserError(f"--curves {path}: no such file") from None
        except (OSError, ValueError) as e:
            raise UserError(f"--curves {path}: not a JSON file ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(f"--curves {path}: expected a JSON object with 'results' (CompressAI's eval_model format)")
        values = data.get("results", data)
        name = str(data.get("name") or Path(path).stem)
        if len(name) > MAX_NAME:
            raise UserError(f"--curves {path}: the curve's name is {len(name)} characters; give at most {MAX_NAME}")
        if owners.setdefault(name, Path(path)) != Path(path):
            name = f"{name} ({Path(path).name})"
        if not isinstance(values, dict) or not isinstance(values.get("bpp"), list):
            raise UserError(
                f"--curves {path}: no 'bpp' list under 'results' (CompressAI's eval_model format: "
                '{"name", "results": {"bpp": [...], "psnr-rgb": [...]}})'
            )
        bpp = values["bpp"]
        found = False
        for metric, keys in FILE_KEYS.items():
            key = next((k for k in keys if k in values), None)
            if key is None:
                continue
            found = True
            quality = values[key]
            if not isinstance(quality, list) or len(quality) != len(bpp):
                raise UserError(f"--curves {path}: '{key}' must be a list as long as 'bpp' ({len(bpp)} points)")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in [*bpp, *quality]):
                raise UserError(f"--curves {path}: 'bpp' and '{key}' must hold finite numbers only")
            if not all(0 < v <= MAX_BPP for v in bpp) or not all(abs(v) <= MAX_QUALITY for v in quality):
                raise UserError(
                    f"--curves {path}: 'bpp' must lie in (0, {MAX_BPP:g}] and '{key}' within ±{MAX_QUALITY:g}"
                )
            if not bpp:
                raise UserError(f"--curves {path}: the curve {name!r} is empty")
            if len(bpp) < BD_MIN_POINTS:
                raise UserError(
                    f"--curves {path}: the curve {name!r} has {len(bpp)} points; a BD-rate needs at "
                    f"least {BD_MIN_POINTS}"
                )
            points = sorted(zip(bpp, quality))
            out.setdefault(metric, []).append(
                Curve(
                    name,
                    tuple(float(r) for r, _ in points),
                    tuple(float(q) for _, q in points),
                    meta={"kind": "external", "points": [""] * len(points), "file": str(path)},
                )
            )
        if not found:
            known = ", ".join(k for keys in FILE_KEYS.values() for k in keys)
            raise UserError(f"--curves {path}: no quality list next to 'bpp'; give one of {known}")
    return out
