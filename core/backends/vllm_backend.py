"""In-process vLLM engine (``vllm.LLM``): the default backend."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import UserError
from core.model import model_identity, resolve_model

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

    def rules(self) -> list[tuple[str, bool, str]]:
        return [
            ("max_model_len", self.max_model_len is None or self.max_model_len >= 1, "must be >= 1"),
            ("gpu_memory_utilization", self.gpu_memory_utilization is None or 0 < self.gpu_memory_utilization <= 1,
             "must be in (0, 1]"),
            ("tensor_parallel_size", self.tensor_parallel_size >= 1, "must be >= 1"),
        ]


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _cpu_memory_share(model: str) -> float:
    """On CPU, gpu_memory_utilization is the share of RAM the worker reserves (weights + KV cache).

    vLLM refuses to start unless that much is free, and a small model needs little:
    reserve four times the weights (at least 4 GiB), capped by half the RAM and by
    what is free now, so several engines (a policy and a judge, a test server) fit.
    """
    import psutil

    weights = sum(f.stat().st_size for f in Path(model).glob("*.safetensors")) if Path(model).is_dir() else 0
    memory = psutil.virtual_memory()
    wanted = max(4 * 2**30, 4 * weights)
    share = min(wanted / memory.total, 0.5, 0.85 * memory.available / memory.total)
    return round(max(0.05, share), 3)


class VLLMBackend(Backend):
    name = "vllm"
    Options = VLLMOptions

    @classmethod
    def from_options(cls, model: str, options: VLLMOptions) -> VLLMBackend:
        """The engine on ``model``: 'default' (converted once), a model folder or a hub id."""
        try:
            folder = resolve_model(model)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
        return cls(folder, **asdict(options))

    @classmethod
    def identity(cls, model: str) -> str:
        return model_identity(model)  # a folder's absolute path; converts nothing

    def __init__(
        self,
        model: str,
        seed: int = 0,
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        enforce_eager: bool | None = None,
        enable_prefix_caching: bool = True,
        tensor_parallel_size: int = 1,
        show_progress: bool | None = None,
        **engine_kwargs,
    ):
        super().__init__(model)
        from vllm import LLM

        cpu = _on_cpu()
        if gpu_memory_utilization is None:
            gpu_memory_utilization = _cpu_memory_share(model) if cpu else 0.9
        if enforce_eager is None:
            enforce_eager = cpu  # on CPU, eager mode halves start-up
        if cpu:
            # vLLM's CPU worker cannot rewind a seeded sampler after a partial (chunked)
            # prefill ("CPU Generator does not use offset"); whole prefills avoid it.
            engine_kwargs.setdefault("enable_chunked_prefill", False)
            # vLLM keeps one core for its front end; on a small machine that halves the
            # compute (2 cores: 355 -> 506 output tok/s with the worker on both).
            if (os.cpu_count() or 1) <= 4:
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        self.show_progress = sys.stderr.isatty() if show_progress is None else show_progress
        self.llm = LLM(
            model=model,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            tensor_parallel_size=tensor_parallel_size,
            **engine_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def _token_ids(self, conversation: Conversation) -> list[int]:
        continue_final = ends_with_assistant(conversation)
        encoded = self.tokenizer.apply_chat_template(
            list(conversation),
            tokenize=True,
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
        )
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)

    def _generate(self, conversations, params) -> list:
        """Generate for each conversation; ``None`` for a prompt too long for the context.

        Templating here (instead of ``LLM.chat``) lets an over-long prompt be
        flagged before it is sent, rather than failing the whole batch.
        """
        prompts = [self._token_ids(c) for c in conversations]
        fits = [i for i, ids in enumerate(prompts) if len(ids) < self.max_model_len]
        results: list = [None] * len(prompts)
        if fits:
            outs = self.llm.generate(
                [{"prompt_token_ids": prompts[i]} for i in fits],
                [params[i] for i in fits] if isinstance(params, list) else params,
                use_tqdm=self.show_progress,
            )
            for i, out in zip(fits, outs):
                results[i] = out
        self._last_lengths = [len(ids) for ids in prompts]
        return results

    def _too_long(self, i: int) -> str:
        return (
            f"prompt is {self._last_lengths[i]} tokens but the model's context is {self.max_model_len}; "
            "shorten the prompt or raise --max-model-len"
        )

    def chat(self, conversations: Sequence[Conversation], sampling: Sampling, seeds=None) -> list[Completion]:
        from vllm import SamplingParams

        if not conversations:
            return []
        seeds = list(seeds) if seeds is not None else [None] * len(conversations)
        constraint = {}
        if sampling.choices is not None:
            from vllm.sampling_params import StructuredOutputsParams

            constraint["structured_outputs"] = StructuredOutputsParams(choice=list(sampling.choices))
        params = [
            SamplingParams(
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=seed,
                **constraint,
            )
            for seed in seeds
        ]
        completions = []
        for i, out in enumerate(self._generate(conversations, params)):
            if out is None:
                completions.append(Completion(text="", finish_reason="error", error=self._too_long(i)))
                continue
            choice = out.outputs[0]
            completions.append(
                Completion(
                    text=choice.text,
                    finish_reason=choice.finish_reason or "stop",
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=len(choice.token_ids),
                )
            )
        return completions

    def label_token_ids(self, labels: Sequence[str]) -> dict[str, int]:
        ids = {}
        for label in labels:
            tokens = self.tokenizer.encode(label, add_special_tokens=False)
            if not tokens:
                raise ValueError(f"label {label!r} encodes to no token")
            ids[label] = tokens[0]
        if len(set(ids.values())) != len(ids):
            raise ValueError(f"labels {list(labels)} share a first token; use labels that differ in their first token")
        return ids

    def label_logprobs(self, conversations: Sequence[Conversation], labels: Sequence[str]) -> list[LabelLogprobs]:
        from vllm import SamplingParams

        if not conversations:
            return []
        ids = self.label_token_ids(labels)
        top_k = self.llm.llm_engine.model_config.max_logprobs
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=min(20, top_k))
        results = []
        for i, out in enumerate(self._generate(conversations, params)):
            if out is None:
                results.append(LabelLogprobs({label: None for label in labels}, error=self._too_long(i)))
                continue
            top = out.outputs[0].logprobs[0]
            values = {label: (top[i].logprob if i in top else None) for label, i in ids.items()}
            results.append(LabelLogprobs(logprobs=values, floor=min(lp.logprob for lp in top.values())))
        return results

    def _response_span(self, conversation: Conversation) -> tuple[list[int], int] | str:
        """Token ids of the whole conversation and where its final assistant message starts (or an error)."""
        if not ends_with_assistant(conversation):
            return "the conversation must end with the assistant message to score"
        full = self._token_ids(conversation)
        head = self.tokenizer.apply_chat_template(list(conversation[:-1]), tokenize=True, add_generation_prompt=True)
        head = list(head["input_ids"] if hasattr(head, "keys") else head)
        if full[: len(head)] != head:
            return "the chat template does not keep the prompt as a prefix of prompt + response"
        return full, len(head)

    def response_logprobs(self, conversations: Sequence[Conversation]) -> list[SequenceLogprob]:
        from vllm import SamplingParams

        if not conversations:
            return []
        spans = [self._response_span(c) for c in conversations]
        # prompt_logprobs=0: only the log-probability of each actual prompt token.
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        ok = [i for i, span in enumerate(spans) if not isinstance(span, str) and len(span[0]) < self.max_model_len]
        results = [
            SequenceLogprob(None, error=span if isinstance(span, str) else (
                f"prompt is {len(span[0])} tokens but the model's context is {self.max_model_len}; "
                "shorten it or raise --max-model-len"))
            for span in spans
        ]
        if ok:
            outs = self.llm.generate(
                [{"prompt_token_ids": spans[i][0]} for i in ok], params, use_tqdm=self.show_progress
            )
            for i, out in zip(ok, outs):
                ids, start = spans[i]
                total = 0.0
                for position in range(max(start, 1), len(ids)):
                    entry = out.prompt_logprobs[position]
                    total += entry[ids[position]].logprob
                results[i] = SequenceLogprob(total, tokens=len(ids) - start)
        return results

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
            self.llm = None
