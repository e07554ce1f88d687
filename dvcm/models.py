"""The two scalable codecs: the proposed disentangled model and the Choi & Bajić 2022 baseline.

Both share one base (Ballé et al. 2018 scale hyperprior, GDN/IGDN, CompressAI entropy
models and rANS) and one latent layout: a base latent y1 for the machine (decoded alone to
the YOLOv3 layer-13 features ŝ) and an enhancement latent y2 that, with y1, gives the image x̂.
Configurations are (M1, M2, H) with N fixed; H=2 is one hyperprior per latent, H=1 one shared
hyperprior whose z travels in the base layer: the two layouts are the latent codecs of
``dvcm.latent_codecs``, with their dataflow diagrams, and a codec holds one of them.

Proposed (paper Fig. 2/3, Table 1)::

    s = V_front(x)                      (frozen YOLOv3 layers 0-12, C_s = 256·width ch at H/8)
    y1 = g_a1(concat(s, bicubic(x, H/8)))    conv5s1 N, conv5s1 N, conv5s2 M1    -> H/16
    y2 = g_a2(x)                             conv5s2 N, N, N, M2                 -> H/16
    ŝ  = g_s1(ŷ1)                            deconv5s1 N, deconv5s1 N, deconv5s2 C_s
    x̂  = g_s2(concat(ŷ1, ŷ2))               deconv5s2 N, N, N, 3

Choi & Bajić 2022 on the same base: y = g_a(x) with M1+M2 channels, y1 = y[:M1], y2 = y[M1:],
ŝ = LST(ŷ1) with g_s1's layer plan, x̂ = g_s(ŷ). s is not an encoder input.

C_s is the front's: 256 for standard YOLOv3, 256·width for a narrow member of the family
(``dvcm.yolo.yolov3_layers(width=...)``). ``config`` names it only when it is not 256, so the
configuration, the fingerprint and the checkpoints of standard-width codecs are those of format 1.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.layers import GDN
from compressai.models import CompressionModel
from compressai.models.utils import conv, deconv
from compressai.registry import register_model
from torch import Tensor

from dvcm.errors import ConfigError
from dvcm.latent_codecs import BaseLatent, ScalableLatentCodec, latent_codec
from dvcm.limits import check_latent

C_S = 256  # channels of standard YOLOv3's layer-12 output (s); a narrow front has 256·width
PAD_MULTIPLE = 64  # total downsampling of the hyper-latents: 2**6
# Format version 1 named the latent codec's tensors without the ``latent_codec.`` prefix (hyper1.…,
# coder2.…): checkpoints written so far hold those keys, and every file's fingerprint was computed over them.
LATENT_CODEC = "latent_codec."
_FORMAT_V1_KEYS = ("hyper1.", "hyper2.", "hyper.", "coder1.", "coder2.")


def feature_synthesis(M1: int, N: int, C_s: int = C_S) -> nn.Sequential:
    """g_s1 / LST: ŷ1 (H/16) -> ŝ (C_s channels, H/8). Table 1, third column."""
    return nn.Sequential(
        deconv(M1, N, stride=1),
        GDN(N, inverse=True),
        deconv(N, N, stride=1),
        GDN(N, inverse=True),
        deconv(N, C_s, stride=2),
    )


def pixel_synthesis(M: int, N: int) -> nn.Sequential:
    """g_s2 / g_s: concat(ŷ1, ŷ2) (H/16) -> x̂ (3 channels, H). Table 1, fourth column."""
    return nn.Sequential(
        deconv(M, N),
        GDN(N, inverse=True),
        deconv(N, N),
        GDN(N, inverse=True),
        deconv(N, N),
        GDN(N, inverse=True),
        deconv(N, 3),
    )


def image_analysis(M: int, N: int) -> nn.Sequential:
    """g_a2 / g_a: x (H) -> latent with M channels (H/16). Table 1, second column."""
    return nn.Sequential(
        conv(3, N),
        GDN(N),
        conv(N, N),
        GDN(N),
        conv(N, N),
        GDN(N),
        conv(N, M),
    )


def padded_size(h: int, w: int) -> tuple[int, int]:
    """The size an image is padded to before coding: the next multiples of 64."""
    return (math.ceil(h / PAD_MULTIPLE) * PAD_MULTIPLE, math.ceil(w / PAD_MULTIPLE) * PAD_MULTIPLE)


def feature_size(h: int, w: int) -> tuple[int, int]:
    """Spatial size of s = V_front(x) for an H×W image: ⌈H/8⌉ × ⌈W/8⌉."""
    return (math.ceil(h / 8), math.ceil(w / 8))


def _bare_front(front: nn.Module | None, C_s: int | None) -> nn.Module:
    """The V_front module itself (unwrapped from ``dvcm.yolo.FrozenModule``), so that checkpoint keys
    do not depend on how the caller froze it; when None, a fresh untrained front of the family member
    whose s has ``C_s`` channels (width C_s/256; its weights then come from a checkpoint)."""
    from dvcm.yolo import SPLIT_LAYER, FrozenModule, YoloFront, yolov3_layers

    if front is None:
        width = (C_s or C_S) / C_S
        try:
            return YoloFront(yolov3_layers(width=width), 0, SPLIT_LAYER, in_channels=3)
        except ValueError as exc:
            raise ConfigError(f"C_s = {C_s}: {exc}") from None
    bare = front.module if isinstance(front, FrozenModule) else front
    channels = getattr(bare, "out_channels", C_S)
    if C_s is not None and channels != C_s:
        raise ConfigError(
            f"the YOLO front gives s with {channels} channels, the codec is configured for C_s = {C_s}; "
            "pass the --yolo-weights/--yolo-cfg it was trained with"
        )
    return bare


def _pad_to(t: Tensor, hw: tuple[int, int]) -> Tensor:
    dh, dw = hw[0] - t.shape[-2], hw[1] - t.shape[-1]
    if dh == 0 and dw == 0:
        return t
    return F.pad(t, (0, dw, 0, dh), mode="replicate")


class ScalableCodec(CompressionModel):
    """Common base: latent coding of (y1, y2), padding, the frozen V_front, compress/decompress.

    Subclasses define the transforms through ``analysis``, ``feature_synthesis`` (``g_s1``)
    and ``pixel_synthesis`` (``g_s2``); the latents are coded by ``latent_codec``, the layout of H.
    ``forward(x, s=None)`` returns ``x_hat``, ``s_hat``, ``s`` and the likelihoods of every
    latent: ``y1, z1, y2, z2`` (H=2) or ``y1, y2, z`` (H=1).
    """

    name: str = ""
    layers: int = 2  # a single-layer codec (dvcm.single_layer) has 1: its only layer is the base layer

    def __init__(
        self,
        N: int = 192,
        M1: int = 64,
        M2: int = 192,
        H: int = 2,
        front: nn.Module | None = None,
        C_s: int | None = None,
    ) -> None:
        super().__init__()
        if min(N, M1) < 1 or M2 < (1 if self.layers == 2 else 0) or (C_s is not None and C_s < 1):
            raise ConfigError(f"N, M1, M2 and C_s must be positive, got N={N}, M1={M1}, M2={M2}, C_s={C_s}")
        self.N, self.M1, self.M2, self.H = int(N), int(M1), int(M2), int(H)
        self.front = _bare_front(front, C_s)
        self.C_s = int(getattr(self.front, "out_channels", C_S))
        for p in self.front.parameters():
            p.requires_grad_(False)
        self.front.eval()
        self.latent_codec: ScalableLatentCodec = self.make_latent_codec()
        # Per-channel statistics of s over the training set (dataset.json): g_a1 sees and g_s1 produces
        # s in these normalised units. V_front's channels differ in scale by orders of magnitude
        # (a seeded random front: std ~0.004), and unnormalised the base latent barely learns
        # (measured, see set_feature_stats). Identity until set; saved in the state.
        self.register_buffer("s_mean", torch.zeros(1, self.C_s, 1, 1))
        self.register_buffer("s_std", torch.ones(1, self.C_s, 1, 1))
        self._fingerprint: bytes | None = None
        # YOLOv3.provenance of the front (weights digest, split layer); saved in checkpoints.
        self.yolo_provenance: dict[str, Any] | None = None

    def make_latent_codec(self) -> ScalableLatentCodec:
        """The latent codec of the configuration: the layout of H (``dvcm.latent_codecs``)."""
        return latent_codec(self.H, self.M1, self.M2, self.N)

    # -- configuration -------------------------------------------------------------------
    @property
    def config(self) -> dict[str, int]:
        """N, M1, M2, H, and C_s when it is not standard YOLOv3's 256 (format 1 had no C_s)."""
        return {
            "N": self.N,
            "M1": self.M1,
            "M2": self.M2,
            "H": self.H,
            **({"C_s": self.C_s} if self.C_s != C_S else {}),
        }

    @property
    def downsampling_factor(self) -> int:
        return PAD_MULTIPLE

    def train(self, mode: bool = True) -> ScalableCodec:
        super().train(mode)
        self.front.eval()  # V_front is frozen: BN statistics never move
        return self

    # -- feature normalisation -------------------------------------------------------------
    def set_feature_stats(self, mean: Tensor, std: Tensor) -> None:
        """Per-channel mean and std of s (C_s each) from the training set; set before training.

        Measured on the sample set (choi2022 (16,32,2), 800 steps, whole validation frames):
        normalised D_s 0.46 with these statistics against 1.02 without (no better than the mean).
        """
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.numel() != self.C_s or std.numel() != self.C_s:
            raise ConfigError(
                f"feature statistics have {mean.numel()} channels, the codec's s has C_s = {self.C_s}; "
                "prepare the data with the same --yolo-weights/--yolo-cfg"
            )
        mean, std = mean.reshape(1, self.C_s, 1, 1), std.reshape(1, self.C_s, 1, 1)
        if not bool(torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ConfigError("feature statistics must be finite")
        self.s_mean.copy_(mean)
        self.s_std.copy_(std.clamp_min(1e-8))

    def normalize_features(self, s: Tensor) -> Tensor:
        return (s - self.s_mean) / self.s_std

    # -- transforms (subclasses) ---------------------------------------------------------
    def analysis(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """(y1, y2) from the padded image and the padded, *normalised* features."""
        raise NotImplementedError

    def synthesize_features(self, y1_hat: Tensor) -> Tensor:
        """ŝ in the units of s: g_s1 works in normalised units."""
        return self.g_s1(y1_hat) * self.s_std + self.s_mean

    def synthesize_pixels(self, y1_hat: Tensor, y2_hat: Tensor) -> Tensor:
        return self.g_s2(torch.cat([y1_hat, y2_hat], dim=1))

    # -- training / quantised forward ----------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        """s = V_front(x) with the frozen front (no gradients)."""
        with torch.no_grad():
            return self.front(x)

    def _prepare(self, x: Tensor, s: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Pad x and s to the coding size; returns (x_pad, s_pad, s)."""
        h, w = x.shape[-2:]
        if s is None:
            s = self.features(x)
        fh, fw = feature_size(h, w)
        if s.shape[-2:] != (fh, fw) or s.shape[1] != self.C_s:
            raise ValueError(f"s has shape {tuple(s.shape)}, expected [B, {self.C_s}, {fh}, {fw}] for a {h}x{w} image")
        ph, pw = padded_size(h, w)
        return _pad_to(x, (ph, pw)), _pad_to(s, (ph // 8, pw // 8)), s

    def forward(self, x: Tensor, s: Tensor | None = None) -> dict[str, Any]:
        h, w = x.shape[-2:]
        x_pad, s_pad, s = self._prepare(x, s)
        y1, y2 = self.analysis(x_pad, self.normalize_features(s_pad))
        coded = self.latent_codec(y1, y2)
        y1_hat, y2_hat = coded["y_hat"]
        x_hat = self.synthesize_pixels(y1_hat, y2_hat)[..., :h, :w]
        s_hat = self.machine_features(y1_hat, x_hat, (h, w))
        return {
            "x_hat": x_hat,
            "s_hat": s_hat,
            "s": s,
            "likelihoods": coded["likelihoods"],
            "y1_hat": y1_hat,
            "y2_hat": y2_hat,
        }

    def machine_features(self, y1_hat: Tensor, x_hat: Tensor | None, hw: tuple[int, int]) -> Tensor:
        """ŝ for V_back, cropped to the image's feature size: g_s1(ŷ1) here (the base layer alone);
        a single-layer codec runs V_front on its x̂ instead."""
        fh, fw = feature_size(*hw)
        return self.synthesize_features(y1_hat)[..., :fh, :fw]

    @torch.no_grad()
    def latents_and_scales(self, x: Tensor) -> dict[str, Tensor]:
        """ŷ1, ŷ2 and the scales σ1, σ2 with which the codec's own entropy model codes them (call in eval mode:
        the latents rounded and ẑ quantised, as when coding); what :mod:`dvcm.conditional_entropy` reads."""
        x_pad, s_pad, _ = self._prepare(x, None)
        y1, y2 = self.analysis(x_pad, self.normalize_features(s_pad))
        y1_hat, y2_hat = self.latent_codec(y1, y2)["y_hat"]
        sigma1, sigma2 = self.latent_codec.scales(y1, y2)
        return {"y1_hat": y1_hat, "y2_hat": y2_hat, "sigma1": sigma1, "sigma2": sigma2}

    # -- entropy coding ------------------------------------------------------------------
    def compress(self, x: Tensor) -> dict[str, Any]:
        """Code one image into base strings (what the machine needs) and enhancement strings.

        Returns ``base`` and ``enhancement`` (lists of bytes), ``hw`` and ``padded_hw``.
        """
        if x.shape[0] != 1:
            raise ValueError("compress codes one image at a time (batch size 1)")
        h, w = x.shape[-2:]
        x_pad, s_pad, _ = self._prepare(x, None)
        y1, y2 = self.analysis(x_pad, self.normalize_features(s_pad))
        check_latent(y1, "y1")
        check_latent(y2, "y2")
        base, enhancement = self.latent_codec.compress(y1, y2)
        return {"base": base, "enhancement": enhancement, "hw": (h, w), "padded_hw": x_pad.shape[-2:]}

    def _latent_shapes(self, padded_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        ph, pw = padded_hw
        return (ph // 16, pw // 16), (ph // 64, pw // 64)

    def _decode_base(self, base: list[bytes], padded_hw: tuple[int, int]) -> BaseLatent:
        return self.latent_codec.decompress_base(base, *self._latent_shapes(padded_hw))

    def decompress_base(self, base: list[bytes], hw: tuple[int, int], padded_hw: tuple[int, int]) -> dict[str, Tensor]:
        """Machine side: the base strings alone give ŷ1 and ŝ."""
        y1_hat = self._decode_base(base, padded_hw).y1_hat
        return {"y1_hat": y1_hat, "s_hat": self.machine_features(y1_hat, None, hw)}

    def decompress(
        self, base: list[bytes], enhancement: list[bytes], hw: tuple[int, int], padded_hw: tuple[int, int]
    ) -> dict[str, Tensor]:
        """Human side: base and enhancement strings give x̂ (and ŝ)."""
        decoded_base = self._decode_base(base, padded_hw)
        y1_hat = decoded_base.y1_hat
        y2_hat = self.latent_codec.decompress_enhancement(enhancement, *self._latent_shapes(padded_hw), decoded_base)
        h, w = hw
        x_hat = self.synthesize_pixels(y1_hat, y2_hat)[..., :h, :w]
        return {"x_hat": x_hat, "s_hat": self.machine_features(y1_hat, x_hat, hw), "y1_hat": y1_hat, "y2_hat": y2_hat}

    @property
    def segment_counts(self) -> tuple[int, int]:
        """Number of strings in the base and in the enhancement layer."""
        return self.latent_codec.segment_counts

    # -- identity of the coding model ----------------------------------------------------
    def update(self, scale_table: Tensor | None = None, force: bool = False, update_quantiles: bool = False) -> bool:
        updated = super().update(scale_table=scale_table, force=force, update_quantiles=update_quantiles)
        self._fingerprint = self.compute_fingerprint()
        return updated

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True):  # type: ignore[override]
        if "s_mean" not in state_dict and "s_std" not in state_dict:  # written before feature statistics existed
            state_dict = {**state_dict, "s_mean": torch.zeros_like(self.s_mean), "s_std": torch.ones_like(self.s_std)}
        # checkpoints of format version 1 name the latent codec's tensors without its prefix
        old = [k for k in state_dict if k.startswith(_FORMAT_V1_KEYS)]
        if old and any(k.startswith(LATENT_CODEC) for k in state_dict):
            raise ConfigError(
                f"the state holds both {old[0]!r} (format version 1) and latent_codec.* keys; "
                "save it again with dvcm.checkpoint.save_checkpoint"
            )
        state_dict = {(LATENT_CODEC + k if k.startswith(_FORMAT_V1_KEYS) else k): v for k, v in state_dict.items()}
        result = super().load_state_dict(state_dict, strict=strict)
        self._fingerprint = self.compute_fingerprint()
        return result

    def compute_fingerprint(self) -> bytes:
        """8 bytes of sha256 over the model name, configuration and every tensor of the state.

        The tensors are named as format version 1 named them (the latent codec's without its prefix),
        so that every file written so far matches its checkpoint."""
        digest = hashlib.sha256(json.dumps({"name": self.name, **self.config}, sort_keys=True).encode())
        state = {k.removeprefix(LATENT_CODEC): v for k, v in self.state_dict().items()}
        for key, value in sorted(state.items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.digest()[:8]

    @property
    def fingerprint(self) -> bytes | None:
        """Set by ``update()`` or ``load_state_dict()``; None until the entropy tables exist."""
        return self._fingerprint


@register_model("dvcm-proposed")
class ProposedCodec(ScalableCodec):
    """The proposed disentangled codec: s = V_front(x) is an input of the base analysis g_a1."""

    name = "proposed"

    def __init__(
        self,
        N: int = 192,
        M1: int = 64,
        M2: int = 192,
        H: int = 2,
        front: nn.Module | None = None,
        C_s: int | None = None,
    ) -> None:
        super().__init__(N=N, M1=M1, M2=M2, H=H, front=front, C_s=C_s)
        self.g_a1 = nn.Sequential(
            conv(self.C_s + 3, N, stride=1),
            GDN(N),
            conv(N, N, stride=1),
            GDN(N),
            conv(N, M1, stride=2),
        )
        self.g_a2 = image_analysis(M2, N)
        self.g_s1 = feature_synthesis(M1, N, self.C_s)
        self.g_s2 = pixel_synthesis(M1 + M2, N)

    def analysis(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        x_small = F.interpolate(x, size=s.shape[-2:], mode="bicubic", align_corners=False)
        return self.g_a1(torch.cat([s, x_small], dim=1)), self.g_a2(x)


@register_model("dvcm-choi2022")
class Choi2022Codec(ScalableCodec):
    """Choi & Bajić 2022 latent-space scalability on the same base: one g_a, y split in (y1, y2)."""

    name = "choi2022"

    def __init__(
        self,
        N: int = 192,
        M1: int = 128,
        M2: int = 64,
        H: int = 1,
        front: nn.Module | None = None,
        C_s: int | None = None,
    ) -> None:
        super().__init__(N=N, M1=M1, M2=M2, H=H, front=front, C_s=C_s)
        self.g_a = image_analysis(M1 + M2, N)
        self.g_s1 = self.latent_space_transform(M1, N, self.C_s)
        self.g_s2 = pixel_synthesis(M1 + M2, N)

    @staticmethod
    def latent_space_transform(M1: int, N: int, C_s: int) -> nn.Module:
        """The LST ŷ1 -> ŝ: g_s1's layer plan (Table 1); a subclass may give another (dvcm.residual_lst)."""
        return feature_synthesis(M1, N, C_s)

    def analysis(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        y = self.g_a(x)
        return y[:, : self.M1], y[:, self.M1 :]


def __getattr__(name: str) -> Any:
    """``build`` and ``MODEL_NAMES``, which this module had before the codec registry (:mod:`dvcm.registry`)."""
    if name in ("build", "MODEL_NAMES"):
        from dvcm import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_config(text: str) -> tuple[int, int, int]:
    """``64,192,2`` -> (M1, M2, H) of a scalable codec (before the registry; ``codec_spec(name).parse`` now)."""
    from dvcm.registry import codec_spec

    c = codec_spec("proposed").parse(text)
    return c["M1"], c["M2"], c["H"]
