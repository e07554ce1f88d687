"""User errors of the workflow: printed as one line by the CLI, exit code 2."""

from dvcm.errors import DvcmError


class UserError(DvcmError):
    """A mistake in what the user asked for (bad flag, missing path, wrong data)."""


def check_unit_interval(flag: str, value: float) -> float:
    """A threshold (a detection confidence, an NMS IoU) must be a number in [0, 1]: refused in one line otherwise."""
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):  # NaN fails both comparisons
        raise UserError(f"{flag} must be a number between 0 and 1, got {value!r}")
    return float(value)
