"""``cai label RUN_DIR``: label pairs by hand in the browser, to measure the judge on your own data.

A small HTTP server on 127.0.0.1 (the standard library's ``http.server``) shows one prompt
and two responses at a time, in an order drawn per pair from ``--seed`` (so the side gives
nothing away), and records the pick: ``1``/``2`` for the better response, ``t`` for a tie,
``s`` to skip for now.  Each label is appended and fsynced to ``--out`` at once, as a row that
``cai judge agreement --pairs OUT`` reads (``{"prompt", "chosen", "rejected"}`` and the pair's
``id``); ties go to ``OUT.ties.jsonl`` beside it, since a tie has no chosen response.  A pair
already in either file is not asked again, so a session stops and resumes at will.
``--order doubt`` asks the judge's most doubtful pairs first (``judge_doubt``), and every row
records how it was picked (``sampling``), so the agreement measured on them says so.

The server answers only requests addressed to 127.0.0.1/localhost on its port (no DNS
rebinding) and a label only with the page's per-session token (no cross-site posts); no
other site may frame its page (``X-Frame-Options``, CSP ``frame-ancestors``: no clickjacking).
Every answer, errors included, is JSON with a status: a request body is at most ``MAX_BODY``
bytes of JSON (too deep a nesting is a 400), and nothing a client sends prints a traceback.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from core.config import check_choice
from core.errors import UserError
from core.hashing import stable_hash
from core.log import get_logger
from core.store import JsonlStore, check_outputs, check_own_output, exclusive_output, parse_json_line

SOURCES = ("preferences", "revisions")
ORDERS = ("file", "doubt")
CHOICES = ("1", "2", "tie", "skip")
HOST = "127.0.0.1"
MAX_BODY = 4096
#: Sent with every answer: no other page may show this one in a frame (a click through it would label).
NO_FRAMING = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}
LOG = get_logger(__name__)


@dataclass
class LabelConfig:
    """Which pairs to label, where the labels go, and where the page is served."""

    run_dir: str = field(default="", metadata={"help": "The run folder (what `cai run` wrote): RUN_DIR, or --run-dir."})
    source: str = field(
        default="preferences",
        metadata={"help": "Pairs to label: 'preferences' (the judge's chosen and rejected, from preferences.jsonl) or "
                          "'revisions' (each row's draft and final revision, from revisions.jsonl)."},
    )
    out: str | None = field(
        default=None,
        metadata={"help": "Labels file (JSON Lines that `cai judge agreement --pairs` reads); ties go to "
                          "OUT.ties.jsonl beside it. Default: RUN_DIR/human_labels.jsonl."},
    )
    port: int = field(default=8765, metadata={"help": "Port on 127.0.0.1 to serve the page on (0: any free port)."})
    seed: int = field(default=0, metadata={"help": "Seed of the order in which each pair's two responses are shown."})
    order: str = field(
        default="file",
        metadata={"help": "Which pairs come first: 'file' (as they are in the file: the agreement measured on them "
                          "estimates the judge on all its pairs) or 'doubt' (the judge's most doubtful first: orders "
                          "disagreeing, several judges disagreeing, then the lowest margin; labels go where the judge "
                          "is weakest, and each row records how it was picked, so `cai judge agreement` says the "
                          "figure is of doubtful pairs)."},
    )

    def __post_init__(self):
        check_choice("--source", self.source, SOURCES)
        check_choice("--order", self.order, ORDERS)
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port {self.port!r} must be between 0 and 65535")

    def out_path(self) -> Path:
        return Path(self.out) if self.out else Path(self.run_dir) / "human_labels.jsonl"


def ties_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.ties{out.suffix or '.jsonl'}")


# -- pairs -----------------------------------------------------------------------------
@dataclass
class LabelPair:
    """One pair to label: the responses in the order shown, and where each came from."""

    key: str  # the prompt and both texts, order-free: the resume key
    id: str
    line: int
    prompt: list[dict]
    responses: tuple[str, str]
    origins: tuple[str, str]  # "chosen"/"rejected" (the judge's) or "draft"/"revision"
    file: str = ""  # the file of the run folder the pair was read from (a part, for a sharded stage)
    doubt: float | None = None  # how doubtful the judge was (``judge_doubt``); None: the judge made no pair of it
    doubt_reasons: tuple[str, ...] = ()

    def as_shown(self) -> dict:
        return {"key": self.key, "id": self.id, "prompt": self.prompt, "responses": list(self.responses)}


def _messages(value) -> list[dict] | None:
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
            for m in value) and value[-1]["role"] == "user":
        return [{"role": m["role"], "content": m["content"]} for m in value]
    return None


def _last_text(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    return None


def make_pair(row_id: str, line: int, prompt: list[dict], first: tuple[str, str], second: tuple[str, str],
              seed: int, file: str = "") -> LabelPair:
    """A pair with its two (text, origin) responses in the order drawn for it from ``seed``."""
    key = stable_hash([prompt, sorted([first[0], second[0]])])
    if int(stable_hash([seed, key]), 16) % 2:
        first, second = second, first
    return LabelPair(key, row_id, line, prompt, (first[0], second[0]), (first[1], second[1]), file)


def judge_doubt(pair_row: dict) -> tuple[float, tuple[str, ...]]:
    """How doubtful the judge was of one of its pairs (``cai judge``'s row), in [0, 3], and why: one point when its
    winner changes with the order of the options, one when several judges disagree, and 1 - the margin."""
    reasons, doubt = [], 0.0
    if pair_row.get("orders_agree") is False:
        doubt += 1
        reasons.append("order-inconsistent")
    sides = set()
    scores = pair_row.get("principle_scores")
    for score in scores.values() if isinstance(scores, dict) else ():  # a damaged row's scores give no doubt
        judges = score.get("judges") if isinstance(score, dict) else None
        for p in judges.values() if isinstance(judges, dict) else ():
            if isinstance(p, (int, float)):
                sides.add((p > 0.5) - (p < 0.5))
    if len(sides) > 1:
        doubt += 1
        reasons.append("judges disagree")
    margin = pair_row.get("margin")
    if isinstance(margin, (int, float)) and 0 <= margin <= 1:
        doubt += 1 - margin
        reasons.append(f"margin {margin:.2f}")
    return round(doubt, 6), tuple(reasons)


def _judge_rows(run_dir: Path) -> dict[str, dict]:
    """The judge's pairs of a run folder by row id (for ordering revisions by the judge's doubt)."""
    from core.shards import data_files, stage_output
    from core.store import read_json_objects

    path = stage_output(run_dir, "preferences")
    if not path.exists():
        raise UserError(f"{path}: not found; --order doubt needs the judge's pairs: run `cai judge` (or `cai run`) "
                        "first, or label in --order file")
    return {str(row.get("id")): row for file in data_files(path, "RUN_DIR")
            for _, row in read_json_objects(file, "preferences (run folder)", "RUN_DIR")}


def load_pairs(run_dir: str | Path, source: str = "preferences", seed: int = 0, order: str = "file") -> list[LabelPair]:
    """The pairs of a run folder that can be labelled (two different, non-empty responses to a user turn), in
    ``order``: the file's, or the judge's most doubtful first (``judge_doubt``; pairs the judge made none of
    come last, in file order)."""
    from core.shards import data_files, stage_output
    from core.store import read_json_objects

    path = stage_output(run_dir, source)  # RUN_DIR/NAME.jsonl, or the folder of a sharded stage's parts
    if not path.exists():
        other = "revisions" if source == "preferences" else "preferences"
        raise UserError(f"{path}: not found; run `cai run` (or `cai judge`) first, or label --source {other}")
    pairs, seen = [], set()
    for file in data_files(path, "RUN_DIR"):
        for line, row in read_json_objects(file, f"{source} (run folder)", "RUN_DIR"):
            pair = _pair_of(row, line, source, seed, file.relative_to(Path(run_dir)).as_posix())
            if pair is not None and pair.key not in seen:
                seen.add(pair.key)
                pairs.append(pair)
                if source == "preferences":
                    pair.doubt, pair.doubt_reasons = judge_doubt(row)
    if not pairs:
        raise UserError(f"{path}: no pair to label (every row lacks two different responses)")
    if order == "doubt":
        if source == "revisions":
            judged = _judge_rows(Path(run_dir))
            for pair in pairs:
                if pair.id in judged:
                    pair.doubt, pair.doubt_reasons = judge_doubt(judged[pair.id])
        pairs.sort(key=lambda pair: -1.0 if pair.doubt is None else -pair.doubt)  # stable: file order breaks ties
    return pairs


def _pair_of(row: dict, line: int, source: str, seed: int, file: str) -> LabelPair | None:
    """The pair of one row, or None when it has nothing to compare."""
    prompt = _messages(row.get("prompt"))
    if source == "preferences":
        texts = (_last_text(row.get("chosen")), "chosen"), (_last_text(row.get("rejected")), "rejected")
    else:
        texts = (row.get("initial_response"), "draft"), (row.get("final_response"), "revision")
    if prompt is None or not all(isinstance(t, str) and t.strip() for t, _ in texts) or texts[0][0] == texts[1][0]:
        return None  # nothing to compare: a missing or empty response, or the same text twice
    return make_pair(str(row.get("id", line)), line, prompt, texts[0], texts[1], seed, file)


# -- the session ---------------------------------------------------------------------------
class LabelSession:
    """The pairs, which are labelled (from the files, so a restart resumes), and the appends."""

    def __init__(self, pairs: list[LabelPair], out: str | Path, source: str = "preferences", order: str = "file"):
        self.pairs = pairs
        self.by_key = {pair.key: pair for pair in pairs}
        self.rank = {pair.key: rank for rank, pair in enumerate(pairs)}
        self.source = source
        self.order = order
        self.labels, self.ties = JsonlStore(out), JsonlStore(ties_path(out))
        self.done: set[str] = set()
        for store in (self.labels, self.ties):
            keys = [row.get("key") for row in store.load()]
            self.done.update(key for key in keys if isinstance(key, str))
            unkeyed = sum(1 for key in keys if not isinstance(key, str))
            if unkeyed:
                LOG.warning("%s: %d row(s) without a text 'key' (not written by `cai label`); their pairs are "
                            "asked again", store.path, unkeyed)
        self.already_done = sum(1 for pair in pairs if pair.key in self.done)
        self.skipped: set[str] = set()
        self.lock = threading.Lock()

    def next_pair(self) -> LabelPair | None:
        for pair in self.pairs:
            if pair.key not in self.done and pair.key not in self.skipped:
                return pair
        return None

    def state(self) -> dict:
        with self.lock:
            pair = self.next_pair()
            done = sum(1 for p in self.pairs if p.key in self.done)
            return {"total": len(self.pairs), "done": done, "skipped": len(self.skipped),
                    "pair": pair.as_shown() if pair else None}

    def record(self, key: str, choice: str) -> dict:
        """Save one pick (``1``, ``2``, ``tie``) or skip the pair until `cai label` runs again; returns the state."""
        if choice not in CHOICES:
            raise ValueError(f"choice {choice!r} must be one of {', '.join(CHOICES)}")
        pair = self.by_key.get(key)
        if pair is None:
            raise ValueError("unknown pair")
        with self.lock:
            if choice == "skip":
                self.skipped.add(key)
            elif key not in self.done:
                row = {"id": pair.id, "key": key, "prompt": pair.prompt, "labelled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "sampling": {"order": self.order, "rank": self.rank[key], "of": len(self.pairs),
                                    "doubt": pair.doubt, "reasons": list(pair.doubt_reasons)}}
                if choice == "tie":
                    self.ties.append([{**row, "responses": list(pair.responses), "label": "tie",
                                       "source": {"file": pair.file or self._file(), "line": pair.line, "origins": list(pair.origins)}}])
                else:
                    better = 0 if choice == "1" else 1
                    self.labels.append([{**row,
                                         "chosen": [{"role": "assistant", "content": pair.responses[better]}],
                                         "rejected": [{"role": "assistant", "content": pair.responses[1 - better]}],
                                         "label": "human",
                                         "source": {"file": pair.file or self._file(), "line": pair.line,
                                                    "chosen": pair.origins[better], "rejected": pair.origins[1 - better]}}])
                self.done.add(key)
        return self.state()

    def _file(self) -> str:
        return "preferences.jsonl" if self.source == "preferences" else "revisions.jsonl"


# -- the server ---------------------------------------------------------------------------
class LabelServer:
    """The labelling page and its two calls, on 127.0.0.1 only."""

    def __init__(self, session: LabelSession, port: int = 0, title: str = "cai label"):
        from .report import render_template

        self.session = session
        self.token = secrets.token_urlsafe(24)
        handler = type("Handler", (_Handler,), {"owner": self})
        try:
            self.httpd = ThreadingHTTPServer((HOST, port), handler)
        except OSError as exc:
            raise UserError(f"cannot serve on {HOST}:{port} ({exc.strerror}); pass another --port (0: any free one)") from None
        self.port = self.httpd.server_address[1]
        self.page = render_template("label.html.j2", title=title, token=self.token, out=str(session.labels.path),
                                    ties=str(session.ties.path)).encode("utf-8")
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def allowed_hosts(self) -> set[str]:
        return {f"{HOST}:{self.port}", f"localhost:{self.port}"}

    def start(self) -> str:
        """Serve in a background thread (tests); returns the page's URL."""
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self.url

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: LabelServer
    server_version = "cai-label"

    def log_message(self, format, *args):  # the terminal shows progress, not access logs
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in NO_FRAMING.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code, message=None, explain=None):
        """The standard library's own refusals (a malformed request line, an unknown method) as JSON too."""
        self.close_connection = True
        self._json(code, {"error": message or HTTPStatus(code).phrase})

    def _json(self, status: int, value: dict) -> None:
        self._send(status, json.dumps(value, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _host_ok(self) -> bool:
        if self.headers.get("Host") in self.owner.allowed_hosts():
            return True
        self._json(HTTPStatus.FORBIDDEN, {"error": "wrong host"})
        return False

    def _guarded(self, handle) -> None:
        """Run ``handle``; an unexpected error is a 500 with a JSON message (and a log line), never a traceback."""
        try:
            handle()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - the answer says what failed; the server goes on
            LOG.warning("cai label: %s %s failed: %s: %s", self.command, self.path[:80], type(exc).__name__, exc)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error ({type(exc).__name__})"})

    def do_GET(self):
        self._guarded(self._get)

    def do_POST(self):
        self._guarded(self._post)

    def _get(self):
        if not self._host_ok():
            return
        if self.path == "/":
            self._send(HTTPStatus.OK, self.owner.page, "text/html; charset=utf-8")
        elif self.path == "/api/state":
            self._json(HTTPStatus.OK, self.owner.session.state())
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def _post(self):
        if not self._host_ok():
            return
        if self.path != "/api/label":
            return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        if not secrets.compare_digest(self.headers.get("X-Label-Token", ""), self.owner.token):
            return self._json(HTTPStatus.FORBIDDEN, {"error": "missing or wrong token"})
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) == 0:
            self.close_connection = True  # the body, if any, is not read
            return self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "send a JSON body with its Content-Length"})
        if int(length) > MAX_BODY:
            self.close_connection = True
            return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"the body is larger than {MAX_BODY} bytes"})
        try:
            body = parse_json_line(self.rfile.read(int(length)))  # too deep a nesting is a ValueError too
            if not isinstance(body, dict) or not isinstance(body.get("key"), str) \
                    or not isinstance(body.get("choice"), str):
                raise ValueError('the body must be {"key": text, "choice": text}')
            state = self.owner.session.record(body["key"], body["choice"])
        except ValueError as exc:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        self._json(HTTPStatus.OK, state)


# -- the command ------------------------------------------------------------------------------
def label_command(argv: list[str]) -> int:
    """Entry point of ``cai label RUN_DIR [--source preferences|revisions] [--port P] [--out FILE]``."""
    from core.config import parse_config

    from .report import positional_run_dir

    config = parse_config(LabelConfig, positional_run_dir(argv), prog="cai label")
    if not config.run_dir:
        raise UserError("cai label: name the run folder: cai label RUN_DIR (the folder `cai run` wrote)")
    if not Path(config.run_dir).is_dir():
        raise UserError(f"{config.run_dir}: no such run folder; pass the folder `cai run` wrote")
    out = config.out_path()
    check_labels_out(out, config.run_dir, config.source)
    # One server writes a labels file at a time: a second on the same run folder stops here (two would
    # store the same pair twice, with opposite labels).
    with exclusive_output(out):
        return _serve(config, out)


def check_labels_out(out: Path, run_dir: str | Path, source: str) -> None:
    """Refuse labels files that are the pairs' source, another stage's file (the run's rows, pairs, SFT rows, a
    report) or anything but labels."""
    from core.shards import stage_output

    outputs = {"--out": out, "its ties file": ties_path(out)}
    check_outputs("label", outputs, {f"the run's {source}": stage_output(run_dir, source)})
    for flag, path in outputs.items():
        check_own_output(path, "label", lambda row: "key" in row and "labelled_at" in row, flag)


def _serve(config: LabelConfig, out: Path) -> int:
    session = LabelSession(load_pairs(config.run_dir, config.source, config.seed, config.order), out, config.source,
                           config.order)
    server = LabelServer(session, config.port, title=f"cai label: {config.run_dir}")
    state = session.state()
    print(f"labelling {state['total']} pairs from {config.run_dir} ({session.already_done} already labelled) at "
          f"{server.url}\nkeys: 1 / 2 pick the better response, t tie, s skip; labels go to {out} "
          f"(ties to {ties_path(out)}). Ctrl+C stops; run it again to resume.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    done = session.state()["done"]
    print(f"\n{done} of {len(session.pairs)} pairs labelled in {out}. Measure the judge on them:\n"
          f"  cai judge agreement --pairs {out}"
          + (f" --ties {ties_path(out)}" if ties_path(out).exists() else "") + f" --out {Path(config.run_dir) / 'agreement.json'}",
          file=sys.stderr)
    return 0
