"""Errors a user can act on.

Every validation failure raises an `EdgeTuneError` subclass carrying the path it concerns and a hint
that says how to fix it; the CLI turns it into one line (`Error: <path>: <what>. <fix>`), never a
traceback.
"""

from __future__ import annotations

from pathlib import Path


class EdgeTuneError(Exception):
    """A problem the user can fix; `str()` is the one-line message the CLI prints."""

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:  # a sentence of its own: "<what is wrong>. <What to do>"
            text = f"{text.rstrip('.')}. {self.hint[:1].upper()}{self.hint[1:]}"
        return text


class BundleError(EdgeTuneError):
    """A bundle directory is missing, altered, foreign or of an unsupported format."""


class ProviderError(EdgeTuneError):
    """An execution provider was asked for that cannot run here."""


class DataError(EdgeTuneError):
    """A shots folder, split file or image set is unusable."""


class CheckpointError(EdgeTuneError):
    """A run directory or optimiser state cannot be resumed."""


class NumericalError(EdgeTuneError):
    """The objective returned only NaN/inf, or an optimiser state went non-finite."""


class ExportError(EdgeTuneError):
    """Export failed: missing extra, unknown model, bad checkpoint, parity above tolerance."""
