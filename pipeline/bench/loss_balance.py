"""``bench loss-balance``: why a base layer follows λ or not, from the terms of the loss at one checkpoint.

Under the paper's Eq. 2 (L = R + λ·D_x + γ·D_s, γ fixed) the base latent ŷ1 follows λ only through what λ·D_x asks
of it, and λ·D_x reaches ŷ1 only through g_s2 (x̂ = g_s2(ŷ1, ŷ2)). Two measurements on a two-layer checkpoint, on
unseen test scenes of the synthetic world at 512×512:

1. **What g_s2 takes from ŷ1**: the PSNR of x̂ with ŷ1 as coded, and with ŷ1 replaced by each channel's mean over
   the images (an ablation: the drop is what the image detail in ŷ1 is worth to the decoder).
2. **The pull of each term on each latent**: the root-mean-square gradient of R, λ·D_x and γ·D_s (as weighted by
   Eq. 2, or by ``scaled``: λ·γ) with respect to ŷ1 and to ŷ2, in training mode (additive uniform noise, as the
   loss sees it), for each λ. When λ·D_x's pull on ŷ1 stays small beside γ·D_s's at every λ, the base layer's
   rate cannot follow λ: the image detail λ asks for is cheaper in ŷ2.

Prints a table per measurement; returns the figures.
"""

from __future__ import annotations

from typing import Any

PAPER_LAMBDAS = (0.0018, 0.0067, 0.025, 0.0932)


def run_loss_balance(
    checkpoint: str = "zoo:proposed-l0.0932",
    images: int = 8,
    lambdas: tuple[float, ...] = PAPER_LAMBDAS,
    gamma: float = 1.0,
    gamma_mode: str = "fixed",
    seed: int = 0,
) -> dict[str, Any]:
    """Measure and print both tables (module docstring)."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from dvcm.checkpoint import load_checkpoint
    from dvcm.loss import ScalableRDLoss, feature_weight
    from pipeline.data.world import render_world_scene, split_seed
    from pipeline.infra.errors import UserError

    model, _ = load_checkpoint(checkpoint)
    if model.layers != 2:
        raise UserError(f"{checkpoint} is a single-layer codec ({model.name}): it has no base latent ŷ1 to weigh")
    world = split_seed(0, "test")
    x = torch.stack(
        [
            torch.from_numpy(render_world_scene(world, 1_000_000 + n, (512, 512)).image).permute(2, 0, 1).float() / 255
            for n in range(images)
        ]
    )
    con = Console()

    # 1. what g_s2 takes from ŷ1 (eval mode: the latents rounded, as decoded)
    model.eval()
    with torch.no_grad():
        out = model(x)
        y1, y2 = out["y1_hat"], out["y2_hat"]
        mean_y1 = y1.mean(dim=(0, 2, 3), keepdim=True).expand_as(y1)

        def psnr(y1_in: torch.Tensor) -> float:
            x_hat = model.synthesize_pixels(y1_in, y2)[..., : x.shape[-2], : x.shape[-1]].clamp(0, 1)
            return float(10 * torch.log10(1 / torch.mean((x_hat - x) ** 2)))

        ablation = {"psnr_coded": psnr(y1), "psnr_y1_at_its_mean": psnr(mean_y1)}
    table = Table(title=f"what g_s2 takes from ŷ1 ({checkpoint}, {images} world test scenes at 512×512)")
    for col in ("x̂ from", "PSNR dB"):
        table.add_column(col)
    table.add_row("ŷ1 and ŷ2 as coded", f"{ablation['psnr_coded']:.2f}")
    table.add_row("ŷ1 replaced by its channel means, ŷ2 as coded", f"{ablation['psnr_y1_at_its_mean']:.2f}")
    con.print(table)

    # 2. the pull of each term on each latent (training mode, as the loss sees the latents)
    model.train()
    rows = []
    for lmbda in lambdas:
        torch.manual_seed(seed)
        loss_fn = ScalableRDLoss(lmbda, feature_weight(lmbda, gamma, gamma_mode), model.s_mean, model.s_std)
        out = model(x)
        terms = loss_fn(out, x)
        weighted = {
            "R": terms["bpp"],
            "λ·D_x": loss_fn.lmbda * terms["D_x"],
            "γ·D_s": loss_fn.gamma * terms["D_s"],
        }
        row: dict[str, Any] = {
            "lambda": lmbda,
            "bpp_base": float(terms["bpp_base"].detach()),
            "bpp_enh": float(terms["bpp_enh"].detach()),
        }
        for name, value in weighted.items():
            g1, g2 = torch.autograd.grad(value, (out["y1_hat"], out["y2_hat"]), retain_graph=True, allow_unused=True)
            row[name] = {
                "value": float(value.detach()),
                "rms_grad_y1": 0.0 if g1 is None else float(g1.pow(2).mean().sqrt()),
                "rms_grad_y2": 0.0 if g2 is None else float(g2.pow(2).mean().sqrt()),
            }
        rows.append(row)
    weight = f"γ {gamma:g}" + (" × λ" if gamma_mode == "scaled" else " fixed (Eq. 2)")
    table = Table(title=f"RMS gradient of each weighted term on ŷ1 and ŷ2 ({weight}; training mode, seed {seed})")
    for col in ("λ", "∇ŷ1 R", "∇ŷ1 λ·D_x", "∇ŷ1 γ·D_s", "λ·D_x / γ·D_s on ŷ1", "∇ŷ2 R", "∇ŷ2 λ·D_x"):
        table.add_column(col, justify="right")
    for row in rows:
        ratio = row["λ·D_x"]["rms_grad_y1"] / max(row["γ·D_s"]["rms_grad_y1"], 1e-30)
        table.add_row(
            f"{row['lambda']:g}",
            f"{row['R']['rms_grad_y1']:.3g}",
            f"{row['λ·D_x']['rms_grad_y1']:.3g}",
            f"{row['γ·D_s']['rms_grad_y1']:.3g}",
            f"{ratio:.3g}",
            f"{row['R']['rms_grad_y2']:.3g}",
            f"{row['λ·D_x']['rms_grad_y2']:.3g}",
        )
    con.print(table)
    return {"checkpoint": checkpoint, "images": images, "ablation": ablation, "gradients": rows}
