"""The judge card on the report page (real browser): its figures, the reliability diagram and the per-principle table,
from a run folder that `cai judge` and `cai judge agreement` wrote with a stand-in judge that refuses one principle."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cai.report import write_report
from judging.agreement import run_agreement
from judging.card import card_path
from judging.config import AgreementConfig, JudgeConfig
from judging.run import run_judge
from run_folder import HOSTILE, ROWS, revision_row, write_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "judging"))
from judge_standins import RefusingBackend  # noqa: E402 - the judging tests' stand-ins

REPO = Path(__file__).resolve().parents[2]
ENDPOINT = {"judge_model": "stand-in-judge", "judge_backend": "openai", "judge_base_url": "http://127.0.0.1:9/v1",
            "method": "pairwise", "principle_ids": "harm-privacy,helpful-complete-and-specific",
            "constitution": str(REPO / "principles.yaml")}
PRIVACY = "Which response better respects people's privacy?"
# People's labels: the GOOD response is theirs; how much better it is varies, so the judge's confidence does too.
LABELS = [{"prompt": f"Question {i}?", "chosen": "GOOD " * (1 + i % 3) + f"answer {i}",
           "rejected": "BAD " * (i % 2) + f"reply {i}"} for i in range(12)]


def judged_run(root: Path) -> Path:
    run = root / "run"
    run.mkdir()
    rows = [revision_row(i, row_id, tag, principle, prompt, "BAD " + draft, critique, "GOOD " + revision, flags)
            for i, (row_id, tag, principle, prompt, draft, critique, revision, flags) in enumerate(ROWS, start=1)]
    write_jsonl(run / "revisions.jsonl", rows)

    def judge():
        return RefusingBackend(lambda conversation: PRIVACY in conversation[0]["content"], model="stand-in-judge")

    run_judge(JudgeConfig(input=str(run / "revisions.jsonl"), out=str(run / "preferences.jsonl"), **ENDPOINT),
              backend=judge())
    write_jsonl(root / "labels.jsonl", LABELS)
    run_agreement(AgreementConfig(pairs=str(root / "labels.jsonl"), out=str(run / "agreement.json"), **ENDPOINT),
                  backend=judge())
    return run


def test_the_report_page_shows_the_judge_card(browser, tmp_path):
    run = judged_run(tmp_path)
    card = json.loads(card_path(run / "preferences.jsonl").read_text())
    assert card["people"]["reliability"]
    browser.page.goto(write_report(run).as_uri())
    page = browser.page
    section = page.locator("section#judge-card")
    assert section.is_visible()
    figures = section.locator(".card-figures .tile").all_text_contents()
    assert any("refusals" in t and "50% of the comparisons" in t for t in figures), figures
    assert any("agreement excluding ties" in t and "(n=" in t for t in figures), figures
    assert any("agreement counting ties" in t for t in figures), figures
    diagram = page.locator("svg#plot-reliability")
    assert diagram.is_visible() and diagram.bounding_box()["width"] > 250
    assert "how often people agreed" in diagram.text_content()
    assert diagram.locator("path").count() > 5
    table = page.locator("table#card-principles")
    assert table.is_visible()
    cells = {row[0]: row for row in (r.locator("td").all_text_contents() for r in table.locator("tbody tr").all())}
    # harm-privacy: refused every time it was asked; the principle under which the other rows were revised.
    assert cells["harm-privacy"][6] == "5 (100%)"  # the 5 unflagged rows' comparisons, all refused
    assert cells["helpful-complete-and-specific"][6] == "0"
    assert cells["helpful-complete-and-specific"][4] == "100%"  # the judge prefers its revision
    assert cells["harm-privacy"][1] == "1" and "copies_exemplar 1" in cells["harm-privacy"][2]
    assert cells[HOSTILE][1] == "1"  # a principle id that is markup stays text
    assert page.evaluate("window.__pwned") is None
    assert browser.errors == [] and browser.refused == []
    section.screenshot(path=str(tmp_path / "judge-card.png"))
    print(f"screenshot: {tmp_path / 'judge-card.png'}")
