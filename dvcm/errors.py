"""Errors the codec library raises for bad input.

Every error here is a user-facing problem (a bad file, a wrong checkpoint), not a bug:
the CLI prints its message as one line and exits non-zero, without a traceback.
"""


class DvcmError(Exception):
    """Base class of every error caused by bad input rather than by a bug."""


class BitstreamError(DvcmError):
    """A bitstream is malformed, truncated, corrupted or from another model."""


class DarknetWeightsError(DvcmError):
    """A Darknet ``.weights`` file does not match the network."""


class DarknetCfgError(DvcmError):
    """A Darknet ``.cfg`` file is not one of the YOLOv3 family that dvcm builds."""


class CheckpointError(DvcmError):
    """A checkpoint cannot be loaded (unknown model, wrong format, unsafe content)."""


class ConfigError(DvcmError, ValueError):
    """A model name or configuration is invalid."""
