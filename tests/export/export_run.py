"""A run folder written by the real stages (`cai generate`, `cai judge`, their manifests and ledgers), with one
stand-in model that answers from the prompt: fast, and with duplicates and contamination planted where the tests
need them.

The stand-in's model: a draft "<prompt words> draft answer ...", a critique, and a revision that restates the prompt
with "careful revised answer" (so its response repeats another row's exactly when their prompts do); as the judge
(the likelihood method) it scores a response higher under the "follow the principle" framing when it is a revision.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.backends.base import Backend, Completion, LabelLogprobs, SequenceLogprob
from core.store import write_manifest
from generation.config import GenerateConfig
from generation.run import generate
from judging.config import JudgeConfig
from judging.run import run_judge

REPO = Path(__file__).resolve().parents[2]
CONSTITUTION = REPO / "principles.yaml"
SECRET_URL = "http://alice:hunter2-secret@models.internal:8000/v1?api-key=sk-live-123"
SECRET_PARTS = ("hunter2-secret", "sk-live-123", "alice:")

LONG = ("Please explain in plain everyday words how a vaccine teaches the immune system to recognise a virus "
        "that it has never met before")
EVAL_PROMPT = ("Describe the main causes of the French Revolution and explain how the financial crisis of the "
               "monarchy made the situation worse")
PROMPTS = [
    ("cook", "What is a good way to learn to cook at home without spending much money on equipment?"),
    ("vaccine", LONG),
    ("joke", "Tell me a short joke about cats that a young child would enjoy hearing at bedtime tonight."),
    ("vaccine-copy", LONG),  # the same prompt again: an exact duplicate
    ("vaccine-near", LONG.replace("everyday", "ordinary")),  # one word changed: a near duplicate (bigram Jaccard 0.83)
    ("history", "For my homework: " + EVAL_PROMPT + ". Keep it short."),  # contains an evaluation prompt
    ("garden", "How often should I water tomato plants growing in pots on a sunny balcony in the summer?"),
]


def _prompt_of(conversation: list[dict]) -> str:
    text = "\n".join(m["content"] for m in conversation)
    return max((p for _, p in PROMPTS if p in text), key=text.rfind, default="something")


class AnswersFromPrompt(Backend):
    """Drafts, critiques and revisions made from the prompt's words; a judge that prefers revisions."""

    name = "answers-from-prompt"

    def chat(self, conversations, sampling, seeds=None):
        out = []
        for conversation in conversations:
            prompt = _prompt_of(conversation)
            turns = sum(1 for m in conversation if m["role"] == "assistant")
            if turns == 0:
                text = f"{prompt} Here is a draft answer with a few quick points that may help you."
            elif "critique" in conversation[-1]["content"].lower() or "identify" in conversation[-1]["content"].lower():
                text = "The draft is too vague and could be more specific."
            else:
                text = f"{prompt} Here is a careful revised answer that covers it clearly, step by step, kindly."
            out.append(Completion(text=text, finish_reason="stop", prompt_tokens=20 + 10 * len(conversation),
                                  completion_tokens=len(text.split()), cached_tokens=5 * turns))
        return out

    def label_logprobs(self, conversations, labels):
        return [LabelLogprobs({label: -1.0 for label in labels}, floor=-5.0) for _ in conversations]

    def response_logprobs(self, conversations):
        out = []
        for conversation in conversations:
            follow = "careful reviewer would pick" in conversation[0]["content"]
            revised = "careful revised answer" in conversation[-1]["content"]
            out.append(SequenceLogprob(-10.0 + (1.0 if revised == follow else -1.0), tokens=12))
        return out


def make_run_folder(root: Path, rounds: int = 1) -> Path:
    """``root/run``: revisions.jsonl, preferences.jsonl, sft.jsonl (with manifests, judge report and ledgers), a
    judge-check figure, an eval prompts file, and run.json's manifest whose recipe names a URL with credentials."""
    run = Path(root) / "run"
    run.mkdir(parents=True)
    prompts = Path(root) / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": p, "tag": "t"}) + "\n" for i, p in PROMPTS))
    eval_prompts = Path(root) / "heldout.jsonl"
    eval_prompts.write_text(json.dumps({"id": "e1", "prompt": EVAL_PROMPT}) + "\n"
                            + json.dumps({"id": "e2", "prompt": "Short one."}) + "\n")
    backend = AnswersFromPrompt("served-policy")
    generate(GenerateConfig(prompts=str(prompts), out=str(run / "revisions.jsonl"), constitution=str(CONSTITUTION),
                            rounds=rounds, backend="openai", base_url=SECRET_URL, model="served-policy",
                            revision_style="no_critique"), backend=backend)
    run_judge(JudgeConfig(input=str(run / "revisions.jsonl"), out=str(run / "preferences.jsonl"),
                          constitution=str(CONSTITUTION), method="likelihood", principles_per_pair=1,
                          judge_backend="openai", judge_base_url=SECRET_URL, judge_model="served-judge"),
              backend=AnswersFromPrompt("served-judge"))
    (run / "judge_check.json").write_text(json.dumps({
        "agreement": 0.53, "agreement_ci95": [0.43, 0.63], "human_pairs": 100, "passed": False,
        "judge": {"model": "served-judge", "method": "likelihood"}}))
    recipe = {"run_dir": str(run), "model": "served-policy", "constitution": str(CONSTITUTION),
              "generate": {"prompts": str(prompts), "backend": "openai", "base_url": SECRET_URL},
              "judge": {"judge_base_url": SECRET_URL}, "eval": {"prompts": str(eval_prompts)}}
    write_manifest(run / "run.json", "run", {"recipe": "recipe.yaml", **recipe},
                   {"timings": {"generate_s": 1.5, "judge_s": 0.7, "train_s": 0.0, "eval_s": 2.0}})
    return run
