"""Progress of long runs as rows finish: rows done of the total, output tokens/s and ETA."""

from __future__ import annotations

import sys
import time

from .log import get_logger

logger = get_logger(__name__)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Rows done of the total, output tokens/s and ETA, as rows finish.

    On a terminal, a bar (tqdm) on stderr; otherwise (a log file, a job's output) a plain line
    through the ``cai`` logger at most every ``every`` seconds, and one at the end.
    """

    def __init__(self, label: str, total: int, every: float = 10.0, bar: bool | None = None):
        self.label, self.total, self.every = label, total, every
        self.done = 0
        self.output_tokens = 0
        self.started = time.monotonic()
        self._last_line = self.started
        self._bar = None
        if bar if bar is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit="row", dynamic_ncols=True, leave=True)

    def advance(self, rows: int = 1, output_tokens: int = 0) -> None:
        self.done += rows
        self.output_tokens += output_tokens
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(rows)
            self._bar.set_postfix_str(f"{self.rate(now):.0f} output tok/s", refresh=False)
        elif now - self._last_line >= self.every or self.done >= self.total:
            self._last_line = now
            logger.info(self.line(now))

    def rate(self, now: float | None = None) -> float:
        elapsed = (now or time.monotonic()) - self.started
        return self.output_tokens / elapsed if elapsed > 0 else 0.0

    def line(self, now: float | None = None) -> str:
        now = now or time.monotonic()
        elapsed = now - self.started
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        return (f"[{self.label}] {self.done}/{self.total} rows | {self.rate(now):.0f} output tok/s | "
                f"elapsed {_duration(elapsed)} | ETA {_duration(eta)}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def shorten(text: str, width: int = 300) -> str:
    """One line of at most ``width`` characters, for examples printed at the end of a run."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
