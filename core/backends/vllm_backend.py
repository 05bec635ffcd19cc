"""In-process vLLM engine (vLLM's ``AsyncLLM``): the default backend.

Each request is submitted on its own and awaited on the process's event loop (``core.aio``), so a
stage keeps the engine's queue full: vLLM schedules whatever is in flight continuously, and a
row's next call joins the running batch as soon as its previous one returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from core import aio
from core.errors import UserError
from core.hardware import DTYPES, choose_dtype, give_back_freed_memory, spawned_processes_keep_freed_memory, this_cpu
from core.log import get_logger
from core.model import DEFAULT_MODEL, model_identity, resolve_model

from .base import (
    Backend, BackendOptions, Completion, Conversation, LabelLogprobs, Sampling, SequenceLogprob, ends_with_assistant,
)


@dataclass(frozen=True)
class VLLMOptions(BackendOptions):
    """The vllm backend's options (``--seed``, ``--max-model-len``, ``--gpu-memory-utilization``, ...)."""

    seed: int = 0
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1
    concurrency: int | None = None
    dtype: str = "auto"

    memory_share_field = "gpu_memory_utilization"

    def devices(self) -> int:
        return self.tensor_parallel_size

    def rules(self) -> list[tuple[str, bool, str]]:
        return [
            ("dtype", self.dtype in DTYPES, f"is unknown; choose one of: {', '.join(DTYPES)}"),
            ("concurrency", self.concurrency is None or self.concurrency >= 1, "must be >= 1"),
            ("max_model_len", self.max_model_len is None or self.max_model_len >= 1, "must be >= 1"),
            ("gpu_memory_utilization", self.gpu_memory_utilization is None or 0 < self.gpu_memory_utilization <= 1,
             "must be in (0, 1]"),
            ("tensor_parallel_size", self.tensor_parallel_size >= 1, "must be >= 1"),
        ]


logger = get_logger(__name__)


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_dtype(requested: str, cpu: bool) -> str:
    """The dtype the engine runs (see ``core.hardware``): passed to vLLM always, never its own 'auto'."""
    if cpu:
        return choose_dtype(requested)
    import torch

    return choose_dtype(requested, gpu_bf16=torch.cuda.is_bf16_supported())


def _worker_threads() -> str:
    """The CPU worker's OpenMP threads as vLLM binds them: one per physical core it may use, less those reserved."""
    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
    if bind != "auto":
        return f"bound to {bind}"
    cores = this_cpu().cores
    reserved = int(os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU") or 1)
    return f"{max(1, cores - reserved)} ({cores} cores, {reserved} reserved)"


#: the least RAM an engine on CPU reserves when no share is set (a small model's weights and KV cache)
CPU_ENGINE_MIN_RAM = 4 * 2**30


def _cpu_memory_share(model: str) -> float:
    """On CPU, gpu_memory_utilization is the share of RAM the worker reserves (weights + KV cache).

    vLLM refuses to start unless that much is free, and a small model needs little:
    reserve four times the weights (at least 4 GiB), capped by half the RAM and by
    what is free now, so several engines (a policy and a judge, a test server) fit.
    """
    import psutil

    weights = sum(f.stat().st_size for f in Path(model).glob("*.safetensors")) if Path(model).is_dir() else 0
    memory = psutil.virtual_memory()
    wanted = max(CPU_ENGINE_MIN_RAM, 4 * weights)
    share = min(wanted / memory.total, 0.5, 0.85 * memory.available / memory.total)
    return round(max(0.05, share), 3)


def _did_not_start(model: str, cpu: bool, share: float) -> str:
    """The one line for an engine whose core process failed at start; vLLM has logged the reason above it."""
    if cpu:
        hint = (f"on CPU it reserved {share:.0%} of the RAM, and the KV cache gets what the weights and the worker's "
                "own memory leave of that: raise --gpu-memory-utilization, or set the KV cache's size with "
                "VLLM_CPU_KVCACHE_SPACE=GiB, free memory, or lower --max-model-len")
    else:
        hint = ("raise --gpu-memory-utilization if the KV cache did not fit, free the GPU of other processes, or "
                "lower --max-model-len")
    return f"the vLLM engine of {Path(model).name} did not start (vLLM's reason is in its log above): {hint}"


class VLLMBackend(Backend):
    name = "vllm"
    Options = VLLMOptions

    @classmethod
    def from_options(cls, model: str, options: VLLMOptions) -> VLLMBackend:
        """The engine on ``model``: 'default' (converted once, when it first loads), a model folder or a hub id."""
        return cls(model, **asdict(options))

    @classmethod
    def identity(cls, model: str) -> str:
        return model_identity(model)  # a folder's absolute path; converts nothing

    @classmethod
    def check_model(cls, model: str, flag: str = "--model") -> None:
        if model != DEFAULT_MODEL:  # the default is converted when it first loads, not here
            resolve_model(model, flag)  # a missing folder is a UserError

    def __init__(
        self,
        model: str,
        seed: int = 0,
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        enforce_eager: bool | None = None,
        enable_prefix_caching: bool = True,
        tensor_parallel_size: int = 1,
        disable_log_stats: bool = True,
        concurrency: int | None = None,
        dtype: str = "auto",
        **engine_kwargs,
    ):
        super().__init__(model)
        cpu = _on_cpu()
        self.dtype = engine_dtype(dtype, cpu)  # known before the engine starts: stages record it
        self.engine = None
        self.folder = model  # the model's folder once ``load`` has resolved the name ('default' is converted then)
        self._requested_dtype = dtype
        self._concurrency = concurrency
        if enforce_eager is None:
            enforce_eager = cpu  # on CPU, eager mode halves start-up
        if cpu:
            # vLLM's CPU worker cannot rewind a seeded sampler after a partial (chunked)
            # prefill ("CPU Generator does not use offset"); whole prefills avoid it.
            engine_kwargs.setdefault("enable_chunked_prefill", False)
        self._engine_arguments = dict(
            model=model, seed=seed, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager, enable_prefix_caching=enable_prefix_caching,
            tensor_parallel_size=tensor_parallel_size, disable_log_stats=disable_log_stats, dtype=self.dtype,
            **engine_kwargs)
        self._request_ids = itertools.count()

    @property
    def loaded(self) -> bool:
        return self.engine is not None

    def load(self) -> VLLMBackend:
        """Start the engine (a minute on CPU), once."""
        if self.engine is not None:
            return self
        from vllm.engine.arg_utils import AsyncEngineArgs

        try:
            folder = resolve_model(self.model)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
        cpu = _on_cpu()
        share = self._engine_arguments["gpu_memory_utilization"]
        if share is None:
            share = _cpu_memory_share(folder) if cpu else 0.9
        if cpu and (os.cpu_count() or 1) <= 4:
            # vLLM keeps one core for its front end; on a small machine that halves the
            # compute (2 cores: 355 -> 506 output tok/s with the worker on both).
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        arguments = AsyncEngineArgs(**{**self._engine_arguments, "model": folder, "gpu_memory_utilization": share})
        if cpu:
            give_back_freed_memory()  # the engine's share is of the memory free now
        try:
            # On CPU the engine's processes keep what they free for the next step (core.hardware.MALLOC_TUNABLES);
            # they are all started by the time the engine is.
            with spawned_processes_keep_freed_memory() if cpu else contextlib.nullcontext():
                self.engine = aio.run_sync(self._start(arguments))  # on the loop, which then runs its output handler
        except RuntimeError as exc:
            if "initialization failed" not in str(exc):
                raise
            raise UserError(_did_not_start(folder, cpu, share)) from None
        self.folder = folder
        self.tokenizer = self.engine.get_tokenizer()
        self.max_model_len = self.engine.model_config.max_model_len
        # Twice what the engine runs at once: a finished sequence's slot is refilled from the
        # queue at once, while its row prepares the next call.
        self.concurrency = self._concurrency or 2 * self.engine.vllm_config.scheduler_config.max_num_seqs
        logger.info(self.describe(cpu, self._requested_dtype))
        return self

    def _require_engine(self):
        if self.engine is None:
            raise RuntimeError("the vLLM backend's engine is not started: call load() before its requests")
        return self.engine

    def describe(self, cpu: bool, requested: str) -> str:
        """One line: where the engine runs and how (device, CPU and its ISA flags, dtype, threads, memory, batch)."""
        config = self.engine.vllm_config
        chosen = f"dtype {self.dtype}" + (f" (auto: {'native' if self.dtype == 'bfloat16' else 'no native'} bf16)"
                                          if requested == "auto" and cpu else "")
        blocks = config.cache_config.num_gpu_blocks
        kv = f"KV cache {blocks * config.cache_config.block_size:,} tokens" if blocks else "KV cache sized by vLLM"
        if cpu:
            kv_space = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
            memory = (f"VLLM_CPU_KVCACHE_SPACE={kv_space} GiB" if kv_space
                      else f"{config.cache_config.gpu_memory_utilization:.0%} of RAM reserved")
            where = f"cpu: {this_cpu().describe()} | {chosen} | threads {_worker_threads()}"
        else:
            import torch

            memory = f"gpu_memory_utilization {config.cache_config.gpu_memory_utilization}"
            where = f"gpu: {torch.cuda.get_device_name()} x{config.parallel_config.tensor_parallel_size} | {chosen}"
        return (f"[engine] {Path(self.folder).name} on {where} | {memory}, {kv} | "
                f"max_num_seqs {config.scheduler_config.max_num_seqs}")

    @staticmethod
    async def _start(arguments):
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(arguments)

    def _token_ids(self, conversation: Conversation) -> list[int]:
        self._require_engine()
        continue_final = ends_with_assistant(conversation)
        encoded = self.tokenizer.apply_chat_template(
            list(conversation),
            tokenize=True,
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
        )
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)

    def _too_long(self, length: int) -> str:
        return (
            f"prompt is {length} tokens but the model's context is {self.max_model_len}; "
            "shorten the prompt or raise --max-model-len"
        )

    async def _generate(self, token_ids: list[int], params):
        """The request's final output (templating is done by the caller so that an over-long prompt
        is reported for its row instead of failing in the engine)."""
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.exceptions import EngineDeadError

        params.output_kind = RequestOutputKind.FINAL_ONLY  # one output per request, not one per token
        final = None
        try:
            async for output in self.engine.generate({"prompt_token_ids": token_ids}, params,
                                                     f"cai-{next(self._request_ids)}"):
                final = output
        except EngineDeadError:
            # Every later request would fail the same way: stop the stage with one line, not a row error each.
            raise UserError(
                f"the vLLM engine of {Path(self.folder).name} stopped: its process ended (on a machine short of "
                "memory the kernel kills it; `dmesg` says). The rows finished so far are kept. Free memory or "
                "lower --gpu-memory-utilization / --max-num-seqs, then run the same command again: it resumes"
            ) from None
        return final

    async def achat(self, conversation: Conversation, sampling: Sampling, seed: int | None = None,
                    session: str | None = None) -> Completion:
        from vllm import SamplingParams

        token_ids = self._token_ids(conversation)
        if len(token_ids) >= self.max_model_len:
            return Completion(text="", finish_reason="error", error=self._too_long(len(token_ids)))
        constraint = {}
        if sampling.choices is not None:
            from vllm.sampling_params import StructuredOutputsParams

            constraint["structured_outputs"] = StructuredOutputsParams(choice=list(sampling.choices))
        params = SamplingParams(max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                                top_p=sampling.top_p, stop=list(sampling.stop) if sampling.stop else None,
                                seed=seed, **constraint)
        output = await self._generate(token_ids, params)
        choice = output.outputs[0]
        return Completion(
            text=choice.text,
            finish_reason=choice.finish_reason or "stop",
            prompt_tokens=len(output.prompt_token_ids or []),
            completion_tokens=len(choice.token_ids),
            cached_tokens=output.num_cached_tokens,
        )

    def label_token_ids(self, labels: Sequence[str]) -> dict[str, int]:
        self._require_engine()
        ids = {}
        for label in labels:
            tokens = self.tokenizer.encode(label, add_special_tokens=False)
            if not tokens:
                raise ValueError(f"label {label!r} encodes to no token")
            ids[label] = tokens[0]
        if len(set(ids.values())) != len(ids):
            raise ValueError(f"labels {list(labels)} share a first token; use labels that differ in their first token")
        return ids

    async def alabel_logprobs(self, conversation: Conversation, labels: Sequence[str],
                              session: str | None = None) -> LabelLogprobs:
        from vllm import SamplingParams

        ids = self.label_token_ids(labels)
        token_ids = self._token_ids(conversation)
        if len(token_ids) >= self.max_model_len:
            return LabelLogprobs({label: None for label in labels}, error=self._too_long(len(token_ids)))
        top_k = self.engine.model_config.max_logprobs
        output = await self._generate(token_ids, SamplingParams(max_tokens=1, temperature=0.0, logprobs=min(20, top_k)))
        top = output.outputs[0].logprobs[0]
        values = {label: (top[i].logprob if i in top else None) for label, i in ids.items()}
        return LabelLogprobs(logprobs=values, floor=min(lp.logprob for lp in top.values()))

    def _response_span(self, conversation: Conversation) -> tuple[list[int], int] | str:
        """Token ids of the whole conversation and where its final assistant message starts (or an error)."""
        self._require_engine()
        if not ends_with_assistant(conversation):
            return "the conversation must end with the assistant message to score"
        full = self._token_ids(conversation)
        head = self.tokenizer.apply_chat_template(list(conversation[:-1]), tokenize=True, add_generation_prompt=True)
        head = list(head["input_ids"] if hasattr(head, "keys") else head)
        if full[: len(head)] != head:
            return "the chat template does not keep the prompt as a prefix of prompt + response"
        return full, len(head)

    async def aresponse_logprobs(self, conversation: Conversation, session: str | None = None) -> SequenceLogprob:
        from vllm import SamplingParams

        span = self._response_span(conversation)
        if isinstance(span, str):
            return SequenceLogprob(None, error=span)
        ids, start = span
        if len(ids) >= self.max_model_len:
            return SequenceLogprob(None, error=(f"prompt is {len(ids)} tokens but the model's context is "
                                                f"{self.max_model_len}; shorten it or raise --max-model-len"))
        # prompt_logprobs=0: only the log-probability of each actual prompt token.
        output = await self._generate(ids, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0))
        total = 0.0
        for position in range(max(start, 1), len(ids)):
            total += output.prompt_logprobs[position][ids[position]].logprob
        return SequenceLogprob(total, tokens=len(ids) - start)

    def reset_prefix_cache(self) -> None:
        """Empty the engine's prefix cache (benchmarks time runs from a cold cache)."""
        aio.run_sync(self._require_engine().reset_prefix_cache())

    def close(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            try:
                # Stop the output handler first: otherwise it sees the engine core go and logs EngineDeadError.
                aio.run_sync(_cancel(getattr(engine, "output_handler", None)))
                engine.shutdown()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
            self.engine = None


async def _cancel(task) -> None:
    if task is not None and not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
