"""The judge card: everything known about a run's judge, in one object a person (or an exporter) can act on.

``cai judge --out OUT`` writes it beside its report as ``OUT.judge_card.json``, and
``cai judge agreement --out FILE`` refreshes the cards in FILE's folder with the agreement
with people.  ``load_card(run_dir)`` reads the card of a run folder (``cai run``'s), of a
judge output, or of a folder of shard parts (built from their merged report), always
built afresh from the files there, so it is never stale.

The card (``CARD_VERSION`` 1)::

    {"card_version": 1,
     "judge": {...},              # the judge's settings (every judge's, the combination and the fallback)
     "source": {"report": PATH, "agreement": FILE or null},
     "statistics": {...},         # rows, pairs, drops by reason, flags by check, order consistency, first
                                  # option wins, mean confidence, longer wins, chosen is the revision, failures,
                                  # parse failures, refusals and their rate, the fallback's share
     "fallback": {"model", "handed", "answered", "beyond_limit"} or null,
     "judges": {NAME: figures} or null, "judges_agree": {"a | b": {...}} or null,
     "people": {"file", "pairs", "judge_matches", "counting_ties", "excluding_ties", "reliability", "ece",
                "sampling", "judges"} or null,   # where human labels were given
     "principles": [{"id", "rows", "flagged", "flags_by_check", "revision_change", "revision_preferred",
                     "comparisons", "refusals", "refusal_rate", "failures", "parse_failures",
                     "order_consistency", "mean_confidence", "agreement_counting_ties",
                     "agreement_excluding_ties"}, ...],
     "warnings": [...]}

Every share is a number in [0, 1] or null (nothing to count); each agreement with people is
``{"agreement", "agreed", "pairs", "ci95"}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.shards import part_files, stage_output
from core.store import atomic_write_text

from .judge_report import merged_report, report_path

CARD_VERSION = 1

#: The report's figures the card repeats as its statistics.
STATISTICS = ("rows", "pairs_made", "pairs_dropped", "dropped_by_reason", "flagged_rows", "flagged_rows_left_out",
              "flagged_by_check", "comparisons", "failures", "parse_failures", "refusals", "refusal_rate",
              "label_outside_top_k", "order_consistency", "order_free_comparisons", "first_option_wins",
              "mean_confidence", "longer_response_wins", "chosen_is_longer", "chosen_is_revision",
              "pairs_with_orders_agreeing", "by_fallback_judge")


def card_path(out: str | Path) -> Path:
    """The card ``cai judge`` writes beside its output ``OUT``: ``OUT.judge_card.json``."""
    out = Path(out)
    return out.with_name(out.name + ".judge_card.json")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def agreement_reports(folder: str | Path) -> list[tuple[Path, dict]]:
    """The agreement reports in a folder (any ``*.json`` with ``agreement_ci95``: `cai judge agreement --out`, a
    recipe's judge check), newest first."""
    found = []
    for path in Path(folder).glob("*.json"):
        report = _read_json(path)
        if report is not None and "result" in report and isinstance(report["result"], dict):
            report = report["result"]  # a recipe's judge check keeps its agreement under "result"
        if report is not None and "agreement_ci95" in report:
            found.append((path, report))
    return sorted(found, key=lambda entry: (-entry[0].stat().st_mtime, entry[0].name))


def _model(judge: dict | None) -> str | None:
    return (judge or {}).get("model")


def _people(agreement: dict, judge: dict | None) -> dict:
    calibration = agreement.get("calibration") or {}
    return {
        "file": agreement.get("file"),
        "pairs": agreement.get("pairs"),
        "judge": _model(agreement.get("judge")),
        "judge_matches": _model(agreement.get("judge")) == _model(judge) and (
            (agreement.get("judge") or {}).get("method") == (judge or {}).get("method")),
        "agreement": agreement.get("agreement"),
        "agreement_ci95": agreement.get("agreement_ci95"),
        "counting_ties": calibration.get("counting_ties"),
        "excluding_ties": calibration.get("excluding_ties"),
        "judge_ties": calibration.get("judge_ties"),
        "human_ties": calibration.get("human_ties"),
        "left_out": calibration.get("left_out"),
        "reliability": calibration.get("reliability") or [],
        "ece": calibration.get("ece"),
        "sampling": agreement.get("sampling"),
        "refusals": agreement.get("refusals"),
        "judges": {name: {"agreement": figures.get("agreement"), "agreement_ci95": figures.get("agreement_ci95"),
                          "counting_ties": (figures.get("calibration") or {}).get("counting_ties"),
                          "excluding_ties": (figures.get("calibration") or {}).get("excluding_ties")}
                   for name, figures in (agreement.get("judges") or {}).items()} or None,
        "judges_agree": agreement.get("judges_agree"),
    }


def _principles(report: dict, agreement: dict | None) -> list[dict]:
    judged = report.get("per_principle") or {}
    revised = report.get("revised_per_principle") or {}
    people = (agreement or {}).get("per_principle") or {}
    rows = []
    for pid in sorted(set(judged) | set(revised) | set(people)):
        j, r, h = judged.get(pid, {}), revised.get(pid, {}), (people.get(pid) or {}).get("calibration") or {}
        rows.append({
            "id": pid,
            "rows": r.get("rows", 0), "flagged": r.get("flagged", 0), "flags_by_check": r.get("flags_by_check", {}),
            "revision_change": r.get("revision_change"), "revision_preferred": r.get("revision_preferred"),
            "revision_pairs": r.get("pairs", 0),
            "comparisons": j.get("comparisons", 0), "refusals": j.get("refusals", 0),
            "refusal_rate": j.get("refusal_rate"), "failures": j.get("failures", 0),
            "parse_failures": j.get("parse_failures", 0), "order_consistency": j.get("order_consistency"),
            "mean_confidence": j.get("mean_confidence"),
            "agreement_counting_ties": h.get("counting_ties"), "agreement_excluding_ties": h.get("excluding_ties"),
        })
    return rows


def _principle_warnings(principles: list[dict]) -> list[str]:
    """What a person editing principles.yaml should look at: a principle that does nothing, is refused, or cannot
    be judged."""
    found = []
    for row in principles:
        if row["rows"] and row["revision_change"] is not None and row["revision_change"] < 0.05:
            found.append(f"principle {row['id']}: its revisions change {row['revision_change']:.0%} of the draft "
                         f"over {row['rows']} rows: it does next to nothing")
        asked = row["comparisons"] + row["failures"] + row["refusals"]
        if row["refusals"] and row["refusal_rate"] is not None and row["refusal_rate"] >= 0.1:
            found.append(f"principle {row['id']}: the judge refuses {row['refusals']} of {asked} comparisons "
                         f"({row['refusal_rate']:.0%})")
        if asked and row["failures"] / asked >= 0.1:
            found.append(f"principle {row['id']}: the judge cannot judge {row['failures']} of {asked} comparisons "
                         f"({row['parse_failures']} parse failures)")
    return found


def build_card(report: dict, agreement: dict | None = None, report_file: str | None = None,
               agreement_file: str | None = None) -> dict:
    """The card of a judge report (``cai judge``'s ``OUT.report.json``, or a folder's merged one) and, where human
    labels were given, an agreement report (``cai judge agreement --out``)."""
    judge = report.get("judge") or {}
    fallback = judge.get("fallback")
    principles = _principles(report, agreement)
    people = _people(agreement, judge) if agreement else None
    warnings = list(report.get("warnings") or []) + _principle_warnings(principles)
    if people is not None and not people["judge_matches"]:
        warnings.append(f"the agreement with people in {agreement_file or 'the agreement report'} is of judge "
                        f"{people['judge']}, not of this card's judge {_model(judge)}")
    return {
        "card_version": CARD_VERSION,
        "judge": judge,
        "source": {"report": report_file, "agreement": agreement_file},
        "statistics": {name: report.get(name) for name in STATISTICS},
        "fallback": {"model": fallback.get("model"), "limit": judge.get("fallback_limit"),
                     "handed": report.get("handed_to_fallback", 0), "answered": report.get("by_fallback_judge", 0),
                     "beyond_limit": report.get("beyond_fallback_limit", 0)} if fallback else None,
        "judges": report.get("judges"),
        "judges_agree": report.get("judges_agree"),
        "combine": judge.get("combine"),
        "people": people,
        "principles": principles,
        "warnings": warnings,
    }


def _judge_output(path: Path) -> Path | None:
    """The judge output (file or folder of parts) of a run folder, a judge output, or a folder of parts."""
    if path.is_dir():
        if part_files(path):
            return path
        out = stage_output(path, "preferences")
        return out if out.exists() else None
    return path if path.exists() else None


def load_card(run_dir: str | Path) -> dict | None:
    """The judge card of a run folder (``cai run``'s: its ``preferences``), of a judge output ``OUT`` (``cai judge
    --out``), or of a folder of shard parts; None when no judge report is there yet.

    It is built from the judge's report (a folder's parts merged) and the newest agreement report beside it, so it
    always matches the files; ``cai judge`` writes the same object to ``OUT.judge_card.json``."""
    path = Path(run_dir)
    out = _judge_output(path)
    if out is None:
        return None
    report = merged_report(out)
    if report is None:
        return None
    folder = out if out.is_dir() else out.parent
    found = agreement_reports(path if path.is_dir() else folder) or agreement_reports(folder)
    agreement_file, agreement = (str(found[0][0]), found[0][1]) if found else (None, None)
    source = str(out) if out.is_dir() else str(report_path(out))
    return build_card(report, agreement, source, agreement_file)


def write_card(out: str | Path) -> Path | None:
    """Write ``OUT.judge_card.json`` beside a judge output file (None when it has no report yet)."""
    card = load_card(out)
    if card is None:
        return None
    path = card_path(out)
    atomic_write_text(path, json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return path


def refresh_cards(folder: str | Path) -> list[Path]:
    """Rewrite the judge cards already in a folder (after a new agreement report was written there)."""
    written = []
    for card in sorted(Path(folder).glob("*.judge_card.json")):
        out = card.with_name(card.name[: -len(".judge_card.json")])
        path = write_card(out)
        if path is not None:
            written.append(path)
    return written
