"""A peer for ``bench.peers``: the critique-revise chain as a distilabel 1.5.3 pipeline.

Run with the python of the virtual environment ``bench.peers`` builds for it (``bench/.venv-distilabel``,
``pip install distilabel[openai]==1.5.3``), never the project's:

    bench/.venv-distilabel/bin/python bench/peer_distilabel.py JOB.json OUT.jsonl SUMMARY.json

The pipeline: ``LoadDataFromDicts`` -> ``ChatGeneration`` (draft) -> a step that appends the draft and
the critique request -> ``ChatGeneration`` (critique) -> a step that appends the critique and the
revision request -> ``ChatGeneration`` (revision), every generation on ``OpenAILLM`` pointed at the
job's endpoint.  The conversations are the ones ``cai generate`` sends: the draft sees the system
prompt and the prompt; the critique and revision see the system prompt, the few-shot exemplars, the
prompt and the turns so far.

Set up for throughput as distilabel's documentation advises: each task's ``input_batch_size`` (an
``AsyncLLM`` such as ``OpenAILLM`` sends a whole batch at once, ``asyncio.gather`` over it) and
``StepResources(replicas=...)`` (each replica a process working on its own batches; every step
runs in its own processes, so a batch moves on to the critique while later batches draft), the generator's ``batch_size`` equal to the tasks', raw inputs and
outputs left out of the rows, and the cache off (``use_cache=False``).  JOB.json's ``distilabel``
({"input_batch_size", "replicas"}) sets both.

JOB.json is the one ``bench.peer_llm_swarm`` reads.  SUMMARY.json: rows, failed, calls,
output_tokens, prompt_tokens (the server's usage, from distilabel's per-row statistics), seconds.
"""

import json
import os
import sys
import time

# Steps live at module level: distilabel pickles them to their worker processes.
from distilabel.steps import StepInput, step


# A task's output replaces the row's distilabel_metadata, so each turn keeps the previous call's statistics.
@step(inputs=["critique_head", "draft", "critique_request"], outputs=["messages", "statistics_draft"])
def CritiqueTurn(inputs: StepInput):
    """The critique's conversation: system prompt, few-shot exemplars, prompt, draft, critique request."""
    for row in inputs:
        row["statistics_draft"] = (row.get("distilabel_metadata") or {}).get("statistics_draft")
        row["messages"] = row["critique_head"] + [
            {"role": "assistant", "content": row["draft"] or ""},
            {"role": "user", "content": row["critique_request"]},
        ]
    yield inputs


@step(inputs=["messages", "critique", "revision_request"], outputs=["messages", "statistics_critique"])
def RevisionTurn(inputs: StepInput):
    """The revision's conversation: the critique's, its answer, the revision request."""
    for row in inputs:
        row["statistics_critique"] = (row.get("distilabel_metadata") or {}).get("statistics_critique")
        row["messages"] = row["messages"] + [
            {"role": "assistant", "content": row["critique"] or ""},
            {"role": "user", "content": row["revision_request"]},
        ]
    yield inputs


def build(job: dict):
    from distilabel.models.llms import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts, StepResources
    from distilabel.steps.tasks import ChatGeneration

    settings = job.get("distilabel") or {}
    batch = int(settings.get("input_batch_size", 50))
    replicas = int(settings.get("replicas", 1))
    sampling = job["sampling"]
    head = [{"role": "system", "content": job["system_prompt"]}] if job.get("system_prompt") else []
    few_shot = list(job["few_shot"])
    data = [
        {"id": row["id"], "messages": head + row["messages"], "critique_head": head + few_shot + row["messages"],
         "critique_request": row["critique_request"], "revision_request": row["revision_request"]}
        for row in job["rows"]
    ]

    def generation(name: str, output: str):
        llm = OpenAILLM(
            model=job["model"], base_url=job["base_url"], api_key="EMPTY", timeout=600, max_retries=6,
            generation_kwargs={"max_new_tokens": sampling["max_tokens"], "temperature": sampling["temperature"],
                               "top_p": sampling["top_p"]},
        )
        return ChatGeneration(
            name=name, llm=llm, input_batch_size=batch, resources=StepResources(replicas=replicas),
            add_raw_output=False, add_raw_input=False, output_mappings={"generation": output},
        )

    with Pipeline(name="cai-peer-critique-revise") as pipeline:
        load = LoadDataFromDicts(name="load", data=data, batch_size=batch)
        draft = generation("draft", "draft")
        critique = generation("critique", "critique")
        revision = generation("revision", "revision")
        load >> draft >> CritiqueTurn(name="critique_turn", input_batch_size=batch) >> critique
        critique >> RevisionTurn(name="revision_turn", input_batch_size=batch) >> revision
    return pipeline


def _total(value) -> int:
    """A statistics entry: a count, or a list of counts (one per generation)."""
    if isinstance(value, list):
        return sum(v or 0 for v in value)
    return value or 0


def main(argv=None) -> int:
    job_path, out_path, summary_path = (argv or sys.argv[1:])[:3]
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    os.environ.setdefault("DISTILABEL_LOG_LEVEL", "WARNING")
    started = time.perf_counter()
    distiset = build(job).run(use_cache=False)
    rows = list(distiset["default"]["train"])
    summary = {"rows": 0, "failed": 0, "calls": 0, "output_tokens": 0, "prompt_tokens": 0}
    with open(out_path, "w", encoding="utf-8") as f:
        for row in rows:
            meta = row.get("distilabel_metadata") or {}
            for name in ("draft", "critique", "revision"):
                stats = row.get(f"statistics_{name}") or meta.get(f"statistics_{name}") or {}
                summary["calls"] += 1
                summary["output_tokens"] += _total(stats.get("output_tokens"))
                summary["prompt_tokens"] += _total(stats.get("input_tokens"))
            ok = all(row.get(k) is not None for k in ("draft", "critique", "revision"))
            summary["rows" if ok else "failed"] += 1
            f.write(json.dumps({k: row.get(k) for k in ("id", "draft", "critique", "revision")}) + "\n")
    summary["seconds"] = time.perf_counter() - started
    with open(summary_path, "w", encoding="utf-8") as f:
        json.dump(summary, f)
    return 0 if summary["rows"] == len(job["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
