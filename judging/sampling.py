"""``cai judge --mode samples``: a prompt without responses gets ``--num-samples`` policy samples, cached beside
the output (``OUT.samples.jsonl``) by prompt, model, sampling, seed and index."""

from __future__ import annotations

from core import aio
from core.backends.base import Backend, Sampling
from core.hashing import stable_hash
from core.schema import SampleRecord

from .config import JudgeConfig
from .items import Candidate, Item


def sample_settings(config: JudgeConfig) -> Sampling:
    return Sampling(max_tokens=config.max_tokens, temperature=config.temperature, top_p=config.top_p)


def sample_keys(item: Item, config: JudgeConfig) -> list[str]:
    """The cache keys of an item's ``num_samples`` policy samples (prompt, model, sampling, seed, index)."""
    sampling = sample_settings(config).as_dict()
    return [stable_hash({"id": item.id, "prompt": item.prompt, "model": config.model, "backend": config.backend,
                         "sampling": sampling, "seed": config.seed, "index": index})
            for index in range(config.num_samples)]


def use_samples(item: Item, keys: list[str], store: dict[str, dict]) -> None:
    """The item's candidates from its cached samples (a sample that failed is left out)."""
    for index, key in enumerate(keys):
        record = store.get(key)
        if record is not None:
            item.candidates.append(Candidate(record["text"], record["finish_reason"], f"sample {index}"))
    item.input_fingerprint = stable_hash([item.prompt, [c.text for c in item.candidates]])


async def sample_candidates(item: Item, config: JudgeConfig, store: dict[str, dict], policy: Backend,
                            session: str | None = None) -> tuple[list[dict], int]:
    """Give an item without responses ``num_samples`` policy samples, the missing ones sampled at once;
    the new sample records (to persist) and the tokens generated."""
    sampling, keys = sample_settings(config), sample_keys(item, config)
    missing = [(index, key) for index, key in enumerate(keys) if key not in store]
    completions = await aio.gather([policy.achat(item.prompt, sampling, int(key[:8], 16) % (2**31), session=session)
                                    for _, key in missing])
    new = []
    for (index, key), completion in zip(missing, completions):
        if not completion.error:
            store[key] = {"key": key, "id": item.id, "index": index, "text": completion.text,
                          "finish_reason": completion.finish_reason, "error": completion.error}
            new.append(store[key])
    use_samples(item, keys, store)
    return new, sum(c.completion_tokens for c in completions)


def is_valid_sample(record) -> bool:
    from pydantic import ValidationError

    try:
        SampleRecord.model_validate(record)
    except ValidationError:
        return False
    return True
