"""The dataset card of ``cai export`` (``README.md`` with the Hub's YAML metadata), its offline checks, and the push.

The card is data about the run, never a template: every value from the run (prompts' ids, model names, a recipe)
is written into Markdown code spans or fenced blocks, and every URL in it has its credentials removed
(``core.redact``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from core.errors import UserError
from core.ledger import training_summaries
from core.redact import redact_text, redact_values
from judging.judge_report_text import format_figure

#: config name -> (the run folder's output, what it is)
CONFIGS = {
    "preferences": ("preferences", "preference pairs (prompt, chosen, rejected), TRL's conversational format"),
    "sft": ("sft", "SFT rows (messages): each prompt with the response the judge preferred"),
    "generations": ("revisions", "the raw critique-revise rows: draft, critiques, revisions, calls, flags"),
}
DATA_FILE = "train-00000-of-00001.parquet"

TASK_CATEGORIES = ["text-generation"]
TAGS = ["constitutional-ai", "rlaif", "synthetic", "preference", "dpo", "cai-engine"]


def model_name(value) -> str | None:
    """A model as a published dataset names it: a local folder by its name (``/home/me/models/x`` -> ``x``: the
    path is the exporter's machine, not the model), anything else (a hub id, a served name) as it is."""
    if not isinstance(value, str):
        return None
    if value.startswith(("/", "./", "../", "~")) or "\\" in value:
        return Path(value.replace("\\", "/")).name
    return value


def size_category(rows: int) -> str:
    """The Hub's size category of a dataset of ``rows`` rows (datasets' ``size_categories.json``)."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M")):
        if rows < bound:
            return name
    return "10M<n<100M"


def metadata(written: dict[str, int], license: str, pretty_name: str) -> dict:
    configs = [{"config_name": name, "data_files": [{"split": "train", "path": f"{name}/{DATA_FILE}"}],
                **({"default": True} if i == 0 else {})} for i, name in enumerate(written)]
    return {"pretty_name": pretty_name, "license": license, "task_categories": TASK_CATEGORIES, "tags": TAGS,
            "size_categories": [size_category(max(written.values()))], "configs": configs}


def _code(value) -> str:
    """A value as inline code (backticks in it cannot end the span)."""
    text = str(value).replace("\n", " ")
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def _block(text: str, language: str = "") -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(format_figure(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# -- sections ------------------------------------------------------------------------------------------------
def _constitution(manifests: dict) -> list[str]:
    record = (manifests.get("generate") or {}).get("constitution") or (manifests.get("judge") or {}).get("constitution")
    if not isinstance(record, dict):
        return ["The run's manifests do not record its constitution."]
    lines = [f"- constitution: {_code(Path(str(record.get('path'))).name)}, version {_code(record.get('version'))}, "
             f"hash {_code(record.get('hash'))}"
             + (f", {record['principles']} principles" if record.get("principles") else "")]
    text = _constitution_text(record)
    if text is None:
        lines.append(f"- its text is not included: {_code(record.get('path'))} is missing or changed since the run "
                     "(its hash differs)")
    else:
        lines += ["", "<details><summary>The constitution's text</summary>", "", _block(text, "yaml"), "", "</details>"]
    return lines


def _constitution_text(record: dict) -> str | None:
    """The constitution file's text, when it still hashes to what the run recorded."""
    from constitution.loader import load_constitution

    path = Path(str(record.get("path")))
    try:
        if load_constitution(path).content_hash() != record.get("hash"):
            return None
        return path.read_text(encoding="utf-8")
    except (UserError, OSError, UnicodeDecodeError):
        return None


def _models(manifests: dict, data) -> list[list]:
    generate = (manifests.get("generate") or {}).get("config") or {}
    judge = (manifests.get("judge") or {}).get("config") or {}
    rows = []
    settings = generate.get("settings") or {}
    if settings:
        rows.append(["generation (draft, critique, revision)", _code(model_name(settings.get("model"))),
                     generate.get("backend"),
                     _code(json.dumps(settings.get("sampling"), sort_keys=True)), settings.get("seed")])
    judge_settings = judge.get("judge") or {}
    if judge_settings:
        rows.append([f"judge ({judge_settings.get('method')})", _code(model_name(judge_settings.get("model"))),
                     judge.get("backend"),
                     _code(json.dumps({k: v for k, v in judge_settings.items() if k not in ("model", "method")},
                                      sort_keys=True)), judge.get("seed")])
    for name, summary in training_summaries(data.run_dir).items():
        if summary:
            rows.append([f"training ({name})", _code(model_name(summary.get("base_model"))), "TRL",
                         f"{summary.get('global_step')} steps", "-"])
    return rows


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _provenance(data) -> list[str]:
    manifests = data.manifests
    lines = ["## Provenance", "", *_constitution(manifests), "",
             "Models are named as they were served (a local folder by its name, an endpoint by its served model name; "
             "never by URL).", "",
             _table(["stage", "model", "backend", "sampling / settings", "seed"], _models(manifests, data)), ""]
    versions = next((m.get("versions") for m in manifests.values() if isinstance(m, dict) and m.get("versions")), {})
    if versions:
        lines += ["Package versions: " + ", ".join(f"{name} {_code(v)}" for name, v in sorted(versions.items())), ""]
    commands = dict.fromkeys(" ".join(map(str, m["command"])) for m in manifests.values()
                             if isinstance(m, dict) and isinstance(m.get("command"), list))
    if commands:
        lines += ["Commands:", "", _block("\n".join(commands), "bash"), ""]
    recipe = (manifests.get("run") or {}).get("config")
    if recipe:
        lines += ["The recipe (`cai run --recipe`):", "", _block(yaml.safe_dump(recipe, sort_keys=False,
                                                                                allow_unicode=True), "yaml"), ""]
    return lines


def _agreements(run_dir: Path) -> list[tuple[str, dict]]:
    found = []
    for path in sorted(run_dir.glob("*.json")):
        report = _read_json(path)
        interval = (report or {}).get("agreement_ci95")
        if (isinstance(interval, list) and len(interval) == 2
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in interval)):
            found.append((path.name, report))
    return found


def _share(figure) -> str:
    """``{"agreement", "agreed", "pairs", "ci95"}`` in words."""
    if not isinstance(figure, dict) or figure.get("agreement") is None:
        return "-"
    interval = figure.get("ci95") if isinstance(figure.get("ci95"), list) else [None, None]
    return (f"{format_figure(figure['agreement'])} ({figure.get('agreed')} of {figure.get('pairs')}; 95% interval "
            f"[{format_figure(interval[0])}, {format_figure(interval[-1])}])")


def _judge_card(run_dir: Path) -> list[str]:
    """The judge card (``judging.card``): agreement with people, per principle, its warnings, and the card."""
    from judging.card import load_card

    card = load_card(run_dir)
    if not card:
        return []
    lines = [f"The judge card (`judging.card`, version {card.get('card_version')}):", ""]
    people = card.get("people")
    if isinstance(people, dict):
        lines += [f"- agreement with people ({_code(Path(str(people.get('file'))).name)}, {people.get('pairs')} pairs): "
                  f"counting ties {_share(people.get('counting_ties'))}, excluding ties "
                  f"{_share(people.get('excluding_ties'))}"
                  + ("" if people.get("judge_matches") else " (measured on another judge)")]
    principles = [p for p in card.get("principles") or [] if isinstance(p, dict)]
    if principles:
        lines += ["", _table(["principle", "rows", "flagged", "comparisons", "order consistency", "mean confidence",
                              "revision preferred"],
                             [[_code(p.get("id")), p.get("rows"), p.get("flagged"), p.get("comparisons"),
                               p.get("order_consistency"), p.get("mean_confidence"), p.get("revision_preferred")]
                              for p in principles])]
    lines += [""] + [f"- warning: {redact_text(str(w))}" for w in card.get("warnings") or []]
    judge = card.get("judge") if isinstance(card.get("judge"), dict) else {}
    shown = {**card, "judge": {**judge, "model": model_name(judge.get("model"))},
             "source": {key: Path(str(value)).name if value else value
                        for key, value in (card.get("source") or {}).items()}}
    lines += ["", "<details><summary>The judge card (JSON)</summary>", "",
              _block(json.dumps(redact_values(shown), indent=2, ensure_ascii=False), "json"), "", "</details>", ""]
    return lines


def _judge(data) -> list[str]:
    from core.shards import stage_output
    from judging.judge_report import merged_report

    lines = ["## The judge", ""]
    report = merged_report(stage_output(data.run_dir, "preferences"))
    agreements = _agreements(data.run_dir)
    if agreements:
        lines += ["Agreement with human labels (measured before its labels were used):", "",
                  _table(["report", "judge", "labelled pairs", "agreement", "95% interval", "passed"],
                         [[_code(name), _code(model_name((r.get("judge") or {}).get("model"))), r.get("human_pairs"),
                           r.get("agreement"),
                           f"[{format_figure(r['agreement_ci95'][0])}, {format_figure(r['agreement_ci95'][1])}]",
                           format_figure(r.get("passed", "-"))] for name, r in agreements]), ""]
        if any(r["agreement_ci95"][0] <= 0.5 <= r["agreement_ci95"][1] for _, r in agreements):
            lines += ["**The judge is not distinguishable from chance on human labels** (its 95% interval includes "
                      "0.5): treat the preference labels as unvalidated.", ""]
    else:
        lines += ["No agreement with human labels was measured in this run (`cai judge agreement`).", ""]
    if report:
        lines += ["Its figures on this run's pairs:", "",
                  _table(["figure", "value"], [[name.replace("_", " "), report.get(name)] for name in (
                      "rows", "pairs_made", "pairs_dropped", "flagged_rows_left_out", "duplicate_rows_left_out",
                      "comparisons", "failures", "order_consistency",
                      "first_option_wins", "mean_confidence", "longer_response_wins", "chosen_is_revision")]), ""]
    card = _judge_card(data.run_dir)
    if card:
        lines += card
    elif report:
        lines += [f"- warning: {redact_text(str(w))}" for w in report.get("warnings") or []]
    return lines


def _row_checks(data) -> list[str]:
    generate = (data.manifests.get("generate") or {}).get("counts") or {}
    lines = ["## Row checks", ""]
    by_check = generate.get("flagged_by_check") or {}
    if by_check:
        lines += [f"`cai generate` checks every final response (generation/checks.py); {generate.get('flagged')} of "
                  f"{generate.get('rows')} rows were flagged. The judge leaves flagged rows out of the preferences and "
                  "SFT configs (unless run with --keep-flagged); the generations config keeps them, with their "
                  "`flags`.", "", _table(["check", "rows flagged"], [[_code(k), v] for k, v in by_check.items()]), ""]
    else:
        lines += ["No row was flagged by the generation checks." if generate else
                  "The generation manifest is missing: row-check counts are unknown.", ""]
    return lines


def _left_out(selections: dict, eval_sets, keep_duplicates: bool) -> list[str]:
    from core.dedup import method_record

    from cai.contamination import MIN_WORDS, NGRAM

    method = method_record()
    lines = ["## What was left out, and why", "",
             ("Duplicates were kept (`--keep-duplicates`)." if keep_duplicates else
              f"**Duplicates**: a row whose prompt or response repeats an earlier row's is left out (the first is "
              f"kept): exactly (the same words, case and punctuation aside) or nearly (Jaccard similarity of "
              f"{method['shingle']} shingle sets >= {method['near_threshold']}, candidates from {method['library']} "
              f"with {method['num_perm']} permutations, the similarity then computed exactly). Responses under "
              f"{method['min_response_words']} words are not compared."), ""]
    if eval_sets is None:
        lines += ["**Contamination**: no evaluation set was checked (`cai export --eval-sets FILE...`).", ""]
    else:
        files = ", ".join(f"{_code(f['path'])} ({f['checked']} of {f['prompts']} prompts checked, hash "
                          f"{_code(f['hash'])})" for f in eval_sets.files)
        lines += [f"**Contamination**: rows whose prompt or response shares a run of {NGRAM} words with an evaluation "
                  f"prompt (the whole prompt, when it is shorter; prompts under {MIN_WORDS} words are not checked) "
                  f"are left out. Checked against: {files}.", ""]
    rows = []
    for name in CONFIGS:
        s = selections[name]
        d = s.duplicates
        rows.append([name, s.total, d["prompt_exact"], d["prompt_near"], d["response_exact"], d["response_near"],
                     s.contaminated, s.with_generation_left_out, len(s.kept)])
    lines += [_table(["config", "rows in the run", "same prompt", "near prompt", "same response", "near response",
                      "contaminated", "generation row left out", "exported"], rows), ""]
    examples = [(name, e) for name, s in selections.items() for e in s.examples]
    if examples:
        lines += ["Examples of duplicates left out:", "",
                  _table(["config", "row", "repeats row", "in", "kind", "similarity"],
                         [[name, _code(e["id"]), _code(e["of_id"]), e["field"], e["kind"], e["similarity"]]
                          for name, e in examples[:10]]), ""]
    return lines


def _ledger(data) -> list[str]:
    from core.ledger import format_ledger, run_ledger

    ledger = run_ledger(data.run_dir, data.rows.get("generations"))
    lines = ["## What it cost", "",
             "Tokens per stage (generation's summed over the rows' model calls; cached: prompt tokens the engine "
             "served from its prefix cache, where it says), wall time, and device time (the accelerator time held; "
             "on CPU, the wall time).", "", format_ledger(ledger, markdown=True), ""]
    lines += [f"- {note}" for note in ledger["notes"]]
    return lines


def _summary(written: dict[str, int], repo: str | None) -> list[str]:

    name = repo or "PATH/TO/THIS/FOLDER"
    return [_table(["config", "rows", "what it is"], [[_code(c), n, CONFIGS[c][1]] for c, n in written.items()]), "",
            _block(f"from datasets import load_dataset\n\npairs = load_dataset({name!r}, \"preferences\", "
                   "split=\"train\")  # TRL's DPOTrainer reads it as it is", "python"), ""]


def build_card(data, selections: dict, written: dict[str, int], eval_sets, config) -> str:
    """The card's text: YAML metadata, then the sections (every URL redacted)."""
    title = config.pretty_name or f"{data.run_dir.resolve().name}: Constitutional AI preference data"
    meta = metadata(written, config.license, title)
    body = [f"# {title}", "",
            "Preference pairs, SFT rows and the critique-revise rows they come from, made with "
            "cai-engine from a written constitution: a model drafts answers, critiques and "
            "revises them against the constitution's principles, and an AI judge compares draft and revision into "
            "preference pairs (Constitutional AI / RLAIF). Exported by `cai export`.", "",
            *_summary(written, config.push_to_hub), *_provenance(data), *_judge(data), *_row_checks(data),
            *_left_out(selections, eval_sets, config.keep_duplicates), *_ledger(data)]
    card = "---\n" + yaml.safe_dump(redact_values(meta), sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(body)
    return redact_text(card).rstrip() + "\n"


# -- offline checks ------------------------------------------------------------------------------------------
def validate_card(text: str) -> dict:
    """The card's metadata, checked offline with huggingface_hub's card tools and datasets' metadata rules; a
    problem is a ValueError (the Hub's own validation is online: ``DatasetCard.validate``)."""
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    card = DatasetCard(text)  # parses the YAML block into DatasetCardData (a ValueError when it is not a mapping)
    data = card.data.to_dict()
    sizes = json.loads((Path(__import__("datasets").__file__).parent / "utils/resources/size_categories.json")
                       .read_text())
    problems = [f"size_categories {value!r} is not one of the Hub's" for value in data.get("size_categories") or []
                if value not in sizes]
    for key in ("license", "task_categories", "configs"):
        if not data.get(key):
            problems.append(f"no {key}")
    MetadataConfigs.from_dataset_card_data(card.data)  # datasets' rules for configs and data_files
    if problems:
        raise ValueError("; ".join(problems))
    return data


def check_card(folder: Path) -> None:
    """The card validates offline; else a UserError (a bug: nothing is left at --out)."""
    try:
        validate_card((folder / "README.md").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"the exported card does not validate ({exc}); nothing was written to --out. Please report "
                        "this") from None


def load_configs(folder: Path, written: dict[str, int]) -> None:
    """Every config loads with ``datasets``, with the rows written; else a UserError.

    Loaded afresh: ``datasets`` caches a local folder's data by its path, and would otherwise serve an earlier
    export to the same --out (with its row count) to every later ``load_dataset`` of it."""
    import datasets

    for name, rows in written.items():
        try:
            loaded = datasets.load_dataset(str(folder), name, split="train", download_mode="force_redownload",
                                           verification_mode="no_checks")
        except Exception as exc:  # noqa: BLE001 - a failure here is a bug; the message must still reach the user
            raise UserError(f"{folder}: config {name} does not load with datasets ({type(exc).__name__}: {exc}); "
                            "please report this") from None
        if len(loaded) != rows:
            raise UserError(f"{folder}: config {name} loads {len(loaded)} rows, not the {rows} written; please report "
                            "this")


# -- the Hub ------------------------------------------------------------------------------------------------
def card_to_push(ours: str, existing: str | None, overwrite: bool) -> tuple[str, list[str]]:
    """The card to upload, and the metadata keys kept from the repo's card.

    Without ``overwrite`` the repo card's metadata is kept, key by key (a license or tags set on the Hub stay);
    keys it lacks come from ours.  The prose is ours: it describes the data being pushed."""
    from huggingface_hub import DatasetCard

    if existing is None or overwrite:
        return ours, []
    try:
        theirs = DatasetCard(existing, ignore_metadata_errors=True).data.to_dict()
    except ValueError:
        theirs = {}
    theirs = {key: value for key, value in theirs.items() if value not in (None, [], {})}
    if not theirs:
        return ours, []
    card = DatasetCard(ours)
    merged = {**card.data.to_dict(), **theirs}
    text = "---\n" + yaml.safe_dump(merged, sort_keys=False, allow_unicode=True) + "---\n\n" + card.text.lstrip("\n")
    return text, sorted(theirs)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def push_folder(folder: Path, repo: str, overwrite: bool = False, private: bool = False, api=None) -> dict:
    """Upload the folder to the dataset repo ``repo`` in one commit; returns ``{"repo", "kept_metadata"}``."""
    if hub_offline():
        raise UserError(f"--push-to-hub {repo}: the Hub is offline here (HF_HUB_OFFLINE=1, which cai sets unless you "
                        f"set it); the folder {folder} is written. Push it with HF_HUB_OFFLINE=0 cai export ... "
                        "--push-to-hub, or `huggingface-cli upload` it")
    from huggingface_hub import CommitOperationAdd, HfApi

    api = api or HfApi()
    try:
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        existing = None
        if api.file_exists(repo, "README.md", repo_type="dataset"):
            existing = Path(api.hf_hub_download(repo, "README.md", repo_type="dataset")).read_text(encoding="utf-8")
        card, kept = card_to_push((folder / "README.md").read_text(encoding="utf-8"), existing, overwrite)
        operations = [CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
                      for path in sorted(folder.rglob("*")) if path.is_file() and path.name != "README.md"]
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
        api.create_commit(repo, operations, commit_message="cai export", repo_type="dataset")
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the Hub's errors (auth, network, a name taken) are the user's to fix
        raise UserError(f"--push-to-hub {repo}: {type(exc).__name__}: {redact_text(str(exc))}; the folder {folder} "
                        "is written; fix the cause (a token: `huggingface-cli login`) and run again") from None
    return {"repo": repo, "kept_metadata": kept}
