"""``bench loss-balance``: the ablation of ŷ1 in g_s2 and the weighted terms' gradients on ŷ1 and ŷ2."""

from __future__ import annotations

import math

import pytest

from pipeline.bench.loss_balance import run_loss_balance

pytestmark = pytest.mark.slow  # two zoo checkpoints forward and backward on 512×512 scenes


@pytest.mark.parametrize("checkpoint", ["zoo:proposed-l0.0932", "zoo:choi2022-l0.0932"])
def test_each_term_pulls_in_proportion_to_its_weight(checkpoint: str) -> None:
    r = run_loss_balance(checkpoint, images=1, lambdas=(0.0018, 0.0932))
    assert all(math.isfinite(v) and v > 10 for v in r["ablation"].values())
    low, high = r["gradients"]
    # one forward at one seed: λ·D_x's gradient scales with λ exactly, R's and γ·D_s's (γ fixed) do not move
    assert high["λ·D_x"]["rms_grad_y2"] / low["λ·D_x"]["rms_grad_y2"] == pytest.approx(0.0932 / 0.0018, rel=1e-4)
    assert high["γ·D_s"]["rms_grad_y1"] == pytest.approx(low["γ·D_s"]["rms_grad_y1"], rel=1e-6)
    assert high["γ·D_s"]["rms_grad_y2"] == 0.0  # ŝ = g_s1(ŷ1): D_s does not reach ŷ2
    assert high["R"]["rms_grad_y1"] > 0 and high["bpp_base"] > 0


def test_a_single_layer_codec_is_refused() -> None:
    from pipeline.infra.errors import UserError

    with pytest.raises(UserError, match="single-layer codec"):
        run_loss_balance("zoo:bmshj2018-l0.0932", images=1)
