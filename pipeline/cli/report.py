"""``dvcm-pipeline report``: one HTML page of an evaluation folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.evaluation.report import write_report


def report_command(
    eval_dir: Annotated[Path, typer.Option(help="The --out folder of 'dvcm-pipeline evaluate'.")] = Path("eval"),
    out: Annotated[Optional[Path], typer.Option(help="HTML file to write (default: <eval-dir>/report.html).")] = None,
) -> None:
    """Write one self-contained HTML page with the plots and the BD-rate table."""
    typer.echo(f"report written to {write_report(eval_dir, out)}")
