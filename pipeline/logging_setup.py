"""Logging for a run: messages to the console and to a log file, as DIALS writes dials.<step>.log.

Code in both packages logs through ``logging.getLogger(__name__)`` and never configures logging;
:func:`run_logging` attaches handlers to the ``pipeline`` and ``algorithms`` loggers for the
duration of one run (the CLI's ``<step>.log``, or one data set's log in the Dask pipeline) and
removes them afterwards, so runs in one process (tests, Dask threads) do not accumulate handlers.
Messages are plain text; errors go to stderr instead of stdout.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import shlex
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from pipeline.params import format_parameters

LOGGER_NAMES = ("pipeline", "algorithms")


def ewald_version() -> str:
    try:
        return importlib.metadata.version("ewald")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown: not installed)"


@contextlib.contextmanager
def run_logging(log_path: str | os.PathLike | None, *, verbose: bool = False, console: bool = True,
                this_thread_only: bool = False) -> Iterator[logging.Logger]:
    """Log INFO (DEBUG if ``verbose``) to stdout/stderr (if ``console``) and to ``log_path``
    (overwritten; None for no file). ``this_thread_only`` keeps only records logged by the calling
    thread, so that data sets processed in parallel Dask threads each get their own log file.
    Yields the ``pipeline`` logger."""
    level = logging.DEBUG if verbose else logging.INFO
    handlers: list[logging.Handler] = []
    if console:
        stdout = logging.StreamHandler(sys.stdout)
        stdout.addFilter(lambda record: record.levelno < logging.ERROR)
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setLevel(logging.ERROR)
        handlers += [stdout, stderr]
    if log_path is not None:
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    thread = threading.get_ident()
    for handler in handlers:
        handler.setLevel(max(level, handler.level))
        handler.setFormatter(logging.Formatter("%(message)s"))
        if this_thread_only:
            handler.addFilter(lambda record: record.thread == thread)
    loggers = [logging.getLogger(name) for name in LOGGER_NAMES]
    saved_levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(min(level, logger.level or level))
        for handler in handlers:
            logger.addHandler(handler)
    try:
        yield logging.getLogger("pipeline")
    finally:
        for logger, saved_level in zip(loggers, saved_levels):
            for handler in handlers:
                logger.removeHandler(handler)
            logger.setLevel(saved_level)
        for handler in handlers:
            handler.close()


def log_run_header(logger: logging.Logger, command: Sequence[str], params: Any) -> None:
    """The start of every log: ewald's version, the command line and the modified parameters."""
    logger.info("ewald %s", ewald_version())
    logger.info("Command line: %s", shlex.join(command))
    changed = format_parameters(params, show_help=False, only_changed=True)
    if changed:
        logger.info("The following parameters have been modified:\n\n%s", changed)
