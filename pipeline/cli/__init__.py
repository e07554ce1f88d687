"""The ``dvcm-pipeline`` command line.

Each job lives in its own module and adds its commands with ``register(app, bench)``;
this file only assembles them and turns user errors into one clear line.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

import typer

from dvcm.errors import DvcmError
from pipeline.infra.ray_runtime import quiet_warnings

app = typer.Typer(
    name="dvcm-pipeline",
    help="Scalable image coding for humans and machines: prepare, train, sweep, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench = typer.Typer(help="Benchmarks: print a table and its ratios, measured side by side.", no_args_is_help=True)
app.add_typer(bench, name="bench")

# One module per job; each defines register(app, bench).
COMMAND_MODULES: tuple[str, ...] = (
    "pipeline.codec.files",
    "pipeline.data.prepare",
    "pipeline.training.train",
    "pipeline.training.sweep",
    "pipeline.evaluation.evaluate",
    "pipeline.evaluation.report",
    "pipeline.workflows.quickstart",
)

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app, bench)


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
    except KeyboardInterrupt:
        typer.secho("interrupted; rerun the same command to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
