"""``cai judge``: preference pairs (TRL's conversational format) from revisions or policy samples.

revision mode: each `cai generate` row's initial response against its final
revision, judged, not assumed: a revision the judge finds worse gives the pair
the other way round, or none when the margin is too small.

samples mode: n responses per prompt (given in the row, or sampled from the
policy), all compared pairwise; chosen and rejected are the best and the worst
by mean win probability, and their direct comparison gives the soft label.

A response cut off at the token limit (finish_reason "length") or empty is never
chosen.  Judgements are cached beside the output (``OUT.judgements.jsonl``),
so a run resumes where it stopped and an edit re-judges only what it touches.

Each row is judged on its own (its samples, then its comparisons under every
principle in both orders, all at once), up to ``--concurrency`` rows in flight;
a finished row's pair and judgements are appended as it finishes, so pairs are
written in the order rows finish, not the input's.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from constitution.loader import load_constitution
from constitution.schema import Principle
from core.backends.base import Backend, session_key
from core.backends.registry import backend_class
from core.errors import UserError
from core.hardware import dtype_change_note
from core.hashing import stable_hash
from core.ledger import StageClock, engine_device
from core.log import get_logger
from core.progress import Progress
from core.redact import redact_values
from core.shard_folders import check_siblings, sibling_dtypes
from core.shards import Shard, part_path, side_file
from core.shards import record as shard_record
from core.stage import StageRun
from core.store import (JsonlStore, atomic_write_text, check_outputs, check_own_output, count_lines, errors_path,
                        manifest_path, read_json_rows, read_manifest, same_file, write_manifest)
from generation.checks import RowChecker

from .card import write_card
from .config import JudgeConfig
from .engines import Engines, judge_settings
from .ensemble import JudgePanel, build_panel
from .items import Item, find_repeats, revision_item, samples_item
from .judge import Judge, Verdict, is_valid_judgement
from .judge_report import JudgeReport, format_judge_report, report_path, revision_change
from .pairs import build_pair, comparisons_for, select_principles, sft_row
from .sampling import is_valid_sample, sample_candidates, sample_keys, use_samples

logger = get_logger(__name__)


def judgements_path(out: Path) -> Path:
    return side_file(out, "judgements")


def samples_path(out: Path) -> Path:
    return side_file(out, "samples")


def sft_path(config: JudgeConfig) -> Path:
    """The SFT rows' file: ``--sft-out``, else ``sft.jsonl`` beside ``--out``; a shard writes its part of the
    folder ``--sft-out``, else of ``sft`` beside the folder ``--out``."""
    shard = Shard.parse(config.shard)
    if shard.whole:
        return Path(config.sft_out) if config.sft_out else Path(config.out).with_name("sft.jsonl")
    folder = Path(config.sft_out) if config.sft_out else Path(config.out).with_name("sft")
    return part_path(folder, shard, "--sft-out")


def check_sft_owner(sft: Path, out: Path) -> None:
    """Refuse SFT rows that another judge output of the folder wrote (its manifest names them): a second
    ``--out`` beside the first would otherwise replace the first one's ``sft.jsonl``."""
    if not sft.is_file():
        return
    for manifest_file in sft.parent.glob("*.manifest.json"):
        owner = manifest_file.with_name(manifest_file.name.removesuffix(".manifest.json"))
        manifest = read_manifest(owner)
        recorded = manifest.get("sft") if manifest and manifest.get("stage") == "judge" else None
        if not isinstance(recorded, str) or same_file(owner, out):
            continue
        if same_file(recorded, sft) or Path(recorded).name == sft.name:  # (by name: the folder may have moved)
            raise UserError(f"{sft} holds the SFT rows of {owner} (see {manifest_file}); this run would replace "
                            f"them: pass --sft-out FILE for this run's SFT rows (e.g. {out.with_suffix('')}.sft.jsonl)")


def is_pair_row(row: dict) -> bool:
    """Whether a row was written by ``cai judge``."""
    return all(key in row for key in ("prompt", "chosen", "rejected", "chosen_probability", "fingerprint"))


def load_cache(store: JsonlStore, valid, log) -> dict[str, dict]:
    """A cache's valid records by key; a damaged or hand-edited line is skipped (and its entry redone)."""
    cache, skipped = {}, 0
    for record in store.iter_rows(skip_bad=True):
        if valid(record):
            cache[record["key"]] = record
        else:
            skipped += 1
    skipped += store.bad_lines
    if skipped:
        log(f"{store.path}: skipped {skipped} damaged or hand-edited line(s); what they held is redone")
    return cache


class _Plan(NamedTuple):
    """An input row to judge: its place in the input, the row, and the principles it is judged under."""

    index: int
    item: Item
    principles: list[Principle]


class _Judged(NamedTuple):
    """A judged row: its verdicts per pair of candidates, and what to persist (new judgements and samples)."""

    plan: _Plan
    verdicts: dict[tuple[int, int], list[Verdict]]
    records: list[dict]
    samples: list[dict]
    output_tokens: int


def _needs_sampling(plans: list[_Plan], config: JudgeConfig, samples: dict[str, dict]) -> bool:
    """Whether a row lacks a cached sample (the policy is needed); rows whose samples are all cached get them now."""
    needed = False
    for plan in plans:
        if config.mode == "samples" and not plan.item.candidates:
            keys = sample_keys(plan.item, config)
            if all(key in samples for key in keys):
                use_samples(plan.item, keys, samples)
            else:
                needed = True
    return needed


def _needs_judging(plans: list[_Plan], judge: JudgePanel) -> bool:
    """Whether a judgement of a row with its candidates is not in the cache (the judge's engine is needed)."""
    return any(judge.missing([c for cs in comparisons_for(plan.item, plan.principles).values() for c in cs])
               for plan in plans if plan.item.candidates)


def _ledger(clock: StageClock, judgements: int, output_tokens: int, previous_manifest: dict | None) -> dict:
    """The judge's ledger entry: its calls (judgements made) and the tokens its calls generated (reasoning, text
    verdicts, samples); prompt tokens are not reported by the judge's scoring calls."""
    entry = {"calls": judgements, "prompt_tokens": None, "completion_tokens": output_tokens, "cached_tokens": None}
    return clock.ledger({"judge": entry}, previous_manifest, add_previous=True)


def shard_identity(config: JudgeConfig) -> dict:
    """What every shard's part of one folder of pairs must share."""
    return {"judge": build_panel(config, Judge(judge_settings(config))).identity(), "mode": config.mode,
            "seed": config.seed}


def run_judge(config: JudgeConfig, backend: Backend | None = None, policy_backend: Backend | None = None,
              judge_backends: dict[str, Backend] | None = None) -> dict:
    """Run (or resume) ``cai judge``; returns counts, the report and the pairs.

    ``backend``, ``policy_backend``: the caller's engines (the judge's, the policy's), loaded here only if rows
    are left to do, and closed by the caller; ``judge_backends``: the caller's engines for the extra and
    fallback judges, by model name.  Engines not given are built here, and closed when the stage ends."""
    shard = Shard.parse(config.shard)
    out = part_path(config.out, shard)  # the file, or this shard's part in the folder --out
    outputs = {"--out": out, "--sft-out": sft_path(config), "its manifest": manifest_path(out),
               "its errors file": errors_path(out), "its judgements cache": judgements_path(out),
               "its samples cache": samples_path(out), "its report": report_path(out)}
    check_outputs("judge", outputs, {"--in": config.input, "--constitution": config.constitution})
    check_own_output(out, "judge", is_pair_row)
    check_own_output(sft_path(config), "judge", lambda row: "messages" in row, "--sft-out")
    check_sft_owner(sft_path(config), out)
    models = [("--judge-model", config.resolved_judge_model, config.resolved_judge_backend)]
    if config.mode == "samples":
        models.append(("--model", config.model, config.backend))
    for flag, name, backend_name in models:
        backend_class(backend_name).check_model(name, flag)  # a missing folder is refused before any work
    check_siblings(out, shard, "judge", shard_identity(config))
    side_files = (judgements_path(out), samples_path(out), report_path(out))
    with StageRun(out, config.sync_rows, config.sync_seconds, config.overwrite, side_files) as run:
        return _run_judge(config, out, Engines(config, judge=backend, policy=policy_backend,
                                               policy_loads=config.mode == "samples"),
                          run, judge_backends)


def _run_judge(config: JudgeConfig, out: Path, engines: Engines, run: StageRun,
               judge_backends: dict[str, Backend] | None) -> dict:
    log = logger.info
    clock = StageClock(*engine_device(config.judge_options()))
    constitution = load_constitution(config.constitution)
    settings = judge_settings(config)
    # Every input row is checked before anything is written.
    shard = Shard.parse(config.shard)
    located = read_json_rows(config.input, "input", "--in", shard=shard)
    located = located[:config.limit] if config.limit else located
    parsed: list[Item | str] = [
        revision_item(line, row, str(source)) if config.mode == "revision"
        else samples_item(line, row, str(source)) for source, line, row in located
    ]
    for (source, _, _), item in zip(located, parsed):
        if isinstance(item, Item) and source != Path(config.input):
            item.source_file = str(source)
    # Duplicates are found among every row read, before a shard keeps its own: whichever shard owns the first
    # row of a group keeps it, and the others leave out its repeats (a folder of parts: within each part).
    duplicates = find_repeats(parsed, [row for _, _, row in located])
    if not shard.whole:  # this shard's rows (a row without an id is judged by the shard of its prompt's hash)
        kept = [i for i, ((_, _, row), item) in enumerate(zip(located, parsed))
                if shard.owns(item.id if isinstance(item, Item) else str(row.get("id")))]
        located, parsed = [located[i] for i in kept], [parsed[i] for i in kept]
        duplicates = {new: duplicates[old] for new, old in enumerate(kept) if old in duplicates}
    rows = [(line, row) for _, line, row in located]
    cache_store, sample_store, store = JsonlStore(judgements_path(out)), JsonlStore(samples_path(out)), JsonlStore(out)
    previous_manifest = run.previous
    cache = load_cache(cache_store, is_valid_judgement, log)
    samples = load_cache(sample_store, is_valid_sample, log)
    existing = store.load()
    if store.torn_lines or cache_store.torn_lines:
        log(f"{out}: dropped a torn last line from an interrupted run; it will be redone")
    done = {row.get("fingerprint") for row in existing}

    errors = JsonlStore(errors_path(out))
    errors.remove()
    judge = build_panel(config, Judge(settings, backend=engines.judge(), cache=cache), judge_backends)
    identity = judge.identity()  # the judge's settings, and every other judge's when there are several
    report = JudgeReport()
    checker = RowChecker(constitution)
    # Rows that make no pair are counted now; the others are judged, each on its own.
    plans: list[_Plan] = []
    for index, ((line, row), item) in enumerate(zip(rows, parsed)):
        if isinstance(item, str):
            report.add_pair(None, item)
            continue
        if config.mode == "revision":
            flags = checker.row_flags(row)
            report.add_flags(flags, kept=config.keep_flagged)
            report.add_revised(item.principle_ids, flags,
                               revision_change(item.candidates[1].text, item.candidates[0].text))
            if flags and not config.keep_flagged:
                continue
        if index in duplicates:
            report.add_duplicate(duplicates[index], kept=config.keep_duplicates)
            if not config.keep_duplicates:
                continue
        plans.append(_Plan(index, item, select_principles(constitution, config, item.id)))
    pairs, sft_rows, current, appended, new_pairs, output_tokens = [], [], set(), [], 0, 0
    judged_before = len(cache)
    config_record = {
        "input": str(config.input), "mode": config.mode, "judge": identity,
        "backend": config.resolved_judge_backend,
        "principles_per_pair": config.principles_per_pair, "principle_ids": config.principle_id_list(),
        "min_margin": config.min_margin, "require_orders_agree": config.require_orders_agree, "seed": config.seed,
        "keep_flagged": config.keep_flagged, "keep_duplicates": config.keep_duplicates,
        **({} if shard.whole else {"shard": shard_record(shard, shard_identity(config))})}
    constitution_record = {"path": str(config.constitution), "version": str(constitution.version),
                           "hash": constitution.content_hash()}
    pairs_out = run.appender(out)
    judgements_out = run.appender(judgements_path(out), "its judgements cache")
    samples_out = run.appender(samples_path(out), "its samples cache")
    errors_out = run.appender(errors_path(out), "its errors file")
    run.closes(judge)
    run.closes(engines)

    def land(done_row: _Judged) -> int:
        """A row lands whole: its samples and judgements, then its pair."""
        nonlocal new_pairs, output_tokens
        (index, item, principles), verdicts = done_row.plan, done_row.verdicts
        for record in done_row.samples:
            samples_out.write(record)
        for record in done_row.records:
            judgements_out.write(record)
        for (i, j), vs in verdicts.items():
            for v in vs:
                report.add(v, len(item.candidates[i].text), len(item.candidates[j].text))
                if v.error:
                    errors_out.write(redact_values({"id": item.id, "line": item.line,
                                                    "principle_id": v.principle_id, "error": v.error}))
        fingerprint = stable_hash({"input": item.input_fingerprint, "judge": identity,
                                   "principles": [(p.id, p.comparison_question) for p in principles],
                                   "mode": config.mode, "min_margin": config.min_margin,
                                   "require_orders_agree": config.require_orders_agree})
        pair, reason = build_pair(item, principles, verdicts, config, settings.model, fingerprint)
        if pair is not None:
            pair["judge_dtype"] = config_record["dtype"]
        report.add_pair(pair, reason)
        if config.mode == "revision":
            report.add_revision_pair(item.principle_ids, pair)
        sft = sft_row(item, pair, config.mode)
        if sft is not None:
            sft_rows.append((index, sft))
        if pair is not None:
            current.add(fingerprint)
            pairs.append((index, pair))
            if fingerprint not in done:
                pairs_out.write(pair)
                appended.append(fingerprint)
                done.add(fingerprint)
                new_pairs += 1
        output_tokens += done_row.output_tokens
        return done_row.output_tokens

    with run.stoppable():
        # The engines a run needs are started here, before any row (inside: a stop during start-up still
        # writes the manifest); a finished run starts none.
        policy = engines.policy().load() if _needs_sampling(plans, config, samples) else None
        # New samples make new comparisons: the judge is needed too.
        judge_engine = None
        if policy is not None or _needs_judging(plans, judge):
            judge.start()
            judge_engine = judge.members[0].backend
        started = judge_engine or policy
        # The judge engine's dtype, on each new pair (provenance); without an engine (all cached) the one recorded.
        judge_dtype = judge_engine.dtype if judge_engine is not None else (
            (read_manifest(out) or {}).get("config", {}).get("dtype"))
        config_record["dtype"] = judge_dtype
        note = dtype_change_note(str(out), judge_dtype, Counter(row.get("judge_dtype") for row in existing)
                                 + Counter(sibling_dtypes(out, shard, "judge")))
        if note:
            log(note)
        judge.concurrency = config.concurrency or (started.concurrency if started is not None else None)
        in_flight = judge.concurrency or Backend.concurrency  # (no engine started: nothing to run)
        logger.debug(f"up to {in_flight} rows in flight")
        if config.mode == "samples":  # candidates still to sample: their comparisons are not known yet
            run.progress = Progress("judge", len(plans))
        else:
            todo = judge.pending_keys(c for plan in plans for cs in comparisons_for(plan.item, plan.principles).values()
                                      for c in cs)
            run.progress = judge.progress = Progress("judge", len(plans), calls=len(todo), unit="judgements")

        async def judge_row(plan: _Plan) -> _Judged:
            session = session_key(plan.item.id)
            samples_new, tokens = [], 0
            if config.mode == "samples" and not plan.item.candidates:
                samples_new, tokens = await sample_candidates(plan.item, config, samples, policy, session)
            comparisons = comparisons_for(plan.item, plan.principles)
            judged = await judge.ajudge([c for cs in comparisons.values() for c in cs], session)
            verdict_iter = iter(judged.verdicts)
            verdicts = {ij: [next(verdict_iter) for _ in cs] for ij, cs in comparisons.items()}
            return _Judged(plan, verdicts, judged.records, samples_new, tokens + judged.output_tokens)

        # Rows finish in any order and are written as they finish: nothing depends on row order.
        run.stream(plans, judge_row, in_flight, land)
    if run.stopped is not None:
        # Finished rows stay; nothing is rewritten (pairs not reached yet are not stale), the manifest
        # says where the run stopped, with the counts of the file.
        counts = {"rows": len(rows), "pairs": count_lines(out), "new_pairs": new_pairs,
                  "judgements_run": len(judge.cache) - judged_before, "judgements_cached": judged_before,
                  "stopped": run.stop_reason}
        run.save_manifest(lambda: write_manifest(
            out, "judge", config_record, counts, constitution=constitution_record,
            ledger=_ledger(clock, counts["judgements_run"], output_tokens, previous_manifest)))
        run.raise_if_stopped(counts["pairs"], "pairs")

    # The output holds this run's pairs (in the order they finished); rows superseded by this run (an
    # edited principle, another judge, a changed --min-margin) are dropped with one atomic rewrite, which
    # writes the pairs in input order.
    final = list({p["fingerprint"]: p for _, p in sorted(pairs, key=lambda entry: entry[0])}.values())
    on_disk = [r.get("fingerprint") for r in existing] + appended
    stale = sum(1 for fp in on_disk if fp not in current) + len(on_disk) - len(set(on_disk))
    if Counter(on_disk) != Counter(p["fingerprint"] for p in final) or not out.exists():
        store.rewrite(final)  # (no pairs at all, e.g. a shard with no rows: a valid, empty output)
    sft_out = sft_path(config)
    atomic_write_text(sft_out, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                       for _, r in sorted(sft_rows, key=lambda entry: entry[0])))

    report.handed_to_fallback, report.beyond_fallback_limit = judge.handed_to_fallback, judge.beyond_fallback_limit
    report_dict = report.as_dict()
    report_dict["judge"] = identity
    report_dict = redact_values(report_dict)
    atomic_write_text(report_path(out), json.dumps(report_dict, indent=2, ensure_ascii=False) + "\n")
    counts = {
        "rows": len(rows),
        "pairs": len(final),
        "new_pairs": new_pairs,
        "dropped": report_dict["pairs_dropped"],
        "judgements_run": len(judge.cache) - judged_before,
        "judgements_cached": judged_before,
        "stale_pairs_dropped": max(0, stale),
        "sft_rows": len(sft_rows),
        "flagged_rows_left_out": report_dict["flagged_rows_left_out"],
    }
    write_manifest(out, "judge", config_record, counts, constitution=constitution_record, report=report_dict,
                   sft=str(sft_out), ledger=_ledger(clock, counts["judgements_run"], output_tokens, previous_manifest))
    card = write_card(out)
    return {"out": str(out), "counts": counts, "report": report_dict, "pairs": final,
            "sft": [r for _, r in sorted(sft_rows, key=lambda entry: entry[0])],
            "sft_path": str(sft_out),
            "report_path": str(report_path(out)), "card_path": str(card) if card else None,
            "text": format_judge_report(report_dict)}
