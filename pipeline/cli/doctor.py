"""``dvcm-pipeline doctor``: a self-check of this machine (``pipeline.bench.doctor``), one line per check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from pipeline.bench.doctor import FAIL, PASS, SKIP, Check, doctor_table, machine_line, resolve_device, run_doctor
from pipeline.codec.files import check_output
from pipeline.infra.atomic import atomic_write_json

COLORS = {PASS: typer.colors.GREEN, FAIL: typer.colors.RED, SKIP: typer.colors.YELLOW}


def _print(check: Check) -> None:
    typer.secho(check.line(), fg=COLORS.get(check.status))


def doctor_command(
    device: Annotated[
        str | None,
        typer.Option(help="cuda or cpu: the device to check (default: cuda where torch sees a GPU, else cpu)."),
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the table to this JSON file (schema dvcm-doctor/1).")
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            envvar="RAY_ADDRESS",
            help="Ray cluster to check for GPUs (default RAY_ADDRESS; without either that check is a SKIP).",
        ),
    ] = None,
    shards: Annotated[
        str | None,
        typer.Option(help="Prepared shards: compare the loader's samples/s with the training step's (else a SKIP)."),
    ] = None,
) -> None:
    """Check this machine in at most two minutes: torch, CUDA, bf16 and the packages; a file coded on the device and decoded on the CPU (and the reverse); a training step of proposed at N=192 in fp32 and AMP; an all-reduce; Ray's GPUs (--address); the loader (--shards). Exit code 1 on any FAIL."""
    device = resolve_device(device)
    if json_file is not None:
        check_output(json_file, "--json", "doctor.json")
    typer.echo(f"dvcm doctor: {machine_line(device)}")
    t0 = time.perf_counter()
    checks = run_doctor(device, address=address, shards=shards, report=_print)
    table = doctor_table(checks, device, time.perf_counter() - t0)
    counts = table["counts"]
    typer.echo(f"{counts[PASS]} PASS, {counts[FAIL]} FAIL, {counts[SKIP]} SKIP in {table['seconds']:.0f} s")
    if json_file is not None:
        atomic_write_json(json_file, table)
        typer.echo(f"table: {json_file}")
    raise typer.Exit(table["exit_code"])
