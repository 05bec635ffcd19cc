"""One event loop per process, in a background thread, that every backend's requests run on.

Why a thread: the main thread stays free for what must happen there: signals (Ctrl-C and SIGTERM
are delivered to it, between its own bytecodes), writing finished rows, and progress.  Backends
keep per-loop state (vLLM's ``AsyncLLM`` output handler, an ``AsyncOpenAI`` client's connection
pool), and one loop for the life of the process lets an engine serve one stage after another
(a policy that is also the judge).

``run_sync(coro)`` runs a coroutine there and waits for it; ``stream(items, worker, limit)``
runs ``worker(item)`` for every item with at most ``limit`` running at once, and yields each
result in the main thread as soon as it is ready (completion order, not input order).  Stopping
early (Ctrl-C, an exception, closing the generator) cancels the work still in flight; a
cancelled engine request is aborted by the engine.  Inside a worker, ``gather`` runs a row's
independent requests at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()
#: seconds the main thread waits at a time, so that it handles a signal promptly
_POLL = 0.2


def loop() -> asyncio.AbstractEventLoop:
    """The process's background event loop (started on first use; a daemon thread)."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            started = threading.Event()
            new_loop = asyncio.new_event_loop()

            def serve() -> None:
                asyncio.set_event_loop(new_loop)
                started.set()
                new_loop.run_forever()

            threading.Thread(target=serve, name="cai-event-loop", daemon=True).start()
            started.wait()
            _loop = new_loop
        return _loop


def in_loop_thread() -> bool:
    try:
        return asyncio.get_running_loop() is _loop
    except RuntimeError:
        return False


def _wait(future: concurrent.futures.Future) -> object:
    """The future's result, waited for in short steps so that Ctrl-C and SIGTERM land; they cancel it."""
    try:
        while True:
            try:
                return future.result(timeout=_POLL)
            except concurrent.futures.TimeoutError:
                continue
    except BaseException:
        future.cancel()
        raise


def run_sync(coroutine: Awaitable[Result]) -> Result:
    """Run ``coroutine`` on the background loop and return its result (from the main thread)."""
    if in_loop_thread():
        raise RuntimeError("run_sync called from the event loop; await the coroutine instead")
    return _wait(asyncio.run_coroutine_threadsafe(_as_coroutine(coroutine), loop()))


async def _as_coroutine(awaitable: Awaitable[Result]) -> Result:
    return await awaitable


async def gather(awaitables: Iterable[Awaitable[Result]]) -> list[Result]:
    """Every result, in order (``asyncio.gather``), except that when one raises, the others are cancelled
    before the error goes on: no request is left running for a row that has failed."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


_DONE = object()


def stream(items: Iterable[Item], worker: Callable[[Item], Awaitable[Result]], limit: int) -> Iterator[Result]:
    """``worker(item)`` for every item, at most ``limit`` at once; results as they finish.

    Items are drawn from ``items`` only as slots free (a generator over a large file is read
    lazily).  An exception from ``worker`` or from ``items`` stops the stream: work in flight is
    cancelled and the exception is raised here, after the results that finished before it.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, not {limit!r}")
    results: queue.Queue = queue.Queue()
    task_future = asyncio.run_coroutine_threadsafe(_drive(iter(items), worker, limit, results), loop())
    try:
        while True:
            try:
                result = results.get(timeout=_POLL)
            except queue.Empty:
                if task_future.done() and results.empty():
                    task_future.result()  # raises what stopped the driver, if anything
                    return
                continue
            if result is _DONE:
                task_future.result()
                return
            if isinstance(result, _Failure):
                raise result.error
            yield result
    finally:
        if not task_future.done():
            task_future.cancel()
            try:  # the cancelled requests are aborted before the engine is used again
                task_future.result(timeout=30)
            except (concurrent.futures.CancelledError, concurrent.futures.TimeoutError, Exception):
                pass


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


async def _drive(items: Iterator[Item], worker: Callable[[Item], Awaitable[Result]], limit: int,
                 results: queue.Queue) -> None:
    running: set[asyncio.Task] = set()
    exhausted = False
    try:
        while True:
            while not exhausted and len(running) < limit:
                try:
                    item = next(items)
                except StopIteration:
                    exhausted = True
                    break
                running.add(asyncio.ensure_future(worker(item)))
            if not running:
                break
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            failed = [task for task in done if task.exception() is not None]
            for task in done:
                if task.exception() is None:
                    results.put(task.result())
            if failed:
                raise failed[0].exception()  # stops the stream (below), after the results that finished
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        if not isinstance(exc, asyncio.CancelledError):
            results.put(_Failure(exc))
        raise
    results.put(_DONE)

