"""Progress that tells the truth while rows stream: the ETA printed after a fifth of the work is within 30% of
the time the run really took from there, and a line comes at a steady interval while no row has finished.

The stand-in server answers every request after a fixed delay (a model of an engine whose calls take a known
time); the number of requests in flight is bounded by ``--concurrency``, as an engine's batch bounds them.
"""

from __future__ import annotations

import logging
import re
import threading
import time

import pytest

import core.progress
from cai.cli import main as cai_main
from harness import REPO, generate_args, manifest_of, wait_for, write_prompts
from servers import StandinServer

LINE = re.compile(r"\] (\d+)/(\d+) (calls|judgements) .*\| ETA (?:(\d+)h(\d\d)m|(\d+)m(\d\d)s)$")


class _Lines(logging.Handler):
    """The progress lines logged, each with the time it was logged."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[float, str]] = []

    def emit(self, record):
        self.lines.append((time.monotonic(), record.getMessage()))


@pytest.fixture
def progress_lines(monkeypatch):
    monkeypatch.setattr(core.progress, "LOG_EVERY", 0.25)
    handler = _Lines()
    logger = logging.getLogger("cai.core.progress")
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def _parse(line: str) -> tuple[int, int, float] | None:
    match = LINE.search(line)
    if not match:
        return None
    done, expected, _, hours, minutes_h, minutes, seconds = match.groups()
    eta = int(hours) * 3600 + int(minutes_h) * 60 if hours else int(minutes) * 60 + int(seconds)
    return int(done), int(expected), float(eta)


def assert_eta_true_after_a_fifth(lines: list[tuple[float, str]], finished: float, work: str) -> None:
    """At the first line with a fifth of the ``work`` done, the ETA is within 30% of the time really left."""
    for at, line in lines:
        parsed = _parse(line)
        if parsed and parsed[1] and parsed[0] / parsed[1] >= 0.2:
            eta, left = parsed[2], finished - at
            assert work in line and "rows " in line, line
            assert abs(eta - left) <= 0.3 * left, (eta, left, line)
            return
    raise AssertionError(f"no progress line with a fifth of the work done: {lines}")


def test_generate_eta_after_a_fifth_of_the_calls_is_within_30_percent(tmp_path, progress_lines):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 24)
    out = tmp_path / "rows.jsonl"
    # 24 rows x 3 calls (draft, critique, revision), 4 in flight, 0.5 s a call: about 9 s.
    with StandinServer(delay=0.5) as server:
        assert cai_main(generate_args(prompts, out, server.base_url, concurrency=4)) == 0
        finished = time.monotonic()
    assert manifest_of(out)["counts"]["generated"] == 24
    assert_eta_true_after_a_fifth(progress_lines, finished, "/72 calls")


def test_judge_eta_counts_judgements_not_rows(tmp_path, progress_lines):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 16)
    rows = tmp_path / "rows.jsonl"
    with StandinServer(delay=0.0) as fast:
        assert cai_main(generate_args(prompts, rows, fast.base_url)) == 0
    progress_lines.clear()
    # 16 rows x 3 principles x 2 orders, 8 in flight, 0.5 s a judgement: about 6 s.
    with StandinServer(delay=0.5) as server:
        assert cai_main(["judge", "--in", str(rows), "--out", str(tmp_path / "pairs.jsonl"), "--backend", "openai",
                         "--base-url", server.base_url, "--model", "standin", "--method", "pairwise",
                         "--concurrency", "8", "--constitution", str(REPO / "principles.yaml"),
                         "--keep-flagged", "--keep-duplicates"]) == 0
        finished = time.monotonic()
    # 6 judgements a row judged (rows the judge leaves out, e.g. duplicates of another, expect none)
    last = progress_lines[-1][1]
    rows = int(re.search(r"rows \d+/(\d+)", last).group(1))
    assert rows >= 8 and f"{6 * rows}/{6 * rows} judgements (100%)" in last, last
    assert_eta_true_after_a_fifth(progress_lines, finished, f"/{6 * rows} judgements")


def test_a_line_comes_while_no_row_has_finished(tmp_path, progress_lines):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 4)
    out = tmp_path / "rows.jsonl"
    with StandinServer() as server:
        server.hold(after=0)  # every request waits: no call, let alone a row, finishes
        result = {}
        run = threading.Thread(target=lambda: result.update(code=cai_main(generate_args(prompts, out, server.base_url))))
        run.start()
        try:
            assert wait_for(lambda: sum("0/12 calls" in line for _, line in progress_lines) >= 2, timeout=30)
        finally:
            server.release()
            run.join(60)
    assert result["code"] == 0
    waiting = [line for _, line in progress_lines if "0/12 calls" in line]
    assert "rows 0/4" in waiting[0] and "ETA after the first call" in waiting[0], waiting
    assert "12/12 calls (100%)" in progress_lines[-1][1], progress_lines[-1]


def test_the_eta_follows_the_recent_rate_once_the_first_batch_is_done():
    """All requests submitted at once: nothing for a minute (the first batch), then a steady call a second."""
    progress = core.progress.Progress("judge", rows=10, calls=200, every=3600, bar=False)
    try:
        start = progress.started
        for second in range(60, 151):
            progress.calls_done = 10 + (second - 60)  # 10 when the first batch lands, then one a second
            eta = progress.eta(start + second)
        # 100 done at 150 s: the whole run's rate (0.67/s) would say 150 s; the last minute's says 100 s.
        assert eta == pytest.approx(100, rel=0.05)
        assert progress.eta(start + 150.0) == pytest.approx(100, rel=0.05)
    finally:
        progress.close()


def test_output_tokens_are_shown_where_calls_make_them():
    """A likelihood judge reads log-probabilities and generates nothing: its line has no "0 output tok/s"."""
    judge = core.progress.Progress("judge", rows=2, calls=8, unit="judgements", every=3600, bar=False)
    generate = core.progress.Progress("generate", rows=2, calls=6, every=3600, bar=False)
    try:
        judge.call_done()
        generate.call_done(output_tokens=40)
        assert "tok/s" not in judge.line() and "1/8 judgements" in judge.line()
        assert "output tok/s" in generate.line()
        judge.call_done(output_tokens=5)  # a judge that writes its verdict
        assert "output tok/s" in judge.line()
    finally:
        judge.close()
        generate.close()
