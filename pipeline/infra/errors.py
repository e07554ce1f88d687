"""User errors of the workflow: printed as one line by the CLI, exit code 2."""

from dvcm.errors import DvcmError


class UserError(DvcmError):
    """A mistake in what the user asked for (bad flag, missing path, wrong data)."""
