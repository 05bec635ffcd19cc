"""``cai judge agreement``: how often the judge prefers what humans preferred ("AI labeler alignment").

Run it before trusting a new judge or constitution.  Input rows are either
``{"prompt"|"messages", "chosen", "rejected"}`` or two full transcripts
``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}`` that differ only in the
last assistant turn (the format of the widely used helpful/harmless preference data).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from core.log import get_logger
from core.errors import UserError
from core.hashing import stable_hash
from constitution.loader import load_constitution
from core.backends.base import Backend, session_key
from core.progress import Progress
from core.schema import parse_messages
from core.stage import StageRun
from core.store import atomic_write_text, check_outputs, check_own_json, check_own_output

from .config import AgreementConfig
from .engines import Engines, judge_settings
from .judge import Comparison, Judge
from .items import read_jsonl
from .pairs import select_principles
from .card import refresh_cards
from .calibration import Labelled, calibration, calibration_lines
from .ensemble import build_panel
from .judge_report import ComparisonStats, JudgeReport, judges_lines, principle_table
from .scoring import ensemble

logger = get_logger(__name__)


_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class HumanPair:
    id: str
    line: int
    prompt: list[dict]
    chosen: str  # for a tie: the first response
    rejected: str
    tie: bool = False  # the person found neither better (``--ties``)
    sampling: str = "file"  # how the pair was picked for labelling (``cai label --order``; "file" when not said)


def parse_transcript(text: str) -> list[dict]:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` -> chat messages.  Raises ValueError when it is not one."""
    if not isinstance(text, str):
        raise ValueError("a transcript must be text")
    pieces = _TURN.split(text)
    if pieces[0].strip():
        raise ValueError("a transcript must start with 'Human:' (turns are '\\n\\nHuman: ...\\n\\nAssistant: ...')")
    messages = [{"role": _ROLES[pieces[i]], "content": pieces[i + 1].strip()} for i in range(1, len(pieces) - 1, 2)]
    if not messages:
        raise ValueError("no 'Human:'/'Assistant:' turns found")
    return messages


def _as_messages(value, what: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user" if what == "prompt" else "assistant", "content": value}]
    if not isinstance(value, list):
        raise ValueError(f"'{what}' must be text or a non-empty list of {{role, content}} messages")
    return parse_messages(value, what, other_keys="drop")  # its MessageError is a ValueError: reported with file:line


def _split_common(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], str, str]:
    if len(chosen) != len(rejected) or chosen[:-1] != rejected[:-1]:
        raise ValueError("chosen and rejected must differ only in their last assistant turn")
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise ValueError("chosen and rejected must end with an assistant turn")
    if not chosen[:-1]:
        raise ValueError("no conversation before the responses")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def human_pair(line: int, row: dict) -> HumanPair:
    if "chosen" not in row or "rejected" not in row:
        raise ValueError("needs 'chosen' and 'rejected'")
    prompt_value = row.get("prompt", row.get("messages"))
    if prompt_value is None:
        if isinstance(row["chosen"], str) and isinstance(row["rejected"], str):
            chosen, rejected = parse_transcript(row["chosen"]), parse_transcript(row["rejected"])
        else:
            chosen, rejected = _as_messages(row["chosen"], "chosen"), _as_messages(row["rejected"], "rejected")
        prompt, chosen_text, rejected_text = _split_common(chosen, rejected)
    else:
        prompt = _as_messages(prompt_value, "prompt")
        chosen_messages = _as_messages(row["chosen"], "chosen")
        rejected_messages = _as_messages(row["rejected"], "rejected")
        chosen_text, rejected_text = chosen_messages[-1]["content"], rejected_messages[-1]["content"]
    if prompt[-1]["role"] != "user":
        raise ValueError("the conversation before the responses must end with a user turn")
    row_id = str(row["id"]) if row.get("id") is not None else stable_hash([prompt, chosen_text, rejected_text])
    return HumanPair(row_id, line, prompt, chosen_text, rejected_text, sampling=_sampling(row))


def _sampling(row: dict) -> str:
    """How a labelled row was picked (``cai label`` records its ``--order``); "file" when the row does not say."""
    sampling = row.get("sampling")
    order = sampling.get("order") if isinstance(sampling, dict) else None
    if order is not None and not isinstance(order, str):
        raise ValueError("'sampling.order' must be text, e.g. \"doubt\" or \"file\" (as `cai label` writes it)")
    return order or "file"


def tie_pair(line: int, row: dict) -> HumanPair:
    """A tie as `cai label` writes it: ``{"prompt", "responses": [a, b], "label": "tie"}``."""
    responses = row.get("responses")
    if row.get("label") != "tie" or not (isinstance(responses, list) and len(responses) == 2
                                         and all(isinstance(r, str) and r.strip() for r in responses)):
        raise ValueError('not a tie row: needs "label": "tie" and "responses": [two texts] (as `cai label` writes '
                         "OUT.ties.jsonl)")
    prompt = _as_messages(row.get("prompt"), "prompt")
    if prompt[-1]["role"] != "user":
        raise ValueError("the conversation before the responses must end with a user turn")
    row_id = str(row["id"]) if row.get("id") is not None else stable_hash([prompt, *responses])
    return HumanPair(row_id, line, prompt, responses[0], responses[1], tie=True, sampling=_sampling(row))


def read_human_pairs(path: str | Path, limit: int | None = None, ties: bool = False) -> list[HumanPair]:
    pairs, problems = [], []
    flag = "--ties" if ties else "--pairs"
    for line, row in read_jsonl(path, limit, what="human ties" if ties else "human-labelled pairs", flag=flag):
        try:
            pairs.append(tie_pair(line, row) if ties else human_pair(line, row))
        except ValueError as exc:
            problems.append(f"{path}:{line}: {exc}")
    if problems:
        raise UserError("\n".join(problems + [f"{len(problems)} bad line(s) in {path}; fix them (nothing was judged)"]))
    return pairs


def _check_own_files(config: AgreementConfig) -> None:
    """Refuse an existing --out or --details that is not an earlier agreement's (another stage's rows, SFT rows)."""
    if config.details:
        check_own_output(Path(config.details), "judge agreement", lambda row: "p_human_choice" in row, "--details")
    check_own_json(config.out, "judge agreement", "judged_pairs")


def run_agreement(config: AgreementConfig, backend: Backend | None = None,
                  judge_backends: dict[str, Backend] | None = None) -> dict:
    """Judge the labelled pairs; the agreement report.  ``backend``: the caller's judge engine (loaded here if
    a judgement is missing);
    ``judge_backends``: engines for the extra and fallback judges, by model name."""
    check_outputs("judge agreement", {"--out": config.out, "--details": config.details},
                  {"--pairs": config.pairs, "--ties": config.ties, "--constitution": config.constitution})
    _check_own_files(config)
    constitution = load_constitution(config.constitution)
    pairs = read_human_pairs(config.pairs, config.limit)
    if config.ties:
        pairs += read_human_pairs(config.ties, config.limit, ties=True)
    settings = judge_settings(config)
    plans = [(index, pair, select_principles(constitution, config, pair.id)) for index, pair in enumerate(pairs)]
    engines = Engines(config, judge=backend)
    judge = build_panel(config, Judge(settings, backend=engines.judge(), concurrency=config.concurrency),
                        judge_backends)
    verdicts: list[list | None] = [None] * len(pairs)

    def comparisons_of(plan) -> list[Comparison]:
        _, pair, principles = plan
        return [Comparison.of(pair.prompt, pair.chosen, pair.rejected, p) for p in principles]

    async def judge_pair(plan) -> tuple[int, list, int]:
        index, pair, _ = plan
        judged = await judge.ajudge(comparisons_of(plan), session_key(pair.id))
        return index, judged.verdicts, judged.output_tokens

    def land(judged: tuple[int, list, int]) -> int:
        index, verdicts[index], output_tokens = judged
        return output_tokens

    with StageRun() as run:
        with run.stoppable():
            run.closes(judge)
            run.closes(engines)
            in_flight = 1
            if pairs:  # the engines start here, before any pair (nothing is cached), and not for an empty file
                judge.start()
                in_flight = config.concurrency or judge.members[0].backend.concurrency
            todo = judge.pending_keys(c for plan in plans for c in comparisons_of(plan))
            run.progress = judge.progress = Progress("agreement", len(pairs), calls=len(todo), unit="judgements")
            # Each pair is judged on its own, as soon as a slot frees; the figures are summed in input order.
            run.stream(plans, judge_pair, in_flight, land)
        run.raise_if_stopped()
    report = JudgeReport()  # the judge's own figures (each judge's, when there are several)
    overall, per_principle = report.overall, defaultdict(ComparisonStats)
    labelled: dict[str, list[Labelled]] = defaultdict(list)  # "all", "principle:ID", "judge:NAME", "sampling:ORDER"
    details = []
    for pair, vs in zip(pairs, verdicts):
        for v in vs:
            report.add(v, len(pair.chosen), len(pair.rejected))
            stats = per_principle[v.principle_id]
            stats.add(v, len(pair.chosen), len(pair.rejected))
            if not pair.tie:
                stats.add_human(v.p)
            labelled[f"principle:{v.principle_id}"].append(Labelled(v.p, pair.tie))
        p = ensemble([v.p for v in vs])
        if not pair.tie:
            overall.add_human(p)
        labelled["all"].append(Labelled(p, pair.tie))
        labelled[f"sampling:{pair.sampling}"].append(Labelled(p, pair.tie))
        for name in judge.names if len(judge.members) > 1 else []:
            own = ensemble([v.by_judge[name].p for v in vs if name in v.by_judge])
            report.judges[name].add_human(None if pair.tie else own)
            labelled[f"judge:{name}"].append(Labelled(own, pair.tie))
        details.append({"id": pair.id, "line": pair.line, "p_human_choice": None if pair.tie else p,
                        **({"human_tie": True, "p_first": p} if pair.tie else {}), "sampling": pair.sampling,
                        "principles": {v.principle_id: v.as_dict() for v in vs}})
    report.handed_to_fallback, report.beyond_fallback_limit = judge.handed_to_fallback, judge.beyond_fallback_limit
    result = overall.as_dict()
    judges = report.as_dict()
    result.update(
        pairs=len(pairs),
        judged_pairs=overall.human_pairs,
        failed_pairs=sum(1 for pair, vs in zip(pairs, verdicts) if not pair.tie
                         and ensemble([v.p for v in vs]) is None),
        judge=judge.identity(),
        principles_per_pair=config.principles_per_pair,
        principle_ids=config.principle_id_list(),
        file=str(config.pairs),
        ties_file=config.ties,
        per_principle={pid: {**s.as_dict(), "calibration": calibration(labelled[f"principle:{pid}"])}
                       for pid, s in sorted(per_principle.items())},
        calibration=calibration(labelled["all"]),
        sampling=sampling_statement(labelled),
        handed_to_fallback=judge.handed_to_fallback,
        beyond_fallback_limit=judge.beyond_fallback_limit,
    )
    if len(judge.members) > 1:
        result["judges"] = {name: {**judges["judges"][name], "calibration": calibration(labelled[f"judge:{name}"])}
                            for name in judge.names}
        result["judges_agree"] = judges["judges_agree"]
        result["combine"] = config.combine_judges
    result["text"] = format_agreement(result)
    if config.out:
        atomic_write_text(Path(config.out), json.dumps({k: v for k, v in result.items() if k != "text"}, indent=2) + "\n")
        refresh_cards(Path(config.out).parent)  # the judge cards beside it now show the agreement with people
    if config.details:
        atomic_write_text(Path(config.details), "".join(json.dumps(d) + "\n" for d in details))
    return result


def sampling_statement(labelled: dict[str, list[Labelled]]) -> dict:
    """How the labelled pairs were picked, with the agreement within each way, and what that means for the figure.

    Pairs labelled doubtful-first (``cai label --order doubt``) are the ones the judge was least sure of, so the
    agreement on them understates the judge on all its pairs; the statement says so, and gives the agreement on
    the pairs labelled in file order apart when there are some."""
    orders = {key.split(":", 1)[1]: calibration(entries) for key, entries in sorted(labelled.items())
              if key.startswith("sampling:")}
    counts = {order: figures["pairs"] for order, figures in orders.items()}
    if set(orders) <= {"file"}:
        statement = "pairs taken as they come in the file: the agreement is an estimate for pairs like them"
    else:
        statement = (f"{counts.get('doubt', 0)} of {sum(counts.values())} pairs were labelled doubtful-first "
                     "(`cai label --order doubt`: order-inconsistent, low-margin or disputed pairs first), so the "
                     "agreement on them understates the judge on all its pairs; the pairs labelled in file order "
                     "give the unbiased figure" + (" (none here)" if "file" not in counts else ""))
    return {"orders": counts, "by_order": orders, "statement": statement}


def _pct(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_agreement(result: dict) -> str:
    judge = result["judge"]
    who = (f"judges {' + '.join(result['judges'])} combined by {result['combine']}" if result.get("judges")
           else f"judge {judge['model']}")
    fallback = f", fallback {judge['fallback']['model']}" if judge.get("fallback") else ""
    lines = [f"{who} (method {judge['method']}{', cot' if judge['cot'] else ''}{fallback}) "
             f"on {result['file']}: {result['pairs']} human-labelled pairs"]
    if not result.get("human_pairs"):
        lines.append("no pair could be judged; see the failures above")
        return "\n".join(lines)
    low, high = result["agreement_ci95"]
    agreed = round(result["agreement"] * result["human_pairs"])
    lines += [
        f"  agreement with humans:  {_pct(result['agreement'])}  ({agreed}/{result['human_pairs']}; "
        f"95% CI [{low:.3f}, {high:.3f}]; {result['ties']} ties, {result['failed_pairs']} failed)",
        f"  order consistency:      {_pct(result['order_consistency'])}"
        + ("  (order-free method: by construction)" if result["order_free_comparisons"] else ""),
        f"  first option wins:      {_pct(result['first_option_wins'])}",
        f"  mean confidence:        {_pct(result['mean_confidence'])}",
        f"  longer response wins:   {_pct(result['longer_response_wins'])}",
    ]
    lines += calibration_lines(result["calibration"])
    lines.append(f"  sampling: {result['sampling']['statement']}")
    if result.get("refusals") or result.get("handed_to_fallback"):
        lines.append(f"  refusals:               {result['refusals']} of {result['comparisons'] + result['failures'] + result['refusals'] - result['by_fallback_judge']} comparisons"
                     f" ({result['by_fallback_judge']} answered by the fallback judge, "
                     f"{result['beyond_fallback_limit']} beyond --fallback-limit)")
    rows = {pid: {**stats, "excl_ties": stats["calibration"]["excluding_ties"]["agreement"],
                  "ci_low": (stats["calibration"]["excluding_ties"]["ci95"] or [None])[0]}
            for pid, stats in result["per_principle"].items()}
    table = principle_table(rows, [
        ("pairs", "human_pairs"), ("agreement", "agreement"), ("excl. ties", "excl_ties"), ("CI low", "ci_low"),
        ("order-cons.", "order_consistency"), ("first-wins", "first_option_wins"), ("confidence", "mean_confidence"),
        ("refusals", "refusals")])
    if table:
        lines += ["  per principle:", table]
    if result.get("judges"):
        lines += judges_lines(result)
        lines.append(f"  combined by {result['combine']} (judging/ensemble.py)")
    if low <= 0.5 <= high:
        lines.append("warning: the interval includes 0.5: at this sample size the judge is not distinguishable from "
                     "chance; do not trust its labels (try --judge-model or more labelled pairs).")
    return "\n".join(lines)
