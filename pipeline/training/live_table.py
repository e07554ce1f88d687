"""The sweep's live table: one row per trial (state, epoch, losses, val bpp and PSNR), never cut."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrialRow:
    """What the live table shows for one trial."""

    name: str
    state: str = "PENDING"
    epoch: int = 0
    epochs: int = 0
    train_loss: float = float("nan")
    val_loss: float = float("nan")
    bpp: float = float("nan")
    psnr: float = float("nan")
    note: str = ""


def trial_notes(rows: dict[str, TrialRow]) -> list[str]:
    """One line per trial note (checkpoint path or error), to print whole (``soft_wrap``) so paths can be copied."""
    return [f"{r.name}: {r.note}" for r in rows.values() if r.note]


def render_table(
    rows: dict[str, TrialRow], title: str, width: int | None = None, notes: bool = True
):  # -> rich renderable
    """A rich table of the trials, then (``notes``) one line per trial note, folded to the width.

    ``width``: the terminal's columns (default: the console's).
    """
    from rich import get_console
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def fmt(v: float, spec: str) -> str:
        return "-" if v != v else format(v, spec)

    cells = {
        r.name: {
            "trial": r.name,
            "state": r.state,
            "epoch": f"{r.epoch}/{r.epochs}",
            "loss": fmt(r.train_loss, ".4g"),
            "val loss": fmt(r.val_loss, ".4g"),
            "val bpp": fmt(r.bpp, ".3g"),
            "val PSNR": fmt(r.psnr, ".2f"),
        }
        for r in rows.values()
    }
    columns = ["trial", "state", "epoch", "loss", "val loss", "val bpp", "val PSNR"]
    widths = {c: max([len(c), *(len(row[c]) for row in cells.values())]) for c in columns}
    # Nothing is ever cut: on a narrow terminal the least read columns are left out instead, in this order.
    for optional in ("loss", "val loss", "epoch"):
        if sum(widths[c] for c in columns) + 3 * len(columns) + 1 <= (width or get_console().width):
            break
        columns.remove(optional)
    table = Table(title=title)
    for c in columns:
        table.add_column(c, no_wrap=True, min_width=widths[c], justify="left" if c in ("trial", "state") else "right")
    for row in cells.values():
        table.add_row(*(row[c] for c in columns))
    return Group(table, *(Text(line, overflow="fold") for line in (trial_notes(rows) if notes else [])))
