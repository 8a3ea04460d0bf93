"""Errors of ``fleet model optimize``: each names the file or value it is about.

They derive from :class:`fleet.errors.FleetError`, so the CLI prints one line and exits
non-zero the same way it does for every other fleet command.
"""

from __future__ import annotations

from fleet.errors import FleetError

EXIT_BAD_INPUT = 65  # sysexits EX_DATAERR: a model or data file that cannot be used
EXIT_USAGE = 64  # sysexits EX_USAGE: options out of range or missing


class OptimizeError(FleetError):
    """An optimization step failed, or an input to it cannot be used."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(f"{message}: {path}")


class DatasetError(OptimizeError):
    """A calibration or evaluation ``.npz`` is missing, unreadable or of the wrong shape."""


class ModelFileError(OptimizeError):
    """A model file is missing or does not load in ONNX Runtime."""


class OptionsError(FleetError):
    """The command's options do not fit together or are out of range."""

    exit_code = EXIT_USAGE
