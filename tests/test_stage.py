"""core/stage.py: the part of a stage run that every resumable stage shares."""

from __future__ import annotations

import json
import os
import signal

import pytest

from core.errors import UserError
from core.progress import Progress
from core.signals import Terminated
from core.stage import StageRun, stop_reason
from core.store import errors_path, manifest_path, read_manifest, write_manifest


class Engine:
    def __init__(self):
        self.closed = 0

    def close(self):
        self.closed += 1


def _run_rows(run: StageRun, out, items, between=lambda n: None, after=lambda n: None) -> list[int]:
    """Stream ``items`` (numbers; a UserError in the list stops the input there, as a changed input does) into
    ``out``; ``between(n)`` runs between a row's two records, ``after(n)`` once they are written."""
    landed = []

    def numbers():
        for item in items:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def work(n):
        return n

    rows_out = run.appender(out)

    def land(n):
        rows_out.write({"n": n, "text": "x" * 100})
        between(n)
        rows_out.write({"n": n, "second": True})  # a row and its record land together
        landed.append(n)
        after(n)
        return 1

    run.progress = Progress("test", len(items), bar=False)
    run.stream(numbers(), work, 1, land)
    return landed


@pytest.mark.parametrize("stop, reason", [(KeyboardInterrupt(), "interrupted"), (Terminated(), "terminated"),
                                          (UserError("the input changed"), "error")])
def test_a_stop_is_recorded_the_files_closed_and_raised_after_the_manifest(tmp_path, stop, reason):
    out = tmp_path / "out.jsonl"
    engine = Engine()
    # Ctrl-C and SIGTERM reach the main thread (here: raised after row 3 landed); a UserError comes from the input.
    items = [1, 2, 3, stop, 4] if isinstance(stop, UserError) else [1, 2, 3, 4]

    def stop_after_3(n):
        if n == 3 and not isinstance(stop, UserError):
            raise stop

    with pytest.raises(type(stop)):
        with StageRun(out) as run:
            with run.stoppable():
                run.closes(engine)
                _run_rows(run, out, items, after=stop_after_3)
            assert run.stop_reason == reason and run.stopped is stop
            assert engine.closed == 1 and run.progress._stop.is_set()
            lines = out.read_text().splitlines()
            assert [json.loads(line)["n"] for line in lines] == [1, 1, 2, 2, 3, 3]
            run.save_manifest(lambda: write_manifest(out, "test", {}, {"rows": len(lines), "stopped": run.stop_reason}))
            run.raise_if_stopped(len(lines))
    assert read_manifest(out)["counts"] == {"rows": 6, "stopped": reason}
    assert not out.with_name(out.name + ".lock").exists()  # the output is released


def test_ctrl_c_while_a_row_lands_is_held_until_it_is_whole(tmp_path):
    out = tmp_path / "out.jsonl"

    def interrupt_at_2(n):
        if n == 2:
            os.kill(os.getpid(), signal.SIGINT)  # between a row's two records

    with StageRun(out) as run:
        with run.stoppable():
            _run_rows(run, out, [1, 2, 3, 4], between=interrupt_at_2)
        assert run.stop_reason == "interrupted" and run.progress.rows_done == 1  # row 2 stopped before its count
        with pytest.raises(KeyboardInterrupt):
            run.raise_if_stopped()
    assert [json.loads(line)["n"] for line in out.read_text().splitlines()] == [1, 1, 2, 2]


def test_a_run_that_is_not_stopped_goes_on(tmp_path):
    out = tmp_path / "out.jsonl"
    with StageRun(out) as run:
        with run.stoppable():
            assert _run_rows(run, out, [1, 2]) == [1, 2]
        assert run.stopped is None and run.stop_reason is None
        run.raise_if_stopped(2)  # nothing to raise
        with pytest.raises(UserError):  # a failure to write the manifest of a finished run is raised
            run.save_manifest(lambda: (_ for _ in ()).throw(UserError("disk full")))


def test_a_failing_manifest_of_a_stopped_run_leaves_the_first_failure_to_report(tmp_path):
    with StageRun(tmp_path / "out.jsonl") as run:
        with run.stoppable():
            raise UserError("first")
        run.save_manifest(lambda: (_ for _ in ()).throw(UserError("second")))
        with pytest.raises(UserError, match="first"):
            run.raise_if_stopped()


def test_resume_keeps_the_files_and_overwrite_removes_them(tmp_path):
    out = tmp_path / "out.jsonl"
    side = tmp_path / "out.jsonl.cache.jsonl"
    with StageRun(out) as run:
        with run.stoppable():
            _run_rows(run, out, [1, 2])
        write_manifest(out, "test", {}, {"rows": 4})
    for path in (errors_path(out), side):
        path.write_text("{}\n")

    with StageRun(out, side_files=[side]) as run:  # a resumed run finds what the last one left
        assert run.previous["counts"] == {"rows": 4}
        with run.stoppable():
            _run_rows(run, out, [3])
    assert [json.loads(line)["n"] for line in out.read_text().splitlines()] == [1, 1, 2, 2, 3, 3]
    assert side.exists() and errors_path(out).exists()

    with StageRun(out, overwrite=True, side_files=[side]) as run:
        assert run.previous is None
        assert not any(p.exists() for p in (out, errors_path(out), manifest_path(out), side))


def test_one_writer_at_a_time(tmp_path):
    out = tmp_path / "out.jsonl"
    with StageRun(out):
        with pytest.raises(UserError, match="is being written by another run"):
            with StageRun(out, overwrite=True):
                pass
        assert not out.exists()


def test_stop_reasons():
    assert [stop_reason(e) for e in (Terminated(), KeyboardInterrupt(), UserError("x"))] == \
        ["terminated", "interrupted", "error"]
