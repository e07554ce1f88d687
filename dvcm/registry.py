"""The codecs dvcm knows: one declaration each, read by everything that needs one.

A :class:`CodecSpec` says what a codec is (its class, its id in the bitstream's header), which
hyperparameters a configuration gives it besides N (their order, what each means, the values
allowed) and their defaults per training preset, what its base layer carries for a machine, and
whether its loss has the feature term γ·D_s. The bitstream, the checkpoints, the sweep's grid,
the trial names, the evaluation's labels and the tests all read it from here, so that a new
codec is one module (its ``nn.Module``) plus one entry in :data:`CODECS`.

A configuration is written as its hyperparameters' values in order, comma separated: ``64,192,2``
is (M1, M2, H) for the scalable codecs, ``192`` is (M,) for ``bmshj2018``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dvcm.errors import ConfigError

if TYPE_CHECKING:  # the classes are imported when first built: reading the registry needs no torch or CompressAI
    import torch.nn as nn


@dataclass(frozen=True)
class Hyperparameter:
    """One integer hyperparameter of a codec's configuration (N is every codec's and is not listed)."""

    name: str
    meaning: str
    choices: tuple[int, ...] | None = None  # the values allowed; None: any integer >= 1

    def check(self, value: int, text: str) -> int:
        if self.choices is not None and value not in self.choices:
            raise ConfigError(
                f"configuration {text!r} is invalid: {self.name} must be one of "
                f"{', '.join(map(str, self.choices))}, got {value}"
            )
        if self.choices is None and value < 1:
            raise ConfigError(f"configuration {text!r} is invalid: {self.name} must be positive, got {value}")
        return value


@dataclass(frozen=True)
class CodecSpec:
    """What dvcm knows of one codec (see the module docstring)."""

    name: str
    class_path: str  # ``module:Class``, imported when first built
    bitstream_id: int  # the model id in a dvcm file's header; never reused
    hyperparameters: tuple[Hyperparameter, ...]
    presets: Mapping[str, tuple[str, ...]]  # training preset -> its default configurations
    base_layer: str | None  # what the base layer gives a machine; None: a single-layer codec (YOLOv3 on x̂)
    feature_loss: bool  # whether γ·D_s is a term of its loss (else L = R + λ·D_x)
    summary: str
    example: str = field(default="")  # a configuration for error messages and help
    ablation: bool = False  # an ablation row: trained when named (reproduce --models), not in the default study

    @property
    def cls(self) -> type[nn.Module]:  # a dvcm.models.ScalableCodec
        module, _, name = self.class_path.partition(":")
        return getattr(importlib.import_module(module), name)

    @property
    def layers(self) -> int:
        return 1 if self.base_layer is None else 2

    @property
    def config_form(self) -> str:
        """``M1,M2,H``: how a configuration of this codec is written."""
        return ",".join(h.name for h in self.hyperparameters)

    def parse(self, text: str) -> dict[str, int]:
        """A configuration such as ``64,192,2`` (or ``(64, 192, 2)``) as {hyperparameter: value}."""
        parts = [p.strip() for p in str(text).strip().strip("()").split(",") if p.strip()]
        example = self.example or ",".join("1" for _ in self.hyperparameters)
        if len(parts) != len(self.hyperparameters):
            raise ConfigError(
                f"configuration {text!r} of {self.name} does not parse; write {self.config_form} such as {example}"
            )
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(
                f"configuration {text!r} of {self.name} does not parse; write {self.config_form} such as {example}"
            ) from None
        return {h.name: h.check(v, str(text)) for h, v in zip(self.hyperparameters, values)}

    def text(self, config: Mapping[str, Any]) -> str:
        """The configuration part of a config mapping, written as :meth:`parse` reads it: ``64,192,2``."""
        return ",".join(str(config.get(h.name)) for h in self.hyperparameters)

    def defaults(self, preset: str) -> tuple[str, ...]:
        if preset not in self.presets:
            raise ConfigError(f"{self.name} has no default configuration for preset {preset!r}; give one")
        return self.presets[preset]


_M1 = Hyperparameter("M1", "channels of the base latent y1")
_M2 = Hyperparameter("M2", "channels of the enhancement latent y2")
_H = Hyperparameter("H", "hyperprior blocks: 2 one per latent, 1 one shared whose ẑ travels in the base layer", (1, 2))

CODECS: dict[str, CodecSpec] = {
    spec.name: spec
    for spec in (
        CodecSpec(
            "proposed",
            "dvcm.models:ProposedCodec",
            1,
            (_M1, _M2, _H),
            presets={
                "tiny": ("16,32,2",),
                "mini": ("11,32,2",),
                "paper": ("64,192,2", "64,128,2", "64,128,1", "128,64,1"),
            },
            base_layer="ŝ = g_s1(ŷ1), YOLOv3 layer-13 features",
            feature_loss=True,
            summary="the disentangled scalable codec (DCC 2023): s = V_front(x) enters the base analysis",
            example="64,192,2",
        ),
        CodecSpec(
            "choi2022",
            "dvcm.models:Choi2022Codec",
            2,
            (_M1, _M2, _H),
            presets={"tiny": ("16,32,2",), "mini": ("21,11,1",), "paper": ("128,64,1",)},
            base_layer="ŝ = LST(ŷ1), YOLOv3 layer-13 features",
            feature_loss=True,
            summary="Choi & Bajić 2022 latent-space scalability on the same base: y = g_a(x) split into (y1, y2)",
            example="128,64,1",
        ),
        CodecSpec(
            "choi2022rlst",
            "dvcm.residual_lst:Choi2022ResidualLSTCodec",
            4,
            (_M1, _M2, _H),
            presets={"tiny": ("16,32,2",), "mini": ("21,11,1",), "paper": ("128,64,1",)},
            base_layer="ŝ = residual LST(ŷ1), YOLOv3 layer-13 features",
            feature_loss=True,
            summary="choi2022 whose latent-space transform has residual blocks, the capacity of proposed's g_a1 + g_s1",
            example="128,64,1",
            ablation=True,
        ),
        CodecSpec(
            "bmshj2018",
            "dvcm.single_layer:Bmshj2018Codec",
            3,
            (Hyperparameter("M", "channels of the latent y"),),
            presets={"tiny": ("48",), "mini": ("43",), "paper": ("192",)},
            base_layer=None,
            feature_loss=False,
            summary="Ballé et al. 2018 scale hyperprior, one layer (the cost of scalability): YOLOv3 runs on x̂",
            example="192",
        ),
    )
}
MODEL_NAMES: tuple[str, ...] = tuple(CODECS)


def codec_spec(name: str) -> CodecSpec:
    """The declaration of codec ``name``; an unknown name is refused in one line."""
    if name not in CODECS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return CODECS[name]


def config_text(model: Any, config: Mapping[str, Any]) -> str:
    """``64,192,2``: a model's configuration as written in labels; ``?`` for a model this dvcm does not know."""
    return CODECS[model].text(config) if model in CODECS else "?"


def spec_by_bitstream_id(model_id: int) -> CodecSpec | None:
    return next((s for s in CODECS.values() if s.bitstream_id == model_id), None)


def build(
    name: str, front: nn.Module | None = None, yolo_provenance: dict[str, Any] | None = None, **config: int
) -> nn.Module:  # a dvcm.models.ScalableCodec
    """Build a codec by name with its config keys: N, C_s, and its hyperparameters (M1, M2, H or M).

    ``front`` is the frozen V_front (``YOLOv3.front``), whose output channels are C_s; without it
    an untrained front of the family member with C_s channels (default 256) is made (its weights
    then come from a checkpoint).
    """
    spec = codec_spec(name)
    known = {"N", "C_s", *(h.name for h in spec.hyperparameters)}
    unknown = set(config) - known
    if unknown:
        raise ConfigError(
            f"unknown config keys {sorted(unknown)} for model {name!r}; expected {', '.join(sorted(known))}"
        )
    model = spec.cls(front=front, **config)
    model.yolo_provenance = yolo_provenance
    return model
