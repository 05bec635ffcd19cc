"""Near-duplicates (core/dedup.py) and contamination (cai/contamination.py) on planted rows, and cai judge leaving
duplicates out the way it leaves flagged rows out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.contamination import find_contaminated, load_eval_sets
from core.dedup import NEAR_THRESHOLD, count_duplicates, find_duplicates, jaccard, shingles, words
from core.errors import UserError

PROMPT = ("Please explain in plain everyday words how a vaccine teaches the immune system to recognise a virus that "
          "it has never met before")
ANSWER = "A vaccine shows the immune system a harmless piece of the virus, so it learns to recognise the real one."


def test_exact_near_and_distinct_prompts_and_responses():
    rows = [
        {"prompt": PROMPT, "response": ANSWER},
        {"prompt": PROMPT.upper() + "!!", "response": "Something else entirely, written at length for this row."},
        {"prompt": PROMPT.replace("everyday", "ordinary"), "response": None},  # one word changed
        {"prompt": "Tell me a joke about cats.", "response": ANSWER.replace("harmless", "safe")},  # near response
        {"prompt": "Tell me a joke about dogs.", "response": "Yes."},  # different prompt; short answers not compared
        {"prompt": "Tell me a joke about birds.", "response": "Yes."},
        # shares half its words with ANSWER: far below 0.8
        {"prompt": "How do I bake bread?", "response": "A vaccine shows the immune system how bread is baked: flour, "
                                                       "water, salt, yeast and a hot oven."},
    ]
    near = jaccard(shingles(words(PROMPT)), shingles(words(rows[2]["prompt"])))
    assert NEAR_THRESHOLD <= near < 1
    found = find_duplicates(rows)
    assert {i: (d.of, d.field, d.kind) for i, d in found.items()} == {
        1: (0, "prompt", "exact"), 2: (0, "prompt", "near"), 3: (0, "response", "near")}
    assert found[2].similarity == pytest.approx(near, abs=1e-3)
    assert count_duplicates(found.values()) == {"prompt_exact": 1, "prompt_near": 1, "response_exact": 0,
                                                "response_near": 1}


def test_a_row_left_out_is_not_what_later_rows_are_compared_with():
    a = " ".join(f"w{i}" for i in range(30))
    b = a.replace("w10", "x10")  # near a
    c = b.replace("w20", "x20")  # near b, not near a: kept, as b (left out) is not compared with
    similarity = {pair: jaccard(shingles(words(x)), shingles(words(y))) for pair, (x, y) in
                  {"ab": (a, b), "bc": (b, c), "ac": (a, c)}.items()}
    assert similarity["ab"] >= NEAR_THRESHOLD and similarity["bc"] >= NEAR_THRESHOLD > similarity["ac"]
    found = find_duplicates([{"prompt": a}, {"prompt": b}, {"prompt": c}])
    assert {i: d.of for i, d in found.items()} == {1: 0}


EVAL = ("Describe the main causes of the French Revolution and explain how the financial crisis of the monarchy "
        "made the situation worse")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_an_evaluation_prompt_copied_into_a_prompt_or_a_response_is_found(tmp_path):
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": EVAL}, {"prompt": "What is the capital of Peru?"},
                                                  {"prompt": "Hi there"}])
    sets = load_eval_sets([evals])
    assert sets.files[0]["prompts"] == 3 and sets.files[0]["checked"] == 2  # "Hi there" is too short to check
    words_13 = " ".join(EVAL.split()[3:16])
    rows = [{"prompt": "For homework: " + EVAL.lower() + "?", "response": "ok"},
            {"prompt": "Help me", "response": "As asked: " + words_13 + " and more."},
            {"prompt": "Help me", "response": " ".join(EVAL.split()[3:15])},  # 12 words: below the 13-word run
            {"prompt": "By the way, what is the capital of Peru? I forgot.", "response": "Lima."},  # a short prompt, whole
            {"prompt": "hi there friend", "response": "hello"}]
    found = find_contaminated(rows, sets)
    assert found == {0: {"field": "prompt", "eval_prompt": f"{evals}:1"},
                     1: {"field": "response", "eval_prompt": f"{evals}:1"},
                     3: {"field": "prompt", "eval_prompt": f"{evals}:2"}}


def test_a_datasets_folder_is_an_evaluation_set(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": EVAL}]}]).save_to_disk(str(tmp_path / "ds"))
    sets = load_eval_sets([tmp_path / "ds"])
    assert find_contaminated([{"prompt": EVAL, "response": None}], sets) == {0: {"field": "prompt",
                                                                                "eval_prompt": f"{tmp_path / 'ds'}:1"}}
    datasets.Dataset.from_list([{"question": EVAL}]).save_to_disk(str(tmp_path / "q"))
    with pytest.raises(UserError, match=r"--eval-sets .*q: no 'prompt' or 'messages' column \(it has question\)"):
        load_eval_sets([tmp_path / "q"])


def test_a_bad_evaluation_set_names_the_file_and_line(tmp_path):
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"prompt": "fine prompt here for the check"}\n{"prompt": 7}\n')
    with pytest.raises(UserError, match=r"--eval-sets: .*eval\.jsonl:2: 'prompt' must be a string"):
        load_eval_sets([bad])
    with pytest.raises(UserError, match=r"--eval-sets .*missing\.jsonl: no such file or folder"):
        load_eval_sets([tmp_path / "missing.jsonl"])


# -- cai judge ------------------------------------------------------------------------------------------------
def test_judge_leaves_duplicates_out_and_reports_them(tmp_path):
    from export_run import AnswersFromPrompt, CONSTITUTION, PROMPTS

    from judging.config import JudgeConfig
    from judging.run import run_judge
    from judging.judge_report import format_judge_report

    rows = []
    for line, (row_id, prompt) in enumerate(PROMPTS, start=1):
        rows.append({"id": row_id, "tag": None, "prompt": [{"role": "user", "content": prompt}],
                     "initial_response": f"{prompt} Here is a draft answer with a few quick points.",
                     "rounds": [{"principle_id": "harm-privacy", "critique_request": "c", "critique": "k",
                                 "revision_request": "r", "revision": f"{prompt} A careful revised answer, kindly.",
                                 "fingerprint": f"r{line}"}],
                     "final_response": f"{prompt} A careful revised answer, kindly.", "model": "m", "sampling": {},
                     "seed": 0, "calls": [], "token_counts": {}, "constitution_version": "1",
                     "draft_fingerprint": f"d{line}", "fingerprint": f"f{line}", "source": {"line": line},
                     "reused_calls": 0})
    write_jsonl(tmp_path / "revisions.jsonl", rows)

    def judged(**overrides):
        config = JudgeConfig(input=str(tmp_path / "revisions.jsonl"), out=str(tmp_path / "prefs.jsonl"),
                             constitution=str(CONSTITUTION), method="likelihood", principles_per_pair=1, overwrite=True,
                             **overrides)
        return run_judge(config, backend=AnswersFromPrompt("judge"))

    result = judged()
    report = result["report"]
    assert report["duplicate_rows"] == report["duplicate_rows_left_out"] == 2
    assert report["duplicates_by_kind"] == {"prompt_exact": 1, "prompt_near": 1}
    assert [(e["id"], e["of_id"], e["kind"]) for e in report["duplicate_examples"]] == [
        ("vaccine-copy", "vaccine", "exact"), ("vaccine-near", "vaccine", "near")]
    assert sorted(p["id"] for p in result["pairs"]) == ["cook", "garden", "history", "joke", "vaccine"]
    assert "duplicate rows:          2 left out (--keep-duplicates keeps them)" in format_judge_report(report)
    assert result["counts"]["rows"] == 7 and report["rows"] == 7

    kept = judged(keep_duplicates=True)
    assert len(kept["pairs"]) == 7 and kept["report"]["duplicate_rows_left_out"] == 0
    assert kept["report"]["duplicate_rows"] == 2
