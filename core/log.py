"""Messages that are not a command's result (progress, what was skipped, warnings) go through
Python's ``logging``, under the ``cai`` logger; the result itself is printed by the command.

``cai`` shows them on stderr at INFO (``CAI_LOG_LEVEL=WARNING`` quiets them); a program that
calls the stages' Python functions configures logging as it likes.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "cai"


def get_logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (pass ``__name__``), below the ``cai`` logger."""
    return logging.getLogger(f"{ROOT}.{name}")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler sets it; the property always answers sys.stderr
        pass


def configure() -> None:
    """Show the ``cai`` loggers' messages on stderr (once per process)."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        logger.addHandler(_StderrHandler())
    level = os.environ.get("CAI_LOG_LEVEL", "INFO").upper()
    logger.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
