"""``cai judge``'s pairs: the principles an item is judged under, the comparisons of its candidates, and the
preference pair (``core.schema.PreferenceRow``) and SFT row (``core.schema.SftRow``) its verdicts make."""

from __future__ import annotations

import itertools

from constitution.assignment import assign_principles
from constitution.schema import Constitution, Principle
from core.config import did_you_mean
from core.errors import UserError

from .config import JudgeConfig, JudgeModelConfig
from .items import Item
from .judge import Comparison, Verdict
from .scoring import ensemble


def select_principles(constitution: Constitution, config: JudgeModelConfig, key: str) -> list[Principle]:
    """The principles a pair is judged under: fixed ids, or k by weighted rendezvous on its key (distinct)."""
    ids = config.principle_id_list()
    if ids:
        known = {p.id: p for p in constitution.principles}
        unknown = [i for i in ids if i not in known]
        if unknown:
            hints = [f"{u!r}" + (f" ({hint[2:]})" if (hint := did_you_mean(u, known)) else "") for u in unknown]
            raise UserError(f"--principle-ids: unknown principle(s) {', '.join(hints)} in {config.constitution}")
        return [known[i] for i in ids]
    chosen = assign_principles(key, constitution.principles, config.principles_per_pair, config.seed)
    distinct, seen = [], set()
    for principle in chosen:
        if principle.id not in seen:
            seen.add(principle.id)
            distinct.append(principle)
    return distinct


def _message(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def comparisons_for(item: Item, principles: list[Principle]) -> dict[tuple[int, int], list[Comparison]]:
    """Every distinct pair of candidates (i < j) with different texts, under each principle."""
    out = {}
    for i, j in itertools.combinations(range(len(item.candidates)), 2):
        if item.candidates[i].text == item.candidates[j].text:
            continue
        out[(i, j)] = [Comparison.of(item.prompt, item.candidates[i].text, item.candidates[j].text, p) for p in principles]
    return out


def build_pair(item: Item, principles: list[Principle], verdicts: dict[tuple[int, int], list[Verdict]],
               config: JudgeConfig, judge_model: str, fingerprint: str) -> tuple[dict | None, str | None]:
    """The pair for one item (a ``core.schema.PreferenceRow``), or None and the reason it was dropped."""
    n = len(item.candidates)
    if n < 2:
        return None, "fewer than two responses"
    if not verdicts:
        return None, "responses are identical"

    def p_better(i: int, j: int) -> tuple[float | None, list[Verdict], bool]:
        """P(i better than j), its verdicts (oriented as given) and whether to flip them."""
        if (i, j) in verdicts:
            vs = verdicts[(i, j)]
            return ensemble([v.p for v in vs]), vs, False
        vs = verdicts.get((j, i))
        if vs is None:
            return 0.5, [], False
        p = ensemble([v.p for v in vs])
        return (None if p is None else 1 - p), vs, True

    if all(all(v.p is None for v in vs) for vs in verdicts.values()):
        if all(v.refused for vs in verdicts.values() for v in vs):
            return None, "judge refused"
        first_error = next((v.error for vs in verdicts.values() for v in vs if v.error), "no verdict")
        return None, "judge failed" if "parse" not in first_error else "verdict did not parse"

    wins = []
    for i in range(n):
        values = [p_better(i, j)[0] for j in range(n) if j != i]
        values = [v for v in values if v is not None]
        wins.append(sum(values) / len(values) if values else None)
    ranked = [i for i in sorted(range(n), key=lambda i: -(wins[i] if wins[i] is not None else -1)) if wins[i] is not None]
    eligible = [i for i in ranked if item.candidates[i].usable_as_chosen]
    if not eligible:
        return None, "the better response was cut off or empty"
    best = eligible[0]
    if ranked[0] != best and n == 2:
        return None, "the better response was cut off or empty"
    others = [i for i in ranked if item.candidates[i].text != item.candidates[best].text]
    if not others:
        return None, "responses are identical"
    worst = others[-1]
    p, vs, flipped = p_better(best, worst)
    if p is None:
        return None, "judge failed"
    if p <= 0.5:
        return None, "tie" if p == 0.5 else "best by mean loses the direct comparison"
    margin = 2 * p - 1
    if margin < config.min_margin:
        return None, "margin below --min-margin"

    def oriented(v: Verdict) -> dict:
        if v.p is None:
            return {"chosen_probability": None, "error": v.error, **({"refused": True} if v.refused else {})}
        first, second = (v.p_x_first, v.p_x_second) if not flipped else (1 - v.p_x_second, 1 - v.p_x_first)
        entry = {"chosen_probability": round(v.p if not flipped else 1 - v.p, 6),
                 "orders": [round(first, 6), round(second, 6)],  # P(chosen better) with chosen as (A), as (B)
                 "orders_agree": v.orders_agree}
        if v.bounded:
            entry["bounded"] = True
        if v.by_judge:  # several judges: each one's P(chosen better)
            entry["judges"] = {name: None if own.p is None else round(own.p if not flipped else 1 - own.p, 6)
                               for name, own in v.by_judge.items()}
        if v.fallback:
            entry["fallback_judge"] = v.judge
            if v.refused:
                entry["refused"] = True  # by the judges; the fallback answered
        return entry

    scores = {v.principle_id: oriented(v) for v in vs}
    firsts = [s["orders"][0] for s in scores.values() if s.get("orders")]
    seconds = [s["orders"][1] for s in scores.values() if s.get("orders")]
    orders_agree = bool(firsts) and (sum(firsts) / len(firsts) - 0.5) * (sum(seconds) / len(seconds) - 0.5) > 0
    if config.require_orders_agree and not orders_agree:
        return None, "orders disagree"
    chosen, rejected = item.candidates[best], item.candidates[worst]
    return {
        "prompt": item.prompt,
        "chosen": _message(chosen.text),
        "rejected": _message(rejected.text),
        "chosen_probability": round(p, 6),
        "margin": round(margin, 6),
        "principle_ids": [pr.id for pr in principles],
        "principle_scores": scores,
        "judge_model": judge_model,
        "orders_agree": orders_agree,
        "id": item.id,
        "fingerprint": fingerprint,
        "source": {"file": item.source_file or str(config.input), "line": item.line, "chosen": chosen.label,
                   "rejected": rejected.label, "method": config.method},
    }, None


def sft_row(item: Item, pair: dict | None, mode: str) -> dict | None:
    """A ``core.schema.SftRow``.

    revision mode: the final revision (when not cut off); samples mode: the chosen response.
    """
    if mode == "revision":
        final = item.candidates[0]
        if not item.revisions or not final.usable_as_chosen:
            return None
        text, source = final.text, "final_response"
    else:
        if pair is None:
            return None
        text, source = pair["chosen"][0]["content"], pair["source"]["chosen"]
    return {"messages": item.prompt + _message(text), "id": item.id, "principle_ids": item.principle_ids,
            "revisions": item.revisions, "source": {"line": item.line, "response": source},
            "judge_prefers": None if pair is None else pair["source"]["chosen"]}
