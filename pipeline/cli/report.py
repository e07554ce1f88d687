"""``dvcm-pipeline report``: one HTML page of an evaluation folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.codec.files import check_output
from pipeline.evaluation.report import write_report


def report_command(
    eval_dir: Annotated[Path, typer.Option(help="The --out folder of 'dvcm-pipeline evaluate'.")] = Path("eval"),
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default: <eval-dir>/report.html).")] = None,
    curves: Annotated[
        list[Path] | None,
        typer.Option(
            "--curves",
            help="A curve in CompressAI's eval_model JSON format ({name, results: {bpp, psnr-rgb, ms-ssim-rgb} "
            "or {bpp, map50}}) to overlay and add to the BD table; repeat for several.",
        ),
    ] = None,
) -> None:
    """Write one self-contained HTML page with the plots and the BD-rate table."""
    if out is not None:
        check_output(out, "--out", "report.html")
    typer.echo(f"report written to {write_report(eval_dir, out, curve_files=list(curves or []))}")
