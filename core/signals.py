"""SIGTERM handled like Ctrl-C, writes that land whole, and no engine process left behind.

Slurm, Kubernetes and ``timeout`` stop a job with SIGTERM: it becomes ``Terminated`` (a
KeyboardInterrupt), so every path that saves finished batches on Ctrl-C does so on SIGTERM too,
and the command exits 143.  vLLM runs its engine in child processes; ``reap_children`` ends every
process the command started, whatever moment it stopped at (engine start-up included).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading
import time

#: Exit status of a command stopped by SIGTERM (128 + 15), as a shell reports it.
TERMINATED_EXIT = 143


class Terminated(KeyboardInterrupt):
    """The command received SIGTERM."""


_seen_children: set[int] = set()
_kept_children: set[int] = set()  # processes the caller had before the command: never ended here


def _descendants() -> set[int]:
    import psutil

    try:
        return {child.pid for child in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return set()


_handled = threading.Event()  # the main thread has run the SIGTERM handler
_watcher: threading.Thread | None = None
_held = threading.Event()  # the main thread holds Ctrl-C and SIGTERM (``hold_interrupts``): never raise into it
_stop_in_zmq = False  # the handler ran inside pyzmq, which may drop the exception it raised


def _in_zmq(frame) -> bool:
    return frame is not None and f"{os.sep}zmq{os.sep}" in frame.f_code.co_filename


def _on_sigterm(signum, frame):
    global _stop_in_zmq
    _stop_in_zmq = _in_zmq(frame)
    _handled.set()
    # The engine's processes end first: vLLM's clean-up of an engine still starting waits on its
    # handshake (minutes) and would hold the command; a batch in flight is dropped anyway.
    _seen_children.update(_descendants() - _kept_children)
    _end(_seen_children, grace=3.0)
    raise Terminated


def _main_thread_in_zmq() -> bool:
    return _in_zmq(sys._current_frames().get(threading.main_thread().ident))


def _watch(wakeup: socket.socket) -> None:
    """Make sure a SIGTERM stops the main thread.

    Python runs signal handlers in the main thread only, between bytecodes.  While vLLM starts its
    engine, the main thread waits in pyzmq's poll, which runs the handler on EINTR but drops the
    exception it raises and polls again (for minutes).  So: the signal is sent again to the main
    thread when another thread received it, and when the handler ran inside pyzmq and the main thread
    is still there, ``Terminated`` is raised there asynchronously (pyzmq builds its EINTR exception in
    Python code, where the pending exception fires and leaves the poll).  Never once the command holds
    interrupts to save its work: closing an engine waits in pyzmq too (for seconds on a slow CPU), and an
    exception raised there would skip the manifest.
    """
    while True:
        try:
            data = wakeup.recv(64)
        except OSError:
            return
        if not data:
            return
        if signal.SIGTERM not in data:
            continue
        main = threading.main_thread().ident
        if not _handled.wait(1.0):
            with contextlib.suppress(OSError, ValueError):
                signal.pthread_kill(main, signal.SIGTERM)
        for _ in range(30):
            time.sleep(1.0)
            if not _stop_in_zmq or _held.is_set() or not _main_thread_in_zmq():
                continue
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(main), ctypes.py_object(Terminated))
            with contextlib.suppress(OSError, ValueError):
                signal.pthread_kill(main, signal.SIGTERM)


def _start_watcher() -> None:
    global _watcher
    if _watcher is not None:
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    _watcher = threading.Thread(target=_watch, args=(reader,), name="cai-sigterm-watcher", daemon=True)
    _watcher._cai_sockets = (reader, writer)  # kept open for the process's life
    _watcher.start()


def install_sigterm_handler(keep: set[int] = frozenset()):
    """SIGTERM ends the command's child processes, then raises Terminated in the main thread (a no-op
    elsewhere); ``keep`` are processes that existed before the command.  Returns the handler it replaced."""
    _kept_children.clear()
    _kept_children.update(keep)
    _handled.clear()
    global _stop_in_zmq
    _stop_in_zmq = False
    if threading.current_thread() is threading.main_thread():
        _start_watcher()
        return signal.signal(signal.SIGTERM, _on_sigterm)
    return None


def restore_sigterm_handler(previous) -> None:
    """Put back what ``install_sigterm_handler`` replaced (a caller that runs commands in-process keeps its own)."""
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


def children() -> set[int]:
    """The pids of this process's descendants now."""
    return _descendants()


def reap_children(keep: set[int], grace: float = 5.0) -> list[int]:
    """End every descendant not in ``keep`` (the ones that existed before the command): TERM, then KILL.

    multiprocessing's resource tracker is left alone: it ignores TERM (ending it cost two grace periods at
    the end of every command, and a warning) and ends by itself when this process does."""
    pids = (_descendants() | _seen_children) - keep - {_resource_tracker_pid()}
    _seen_children.clear()
    return _end(pids, grace)


def _resource_tracker_pid() -> int | None:
    from multiprocessing import resource_tracker

    return getattr(resource_tracker._resource_tracker, "_pid", None)


def _end(pids: set[int], grace: float) -> list[int]:
    """TERM our direct children first (vLLM's engine core then shuts its workers down itself), then
    whatever of ``pids`` is left; KILL what is still alive after ``grace`` seconds."""
    import psutil

    processes = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            processes.append(psutil.Process(pid))
    direct = [p for p in processes if _parent_pid(p) == psutil.Process().pid]
    for group in (direct, processes):
        for process in group:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        psutil.wait_procs(group, timeout=grace)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=grace)
    return [process.pid for process in processes]


def _parent_pid(process) -> int | None:
    import psutil

    try:
        return process.ppid()
    except psutil.Error:
        return None


@contextlib.contextmanager
def _handling_interrupts(handler):
    """Ctrl-C and SIGTERM go to ``handler`` inside (in the main thread; elsewhere signals are not ours to set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer = _held.is_set()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    _held.set()
    try:
        yield
    finally:
        if not outer:
            _held.clear()
        for sig, replaced in previous.items():
            signal.signal(sig, replaced if replaced is not None else signal.default_int_handler)


@contextlib.contextmanager
def hold_interrupts():
    """Hold Ctrl-C and SIGTERM while a batch is written, or while a stopped command saves its work (closes
    its engine, writes its manifest), so that what is written lands whole or not at all; a held signal is
    raised when the block ends.  A held SIGTERM ends the engine's processes at once: closing it does not
    wait on them."""
    caught: list[int] = []

    def hold(signum, frame):
        caught.append(signum)
        if signum == signal.SIGTERM:
            _handled.set()
            _seen_children.update(_descendants() - _kept_children)
            _end(_seen_children, grace=3.0)

    try:
        with _handling_interrupts(hold):
            yield
    finally:
        if signal.SIGTERM in caught:
            raise Terminated
        if caught:
            raise KeyboardInterrupt


def ignoring_interrupts():
    """Ctrl-C and SIGTERM do nothing inside: a command that is ending (its stop reported, its processes
    being ended) is not interrupted again half-way."""
    return _handling_interrupts(signal.SIG_IGN)
