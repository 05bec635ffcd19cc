"""``cai export RUN_DIR --out DIR``: a run's data as a Hub-ready dataset folder, with its dataset card.

The folder holds one Parquet file per config (``preferences``: TRL's conversational preference format, what
``DPOTrainer`` reads; ``sft``: ``messages``, what ``SFTTrainer`` reads; ``generations``: the raw critique-revise
rows) and ``README.md``, a dataset card whose YAML names the configs, so ``datasets.load_dataset(DIR, "preferences")``
loads the pairs.  The card says where the data came from (constitution text and hash, models by served name,
sampling, seeds, versions, commands and recipe), how good the judge is, what the row checks found, what was left
out and why, and what the data cost (``core/ledger.py``).

Left out of every config: rows that repeat an earlier row's prompt or response, exactly or nearly
(``core/dedup.py``; ``--keep-duplicates`` keeps them), rows whose prompt or response overlaps an evaluation prompt
(``--eval-sets``, ``cai/contamination.py``), and pairs and SFT rows whose generation row was left out.  Nothing in
the run folder is changed.  The folder is written beside ``--out`` and renamed into place once it is complete and
loads; an existing ``--out`` is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError
from core.log import get_logger

from .card import CONFIGS, DATA_FILE, model_name

logger = get_logger(__name__)


@dataclass
class ExportConfig:
    """What ``cai export`` reads and writes."""

    run_dir: str = field(default="", metadata={"help": "The run folder (what `cai run` wrote): RUN_DIR, or --run-dir."})
    out: str = field(default="", metadata={"help": "The dataset folder to write (not inside the run folder)."})
    eval_sets: list[str] = field(
        default_factory=list,
        metadata={"help": "Evaluation prompts to check for contamination: JSON Lines prompts files (`prompt` or "
                          "`messages`, as `cai eval --prompts`) or `datasets` folders with a prompt column. Rows whose "
                          "prompt or response shares a 13-word run with one are left out. Default: the run's own eval "
                          "prompts, when its recipe names them."},
    )
    keep_duplicates: bool = field(
        default=False,
        metadata={"help": "Keep rows whose prompt or response repeats an earlier row's, exactly or nearly (Jaccard >= "
                          "0.8 on word bigrams); by default they are left out and counted on the card."},
    )
    license: str = field(default="unknown", metadata={"help": "The card's license (a Hub license id, e.g. apache-2.0; "
                                                              "mind the models' and the prompts' licenses)."})
    pretty_name: str | None = field(default=None, metadata={"help": "The card's title. Default: from the run folder."})
    push_to_hub: str | None = field(
        default=None,
        metadata={"help": "Also push the folder to this Hub dataset repo (org/name) with huggingface_hub; needs the "
                          "Hub (HF_HUB_OFFLINE=0) and a token. The repo card's existing metadata is kept unless "
                          "--overwrite."},
    )
    private: bool = field(default=False, metadata={"help": "With --push-to-hub: create the repo private."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing --out folder, and with "
                                                             "--push-to-hub the repo card's metadata."})


# -- reading the run ---------------------------------------------------------------------------------------
@dataclass
class RunData:
    run_dir: Path
    rows: dict[str, list[dict]]  # config -> rows
    manifests: dict[str, dict]  # "generate", "judge", "run" -> manifest (one part's, for a folder of parts)


def _stage_rows(path: Path, what: str) -> list[dict]:
    from core.store import read_json_rows

    if not path.exists():
        return []
    if path.is_file() and path.stat().st_size == 0:
        return []
    return [row for _, _, row in read_json_rows(path, what, "RUN_DIR")]


def _first_manifest(path: Path) -> dict:
    from core.shards import part_files
    from core.store import read_manifest

    for candidate in (part_files(path) if path.is_dir() else [path]):
        manifest = read_manifest(candidate)
        if manifest is not None:
            return manifest
    return {}


def read_run(run_dir: Path) -> RunData:
    from core.shards import stage_output

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder; pass the folder `cai run` wrote (the recipe's run_dir)")
    rows, manifests = {}, {}
    for config, (name, what) in CONFIGS.items():
        path = stage_output(run_dir, name)
        rows[config] = _stage_rows(path, what.split(" (")[0])
        if name == "revisions":
            manifests["generate"] = _first_manifest(path)
        elif name == "preferences":
            manifests["judge"] = _first_manifest(path)
    run_manifest = run_dir / "run.json.manifest.json"
    manifests["run"] = _first_manifest(run_dir / "run.json") if run_manifest.exists() else {}
    if not any(rows.values()):
        raise UserError(f"{run_dir}: no rows to export (revisions.jsonl, preferences.jsonl, sft.jsonl are missing or "
                        "empty); pass the folder `cai run` wrote")
    return RunData(run_dir, rows, manifests)


# -- what is left out ----------------------------------------------------------------------------------------
@dataclass
class Selection:
    """One config's rows: those kept, and how many of the others were left out for each reason."""

    kept: list[dict]
    total: int
    duplicates: dict[str, int]
    contaminated: int
    with_generation_left_out: int
    examples: list[dict]


def select_rows(data: RunData, config: ExportConfig, eval_sets) -> dict[str, Selection]:
    from core.dedup import count_duplicates, find_duplicates, prompt_order, row_texts

    from cai.contamination import find_contaminated

    selections: dict[str, Selection] = {}
    left_out_ids: set[str] = set()
    for name in ("generations", "preferences", "sft"):  # generations first: its left-out ids go for the others
        rows = data.rows[name]
        texts = [row_texts(row) for row in rows]
        order = [prompt_order(row, index) for index, row in enumerate(rows)]
        duplicates = {} if config.keep_duplicates else find_duplicates(texts, order)
        contaminated = find_contaminated(texts, eval_sets) if eval_sets is not None else {}
        kept, upstream, examples = [], 0, []
        for index, row in enumerate(rows):
            if index in contaminated or index in duplicates:
                if name == "generations" and row.get("id") is not None:
                    left_out_ids.add(str(row["id"]))
                if index in duplicates and len(examples) < 5:
                    duplicate = duplicates[index]
                    examples.append({"id": row.get("id"), "of_id": rows[duplicate.of].get("id"),
                                     "field": duplicate.field, "kind": duplicate.kind,
                                     "similarity": duplicate.similarity})
                continue
            if name != "generations" and str(row.get("id")) in left_out_ids:
                upstream += 1
                continue
            kept.append(row)
        selections[name] = Selection(kept, len(rows), count_duplicates(duplicates.values()),
                                     len(contaminated), upstream, examples)
    return selections


# -- the Parquet rows ------------------------------------------------------------------------------------------
def _json_text(value) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _messages(value) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return [{"role": str(m.get("role")), "content": str(m.get("content"))} for m in value or [] if isinstance(m, dict)]


def preference_record(row: dict) -> dict:
    source = row.get("source") or {}
    return {"prompt": _messages(row.get("prompt")), "chosen": _messages(row.get("chosen")),
            "rejected": _messages(row.get("rejected")), "chosen_probability": row.get("chosen_probability"),
            "margin": row.get("margin"), "principle_ids": [str(p) for p in row.get("principle_ids") or []],
            "principle_scores": _json_text(row.get("principle_scores") or {}), "judge_model": model_name(row.get("judge_model")),
            "orders_agree": row.get("orders_agree"), "id": str(row.get("id")),
            "chosen_from": source.get("chosen"), "rejected_from": source.get("rejected"),
            "judge_method": source.get("method")}


def sft_record(row: dict) -> dict:
    return {"messages": _messages(row.get("messages")), "id": str(row.get("id")),
            "principle_ids": [str(p) for p in row.get("principle_ids") or []], "revisions": row.get("revisions"),
            "response_from": (row.get("source") or {}).get("response"), "judge_prefers": row.get("judge_prefers")}


def generation_record(row: dict) -> dict:
    calls = [{"step": c.get("step"), "finish_reason": c.get("finish_reason"),
              "prompt_tokens": c.get("prompt_tokens"), "completion_tokens": c.get("completion_tokens"),
              "cached_tokens": c.get("cached_tokens")} for c in row.get("calls") or [] if isinstance(c, dict)]
    rounds = [{key: r.get(key) for key in ("principle_id", "critique_request", "critique", "revision_request",
                                           "revision")} for r in row.get("rounds") or [] if isinstance(r, dict)]
    return {"id": str(row.get("id")), "tag": row.get("tag"), "prompt": _messages(row.get("prompt")),
            "initial_response": row.get("initial_response"), "rounds": rounds,
            "final_response": row.get("final_response"), "model": model_name(row.get("model")),
            "sampling": _json_text(row.get("sampling") or {}), "seed": row.get("seed"), "calls": calls,
            "flags": [{"check": str(f.get("check")), "reason": str(f.get("reason"))}
                      for f in row.get("flags") or [] if isinstance(f, dict)],
            "constitution_version": row.get("constitution_version"), "fingerprint": row.get("fingerprint")}


RECORDS = {"preferences": preference_record, "sft": sft_record, "generations": generation_record}


def features(name: str):
    """Each config's column types, stated (a column that is empty or null in every row still has its type)."""
    from datasets import Features, List, Value

    text, number, integer = Value("string"), Value("float64"), Value("int64")
    messages = List({"role": text, "content": text})
    columns = {
        "preferences": {"prompt": messages, "chosen": messages, "rejected": messages, "chosen_probability": number,
                        "margin": number, "principle_ids": List(text), "principle_scores": text, "judge_model": text,
                        "orders_agree": Value("bool"), "id": text, "chosen_from": text, "rejected_from": text,
                        "judge_method": text},
        "sft": {"messages": messages, "id": text, "principle_ids": List(text), "revisions": integer,
                "response_from": text, "judge_prefers": text},
        "generations": {"id": text, "tag": text, "prompt": messages, "initial_response": text,
                        "rounds": List({key: text for key in ("principle_id", "critique_request", "critique",
                                                              "revision_request", "revision")}),
                        "final_response": text, "model": text, "sampling": text, "seed": integer,
                        "calls": List({"step": text, "finish_reason": text, "prompt_tokens": integer,
                                       "completion_tokens": integer, "cached_tokens": integer}),
                        "flags": List({"check": text, "reason": text}), "constitution_version": text,
                        "fingerprint": text},
    }
    return Features(columns[name])


def write_parquet(name: str, rows: list[dict], path: Path) -> None:
    from datasets import Dataset

    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list([RECORDS[name](row) for row in rows], features=features(name)).to_parquet(str(path))


# -- the output folder ---------------------------------------------------------------------------------------
def check_out(run_dir: Path, out: Path, overwrite: bool) -> None:
    """Before any work: --out is not the run folder, inside it or around it, and is new unless --overwrite."""
    run, target = run_dir.resolve(), out.resolve()
    if target == run or run in target.parents:
        raise UserError(f"--out {out} is inside the run folder {run_dir}; export next to it (e.g. --out "
                        f"{run_dir.name}-dataset), so the run's own files are never written over")
    if target in run.parents:
        raise UserError(f"--out {out} holds the run folder {run_dir}; replacing it would delete the run: choose "
                        "another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is a file; pass a folder path")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} exists and is not empty; pass --overwrite to replace it, or choose another --out")


def _replace_folder(staging: Path, out: Path) -> None:
    """``staging`` renamed to ``out``; an old ``out`` is moved aside first and deleted only once the new one is in."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    try:
        staging.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_run(config: ExportConfig) -> dict:
    """Write the dataset folder (and push it); returns what was written and left out."""
    from core.store import writing

    from cai.card import build_card, check_card, load_configs, push_folder
    from cai.contamination import load_eval_sets

    if not config.run_dir:
        raise UserError("cai export: name the run folder: cai export RUN_DIR --out DIR")
    if not config.out:
        raise UserError("cai export: --out DIR is required: the dataset folder to write")
    run_dir, out = Path(config.run_dir), Path(config.out)
    check_out(run_dir, out, config.overwrite)
    data = read_run(run_dir)
    eval_paths = list(config.eval_sets) or _run_eval_prompts(data)
    eval_sets = load_eval_sets(eval_paths) if eval_paths else None
    selections = select_rows(data, config, eval_sets)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with writing(staging, "--out"):
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            written = {}
            for name in CONFIGS:  # the first written is the card's default config
                if selections[name].kept:
                    write_parquet(name, selections[name].kept, staging / name / DATA_FILE)
                    written[name] = len(selections[name].kept)
            if not written:
                raise UserError(f"{run_dir}: every row was left out (duplicates or contamination); nothing to export. "
                                "See --keep-duplicates and --eval-sets")
            card = build_card(data, selections, written, eval_sets, config)
            (staging / "README.md").write_text(card, encoding="utf-8")
            check_card(staging)
            out.parent.mkdir(parents=True, exist_ok=True)
            _replace_folder(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    load_configs(out, written)
    result = {"out": str(out), "configs": written,
              "left_out": {name: selections[name].total - len(selections[name].kept) for name in CONFIGS}}
    if config.push_to_hub:
        result["pushed"] = push_folder(out, config.push_to_hub, overwrite=config.overwrite, private=config.private)
    return result


def _run_eval_prompts(data: RunData) -> list[str]:
    """The eval prompts file the run's recipe names (its eval section), when it is there."""
    recipe = (data.manifests.get("run") or {}).get("config") or {}
    prompts = (recipe.get("eval") or {}).get("prompts") if isinstance(recipe.get("eval"), dict) else None
    return [prompts] if isinstance(prompts, str) and Path(prompts).is_file() else []


def format_result(result: dict) -> str:
    lines = [f"wrote {result['out']}: " + ", ".join(f"{name} {n} rows" for name, n in result["configs"].items())]
    left = {name: n for name, n in result["left_out"].items() if n}
    if left:
        lines.append("left out (see README.md): " + ", ".join(f"{name} {n}" for name, n in left.items()))
    lines.append(f"load it: datasets.load_dataset({result['out']!r}, {next(iter(result['configs']))!r})")
    if result.get("pushed"):
        lines.append(f"pushed to https://huggingface.co/datasets/{result['pushed']['repo']}"
                     + (f" (kept the card's metadata: {', '.join(result['pushed']['kept_metadata'])}; --overwrite "
                        "replaces it)" if result["pushed"]["kept_metadata"] else ""))
    return "\n".join(lines)


def export_command(argv: list[str]) -> int:
    """Entry point of ``cai export RUN_DIR --out DIR``."""
    from core.config import parse_config

    if argv and not argv[0].startswith("-"):
        argv = ["--run-dir", argv[0], *argv[1:]]
    config = parse_config(ExportConfig, argv, prog="cai export")
    print(format_result(export_run(config)))
    return 0
