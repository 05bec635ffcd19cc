"""Progress lines for long runs: per stage tokens/s, overall throughput and ETA."""

from __future__ import annotations

import time

from .log import get_logger

logger = get_logger(__name__)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    def __init__(self, label: str, total: int):
        self.label, self.total = label, total
        self.done = 0
        self.started = time.monotonic()
        self.output_tokens = 0

    def stage(self, name: str, count: int, output_tokens: int, seconds: float) -> None:
        self.output_tokens += output_tokens
        rate = output_tokens / seconds if seconds > 0 else 0.0
        logger.info(f"[{self.label}] {name}: {count} calls, {output_tokens} tokens in {seconds:.1f}s ({rate:.0f} tok/s)")

    def advance(self, count: int) -> None:
        self.done += count
        elapsed = time.monotonic() - self.started
        rate = self.output_tokens / elapsed if elapsed > 0 else 0.0
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        logger.info(f"[{self.label}] {self.done}/{self.total} rows | {rate:.0f} output tok/s | "
                    f"elapsed {_duration(elapsed)} | ETA {_duration(eta)}")


def shorten(text: str, width: int = 300) -> str:
    """One line of at most ``width`` characters, for examples printed at the end of a run."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
