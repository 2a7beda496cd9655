"""Errors a user can cause. The CLI prints them in one line, without a traceback, and exits 2."""
from algorithms.errors import DataError, EwaldError

__all__ = ["EwaldError", "DataError", "InputFileError", "ParameterError"]


class InputFileError(EwaldError):
    """An input file is missing, unreadable, truncated or not in the expected format."""


class ParameterError(EwaldError):
    """A parameter is unknown, ambiguous or has an invalid value."""
