"""What images cost to code against natural photos: the bpp search, the comparison, and the world's two styles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluation.anchors import ANCHORS
from pipeline.evaluation.image_cost import (
    CostComparison,
    bpp_at_psnr,
    code_point,
    image_cost,
    reference_photos,
)


def _image(texture: float, seed: int = 0) -> Image.Image:
    """A 128×96 gradient with a luminance texture of ``texture`` grey levels (std)."""
    rng = np.random.default_rng(seed)
    g = np.linspace(40, 200, 128)[None, :, None] + np.zeros((96, 1, 3))
    g = g + texture * rng.standard_normal((96, 128, 1))
    return Image.fromarray(np.clip(g, 0, 255).astype(np.uint8))


def test_bpp_at_psnr_lies_between_the_two_settings_that_bracket_the_target() -> None:
    img = _image(6.0)
    target = 36.0
    bpp = bpp_at_psnr(img, "jpeg", target)
    points = [code_point(img, ANCHORS["jpeg"], q) for q in range(1, 96)]
    below = max((p for p in points if p.psnr < target), key=lambda p: p.param)
    above = min((p for p in points if p.psnr >= target and p.param > below.param), key=lambda p: p.param)
    assert above.param == below.param + 1  # JPEG's PSNR rises with quality over this image
    assert min(below.bpp, above.bpp) <= bpp <= max(below.bpp, above.bpp)


def test_more_texture_and_a_higher_target_cost_more_bits() -> None:
    smooth, rough = _image(1.0), _image(12.0)
    assert bpp_at_psnr(rough, "jpeg") > 2 * bpp_at_psnr(smooth, "jpeg")
    assert bpp_at_psnr(rough, "jpeg", 38.0) > bpp_at_psnr(rough, "jpeg", 33.0)
    assert bpp_at_psnr(_image(120.0), "jpeg", 60.0) == math.inf  # out of JPEG's reach: infinitely costly


def test_comparison_holds_only_within_the_factor_for_every_codec() -> None:
    c = CostComparison(35.0, {"jpeg": 1.0, "hevc": 0.5}, {"jpeg": 1.9, "hevc": 0.6})
    assert c.holds() and c.ratio("jpeg") == pytest.approx(1.9)
    assert not CostComparison(35.0, {"jpeg": 1.0, "hevc": 0.1}, {"jpeg": 1.9, "hevc": 0.6}).holds()
    assert not CostComparison(35.0, {"jpeg": 1.0}, {"hevc": 0.6}).holds()  # nothing measured on both
    lines = c.lines("world")
    assert len(lines) == 2 and "1.9× cheaper than photos; within" in lines[0]


@pytest.mark.slow
def test_photographic_world_costs_what_photos_cost_and_the_plain_one_does_not() -> None:
    """The study's first condition, measured: JPEG's and HEVC-intra's bpp at 35 dB on Kodak-like scenes of each
    style against scikit-image's photos (the plain world: 13× and 79× cheaper on 6 scenes at 78d43df)."""
    from pipeline.data.sample_data import kodak_scene
    from pipeline.data.world import WORLD_STYLES
    from pipeline.evaluation.image_cost import CostComparison

    if ANCHORS["hevc"].missing() is not None:
        pytest.skip(ANCHORS["hevc"].missing())
    photos = image_cost(reference_photos())
    assert 0.5 < photos["jpeg"] < 4 and 0.3 < photos["hevc"] < 3  # photos: about 1-2.4 and 0.6-1.5 bpp
    held = {}
    for style in WORLD_STYLES:
        scenes = [Image.fromarray(kodak_scene(0, n, style).image) for n in range(4)]
        held[style] = CostComparison(35.0, image_cost(scenes), photos)
    assert held["photographic"].holds(), held["photographic"].lines("world")
    assert not held["plain"].holds() and held["plain"].ratio("hevc") > 10, held["plain"].lines("world")


def test_the_study_takes_a_known_world_style_only() -> None:
    from pipeline.infra.errors import UserError
    from pipeline.workflows.reproduce import study_preset

    assert study_preset("mini", None, None, None, None, None, {"world_style": "photographic"}).world_style == (
        "photographic"
    )
    with pytest.raises(UserError, match="--world-style 'glossy': one of plain, photographic"):
        study_preset("mini", None, None, None, None, None, {"world_style": "glossy"})


@pytest.mark.slow
def test_the_plan_prints_the_world_against_photos() -> None:
    from pipeline.workflows.reproduce import world_cost_lines

    lines = world_cost_lines("photographic", images=1)
    assert lines[0].startswith(
        "  images against natural photos (photographic world, 1 Kodak-like scenes; the condition "
    )
    assert any("JPEG (Pillow) at 35 dB: world " in line for line in lines[1:])
