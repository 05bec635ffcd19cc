"""The ``cai`` command: wires the packages' commands together and nothing else.

Data flows constitution -> generation -> judging -> training; each command lives
in its package's ``cli`` module and is imported only when called.
"""

from __future__ import annotations

import os
import pkgutil
import sys
from dataclasses import dataclass

from core.registry import Registry


@dataclass(frozen=True)
class Command:
    """One ``cai`` command: ``target`` is ``"module:function"`` (called with the rest of argv, returns the exit
    status; imported only when the command runs), ``help`` its line in ``cai --help``."""

    target: str
    help: str

    def run(self, argv: list[str]) -> int:
        return int(pkgutil.resolve_name(self.target)(argv) or 0)


COMMANDS: Registry[Command] = Registry("command", {
    "validate": Command("constitution.cli:validate", "Check a constitution file and list every problem."),
    "constitution import": Command("constitution.cli:import_constitution", "Import a published constitution."),
    "generate": Command("generation.cli:generate", "Draft, critique and revise answers to prompts."),
    "judge": Command("judging.cli:judge", "Judge responses into preference pairs."),
    "judge agreement": Command("judging.cli:agreement", "Score the judge against human-labelled pairs."),
    "train": Command("training.cli:train", "Train with TRL (`cai train --help` lists the methods)."),
    "eval": Command("evaluation.cli:evaluate", "Win rate of a trained model against its base."),
    "run": Command("cai.pipeline:run_command", "Run generate, judge, train and eval from a recipe."),
    "status": Command("cai.status:status_command", "Progress of an output: a file, or a folder's shard parts summed."),
    "report": Command("cai.report:report_command", "Write a run folder's HTML report: plots and a row browser."),
    "export": Command("cai.export:export_command",
                      "Export a run folder as a Hub-ready dataset: Parquet configs and a card."),
    "label": Command("cai.label:label_command",
                     "Label pairs by hand in the browser (127.0.0.1), for `cai judge agreement`."),
})


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: cai COMMAND [options]   (cai COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def _find_command(argv: list[str]) -> tuple[str, list[str]]:
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in COMMANDS:
            return name, argv[words:]
    from core.config import did_you_mean

    commands = [f"cai {name}" for name in COMMANDS]
    hint = did_you_mean("cai " + " ".join(argv[:2]), commands) or did_you_mean(f"cai {argv[0]}", commands)
    raise SystemExit(f"cai: unknown command {argv[0]!r}{hint}\n\n{_usage()}")


#: multiprocessing's resource tracker starts with this interpreter's -W options; when a command ends it cleans up
#: what an engine that failed to start left in shared memory, and its warning about that would follow the command's
#: last line (its one error line).
TRACKER_QUIET = "ignore::UserWarning:multiprocessing.resource_tracker"


def main(argv: list[str] | None = None) -> int:
    if TRACKER_QUIET not in sys.warnoptions:
        sys.warnoptions.append(TRACKER_QUIET)
    try:
        try:
            return _dispatch(argv)
        finally:
            # A closed stdout (``cai --help | head -1``) shows here, where it can be handled, and not as a
            # traceback when the interpreter flushes stdout on exit; this also covers argparse's --help exit.
            sys.stdout.flush()
    except BrokenPipeError:
        if not _stdout_is_closed():
            raise  # a broken connection elsewhere is not the reader of our output going away
        # What Python's documentation advises: point stdout at devnull so the exit flush is silent too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the status of a command the shell's pipe closed


def _stdout_is_closed() -> bool:
    """True when nothing reads our stdout any more (a pipe whose reader exited reports an error to poll)."""
    import select

    if not hasattr(select, "poll"):
        return True  # no way to ask (Windows): take Python's documented view that it was stdout
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
    except (OSError, ValueError):  # stdout is not a file: the broken pipe was not ours
        return False
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _dispatch(argv: list[str] | None) -> int:
    from_command_line = argv is None  # the `cai` command itself, which may end the process; not a caller's call
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    # Nothing here may reach a model hub unless the user allows it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from core.log import configure as configure_logging

    configure_logging()
    name, rest = _find_command(argv)
    command = COMMANDS.get(name)
    from core.errors import UserError
    from core.redact import redact_text
    from core.signals import children, ignoring_interrupts, install_sigterm_handler, reap_children, \
        restore_sigterm_handler

    before = children()  # processes the caller already had (a test's server) are not ours to end
    previous_handler = install_sigterm_handler(keep=before)
    try:
        return command.run(rest)
    except UserError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (core.signals.Terminated)
        return _stopped(stop, before, exit_now=from_command_line)
    except BrokenPipeError:
        raise  # our stdout closed by its reader: main() ends quietly
    except OSError as exc:
        # A last resort: the stages turn the failures they expect into UserErrors where they happen.
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{redact_text(exc.strerror or str(exc))}; check the path, its permissions and the free "
              "space, then run the same command again", file=sys.stderr)
        return 1
    finally:
        with ignoring_interrupts():
            reap_children(before)
        restore_sigterm_handler(previous_handler)


def _stopped(stop: KeyboardInterrupt, before: set[int], exit_now: bool) -> int:
    """Say once that the command stopped and end the processes it started; a second Ctrl-C or SIGTERM now
    changes nothing.  The exit status is the shell's for the signal: 130 (Ctrl-C) or 143 (SIGTERM)."""
    from core.signals import TERMINATED_EXIT, Terminated, ignoring_interrupts, reap_children

    with ignoring_interrupts():
        if isinstance(stop, Terminated):
            code, what = TERMINATED_EXIT, "terminated (SIGTERM)"
        else:
            code, what = 130, "interrupted"
        print(f"{what}: finished work is saved; run the same command again to resume.", file=sys.stderr)
        reap_children(before)
        if exit_now:
            # End now: an engine stopped during its start-up can leave threads that would hold the
            # interpreter's exit for minutes; everything written is already on disk (fsynced).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
