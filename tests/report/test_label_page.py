"""``cai label``: a person labels pairs in the browser; the file is what ``cai judge agreement`` reads."""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path

import pytest

from cai.label_server import LabelServer
from cai.label_session import LabelSession, load_pairs, make_pair, ties_path
from judge_standins import PreferenceBackend
from judging.agreement import read_human_pairs, run_agreement
from judging.config import AgreementConfig
from run_folder import make_run_folder, write_jsonl

REPO = Path(__file__).resolve().parents[2]

# Five pairs; the stand-in judge prefers the response with "GOOD" in it.
PAIRS = [
    ("p1", "How do I boil an egg?", "GOOD: simmer it for 9 minutes, then cool it in cold water.", "BAD: eggs are overrated."),
    ("p2", "Name a prime number.", "GOOD: 7 is prime.", "BAD: 9 is prime."),
    ("p3", "Translate 'merci'.", "GOOD: it means 'thank you'.", "BAD: it means 'sea'."),
    ("p4", "Is the earth flat?", "GOOD: no, it is an oblate spheroid.", "BAD: yes, look at the horizon."),
    ("p5", "Say hi.", "GOOD: hi!", "BAD: no."),
]


@pytest.fixture
def label_run(tmp_path) -> Path:
    run = make_run_folder(tmp_path)
    write_jsonl(run / "preferences.jsonl", [
        {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": good}],
         "rejected": [{"role": "assistant", "content": bad}], "chosen_probability": 0.7, "id": pid,
         "source": {"chosen": "final_response", "rejected": "initial_response"}}
        for pid, prompt, good, bad in PAIRS])
    return run


def start(run: Path, out: Path) -> LabelServer:
    server = LabelServer(LabelSession(load_pairs(run, "preferences", seed=0), out), port=0)
    server.start()
    return server


def shown(page) -> tuple[str, str, str]:
    page.wait_for_selector("#labelling:not([hidden])")
    return page.text_content("#prompt"), page.text_content("#text-1"), page.text_content("#text-2")


def good_side(page) -> str:
    _, first, second = shown(page)
    assert ("GOOD" in first) != ("GOOD" in second)
    return "1" if "GOOD" in first else "2"


def expect(locator):
    from playwright.sync_api import expect as playwright_expect  # only the browser tests need playwright

    return playwright_expect(locator)


def wait_done(page, done: int) -> None:
    expect(page.locator("#counts")).to_have_text(re.compile(f"^{done} of {len(PAIRS)} pairs labelled"))


def test_labelling_session_with_mouse_and_keys_resumes_and_feeds_agreement(browser, label_run, tmp_path):
    out = tmp_path / "labels" / "human.jsonl"
    page = browser.page
    server = start(label_run, out)
    try:
        page.goto(server.url)
        # Pair 1: the mouse, on the better response's button.
        side = good_side(page)
        page.click(f"#pick-{side}")
        wait_done(page, 1)
        assert len(out.read_text().splitlines()) == 1  # saved (and flushed) at once
        # Pair 2: the keyboard.
        side = good_side(page)
        page.keyboard.press(side)
        wait_done(page, 2)
        # Pair 3: skipped for now, then a tie with the keyboard.
        skipped_prompt = shown(page)[0]
        page.keyboard.press("s")
        expect(page.locator("#prompt")).not_to_have_text(skipped_prompt)
        page.keyboard.press("t")
        wait_done(page, 3)
        browser.screenshot("label-pair-in-progress")
    finally:
        server.close()
    assert len(out.read_text().splitlines()) == 2 and len(ties_path(out).read_text().splitlines()) == 1

    # A new session skips what is labelled; the skipped pair comes back.
    server = start(label_run, out)
    try:
        page.goto(server.url)
        wait_done(page, 3)
        assert shown(page)[0] == skipped_prompt
        # This person disagrees with the judge once: the BAD response, with the keyboard.
        page.keyboard.press("2" if good_side(page) == "1" else "1")
        wait_done(page, 4)
        page.click(f"#pick-{good_side(page)}")
        wait_done(page, 5)
        page.wait_for_selector("#finished:not([hidden])")
        assert "cai judge agreement --pairs" in page.text_content("#finished")
        browser.screenshot("label-finished")
    finally:
        server.close()
    assert browser.refused == [] and browser.errors == []

    labels = [json.loads(line) for line in out.read_text().splitlines()]
    ties = [json.loads(line) for line in ties_path(out).read_text().splitlines()]
    assert len(labels) == 4 and len(ties) == 1
    assert {row["id"] for row in labels} | {row["id"] for row in ties} == {p[0] for p in PAIRS}
    assert sum("GOOD" in row["chosen"][0]["content"] for row in labels) == 3

    # `cai judge agreement` reads the file as it is: 4 pairs (the tie is apart), 3 where the judge agrees.
    assert len(read_human_pairs(out)) == 4
    config = AgreementConfig(pairs=str(out), constitution=str(REPO / "principles.yaml"), method="pairwise",
                             principles_per_pair=1)
    result = run_agreement(config, backend=PreferenceBackend())
    assert result["human_pairs"] == 4 and result["agreement"] == pytest.approx(0.75)


def test_order_is_drawn_per_pair_and_stable():
    prompt = [{"role": "user", "content": "q"}]
    firsts = [make_pair(str(i), i, prompt, (f"a{i}", "chosen"), (f"b{i}", "rejected"), seed=0).origins[0]
              for i in range(40)]
    assert 10 < firsts.count("chosen") < 30  # both orders occur
    again = [make_pair(str(i), i, prompt, (f"a{i}", "chosen"), (f"b{i}", "rejected"), seed=0).origins[0]
             for i in range(40)]
    assert firsts == again
    other_seed = [make_pair(str(i), i, prompt, (f"a{i}", "chosen"), (f"b{i}", "rejected"), seed=1).origins[0]
                  for i in range(40)]
    assert other_seed != firsts


def test_revisions_source_pairs_draft_and_revision(run_folder):
    pairs = load_pairs(run_folder, "revisions")
    # helpful-03's revision is its draft: nothing to compare.
    assert [p.id for p in pairs] == ["harmful-01", "harmful-02", "harmful-03", "helpful-01", "helpful-02",
                                     "hostile-01", "helpful-04"]
    assert all(sorted(p.origins) == ["draft", "revision"] for p in pairs)


def _request(server: LabelServer, method: str, path: str, host: str | None = None, headers=None, body=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.putrequest(method, path, skip_host=True)
    connection.putheader("Host", host or f"127.0.0.1:{server.port}")
    payload = json.dumps(body).encode() if body is not None else b""
    for key, value in {**(headers or {}), "Content-Length": str(len(payload))}.items():
        connection.putheader(key, value)
    connection.endheaders(payload)
    response = connection.getresponse()
    return response.status, response.read()


def test_server_listens_on_loopback_and_refuses_foreign_pages(label_run, tmp_path):
    out = tmp_path / "labels.jsonl"
    server = start(label_run, out)
    try:
        assert server.httpd.server_address[0] == "127.0.0.1"
        assert _request(server, "GET", "/")[0] == 200
        assert _request(server, "GET", "/", host="attacker.example:80")[0] == 403  # DNS rebinding
        key = server.session.state()["pair"]["key"]
        assert _request(server, "POST", "/api/label", body={"key": key, "choice": "1"})[0] == 403  # no token
        assert _request(server, "POST", "/api/label", headers={"X-Label-Token": "wrong"},
                        body={"key": key, "choice": "1"})[0] == 403
        token = {"X-Label-Token": server.token, "Content-Type": "application/json"}
        assert _request(server, "POST", "/api/label", headers=token, body={"key": key, "choice": "best"})[0] == 400
        assert _request(server, "POST", "/api/label", headers=token, body={"key": "nope", "choice": "1"})[0] == 400
        assert not out.exists()
        status, body = _request(server, "POST", "/api/label", headers=token, body={"key": key, "choice": "2"})
        assert status == 200 and json.loads(body)["done"] == 1 and len(out.read_text().splitlines()) == 1
    finally:
        server.close()


def test_label_command_errors(tmp_path, capsys):
    from cai.cli import main

    assert main(["label", str(tmp_path / "missing")]) == 1
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    assert main(["label", str(tmp_path / "run")]) == 1
    assert "preferences.jsonl: not found" in capsys.readouterr().err
    assert main(["label", str(tmp_path / "run"), "--source", "revision"]) == 1
    assert "did you mean 'revisions'" in capsys.readouterr().err


def test_label_command_serves_until_interrupted(label_run, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    out = tmp_path / "mine.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "cai", "label", str(label_run), "--port", "0", "--out", str(out)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)},
                               # Ctrl-C acts even where the tests run with SIGINT ignored (tests/reliability/harness.py)
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", first).group(0)
        assert f"labelling {len(PAIRS)} pairs" in first
        with urllib.request.urlopen(url + "api/state", timeout=10) as response:
            state = json.loads(response.read())
        assert state["total"] == len(PAIRS) and state["done"] == 0 and state["pair"]["prompt"][0]["role"] == "user"
        # A second server on the same labels file stops at once: two would store a pair twice, labelled both ways.
        second = subprocess.run([sys.executable, "-m", "cai", "label", str(label_run), "--port", "0", "--out", str(out)],
                                cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                                timeout=120)
        assert second.returncode == 1 and "is being written by another run (pid" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()  # a server that ignored Ctrl-C must not outlive the test
            _, err = process.communicate()
            raise AssertionError(f"cai label did not stop on Ctrl-C within 30 s:\n{err}") from None
    assert process.returncode == 0, err
    assert f"cai judge agreement --pairs {out}" in err and "Traceback" not in err


def _raw(server: LabelServer, data: bytes) -> tuple[int, dict, bytes]:
    """Send ``data`` as it is (a malformed request) and read the answer."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        raw = sock.makefile("rb").read()
    if not raw.startswith(b"HTTP/"):
        return 0, {}, raw  # an HTTP/0.9 answer: the body alone
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


HOSTILE_REQUESTS = [
    # (case id, method, body bytes, extra headers, expected status, expected message regex)
    ("nested-deep", "POST", b'{"key": ' + b"[" * 2000 + b"]" * 2000 + b"}", {}, 400, r"nested too deeply"),
    ("not-json", "POST", b"key=1&choice=2", {}, 400, r"invalid JSON"),
    ("invalid-utf8", "POST", b'{"key": "\xff"}', {}, 400, r"not valid UTF-8"),
    ("surrogate", "POST", b'{"key": "\\ud800", "choice": "1"}', {}, 400, r"unpaired surrogate"),
    ("a-list", "POST", b'["key", "choice"]', {}, 400, r'the body must be \{"key": text, "choice": text\}'),
    ("key-a-list", "POST", b'{"key": ["a"], "choice": "1"}', {}, 400, r'the body must be'),
    ("choice-a-number", "POST", b'{"key": "a", "choice": 1}', {}, 400, r'the body must be'),
    ("too-large", "POST", b"{" + b" " * 5000 + b"}", {}, 413, r"larger than 4096 bytes"),
    ("length-a-word", "POST", b"{}", {"Content-Length": "lots"}, 411, r"Content-Length"),
    ("length-negative", "POST", b"{}", {"Content-Length": "-5"}, 411, r"Content-Length"),
    ("unknown-method", "PUT", b"{}", {}, 501, r"Unsupported method"),
]


@pytest.mark.parametrize("case", HOSTILE_REQUESTS, ids=[c[0] for c in HOSTILE_REQUESTS])
def test_every_hostile_request_gets_a_json_error_and_no_traceback(case, label_run, tmp_path, capfd):
    name, method, body, extra, status, message = case
    out = tmp_path / "labels.jsonl"
    server = start(label_run, out)
    try:
        headers = {"Host": f"127.0.0.1:{server.port}", "X-Label-Token": server.token,
                   "Content-Length": str(len(body)), **extra}
        request = f"{method} /api/label HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        got, answer_headers, answer = _raw(server, request.encode() + b"\r\n" + body)
        assert got == status, answer
        assert answer_headers["content-type"].startswith("application/json")
        assert re.search(message, json.loads(answer)["error"]), answer
        assert answer_headers["x-frame-options"] == "DENY"
        assert _request(server, "GET", "/api/state")[0] == 200  # the server goes on
    finally:
        server.close()
    assert not out.exists()
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out


def test_a_malformed_request_line_gets_a_json_error(label_run, tmp_path, capfd):
    import socket

    server = start(label_run, tmp_path / "labels.jsonl")
    try:
        # No HTTP version on the line: HTTP/0.9, whose answer is the body alone (no status line, no headers).
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GARBAGE\r\n\r\n")
            answer = sock.makefile("rb").read()
        status, _, body = _raw(server, f"GET / HTTP/1.1 extra\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
    finally:
        server.close()
    assert "Bad request syntax" in json.loads(answer)["error"]
    assert "Bad request version" in json.loads(body or answer)["error"]
    assert "Traceback" not in "".join(capfd.readouterr())


def test_no_answer_can_be_framed_by_another_page(label_run, tmp_path):
    server = start(label_run, tmp_path / "labels.jsonl")
    try:
        answers = [_raw(server, f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{server.port}'}\r\n\r\n".encode())
                   for path, host in [("/", None), ("/api/state", None), ("/nowhere", None), ("/", "evil.example")]]
    finally:
        server.close()
    assert [status for status, _, _ in answers] == [200, 200, 404, 403]
    for _, headers, _ in answers:
        assert headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]


def test_a_labels_file_with_odd_keys_resumes_without_them(label_run, tmp_path, caplog):
    out = tmp_path / "labels.jsonl"
    out.write_text('{"key": ["a", "list"]}\n{"key": 5}\n{"id": "no key"}\n')
    with caplog.at_level("WARNING", logger="cai"):
        session = LabelSession(load_pairs(label_run, "preferences", seed=0), out)
    assert session.done == set() and session.state()["done"] == 0
    assert "3 row(s) without a text 'key'" in caplog.text


def shard_run_folder(run: Path, name: str, count: int) -> None:
    """Turn ``RUN/NAME.jsonl`` into the folder a ``--shard i/COUNT`` stage writes: ``RUN/NAME/part-*.jsonl``."""
    from core.shards import Shard, shard_of

    path = run / f"{name}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    (run / name).mkdir()
    for index in range(count):
        write_jsonl(run / name / Shard(index, count).part_name, [r for r in rows if shard_of(r["id"], count) == index])
    path.unlink()


@pytest.mark.parametrize("source", ["preferences", "revisions"])
def test_a_sharded_run_folder_is_labelled_from_its_parts(tmp_path, source):
    whole = load_pairs(make_run_folder(tmp_path / "whole"), source)
    run = make_run_folder(tmp_path / "sharded")
    shard_run_folder(run, source, 2)
    pairs = load_pairs(run, source)
    assert sorted((p.key, p.responses, p.origins) for p in pairs) == sorted((p.key, p.responses, p.origins)
                                                                            for p in whole)
    assert {p.file for p in pairs} == {f"{source}/part-00000-of-00002.jsonl", f"{source}/part-00001-of-00002.jsonl"}
    assert {p.file for p in whole} == {f"{source}.jsonl"}
    # A label names the part and line it came from; agreement reads the labels as from an unsharded run.
    session = LabelSession(pairs, tmp_path / "labels.jsonl", source)
    session.record(pairs[0].key, "1")
    [label] = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert label["source"]["file"] == pairs[0].file and label["source"]["line"] == pairs[0].line
    assert read_human_pairs(str(tmp_path / "labels.jsonl"))[0].id == pairs[0].id


def test_a_sharded_run_folder_with_a_part_missing_is_refused_naming_it(tmp_path, capsys):
    from cai.cli import main

    run = make_run_folder(tmp_path)
    shard_run_folder(run, "preferences", 2)
    (run / "preferences" / "part-00001-of-00002.jsonl").unlink()
    assert main(["label", str(run)]) == 1
    err = capsys.readouterr().err
    assert "part-00001-of-00002.jsonl" in err and "missing" in err and "Traceback" not in err


def test_another_page_cannot_show_the_label_page_in_a_frame(browser, label_run, tmp_path):
    """Clickjacking: a page framing the labelling UI would have clicks through it write labels."""
    out = tmp_path / "labels.jsonl"
    server = start(label_run, out)

    def shows_the_label_ui(frame) -> bool:
        try:
            return frame.query_selector("#pick-1") is not None
        except Exception:  # noqa: BLE001 - a frame the browser blocked or tore down shows nothing
            return False

    try:
        page = browser.page
        page.set_content(f'<p>Win a prize: click below!</p><iframe src="{server.url}" width="900" height="600"></iframe>')
        page.wait_for_timeout(1500)
        framed = [frame for frame in page.frames if frame != page.main_frame]
        assert framed, "the page made no frame"
        browser.screenshot("label-framed")
        assert not any(shows_the_label_ui(frame) for frame in framed)
        page.goto(server.url)  # opened directly, it works
        page.wait_for_selector("#pick-1")
    finally:
        server.close()
    assert not out.exists()
