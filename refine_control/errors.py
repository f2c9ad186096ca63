"""Expected failures. The CLIs turn these into one line on stderr and an exit code, never a traceback."""


class RefineError(Exception):
    """Base class for failures a user can fix; exit code 1 unless a subclass says otherwise."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(RefineError):
    """Bad arguments or bad input files (a usage error): exit code 2."""

    exit_code = 2


class CheckpointError(RefineError):
    """A checkpoint or output could not be written or read back (disk full, corrupted files): exit code 2."""

    exit_code = 2


class ExportError(RefineError):
    """The model could not be exported."""


class ParityError(ExportError):
    """The exported model does not reproduce the PyTorch model within the thresholds."""
