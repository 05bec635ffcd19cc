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

The pairs and the labels file are ``cai/label_session.py``'s; the page, and how its server is guarded,
``cai/label_server.py``'s.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from core.config import check_choice
from core.errors import UserError
from core.store import check_outputs, check_own_output, exclusive_output

from .label_server import LabelServer
from .label_session import LabelSession, load_pairs, ties_path

SOURCES = ("preferences", "revisions")
ORDERS = ("file", "doubt")


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
