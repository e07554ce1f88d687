"""The ``dvcm-pipeline`` command line.

Each module of this package holds the typer commands of one stage (they parse, call one library
function and print); this file only assembles them and turns user errors into one clear line.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer

from dvcm.errors import DvcmError
from pipeline.cli import codec, detector, doctor, evaluate, prepare, quickstart, report, reproduce, training
from pipeline.cli.bench import bench
from pipeline.infra.ray_runtime import VERBOSE_ENV, quiet_warnings

app = typer.Typer(
    name="dvcm-pipeline",
    help="Scalable image coding for humans and machines: prepare, train, sweep, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def options(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show every line of Ray's and MLflow's output (nothing filtered)."
    ),
) -> None:
    """Scalable image coding for humans and machines: prepare, train, sweep, evaluate."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # read by the Ray runtime and its workers


app.command("compress")(codec.compress_command)
app.command("decompress")(codec.decompress_command)
app.command("demo")(codec.demo_command)
app.command("prepare")(prepare.prepare_command)
app.command("train")(training.train_command)
app.command("sweep")(training.sweep_command)
app.command("evaluate")(evaluate.evaluate_command)
app.command("report")(report.report_command)
app.command("train-detector")(detector.train_detector_command)
app.command("quickstart")(quickstart.quickstart_command)
app.command("reproduce")(reproduce.reproduce_command)
app.add_typer(bench, name="bench")
app.command("doctor")(doctor.doctor_command)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    return f"warning: {message}\n"


def main() -> None:
    """Entry point: run the app; a user error is one line on stderr and exit code 2."""
    warnings.formatwarning = _one_line_warning
    quiet_warnings()
    # MLflow draws a progress bar per artifact download (a checkpoint each): noise between our bars.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A new SQLite store logs its schema migration at INFO: not news to the user.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    try:
        app()
    except DvcmError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except OSError as exc:  # the last net: what the file system refused, in one line, never a traceback
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        typer.secho(f"error: {exc.strerror or exc}{where}; check the paths you gave", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted; rerun the same command to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
