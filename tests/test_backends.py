"""The backend registry and the configuration path of the model commands (pure logic, no vLLM)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from cai.cli import main as cai_main
from core.backends.base import BackendOptions
from core.backends.registry import BACKENDS, backend_identity
from core.errors import UserError
from generation.config import GenerateConfig
from generation.run import generate
from judging.config import JudgeConfig
from judging.engines import judge_identity, make_judge_backend, make_policy_backend
from reliability.servers import StandinServer
from standins import ScriptedBackend

REPO = Path(__file__).resolve().parent.parent
CONSTITUTION = str(REPO / "principles.yaml")


def write_prompts(path: Path, n: int = 3) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question {i}?", "tag": "t"}) + "\n" for i in range(n)))
    return path


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------- one error line, exit 1
@pytest.mark.parametrize("argv", [
    ["generate", "--prompts", "p.jsonl", "--out", "o.jsonl", "--backend", "vlm"],
    ["judge", "--in", "x.jsonl", "--out", "y.jsonl", "--backend", "vlm"],
    ["judge", "--in", "x.jsonl", "--out", "y.jsonl", "--judge-backend", "vlm"],
    ["judge", "agreement", "--pairs", "h.jsonl", "--backend", "vlm"],
])
def test_an_unknown_backend_is_one_error_line_with_a_suggestion(argv, capsys):
    assert cai_main(argv) == 1
    [line] = error_lines(capsys)
    assert "'vlm' is unknown; did you mean 'vllm'? Choose one of: vllm, openai." in line


@pytest.mark.parametrize("command,yaml_text,expected", [
    (["generate"], "prompts: p.jsonl\nout: o.jsonl\nmax_tokenz: 5\n",
     "c.yaml:3: unknown option 'max_tokenz'; did you mean 'max_tokens'?"),
    (["judge"], "in: x.jsonl\nout: y.jsonl\nprinciples_per_par: 2\n",
     "c.yaml:3: unknown option 'principles_per_par'; did you mean 'principles_per_pair'?"),
    (["judge", "agreement"], "pairs: h.jsonl\nbakend: openai\n", "c.yaml:2: unknown option 'bakend'; did you mean 'backend'?"),
    (["generate"], "prompts: p.jsonl\nout: o.jsonl\ntemperature: .nan\n",
     "c.yaml:3: temperature: expected a finite number, got nan"),
    (["judge"], "in: x.jsonl\nout: y.jsonl\nbackend: opnai\n", "--backend 'opnai' is unknown; did you mean 'openai'?"),
])
def test_a_bad_config_file_is_one_error_line_naming_the_key(command, yaml_text, expected, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml_text)
    assert cai_main([*command, "--config", str(tmp_path / "c.yaml")]) == 1
    [line] = error_lines(capsys)
    assert expected in line


def test_config_file_values_are_overridden_by_flags(tmp_path):
    from core.config import parse_config

    (tmp_path / "c.yaml").write_text("in: x.jsonl\nout: y.jsonl\nmethod: text\nconcurrency: 4\n")
    config = parse_config(JudgeConfig, ["--config", str(tmp_path / "c.yaml"), "--method", "pairwise"], prog="cai judge")
    assert (config.input, config.method, config.concurrency) == ("x.jsonl", "pairwise", 4)
    (tmp_path / "g.yaml").write_text("prompts: p.jsonl\nout: o.jsonl\ntemperature: 0.2\nbackend: openai\n"
                                     "base_url: http://127.0.0.1:9/v1\n")
    config = parse_config(GenerateConfig, ["--config", str(tmp_path / "g.yaml"), "--temperature", "0"], prog="cai generate")
    assert (config.prompts, config.temperature, config.backend) == ("p.jsonl", 0.0, "openai")


@pytest.mark.parametrize("overrides,message", [
    ({"backend": "openai"}, "--base-url None is not an endpoint"),
    ({"judge_backend": "openai"}, "--judge-base-url None is not an endpoint"),
    ({"backend": "openai", "base_url": "http://h/v1", "request_timeout": 0.0}, "--request-timeout 0.0 must be > 0"),
    ({"backend": "openai", "base_url": "http://h/v1", "concurrency": 0}, "--concurrency 0 must be >= 1"),
    ({"gpu_memory_utilization": 1.5}, "--gpu-memory-utilization 1.5 must be in (0, 1]"),
])
def test_each_backend_checks_its_own_options(overrides, message, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(UserError) as info:
        JudgeConfig(input="x", out="y", **overrides)
    assert message in str(info.value)


def test_an_endpoint_is_recorded_by_its_model_name_never_its_url():
    config = JudgeConfig(input="x", out="y", backend="openai", base_url="http://user:secret@h:1/v1?key=k", model="served")
    assert judge_identity(config) == "served"
    assert backend_identity("openai", "served") == "served"


# ---------------------------------------------------------------- a backend registered in one place
@dataclass(frozen=True)
class EchoOptions(BackendOptions):
    seed: int = 0
    concurrency: int = 32

    def rules(self):
        return [("concurrency", self.concurrency <= 4, "must be <= 4 for the echo backend")]


class EchoBackend(ScriptedBackend):
    """A backend that exists only in this test: its class and one registry entry."""

    name = "echo"
    Options = EchoOptions
    built: list[EchoBackend] = []

    def __init__(self, model: str, seed: int = 0, concurrency: int = 32):
        super().__init__(model)
        self.seed, self.concurrency = seed, concurrency
        EchoBackend.built.append(self)

    @classmethod
    def identity(cls, model: str) -> str:
        return f"echo:{model}"


@pytest.fixture
def echo(register):
    register(BACKENDS, "echo", EchoBackend)  # the one line a new backend adds
    EchoBackend.built.clear()
    return EchoBackend


def test_a_registered_backend_is_usable_by_generate(echo, tmp_path, capsys):
    write_prompts(tmp_path / "p.jsonl")
    out = tmp_path / "o.jsonl"
    argv = ["generate", "--prompts", str(tmp_path / "p.jsonl"), "--out", str(out), "--constitution", CONSTITUTION,
            "--backend", "echo", "--model", "m", "--seed", "7", "--concurrency", "3", "--examples", "0"]
    assert cai_main(argv) == 0
    [backend] = echo.built
    assert (backend.model, backend.seed, backend.concurrency) == ("m", 7, 3) and backend.calls
    manifest = json.loads(Path(str(out) + ".manifest.json").read_text())
    assert manifest["counts"]["rows"] == 3 and manifest["config"]["settings"]["model"] == "echo:m"
    assert cai_main([*argv, "--concurrency", "5"]) == 1
    assert "--concurrency 5 must be <= 4 for the echo backend" in capsys.readouterr().err


def test_a_registered_backend_is_usable_by_the_judge(echo):
    config = JudgeConfig(input="x", out="y", backend="echo", model="policy", judge_model="judge", concurrency=2)
    judge, policy = make_judge_backend(config), make_policy_backend(config)
    assert isinstance(judge, EchoBackend) and (judge.model, policy.model) == ("judge", "policy")
    assert judge_identity(config) == "echo:judge"
    with pytest.raises(UserError, match=r"--judge-backend 'ecoh' is unknown; did you mean 'echo'\?"):
        JudgeConfig(input="x", out="y", judge_backend="ecoh")


def test_a_registered_backend_is_built_from_a_generate_config(echo, tmp_path):
    write_prompts(tmp_path / "p.jsonl", 2)
    config = GenerateConfig(prompts=str(tmp_path / "p.jsonl"), out=str(tmp_path / "o.jsonl"), constitution=CONSTITUTION,
                            backend="echo", model="m", rounds=0, concurrency=1)
    assert generate(config)["counts"]["generated"] == 2
    assert len(echo.built) == 1


# ---------------------------------------------------------------- cai eval honours --backend
def test_eval_with_the_openai_backend_asks_the_endpoint(tmp_path, capsys):
    write_prompts(tmp_path / "p.jsonl", 2)
    with StandinServer(keep_bodies=True) as server:
        url = server.base_url
        argv = ["eval", "--backend", "openai", "--base-url", url, "--trained-model", "trained", "--base-model", "base",
                "--prompts", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "eval.json"),
                "--constitution", CONSTITUTION, "--method", "pairwise", "--principles-per-pair", "1",
                "--max-tokens", "16"]
        assert cai_main(argv) == 0, capsys.readouterr().err
    models = {body["model"] for body in server.bodies}
    assert models == {"trained", "base"}  # both answered there, and the base model judged
    result = json.loads((tmp_path / "eval.json").read_text())
    assert (result["trained_model"], result["base_model"], result["judge"]["model"]) == ("trained", "base", "base")
    assert result["win_rate"]["all"]["n"] == 2
    assert url not in (tmp_path / "eval.json").read_text()


def test_a_vllm_engine_that_died_stops_the_stage_with_one_line():
    """Fault injection: an engine process killed under the backend (the kernel's OOM killer, say) is one UserError
    naming the model and what to do, not a traceback and not a row error on every later request."""
    import asyncio
    import itertools

    from vllm import SamplingParams
    from vllm.v1.engine.exceptions import EngineDeadError

    from core.backends.vllm_backend import VLLMBackend

    class DeadEngine:
        def generate(self, *args, **kwargs):
            async def outputs():
                raise EngineDeadError()
                yield  # an async generator, as AsyncLLM.generate is

            return outputs()

    backend = object.__new__(VLLMBackend)  # no engine start: only the request path is under test
    backend.folder, backend.engine, backend._request_ids = "/models/SmolLM2-135M-Instruct", DeadEngine(), itertools.count()
    with pytest.raises(UserError, match=r"the vLLM engine of SmolLM2-135M-Instruct stopped: its process ended .* "
                                        r"run the same command again: it resumes"):
        asyncio.run(backend._generate([1, 2, 3], SamplingParams(max_tokens=1)))


def test_building_a_vllm_backend_starts_nothing_until_load():
    """A stage builds its engine's backend up front and loads it only when it has work: building reads no model
    (a missing one is refused by check_model, before any work), requests before load() say so, close() is a no-op."""
    from core.backends.registry import backend_options, build_backend

    backend = build_backend("vllm", "default", backend_options("vllm", seed=3))
    assert not backend.loaded and backend.engine is None and backend.folder == "default"
    with pytest.raises(RuntimeError, match=r"call load\(\) before its requests"):
        backend.label_token_ids(["A", "B"])
    backend.close()
    assert not backend.loaded
