"""``cai`` whose openai backend stops at chosen moments, for Ctrl-C and SIGTERM trials that need no timing.

A stand-in (fault injection) for the in-process vLLM engine's lifecycle, as it looks from the command:

- ``start-up``: the engine core is a child process, and the start-up runs on the event-loop thread
  (``aio.run_sync``) while the main thread waits, as ``VLLMBackend.__init__`` does;
- ``close``: closing waits in pyzmq (vLLM's shutdown closes its ZMQ sockets and context; on a slow CPU
  that lasts seconds, long enough for a signal to land there);
- ``manifest``: writing a manifest (any stage's) is under way.

``CAI_BLOCK_AT`` names the moments (comma-separated) and ``CAI_BLOCK_DIR`` a folder: at each moment this
creates ``DIR/at-MOMENT`` and waits until the test creates ``DIR/release-MOMENT``.  The engine child's pid
is in ``DIR/engine-pid``; with ``CAI_ENGINE_IGNORES_TERM=1`` it ignores SIGTERM (ending it takes a KILL).
Requests go to a stand-in server (servers.py) as with ``--backend openai``.

Run as ``python tests/reliability/blocking_cli.py ARGS...`` (what ``cai ARGS...`` does, with these stops).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

MOMENTS = set(filter(None, os.environ.get("CAI_BLOCK_AT", "").split(",")))
FOLDER = Path(os.environ.get("CAI_BLOCK_DIR", "."))


def block(moment: str, wait=time.sleep) -> None:
    """Say the run is at ``moment`` and wait until the test releases it (``wait(seconds)`` waits a little)."""
    if moment not in MOMENTS:
        return
    (FOLDER / f"at-{moment}").touch()
    while not (FOLDER / f"release-{moment}").exists():
        wait(0.5)


_poller = None


def _wait_in_zmq(seconds: float) -> None:
    """Wait in pyzmq's poll on a socket that nothing writes to."""
    global _poller
    import zmq

    if _poller is None:
        socket = zmq.Context.instance().socket(zmq.PULL)
        socket.bind("inproc://engine-shutdown")
        _poller = zmq.Poller()
        _poller.register(socket, zmq.POLLIN)
    _poller.poll(int(seconds * 1000))


def install() -> None:
    from core import aio, manifest
    from core.backends import registry
    from core.backends.openai_backend import OpenAIBackend

    class EngineLikeBackend(OpenAIBackend):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            ignore = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
                if os.environ.get("CAI_ENGINE_IGNORES_TERM") == "1" else ""
            self.engine_core = subprocess.Popen([sys.executable, "-c", f"{ignore}import time; time.sleep(600)"])
            (FOLDER / "engine-pid").write_text(str(self.engine_core.pid))

            async def start():
                block("start-up")  # blocks the event-loop thread, as vLLM's start-up handshake does

            aio.run_sync(start())

        def close(self) -> None:
            block("close", wait=_wait_in_zmq)
            super().close()

    registry.BACKENDS.unregister("openai")
    registry.BACKENDS.register("openai", EngineLikeBackend)
    write = manifest.atomic_write_text

    def atomic_write_text(path, text):
        if str(path).endswith(".manifest.json"):
            block("manifest")
        write(path, text)

    manifest.atomic_write_text = atomic_write_text  # every stage's manifest is written by core.manifest


if __name__ == "__main__":
    install()
    from cai.cli import main

    sys.exit(main())
