"""A peer for ``bench.peers``: critique-revise the way Hugging Face's llm-swarm Constitutional AI script does.

That script (``examples/constitutional-ai/generate_dataset.py`` in huggingface/llm-swarm) starts one
coroutine per prompt and gathers them all; each coroutine keeps one chat that begins with the
constitution's few-shot conversations ("system_chat"), appends the prompt, and asks for the draft,
then the critique request, then the revision request, each answer appended to the chat; every call
holds one ``asyncio.Semaphore`` sized ``500 x instances`` (llm-swarm's
``suggested_max_parallel_requests``).  It sent text-generation requests to TGI with a client-side
chat template; here the same chain goes through the ``openai`` async client's chat completions, so
every peer talks to the same endpoint the same way.  The rows are written when all are done, as
the script builds its dataset at the end.

    python -m bench.peer_llm_swarm JOB.json OUT.jsonl SUMMARY.json

JOB.json (written by ``bench.peers``): base_url, model, sampling (max_tokens, temperature, top_p),
system_prompt, few_shot (the exemplars' messages), rows (id, messages, critique_request,
revision_request).  SUMMARY.json: rows, failed, calls, output_tokens, prompt_tokens (server usage),
seconds.  Standalone: only ``openai`` is needed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

CONCURRENCY = 500  # llm-swarm: suggested_max_parallel_requests = 500 per instance, one instance here


async def run(job: dict) -> tuple[list[dict], dict]:
    import openai

    client = openai.AsyncOpenAI(base_url=job["base_url"], api_key="EMPTY", timeout=600.0)
    semaphore = asyncio.Semaphore(CONCURRENCY)
    sampling = job["sampling"]
    head = ([{"role": "system", "content": job["system_prompt"]}] if job.get("system_prompt") else [])
    system_chat = head + list(job["few_shot"])
    usage = {"calls": 0, "output_tokens": 0, "prompt_tokens": 0}

    async def process(row: dict) -> dict:
        chat = list(system_chat)
        out = {"id": row["id"]}
        turns = [(row["messages"], "init"), ([{"role": "user", "content": row["critique_request"]}], "critique"),
                 ([{"role": "user", "content": row["revision_request"]}], "revision")]
        for messages, key in turns:
            async with semaphore:
                chat.extend(messages)
                completion = await client.chat.completions.create(
                    model=job["model"], messages=chat, max_tokens=sampling["max_tokens"],
                    temperature=sampling["temperature"], top_p=sampling["top_p"],
                )
                text = completion.choices[0].message.content or ""
                chat.append({"role": "assistant", "content": text})
                usage["calls"] += 1
                usage["output_tokens"] += completion.usage.completion_tokens
                usage["prompt_tokens"] += completion.usage.prompt_tokens
            out[f"{key}_prompt"] = messages[-1]["content"]
            out[f"{key}_response"] = text
        return out

    try:
        results = await asyncio.gather(*(process(row) for row in job["rows"]), return_exceptions=True)
    finally:
        await client.close()
    rows = [r for r in results if isinstance(r, dict)]
    failures = [repr(r) for r in results if isinstance(r, BaseException)]
    return rows, {**usage, "rows": len(rows), "failed": len(failures), "errors": failures[:3]}


def main(argv=None) -> int:
    job_path, out_path, summary_path = (argv or sys.argv[1:])[:3]
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    started = time.perf_counter()
    rows, summary = asyncio.run(run(job))
    with open(out_path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    summary["seconds"] = time.perf_counter() - started
    with open(summary_path, "w", encoding="utf-8") as f:
        json.dump(summary, f)
    return 0 if not summary["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
