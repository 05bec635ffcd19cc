"""What every resumable stage run shares: its output held, rows landed whole as they finish, a stop recorded.

A stage (``cai generate``, ``cai judge``) claims its output (one writer at a time; ``--overwrite`` removes
the output and its side files first), appends each finished row with its side records under held
interrupts, so a row lands whole or not at all, and turns Ctrl-C, SIGTERM or a ``UserError`` into a
recorded stop: its appenders are closed, its progress and engines closed, and its manifest written with the
counts of the file, with Ctrl-C and SIGTERM held from the moment the rows stop until the stage ends; then
the stop is raised.  A stage without an output of rows (``cai judge agreement``, ``cai eval``) uses the
same streaming and closing::

    with StageRun(out, config.sync_rows, config.sync_seconds, config.overwrite, side_files) as run:
        rows_out = run.appender(out)
        with run.stoppable():                  # a stop inside is recorded in ``run.stopped``
            backend = (backend if backend is not None else run.closes(make_backend())).load()  # the caller's, or built and closed here
            run.progress = Progress(...)
            run.stream(items, worker, in_flight, land)
        ...                                    # rewrite, counts (``run.stop_reason``)
        run.save_manifest(lambda: write_manifest(...))
        run.raise_if_stopped(count_lines(out))
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from . import aio
from .errors import UserError
from .log import get_logger
from .progress import Progress
from .signals import Terminated, hold_interrupts
from .store import JsonlAppender, errors_path, exclusive_output, manifest_path, read_manifest

logger = get_logger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


def stop_reason(stopped: BaseException) -> str:
    """How a run stopped, as its manifest records it: "terminated" (SIGTERM), "interrupted" (Ctrl-C) or "error"."""
    if isinstance(stopped, Terminated):
        return "terminated"
    return "interrupted" if isinstance(stopped, KeyboardInterrupt) else "error"


class StageRun:
    """One run of a stage (see the module docstring).

    ``out``: the output claimed for the run (None: none, e.g. a report written whole at the end).
    ``overwrite``: start fresh: ``out``, its errors file, its manifest and ``side_files`` are removed once
    the output is claimed.  ``previous`` is the manifest found then (None when there is none).
    """

    def __init__(self, out: Path | None = None, sync_rows: int = 256, sync_seconds: float = 5.0,
                 overwrite: bool = False, side_files: Sequence[Path] = ()):
        self.out, self.sync_rows, self.sync_seconds = out, sync_rows, sync_seconds
        self._overwrite, self._side_files = overwrite, side_files
        self.previous: dict | None = None
        self.stopped: BaseException | None = None
        self.progress: Progress | None = None
        self._appenders: list[JsonlAppender] = []
        self._closers: list[Callable[[], object]] = []
        self._saving = contextlib.ExitStack()

    def __enter__(self) -> StageRun:
        with contextlib.ExitStack() as entering:
            entering.enter_context(self._saving)
            if self.out is not None:
                self._saving.enter_context(exclusive_output(self.out))
                if self._overwrite:
                    for path in (self.out, errors_path(self.out), manifest_path(self.out), *self._side_files):
                        path.unlink(missing_ok=True)
                self.previous = read_manifest(self.out)
            entering.pop_all()
        return self

    def __exit__(self, *exc) -> bool:
        return self._saving.__exit__(*exc)

    # -- while rows run ----------------------------------------------------------------------------
    def appender(self, path: Path, flag: str = "--out") -> JsonlAppender:
        """An appender for ``path`` (opened at its first row), closed when the rows stop."""
        appender = JsonlAppender(path, self.sync_rows, self.sync_seconds, flag)
        self._appenders.append(appender)
        return appender

    def closes(self, closeable):
        """``closeable`` (an engine, a judge panel: anything with ``close()``) is closed when the rows stop,
        in the order given; returns it."""
        self._closers.append(closeable.close)
        return closeable

    def hold(self) -> None:
        """From here until the stage ends, Ctrl-C and SIGTERM wait: what the run saves lands whole."""
        self._saving.enter_context(hold_interrupts())

    @contextlib.contextmanager
    def stoppable(self):
        """Where the rows run: Ctrl-C, SIGTERM or a UserError inside stops them and is kept in ``stopped``
        (the first one) instead of raised; then, with interrupts held (``hold``), the appenders, the progress
        and what ``closes`` was given are closed."""
        try:
            yield self
        except (KeyboardInterrupt, UserError) as exc:
            self.stopped = exc
        finally:
            self.hold()
            try:
                for appender in self._appenders:
                    appender.close()
            except UserError as exc:
                self.stopped = self.stopped or exc
            if self.progress is not None:
                self.progress.close()
            for close in self._closers:
                close()
            self._closers.clear()

    def stream(self, items: Iterable[Item], worker: Callable[[Item], Awaitable[Result]], in_flight: int,
               land: Callable[[Result], int]) -> None:
        """``worker`` over ``items``, ``in_flight`` at once (``core.aio.stream``); each result, as it finishes,
        is landed whole by ``land`` (which writes it and returns the tokens it generated) with interrupts
        held, then counted as a row done in ``progress``."""
        for result in aio.stream(items, worker, in_flight):
            with hold_interrupts():
                output_tokens = land(result)
            self.progress.advance(1, output_tokens)

    # -- after the rows ----------------------------------------------------------------------------
    @property
    def stop_reason(self) -> str | None:
        """How the rows stopped (``stop_reason``), None when they all ran."""
        return None if self.stopped is None else stop_reason(self.stopped)

    def save_manifest(self, write: Callable[[], object]) -> None:
        """``write()`` the manifest; when the run stopped already, a failure to write it is not raised (the
        first failure is the one to report)."""
        try:
            write()
        except UserError:
            if self.stopped is None:
                raise

    def raise_if_stopped(self, rows: int | None = None, what: str = "rows") -> None:
        """Raise the stop, if the run stopped, saying how many ``rows`` (of ``what``) the output holds."""
        if self.stopped is None:
            return
        if rows is not None:
            logger.info(f"{self.out}: stopped with {rows} {what} in the file; the manifest's counts match the file")
        raise self.stopped
