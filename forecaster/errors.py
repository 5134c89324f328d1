"""Errors forecaster raises on purpose: each carries one line that says what is wrong and how to fix it."""

from __future__ import annotations


class ForecasterError(Exception):
    """Base class for errors reported to the user as one line (CLI exit code 2)."""

    exit_code = 2


class DataError(ForecasterError):
    """The input table is malformed or cannot identify the model."""


class SpecError(ForecasterError):
    """A model specification file is malformed."""


class QueryError(ForecasterError):
    """A forecast/plot query names something the fit does not know (task, family, setting, metric)."""


class FitFileError(ForecasterError):
    """A saved fit cannot be read."""
