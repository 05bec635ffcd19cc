"""What a run's data cost: tokens, prefix-cache hits, wall time and device time, per stage.

A stage's manifest holds its ledger (``{"stages": {name: entry}, "wall_s", "device_s", "device", "runs"}``):

- ``cai generate``: one entry per step kind (draft, critique, revision), summed over the ``calls`` of the rows in its
  output file (a reused call counts: the rows cost it, in an earlier run);
- ``cai judge``: the judge's calls (its judgements) and the tokens its backend reported for them.

An entry is ``{"calls", "prompt_tokens", "completion_tokens", "cached_tokens"}``; ``cached_tokens`` (prompt tokens
served from the prefix cache: vLLM's ``num_cached_tokens``, an OpenAI-compatible server's
``usage.prompt_tokens_details.cached_tokens``) is None where no call recorded it.  Wall time is summed over the
runs that wrote the file (a resumed run adds its time).  Device time is the accelerator time held: wall time times
the GPUs of an in-process engine; on CPU the wall time (the CPU is the device); None for an endpoint, whose
server's time is not known here.

``run_ledger`` assembles a run folder's ledger from its manifests (training and eval from their summaries and
``run.json``'s timings): the table ``cai status``, the report page and the dataset card show.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path

from core.schema import parse_step

STAGES = ("draft", "critique", "revision", "judge", "training", "eval")
GENERATION_STEPS = ("draft", "critique", "revision")
TOKEN_KEYS = ("calls", "prompt_tokens", "completion_tokens", "cached_tokens")


def empty_entry() -> dict:
    return {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": None}


def add_call(entry: dict, call: dict) -> None:
    entry["calls"] += 1
    entry["prompt_tokens"] += _count(call.get("prompt_tokens")) or 0
    entry["completion_tokens"] += _count(call.get("completion_tokens")) or 0
    cached = _count(call.get("cached_tokens"))
    if cached is not None:
        entry["cached_tokens"] = (entry["cached_tokens"] or 0) + cached


def calls_ledger(rows: Iterable[dict]) -> dict[str, dict]:
    """Step kind -> entry, summed over every row's ``calls`` (generation rows)."""
    stages = {step: empty_entry() for step in GENERATION_STEPS}
    for row in rows:
        for call in row.get("calls") or []:
            if isinstance(call, dict):
                try:
                    kind = parse_step(call.get("step"))[0]
                except ValueError:
                    continue
                add_call(stages[kind], call)
    return stages


class StageClock:
    """Wall time of a stage's run, and the device it held; ``ledger`` adds the earlier runs' from the manifest."""

    def __init__(self, device: str | None, devices: int | None):
        self.started = time.monotonic()
        self.device, self.devices = device, devices

    def ledger(self, stages: dict[str, dict], previous_manifest: dict | None, add_previous: bool = False) -> dict:
        """The manifest's ledger: ``stages`` (plus the earlier runs' entries with ``add_previous``: counts kept
        per run, not recomputable from the rows), wall and device time of this run plus the earlier runs'."""
        wall = time.monotonic() - self.started
        before = _mapping(_mapping(previous_manifest).get("ledger"))
        if add_previous:
            stages = {name: sum_entries([entry, _mapping(before.get("stages")).get(name)])
                      for name, entry in stages.items()}
        device_s = None if self.devices is None else wall * self.devices + (_seconds(before.get("device_s")) or 0)
        return {"stages": stages,
                "wall_s": round(wall + (_seconds(before.get("wall_s")) or 0), 2),
                "device_s": None if device_s is None else round(device_s, 2),
                "device": self.device,
                "runs": (_count(before.get("runs")) or 0) + 1}


def engine_device(options) -> tuple[str, int | None]:
    """The device a backend's engine holds, and how many (its ``BackendOptions``): ``("2x NVIDIA H100", 2)``,
    ``("cpu", 1)``, or ``("endpoint", None)`` for a model that runs elsewhere."""
    if not options.in_process:
        return "endpoint", None
    try:
        import torch

        if torch.cuda.is_available():
            return f"{options.devices()}x {torch.cuda.get_device_name(0)}", options.devices()
    except Exception:  # noqa: BLE001 - no usable torch: the CPU it is
        pass
    return "cpu", 1


# -- a run folder's ledger ------------------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _manifests(output: Path) -> list[dict]:
    """The manifests of a stage's output: its file's, or each shard part's."""
    from core.shards import part_files
    from core.store import read_manifest

    paths = part_files(output) if output.is_dir() else [output]
    return [m for m in (read_manifest(p) for p in paths) if m is not None]


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _seconds(value) -> float | None:
    """A duration from a file written by hand or damaged: a finite number >= 0, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def sum_entries(entries: list[dict]) -> dict:
    """Entries added key by key; a key no entry has a number for stays None (not recorded, not zero)."""
    total = {}
    for key in TOKEN_KEYS:
        values = [n for n in (_count(_mapping(entry).get(key)) for entry in entries) if n is not None]
        total[key] = sum(values) if values else None
    return total


def _stage_from_manifests(manifests: list[dict], names: tuple[str, ...]) -> tuple[dict, dict] | None:
    ledgers = [m["ledger"] for m in manifests if isinstance(m.get("ledger"), dict)]
    if not ledgers:
        return None
    stages = {name: sum_entries([_mapping(l.get("stages")).get(name) for l in ledgers]) for name in names}
    walls = [_seconds(l.get("wall_s")) for l in ledgers]
    devices = [_seconds(l.get("device_s")) for l in ledgers]
    times = {"wall_s": round(sum(w for w in walls if w is not None), 2),
             "device_s": None if None in devices else round(sum(devices), 2),
             "device": next((str(l["device"]) for l in ledgers if isinstance(l.get("device"), str)), None)}
    return stages, times


def _generation_stages(steps: dict[str, dict], times: dict) -> dict[str, dict]:
    """A row per step (its tokens: the steps run interleaved, so time is not theirs) and one for generation."""
    stages = {step: {**steps[step], "wall_s": None, "device_s": None} for step in GENERATION_STEPS}
    stages["generation"] = {**sum_entries(list(steps.values())), **times}
    return stages


def _table(stages: dict[str, dict], notes: list[str]) -> dict:
    counted = [entry for name, entry in stages.items() if name not in GENERATION_STEPS]
    total = {}
    for key in ("prompt_tokens", "completion_tokens", "cached_tokens", "wall_s"):
        values = [e[key] for e in counted if isinstance(e.get(key), (int, float))]
        total[key] = round(sum(values), 2) if values else None
    return {"stages": stages, "total": total, "notes": notes}


def output_ledger(output: str | Path) -> dict | None:
    """The ledger of one stage's output (a file, or a folder's parts summed), as ``run_ledger`` shapes it; None
    when its manifests have none."""
    manifests = _manifests(Path(output))
    generate = any(m.get("stage") == "generate" for m in manifests)
    found = _stage_from_manifests(manifests, GENERATION_STEPS if generate else ("judge",))
    if found is None:
        return None
    entries, times = found
    return _table(_generation_stages(entries, times) if generate else {"judge": {**entries["judge"], **times}}, [])


def run_ledger(run_dir: str | Path, revisions: list[dict] | None = None, timings: dict | None = None) -> dict:
    """The ledger of a run folder: ``{"stages": {stage: entry + wall_s, device_s}, "total": ..., "notes": [...]}``.

    Generation's tokens come from its manifest, or from the rows' calls (``revisions``) when the manifest has no
    ledger (written before ledgers); its wall and device time are one figure for its three steps.  ``timings``:
    ``cai run``'s stage times (default: those its manifest, ``run.json.manifest.json``, recorded)."""
    from core.shards import stage_output

    run_dir = Path(run_dir)
    if timings is None:
        timings = _mapping(_mapping((_read_json(run_dir / "run.json.manifest.json") or {}).get("counts")).get("timings"))
    stages: dict[str, dict] = {}
    notes: list[str] = []
    generation = _stage_from_manifests(_manifests(stage_output(run_dir, "revisions")), GENERATION_STEPS)
    if generation is None and revisions:
        generation = calls_ledger(revisions), {"wall_s": _seconds(timings.get("generate_s")), "device_s": None,
                                               "device": None}
        notes.append("generation: tokens summed from the rows' calls (its manifest predates ledgers)")
    if generation is not None:
        stages.update(_generation_stages(*generation))
    judge = _stage_from_manifests(_manifests(stage_output(run_dir, "preferences")), ("judge",))
    if judge is not None:
        entries, times = judge
        stages["judge"] = {**entries["judge"], **times}
    elif _seconds(timings.get("judge_s")) is not None:
        stages["judge"] = {**dict.fromkeys(TOKEN_KEYS), "wall_s": _seconds(timings["judge_s"]), "device_s": None,
                           "device": None}
    training = _training_entry(run_dir, timings)
    if training is not None:
        stages["training"] = training
    if _seconds(timings.get("eval_s")) is not None:
        stages["eval"] = {**dict.fromkeys(TOKEN_KEYS), "wall_s": round(_seconds(timings["eval_s"]), 2), "device_s": None,
                          "device": None}
    return _table(stages, notes)


def training_summaries(run_dir: Path) -> dict[str, dict]:
    """Each training folder's name and its ``cai_training.json``: every method writes one, whatever its name
    (dpo, rloo, grpo, a new one); a damaged summary is left out."""
    summaries = {path.parent.name: _read_json(path) for path in sorted(Path(run_dir).glob("*/cai_training.json"))}
    return {name: summary for name, summary in summaries.items() if summary is not None}


def _training_entry(run_dir: Path, timings: dict) -> dict | None:
    """Training's time (and the tokens TRL counted, where it logs ``num_tokens``), summed over its folders."""
    summaries = list(training_summaries(run_dir).values())
    if not summaries:
        return None
    def tokens(summary: dict) -> int:
        history = summary.get("log_history") if isinstance(summary.get("log_history"), list) else []
        return max((_seconds(e.get("num_tokens")) or 0 for e in history if isinstance(e, dict)), default=0)

    wall = sum(_seconds(s.get("train_seconds")) or 0 for s in summaries)
    devices = [_mapping(s.get("device_settings")).get("device") for s in summaries]
    return {**dict.fromkeys(TOKEN_KEYS), "prompt_tokens": int(sum(tokens(s) for s in summaries)) or None,
            "wall_s": round(wall, 2), "device_s": round(wall, 2),
            "device": next((d for d in devices if isinstance(d, str) and d), None),
            "steps": sum(_count(s.get("global_step")) or 0 for s in summaries)}


def format_ledger(ledger: dict, markdown: bool = False) -> str:
    """The ledger as a table: stage, calls, prompt tokens, output tokens, cached, wall s, device s."""
    header = ["stage", "calls", "prompt tokens", "output tokens", "cached tokens", "wall s", "device s"]

    def cell(value) -> str:
        if value is None:
            return "-"
        return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"

    rows = []
    for name, entry in ledger["stages"].items():
        label = f"{name} (draft + critique + revision)" if name == "generation" else name
        rows.append([label] + [cell(entry.get(key)) for key in
                               ("calls", "prompt_tokens", "completion_tokens", "cached_tokens", "wall_s", "device_s")])
    total = ledger.get("total") or {}
    rows.append(["total"] + ["", cell(total.get("prompt_tokens")), cell(total.get("completion_tokens")),
                             cell(total.get("cached_tokens")), cell(total.get("wall_s")), ""])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * 6) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [header, *rows])
