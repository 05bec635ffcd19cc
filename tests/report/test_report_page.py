"""``cai report``: the page's plots render, the row browser filters, model text stays text, no network."""

from __future__ import annotations

import json
import re

import pytest

from cai.cli import main
from cai.report import load_run, word_diff, write_report
from core.errors import UserError
from run_folder import HOSTILE, ROWS, make_run_folder

PLOTS = ("plot-principles", "plot-flags", "plot-lengths", "plot-confidence", "plot-judge-principles", "plot-dropped",
         "plot-agreement-0", "plot-training-dpo", "plot-winrate")


def open_report(browser, run_folder):
    path = write_report(run_folder)
    browser.page.goto(path.as_uri())
    return path


def visible_ids(page) -> list[str]:
    return page.eval_on_selector_all("article.row:not([hidden]) .id", "els => els.map(e => e.textContent)")


# -- in the browser -------------------------------------------------------------------
def test_report_renders_every_plot_without_the_network(browser, run_folder):
    open_report(browser, run_folder)
    page = browser.page
    for plot in PLOTS:
        svg = page.locator(f"svg#{plot}")
        assert svg.is_visible(), plot
        box = svg.bounding_box()
        assert box["width"] > 300 and box["height"] > 80, (plot, box)
        assert svg.locator("path").count() > 5, plot  # axes, ticks and the data marks
    # The data is drawn, not just the frame: one bar per flag check, and the labels are the checks.
    flags_text = page.locator("svg#plot-flags").text_content()
    for check in ("reads_like_critique", "copies_exemplar", "same_as_draft", "off_topic"):
        assert check in flags_text
    assert "0.53 [0.47, 0.59]" in page.locator("svg#plot-agreement-0").text_content()
    assert "reward margin" in page.locator("svg#plot-training-dpo").text_content()
    assert "harmful" in page.locator("svg#plot-winrate").text_content()
    tiles = page.locator(".tile").all_text_contents()
    assert any("agreement with humans" in t and "chance" in t for t in tiles)
    assert any("yield (pairs per prompt)" in t and "0.50" in t and "5 pairs from 10 prompts; lost: 3 flagged by the "
               "row checks" in t for t in tiles), tiles
    assert page.locator(".warning").filter(has_text="not distinguishable from chance").count() == 1
    assert browser.refused == [] and all(url.startswith("file://") for url in browser.requests)
    assert browser.errors == []
    browser.screenshot("report-plots")


def test_row_browser_filters_by_principle_flag_tag_judge_and_text(browser, run_folder):
    open_report(browser, run_folder)
    page = browser.page
    all_ids = [row[0] for row in ROWS]
    assert visible_ids(page) == all_ids
    assert page.locator("#row-count").text_content().startswith(f"showing {len(ROWS)} of {len(ROWS)}")

    page.select_option("#filter-principle", "harm-privacy")
    assert visible_ids(page) == ["harmful-03"]
    page.select_option("#filter-principle", "")

    page.select_option("#filter-flag", "__any__")
    assert visible_ids(page) == ["harmful-02", "harmful-03", "helpful-03"]
    page.select_option("#filter-flag", "copies_exemplar")
    assert visible_ids(page) == ["harmful-03"]
    browser.screenshot("report-rows-flag-copies-exemplar")
    page.select_option("#filter-flag", "__none__")
    assert visible_ids(page) == ["harmful-01", "helpful-01", "helpful-02", "hostile-01", "helpful-04"]

    page.select_option("#filter-tag", "helpful")  # combined with "passes every check"
    assert visible_ids(page) == ["helpful-01", "helpful-02", "helpful-04"]
    page.select_option("#filter-judge", "draft")
    assert visible_ids(page) == ["helpful-04"]
    assert "P(revision better) = 0.370" in page.locator("article.row:not([hidden])").text_content()
    page.select_option("#filter-judge", "")
    page.select_option("#filter-tag", "")
    page.select_option("#filter-flag", "")

    page.fill("#filter-text", "fahrenheit")
    assert visible_ids(page) == ["helpful-01"]
    assert page.locator("#row-count").text_content().startswith("showing 1 of 1 matching rows (8 in all)")
    browser.screenshot("report-rows-search")
    page.fill("#filter-text", "")

    # The word diff: words gone from the draft are struck, new words in the revision are marked.
    row = page.locator("article.row", has=page.locator(".id", has_text="helpful-01"))
    assert "176" in row.locator(".draft del").all_text_contents()[-1]
    assert any("177" in t for t in row.locator(".revision ins").all_text_contents())
    assert browser.errors == []


def test_model_text_is_shown_as_text_never_run(browser, run_folder):
    open_report(browser, run_folder)
    page = browser.page
    page.select_option("#filter-principle", HOSTILE)
    assert visible_ids(page) == ["hostile-01"]
    row = page.locator("article.row:not([hidden])")
    assert HOSTILE in row.locator(".columns").text_content()
    assert "<b>bold</b> & done" in row.text_content()
    assert row.locator(".badge.principle").text_content() == HOSTILE
    assert page.evaluate("window.__pwned") is None
    assert browser.dialogs == [] and browser.errors == []
    # Only the page's own script runs: one inline <script> in the whole document.
    assert page.locator("script").count() == 1
    assert page.locator("img").count() == 0
    browser.screenshot("report-hostile-row")


def test_duplicates_and_the_cost_ledger_are_tables_on_the_page(browser, run_folder):
    report_file = run_folder / "preferences.jsonl.report.json"
    report = json.loads(report_file.read_text())
    report.update(duplicate_rows=2, duplicate_rows_left_out=2, duplicates_by_kind={"prompt_exact": 1, "prompt_near": 1},
                  duplicate_examples=[{"id": "copy-01", "of_id": "hostile-01", "field": "prompt", "kind": "near",
                                       "similarity": 0.83, "text": HOSTILE, "of_text": "the earlier prompt"}])
    report_file.write_text(json.dumps(report))
    open_report(browser, run_folder)
    page = browser.page
    duplicates = page.locator("section#duplicates")
    assert duplicates.is_visible() and "2 input rows repeat an earlier row (1 prompt exact, 1 prompt near)" in (
        duplicates.text_content())
    assert duplicates.locator("td.text").first.text_content() == HOSTILE and page.evaluate("window.__pwned") is None
    # No manifest here: the ledger sums the rows' calls (8 rows: draft 40 + 30 tokens, critique 90 + 20, revision
    # 130 + 35 each) and says so.
    cost = page.locator("section#cost")
    assert cost.is_visible() and "summed from the rows' calls" in cost.text_content()
    cells = [row.locator("td").all_text_contents() for row in cost.locator("tbody tr").all()]
    assert cells[:4] == [["draft", "8", "320", "240", "-", "-", "-"], ["critique", "8", "720", "160", "-", "-", "-"],
                         ["revision", "8", "1,040", "280", "-", "-", "-"],
                         ["generation", "24", "2,080", "680", "-", "-", "-"]]
    assert browser.errors == []
    browser.screenshot("report-duplicates-and-cost")


# -- without a browser ------------------------------------------------------------------
def test_cli_writes_one_self_contained_page(run_folder, tmp_path, capsys):
    out = tmp_path / "page" / "r.html"
    assert main(["report", str(run_folder), "--out", str(out)]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    html = out.read_text(encoding="utf-8")
    assert html.count("<svg") == len(PLOTS)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched from anywhere
    assert "<link" not in html and "@import" not in html
    assert "</script><script>window.__pwned" not in html  # model text escaped
    assert main(["report", str(run_folder)]) == 0
    assert (run_folder / "report.html").exists()


def test_same_run_gives_the_same_page(run_folder, tmp_path):
    first = write_report(run_folder, tmp_path / "a.html").read_text()
    second = write_report(run_folder, tmp_path / "b.html").read_text()
    assert first == second


def test_not_a_run_folder_is_one_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 1
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert "no run outputs found" in err and "Traceback" not in err
    assert main(["report"]) == 1
    assert "name the run folder" in capsys.readouterr().err


def test_named_agreement_file_must_be_an_agreement_report(run_folder, tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"win_rate": {}}))
    with pytest.raises(UserError, match="not an agreement report"):
        load_run(run_folder, agreement=str(tmp_path / "other.json"))
    with pytest.raises(UserError, match="no such file"):
        load_run(run_folder, agreement=str(tmp_path / "missing.json"))


def test_rows_without_flags_and_a_torn_last_line(run_folder):
    path = run_folder / "revisions.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        del row["flags"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "torn", "pro')
    run = load_run(run_folder)
    assert not run.has_flags and len(run.revisions) == len(rows) and run.skipped_lines == {"revisions.jsonl": 1}
    html = write_report(run_folder).read_text()
    assert "carry no quality flags" in html and 'id="plot-flags"' not in html
    assert "1 unreadable line(s) left out" in html
    assert "passes the checks</span>" not in html  # no claim about checks that never ran


def test_training_curves_from_a_trainer_checkpoint_state(run_folder):
    summary = json.loads((run_folder / "dpo" / "cai_training.json").read_text())
    history = summary.pop("log_history")
    (run_folder / "dpo" / "cai_training.json").write_text(json.dumps(summary))
    html = write_report(run_folder).read_text()
    assert 'id="plot-training-dpo"' not in html and "has no log history" in html
    (run_folder / "dpo" / "checkpoint-8").mkdir()
    (run_folder / "dpo" / "checkpoint-8" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert 'id="plot-training-dpo"' in write_report(run_folder).read_text()


def test_ppo_curves_show_kl(run_folder):
    (run_folder / "ppo").mkdir()
    history = [{"objective/kl": 0.01 * s, "objective/rlhf_reward": 0.1 * s, "loss/policy_avg": 0.2, "step": s}
               for s in range(1, 6)]
    (run_folder / "ppo" / "cai_training.json").write_text(json.dumps({"method": "ppo", "log_history": history}))
    html = write_report(run_folder).read_text()
    svg = html[html.index('id="plot-training-ppo"'):]
    svg = svg[: svg.index("</svg>")]
    assert "KL to the reference" in svg and "RLHF reward" in svg


def test_rl_curves_show_reward_kl_beta_and_the_distribution_of_judge_rewards(run_folder):
    (run_folder / "rloo").mkdir()
    history = [{"loss": 0.0, "reward": 0.5 + 0.01 * s, "kl": 0.001 * s, "beta": 0.05 + 0.05 * s, "step": s}
               for s in range(1, 5)]
    rewards = [0.31, 0.48, 0.52, 0.69, 0.45, 0.55, 0.4, 0.6]
    (run_folder / "rloo" / "cai_training.json").write_text(json.dumps(
        {"method": "rloo", "log_history": history, "reward_values": {"judge": rewards}}))
    html = write_report(run_folder).read_text()
    curves = html[html.index('id="plot-training-rloo"'):]
    curves = curves[: curves.index("</svg>")]
    assert "mean reward" in curves and "KL to the reference" in curves and "KL coefficient" in curves
    histogram = html[html.index('id="plot-rewards-rloo"'):]
    assert "judge (8 completions)" in histogram[: histogram.index("</svg>")]


def test_word_diff_marks_changed_runs():
    before, after = word_diff("So 350 F is about 176 C.", "So 350 °F is about 177 °C.")
    assert "".join(t for _, t in before) == "So 350 F is about 176 C."
    assert "".join(t for _, t in after) == "So 350 °F is about 177 °C."
    assert ("del", "176") in before and any(kind == "ins" and "177" in text for kind, text in after)
    # A rewritten phrase is one change, not a change per word.
    before, _ = word_diff("you could post rumours online", "please talk to her")
    assert before == [("del", "you could post rumours online")]


def test_every_option_has_help():
    from dataclasses import fields

    from cai.label import LabelConfig
    from cai.report import ReportConfig

    for config in (ReportConfig, LabelConfig):
        for option in fields(config):
            assert option.metadata.get("help"), f"{config.__name__}.{option.name}"


def test_order_sensitive_judge_shows_order_consistency(run_folder):
    """The pairwise method: per-pair orders and per-principle consistency and first-option wins are plotted."""
    path = run_folder / "preferences.jsonl"
    pairs = [json.loads(line) for line in path.read_text().splitlines()]
    for i, pair in enumerate(pairs):
        for score in pair["principle_scores"].values():
            score["orders"] = [0.9, 0.3] if i % 2 else [0.7, 0.6]  # every other pair flips with the order
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    report_path = run_folder / "preferences.jsonl.report.json"
    report = json.loads(report_path.read_text())
    for stats in report["per_principle"].values():
        stats.update(order_free_comparisons=0, order_consistency=0.5, first_option_wins=0.8)
    report.update(order_free_comparisons=0, order_consistency=0.5, first_option_wins=0.8)
    report_path.write_text(json.dumps(report))
    html = write_report(run_folder).read_text()
    order = html[html.index('id="plot-order"'):]
    assert "3 of 5 pairs keep their winner" in order[: order.index("</svg>")]
    principles = html[html.index('id="plot-judge-principles"'):]
    principles = principles[: principles.index("</svg>")]
    assert "order consistency" in principles and "first option wins" in principles
    assert "Order consistency 0.50 (first option wins 0.8)" in html
    # An order-free method has no such plot (every point would sit on the diagonal).
    assert 'id="plot-order"' not in write_report(make_run_folder(run_folder.parent / "second")).read_text()


# --- a run folder damaged any way: the page is still written, the damage named, never a traceback ---------------
def _edit_row(name: str, edit):
    def damage(run: Path) -> None:
        lines = (run / name).read_text().splitlines()
        row = json.loads(lines[0])
        edit(row)
        lines[0] = json.dumps(row)
        (run / name).write_text("\n".join(lines) + "\n")
    return damage


def _edit_json(name: str, edit):
    def damage(run: Path) -> None:
        value = json.loads((run / name).read_text())
        (run / name).write_text(json.dumps(edit(value)))
    return damage


def _put(name: str, text: str):
    return lambda run: (run / name).write_text(text)


DEEP = "[" * 100_000 + "]" * 100_000
DAMAGE = [
    # (case id, damage, what the page says)
    ("rounds-a-number", _edit_row("revisions.jsonl", lambda r: r.__setitem__("rounds", 5)),
     r"revisions\.jsonl: 1 damaged row\(s\) left out \(the first, line 1: rounds must be a list, got 5\)"),
    ("flags-a-number", _edit_row("revisions.jsonl", lambda r: r.__setitem__("flags", 5)),
     r"revisions\.jsonl: 1 damaged row\(s\) left out .*flags must be a list"),
    ("flags-of-numbers", _edit_row("revisions.jsonl", lambda r: r.__setitem__("flags", [5])),
     r"revisions\.jsonl: 1 damaged row\(s\) left out .*flags\[0\] must be an object, got 5"),
    ("prompt-a-number", _edit_row("revisions.jsonl", lambda r: r.__setitem__("prompt", 5)),
     r"revisions\.jsonl: 1 damaged row\(s\)"),
    ("row-nested-deep", lambda run: (run / "revisions.jsonl").write_text(
        '{"id": ' + DEEP + "}\n" + (run / "revisions.jsonl").read_text()),
     r"revisions\.jsonl: 1 unreadable line\(s\) left out"),
    ("row-lone-surrogate", _edit_row("revisions.jsonl", lambda r: r.__setitem__("final_response", "ok \ud800")),
     r"revisions\.jsonl: 1 unreadable line\(s\) left out"),
    ("pair-source-a-string", _edit_row("preferences.jsonl", lambda r: r.__setitem__("source", "final_response")),
     r"preferences\.jsonl: 1 damaged row\(s\) left out .*source must be an object"),
    ("pair-probability-text", _edit_row("preferences.jsonl", lambda r: r.__setitem__("chosen_probability", "0.9")),
     r"preferences\.jsonl: 1 damaged row\(s\) left out .*chosen_probability must be a number"),
    ("judge-confidence-text", _edit_json("preferences.jsonl.report.json",
                                         lambda r: {**r, "mean_confidence": "high"}),
     r"damaged, left out: the judge report of preferences\.jsonl: mean_confidence must be a number"),
    ("judge-report-nested-deep", _put("preferences.jsonl.report.json", DEEP),
     r"damaged, left out: preferences\.jsonl\.report\.json: not a readable JSON object"),
    ("agreement-one-bound", _edit_json("agreement.json", lambda r: {**r, "agreement_ci95": [0.4]}),
     r"damaged, left out: agreement\.json: agreement_ci95 must have at least 2 items, got \[0\.4\]"),
    ("agreement-text", _edit_json("agreement.json", lambda r: {**r, "agreement": "most"}),
     r"damaged, left out: agreement\.json: agreement must be a number"),
    ("eval-a-list", _put("eval.json", "[1, 2]"), r"damaged, left out: eval\.json: not a JSON object"),
    ("eval-win-rate-text", _edit_json("eval.json", lambda r: {**r, "win_rate": "good"}),
     r"damaged, left out: eval\.json: win_rate must be an object"),
    ("eval-interval-missing", _edit_json("eval.json", lambda r: {**r, "win_rate": {"all": {"win_rate": 0.6, "n": 3}}}),
     None),
    ("eval-nested-deep", _put("eval.json", DEEP), r"damaged, left out: eval\.json: nested too deeply"),
    ("training-history-a-number", _edit_json("dpo/cai_training.json", lambda r: {**r, "log_history": 5}),
     r"damaged, left out: cai_training\.json: log_history must be a list"),
]


@pytest.mark.parametrize("case", DAMAGE, ids=[c[0] for c in DAMAGE])
def test_report_survives_a_damaged_run_folder_and_names_the_damage(case, run_folder, capsys):
    name, damage, message = case
    damage(run_folder)
    before = {p: p.read_bytes() for p in run_folder.rglob("*") if p.is_file()}
    assert main(["report", str(run_folder)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    html = (run_folder / "report.html").read_text(encoding="utf-8")
    if message:
        assert re.search(message, html), [line for line in html.splitlines() if "left out" in line or "damaged" in line]
    assert {p: p.read_bytes() for p in run_folder.rglob("*") if p.is_file() and p.name != "report.html"} == before


def test_repetitive_texts_are_diffed_and_long_ones_shown_unmarked():
    from cai.report import MAX_DIFF_TOKENS, too_long_to_diff

    draft, revision = word_diff("ha " * 1000, "no " * 1000)
    assert "".join(t for _, t in draft) == "ha " * 1000 and "".join(t for _, t in revision) == "no " * 1000
    assert {k for k, _ in draft} == {"del", "same"} and {k for k, _ in revision} == {"ins", "same"}
    assert "".join(t for k, t in draft if k == "del").split() == ["ha"] * 1000
    draft, revision = word_diff("x y " * 2000, "x z " * 2000)  # many short matches: difflib's worst case
    assert "".join(t for k, t in draft if k == "del") == "y" * 2000  # each y alone, between kept " x "
    assert "".join(t for k, t in revision if k == "same").split() == ["x"] * 2000
    long = "word " * MAX_DIFF_TOKENS
    assert too_long_to_diff(long, "short") and word_diff(long, "short") == ([("same", long)], [("same", "short")])
