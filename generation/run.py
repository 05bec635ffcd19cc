"""``cai generate``: resumable, incremental critique-revise over a prompts file."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from core.log import get_logger
from core.errors import UserError
from constitution.loader import load_constitution

from core.backends.base import Backend, Sampling
from core.backends.registry import backend_class, backend_identity, backend_options
from .checks import count_by_check
from .config import GenerateConfig
from .critique_revise import ChainSettings, CritiqueReviseTask, ReuseIndex
from core.ledger import StageClock, calls_ledger, engine_device
from core.progress import Progress
from .prompt_files import PromptRecord, iter_prompts, scan_prompts
from core.redact import redact_values
from core.hardware import dtype_change_note
from core.shard_folders import check_siblings, sibling_dtypes
from core.shards import Shard, part_path
from core.shards import record as shard_record
from core.stage import StageRun
from core.store import (JsonlStore, atomic_write_text, check_outputs, check_own_output, count_lines, errors_path,
                        manifest_path, read_manifest, require_regular_file, write_manifest)

# What an existing output must share with this run to be resumed; principles and
# rounds may change (those rows are regenerated incrementally).  Each row records them
# too, so a lost or damaged manifest does not switch the check off.
_RESUME_KEYS = ("model", "sampling", "seed")

logger = get_logger(__name__)


def is_generate_row(row: dict) -> bool:
    """Whether a row was written by ``cai generate`` (and records what it was generated with)."""
    return all(key in row for key in ("id", "initial_response", "draft_fingerprint", *_RESUME_KEYS))


def _check_configuration(out: Path, recorded: dict, now: dict, where: str) -> None:
    """Refuse to resume rows written with another model, sampling or seed."""
    changed = [k for k in _RESUME_KEYS if recorded.get(k) is not None and recorded.get(k) != now[k]]
    if changed:
        detail = "; ".join(f"{k}: {recorded[k]!r} -> {now[k]!r}" for k in changed)
        raise UserError(
            f"{where} was written by a different configuration ({detail}); "
            "pass --overwrite to start fresh, or choose another --out"
        )


def resume_identity(config: GenerateConfig) -> dict:
    """What rows resumed, and every shard's part of one folder, must share: model, sampling and seed."""
    return {key: chain_settings(config).as_dict()[key] for key in _RESUME_KEYS}


def make_backend(config: GenerateConfig) -> Backend:
    """The backend a generate config asks for."""
    return config.build_backend(config.backend, config.model)


def chain_settings(config: GenerateConfig) -> ChainSettings:
    model = backend_identity(config.backend, config.model)
    sampling = Sampling(max_tokens=config.max_tokens, temperature=config.temperature, top_p=config.top_p)
    return ChainSettings(model=model, sampling=sampling, seed=config.seed, rounds=config.rounds,
                         revision_style=config.revision_style, few_shot_position=config.few_shot_position)


def _pending_prompts(config: GenerateConfig, task: CritiqueReviseTask, fingerprints: dict[str, str],
                     done_ids: set[str]) -> Iterator[PromptRecord]:
    """The prompts still to do, read again from the file as rows in flight finish."""
    seen = 0
    shard = Shard.parse(config.shard)
    for prompt in iter_prompts(config.prompts, config.limit):
        if not shard.owns(prompt.id):
            continue  # another shard's
        seen += 1
        if prompt.id in done_ids:
            continue
        if fingerprints.get(prompt.id) != task.fingerprint(prompt):
            raise UserError(f"{config.prompts} changed during the run (line {prompt.line}); run again to pick it up")
        yield prompt
    if seen < len(fingerprints):
        raise UserError(f"{config.prompts} gave {seen} prompts on its second reading but {len(fingerprints)} on its "
                        "first (it changed during the run, or can be read only once); pass a regular file that "
                        "stays as it is, and run again")


def format_flag_summary(counts: dict) -> str:
    """One line: how many rows the checks flagged, and why (see generation/checks.py)."""
    done = counts["already_done"] + counts["generated"]
    if not counts["flagged"]:
        return f"checks: all {done} rows pass"
    by_check = ", ".join(f"{name} {n}" for name, n in counts["flagged_by_check"].items())
    return (f"checks: {counts['flagged']} of {done} rows flagged ({by_check}); `cai judge` leaves them out "
            "(--keep-flagged keeps them); each row's 'flags' say why")


def generate(config: GenerateConfig, backend: Backend | None = None) -> dict:
    """Run (or resume) generation; return the manifest's counts.

    ``backend``: the caller's (a pipeline's policy engine, a test's), which the caller closes; otherwise one is
    built from the config and closed here.  Either loads only if there is work to do, so a finished output
    loads no model.
    """
    shard = Shard.parse(config.shard)
    out = part_path(config.out, shard)  # the file, or this shard's part in the folder --out
    check_outputs("generate", {"--out": out, "its errors file": errors_path(out), "its manifest": manifest_path(out)},
                  {"--prompts": config.prompts, "--constitution": config.constitution})
    require_regular_file(config.prompts, "prompts", "--prompts")
    check_own_output(out, "generate", is_generate_row)
    backend_class(config.backend).check_model(config.model)  # a missing folder is refused before any work
    check_siblings(out, shard, "generate", resume_identity(config))
    with StageRun(out, config.sync_rows, config.sync_seconds, config.overwrite) as run:
        return _generate(config, out, backend, run)


def _generate(config: GenerateConfig, out: Path, backend: Backend | None, run: StageRun) -> dict:
    log = logger.info
    clock = StageClock(*engine_device(backend_options(config.backend, config)))
    constitution = load_constitution(config.constitution)
    settings = chain_settings(config)
    task = CritiqueReviseTask(constitution, settings, str(config.prompts))

    store = JsonlStore(out)
    previous = run.previous
    now = {k: settings.as_dict()[k] for k in _RESUME_KEYS}
    if out.exists() and out.stat().st_size and previous and previous.get("stage") == "generate":
        recorded = previous.get("config", {}).get("settings", {})
        _check_configuration(out, recorded if isinstance(recorded, dict) else {}, now, str(out))
    # Streamed passes: the prompts (checked, and each one's fingerprint kept), then the output
    # (which prompts are done, which rows are stale).  Memory holds an id and a fingerprint
    # per prompt: neither the prompts' text nor the rows already in the file.
    fingerprints: dict[str, str] = {}
    shard = Shard.parse(config.shard)

    def remember(prompt: PromptRecord) -> None:
        if shard.owns(prompt.id):
            fingerprints[prompt.id] = task.fingerprint(prompt)

    scan_prompts(config.prompts, config.limit, remember)
    prompt_count = len(fingerprints)  # this shard's (ids are unique)
    done_ids: set[str] = set()
    stale_ids: set[str] = set()
    # Stored flags are trusted only when the manifest says the same checks wrote them (a damaged or
    # missing manifest means recomputing them: slower, never weaker); recomputing every row's flags on
    # every rerun would cost about 1 ms a row.
    flags_current = bool(previous) and previous.get("checks_version") == task.checker.version
    rows_in_file = stale = outdated_flags = 0
    flag_lists: list[list[dict]] = []  # of this selection's rows, for the summary
    row_dtypes: Counter = Counter()  # of this selection's rows (and the folder's other parts): what made them
    for row in store.iter_rows():
        rows_in_file += 1
        if not is_generate_row(row):
            raise UserError(f"{out}: row {rows_in_file} is not a `cai generate` row (no id, responses, model, sampling "
                            "and seed); this output is damaged: fix or delete that row, or choose another --out")
        _check_configuration(out, row, now, f"{out} (row {rows_in_file})")
        # Rows written before the checks existed (or before they changed) get their flags
        # recomputed below, without regenerating anything.
        stored = row.get("flags")
        flags = stored if flags_current and isinstance(stored, list) else task.checker.flags(row)
        outdated_flags += stored != flags
        row_id = row.get("id")
        if row_id not in fingerprints:
            continue  # another selection's row (e.g. --limit): kept as it is
        if row.get("fingerprint") == fingerprints[row_id] and row_id not in done_ids:
            done_ids.add(row_id)
            flag_lists.append(flags)
            row_dtypes[row.get("dtype")] += 1
        else:
            stale += 1  # an edited principle's row, or a batch written twice
            stale_ids.add(row_id)
    if store.torn_lines:
        log(f"{out}: dropped a torn last line from an interrupted run; it will be redone")
    pending = prompt_count - len(done_ids)
    log(f"{prompt_count} prompts: {len(done_ids)} already done, {pending} to generate")

    examples: list[dict] = []
    generated, failed, reused_calls = 0, [], 0
    # The engine's dtype (recorded in the manifest); a run with nothing to do keeps the one recorded.
    dtype = (previous or {}).get("config", {}).get("dtype") if previous else None
    # Ctrl-C, or an endpoint that stays down: finished rows stay, the manifest
    # is written with the counts of the file, then the run stops.
    if pending:
        JsonlStore(errors_path(out)).remove()  # failures are retried on every run; the file lists this run's
        rows_out = run.appender(out)
        errors_out = run.appender(errors_path(out), "its errors file")

        def land(result: tuple[dict | None, dict | None, int]) -> int:
            """A row lands whole, with its counts (or its failure)."""
            nonlocal generated, reused_calls
            row, failure, output_tokens = result
            if row is not None:
                rows_out.write(row)
                reused_calls += row["reused_calls"]
                run.progress.expect(-row["reused_calls"])
                generated += 1
                if len(examples) < config.examples:
                    examples.append(row)
                flag_lists.append(row["flags"])
            else:
                errors_out.write(redact_values(failure))
                failed.append(failure)
            return output_tokens

        with run.stoppable():
            # Loaded inside: a stop during the engine's start-up still writes the manifest.  A backend built
            # here is closed here; the caller's stays the caller's.
            backend = (backend if backend is not None else run.closes(make_backend(config))).load()
            dtype = backend.dtype
            note = dtype_change_note(str(out), dtype, row_dtypes + Counter(sibling_dtypes(out, shard, "generate")))
            if note:
                log(note)
            # Drafts and rounds to reuse come only from the stale rows of prompts still to do.
            reusable = stale_ids - done_ids
            reuse = ReuseIndex([row for row in store.iter_rows() if row.get("id") in reusable] if reusable else [])
            run.progress = Progress("generate", pending, calls=pending * task.calls_per_row)
            counted = run.progress.counted(backend)  # each finished call is progress, not only each row
            in_flight = config.concurrency or backend.concurrency
            logger.debug(f"up to {in_flight} rows in flight")

            async def chain(prompt: PromptRecord):
                return await task.run_row(counted, prompt, reuse)

            # Rows finish in any order and are written as they finish: nothing depends on row order.
            run.stream(_pending_prompts(config, task, fingerprints, done_ids), chain, in_flight, land)

    run.hold()
    # Drop rows superseded by this run (an edited principle, a torn batch redone twice).
    # Refresh outdated flags in the same atomic rewrite.
    rows_left = rows_in_file + generated
    if stale or outdated_flags:
        seen: set[str] = set()

        def keep_and_refresh_flags(row: dict) -> bool:
            row["flags"] = task.checker.flags(row)
            row_id = row.get("id")
            if row_id not in fingerprints:
                return True
            if row.get("fingerprint") != fingerprints[row_id] or row_id in seen:
                return False
            seen.add(row_id)
            return True

        rows_left = store.rewrite_kept(keep_and_refresh_flags)

    if run.stopped is not None:
        rows_left = count_lines(out)  # what the file holds, whatever happened to it during the run
    elif not out.exists():
        atomic_write_text(out, "")  # no rows for this selection (a shard with none): a valid, empty output
    counts = {
        "prompts": prompt_count,
        "rows": rows_left,
        "already_done": len(done_ids),
        "generated": generated,
        "failed": len(failed),
        "reused_calls": reused_calls,
        "stale_rows_dropped": stale,
        "torn_lines_dropped": store.torn_lines,
        "flagged": sum(1 for flags in flag_lists if flags),
        "flagged_by_check": count_by_check(flag_lists),
        "flags_refreshed": outdated_flags,
    }
    if run.stopped is not None:
        counts["stopped"] = run.stop_reason
    config_record = {
        "prompts": str(config.prompts),
        "constitution": str(config.constitution),
        "backend": config.backend,
        "settings": settings.as_dict(),
        "concurrency": config.concurrency,
        "limit": config.limit,
        "dtype": dtype,
        **({} if shard.whole else {"shard": shard_record(shard, now)}),
    }
    manifest = dict(
        out=out,
        stage="generate",
        config=config_record,
        counts=counts,
        checks_version=task.checker.version,
        constitution={
            "path": str(config.constitution),
            "version": str(constitution.version),
            "hash": constitution.content_hash(),
            "principles": len(constitution.principles),
        },
        ledger=clock.ledger(calls_ledger(store.iter_rows()), previous),
    )
    run.save_manifest(lambda: write_manifest(**manifest))
    log(format_flag_summary(counts))
    if failed:
        log(f"{len(failed)} row(s) failed; see {errors_path(out)} (they are retried on the next run)")
    run.raise_if_stopped(rows_left)
    return {"counts": counts, "examples": examples, "failed": failed}


def prompts_generated(out: str | Path) -> int | None:
    """How many prompts ``cai generate`` had for ``out`` (a file, or a folder's parts summed), by the manifests;
    None when a manifest is missing."""
    from core.shards import part_files

    out = Path(out)
    parts = part_files(out) if out.is_dir() else [out]
    counts = [((read_manifest(part) or {}).get("counts") or {}).get("prompts") for part in parts]
    return sum(counts) if counts and all(isinstance(n, int) for n in counts) else None
