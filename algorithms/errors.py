"""The error base class shared by both layers.

Algorithms raise :class:`DataError` when the data cannot support a result (too few spots to
index, a singular refinement); the pipeline adds file and parameter errors. The CLI prints any
:class:`EwaldError` in one line, without a traceback, and exits with status 2.
"""


class EwaldError(Exception):
    """A problem the user can act on. The message says what was wrong, where, and what to try."""


class DataError(EwaldError):
    """The data cannot be processed by a step (e.g. a crystal that does not index)."""
