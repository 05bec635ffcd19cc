"""Progress of long runs: the work actually done (calls finished of calls expected), tokens/s and ETA.

Rows stream: every row is in flight at once and rows finish late and together, so a rate or an
ETA computed from finished rows is wrong by orders of magnitude while the first rows run.  The
unit of work is therefore the call (a generation row is its draft and two calls a round; a judged
row is its judgements): a stage says how many it expects, and each finished call is counted as it
returns (``call_done``, safe from the event loop's thread), with its output tokens.  The ETA is the
calls left at the rate calls finished so far.

On a terminal, a bar (tqdm) on stderr; otherwise (a log file, a job's output) a plain line through
the ``cai`` logger every ``every`` seconds from a timer, whether or not a row has finished, and one
at the end.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import deque

from .log import get_logger
from .text import shorten

logger = get_logger(__name__)

#: seconds between two progress lines in a log (the first comes after this long too)
LOG_EVERY = 15.0
#: seconds between two refreshes of the terminal bar
_BAR_EVERY = 0.5
#: seconds of recent work whose rate the ETA uses when it is faster than the whole run's (see ``eta``)
RECENT = 60.0


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Work done of the work expected, output tokens/s and ETA, while a stage runs.

    ``rows``: the rows to do.  ``calls``: the calls (or judgements) they are expected to take, counted
    with ``call_done`` as each returns; without it the unit of work is the row (``advance``).
    """

    def __init__(self, label: str, rows: int, calls: int | None = None, unit: str = "calls",
                 every: float | None = None, bar: bool | None = None):
        self.label, self.rows = label, rows
        self.every = LOG_EVERY if every is None else every
        self.counts_calls = calls is not None
        self.unit = unit if self.counts_calls else "rows"
        self.expected = calls if self.counts_calls else rows
        self.rows_done = 0
        self.calls_done = 0
        self.output_tokens = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, int]] = deque()  # (time, work done) when the ETA was computed
        self._stop = threading.Event()
        self._bar = None
        if bar if bar is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.expected, desc=label, unit=self.unit.rstrip("s"), dynamic_ncols=True,
                             leave=True, bar_format="{bar:24} {desc}")
        # A timer, not the rows, says when to show progress: a line comes while no row has finished yet.
        self._timer = threading.Thread(target=self._tick, name=f"cai-progress-{label}", daemon=True)
        self._timer.start()

    # -- counting ------------------------------------------------------------
    def call_done(self, output_tokens: int = 0) -> None:
        """One call (or judgement) returned, with the tokens it generated; any thread may call it."""
        with self._lock:
            self.calls_done += 1
            self.output_tokens += output_tokens

    def expect(self, calls: int) -> None:
        """Change the calls expected by ``calls`` (negative: a row needed fewer, its calls were reused)."""
        with self._lock:
            self.expected = max(self.calls_done, self.expected + calls)

    def advance(self, rows: int = 1, output_tokens: int = 0) -> None:
        """``rows`` finished.  Their ``output_tokens`` count here only when calls are not counted one by one."""
        with self._lock:
            self.rows_done += rows
            if not self.counts_calls:
                self.output_tokens += output_tokens

    def counted(self, backend):
        """``backend``, with each of its finished requests counted by ``call_done``."""
        return _CountedBackend(backend, self)

    # -- what is shown -------------------------------------------------------
    @property
    def done(self) -> int:
        return self.calls_done if self.counts_calls else self.rows_done

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the rate work finished so far (None before any has).

        When every request is submitted at once, the engine's first replies come after one long batch and
        the rest follow faster; the rate over the last ``RECENT`` seconds (once that much has been seen)
        is used when it is the faster, so the start-up does not weigh on the ETA for the whole run.
        """
        now = now or time.monotonic()
        with self._lock:
            done, expected = self.done, self.expected
            if not done:
                return None
            rate = done / max(now - self.started, 1e-9)
            self._samples.append((now, done))
            while now - self._samples[0][0] > RECENT:
                self._samples.popleft()
            then, done_then = self._samples[0]
            if now - then >= RECENT / 2 and done > done_then:
                rate = max(rate, (done - done_then) / (now - then))
        return max(0, expected - done) / rate

    def rate(self, now: float | None = None) -> float:
        """Output tokens per second of the calls finished so far."""
        elapsed = (now or time.monotonic()) - self.started
        return self.output_tokens / elapsed if elapsed > 0 else 0.0

    def line(self, now: float | None = None) -> str:
        now = now or time.monotonic()
        elapsed = now - self.started
        with self._lock:
            done, expected, rows_done = self.done, self.expected, self.rows_done
        eta = self.eta(now)
        share = f" ({100 * done / expected:.0f}%)" if expected else ""
        parts = [f"{done}/{expected} {self.unit}{share}"]
        if self.counts_calls:
            parts.append(f"rows {rows_done}/{self.rows}")
            parts.append(f"{done / elapsed if elapsed > 0 else 0.0:.2g} {self.unit}/s")
        if self.output_tokens or self.unit != "judgements":  # a likelihood judge generates no tokens
            parts.append(f"{self.rate(now):.0f} output tok/s")
        parts += [f"elapsed {_duration(elapsed)}",
                  f"ETA {_duration(eta) if eta is not None else 'after the first ' + self.unit.rstrip('s')}"]
        return f"[{self.label}] " + " | ".join(parts)

    def _show(self) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.total, self._bar.n = self.expected, self.done
            self._bar.set_description_str(self.line(), refresh=False)
            self._bar.refresh()
        else:
            logger.info(self.line())

    def _tick(self) -> None:
        while not self._stop.wait(_BAR_EVERY if self._bar is not None else self.every):
            self._show()

    def close(self) -> None:
        """Stop the timer and show where the work ended (once)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._timer.join()
        if self.done or self._bar is not None:
            self._show()
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _CountedBackend:
    """A backend whose finished requests are counted by a ``Progress`` (everything else is the backend's)."""

    def __init__(self, backend, progress: Progress):
        self._backend, self._progress = backend, progress

    def __getattr__(self, name):
        return getattr(self._backend, name)

    async def achat(self, *args, **kwargs):
        completion = await self._backend.achat(*args, **kwargs)
        self._progress.call_done(completion.completion_tokens)
        return completion

    async def alabel_logprobs(self, *args, **kwargs):
        result = await self._backend.alabel_logprobs(*args, **kwargs)
        self._progress.call_done()
        return result

    async def aresponse_logprobs(self, *args, **kwargs):
        result = await self._backend.aresponse_logprobs(*args, **kwargs)
        self._progress.call_done()
        return result


def printable_line(text: str, width: int = 300) -> str:
    """One line of at most ``width`` characters, for examples printed at the end of a run.

    Model and user text is data: control characters (an ANSI escape that would recolour, move the cursor
    or retitle the terminal) and bidirectional overrides are shown escaped (``\\x1b``), never sent as they are.
    """
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                        " ".join(str(text).split()))
    return shorten(text, width)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
