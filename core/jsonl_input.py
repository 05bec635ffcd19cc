"""Reading JSON Lines input files: streamed, line-limited, every bad line named with its file and number.

A device (``/dev/zero``), a pipe read twice or a runaway line is refused before memory runs out.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from core.errors import UserError
from core.shards import Shard, data_files

#: The longest line any JSON Lines input may have. A longer one (``/dev/zero``, a runaway file) is
#: refused instead of being read until memory runs out.
MAX_LINE_BYTES = 64 * 2**20


def iter_lines(path: str | Path, what: str, flag: str) -> Iterator[tuple[int, bytes]]:
    """The lines of an input file with their numbers (newline removed), streamed; each at most MAX_LINE_BYTES."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what} file; pass {flag} with an existing JSON Lines file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; pass {flag} a JSON Lines file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} file: {exc.strerror or exc}") from None
    with handle:
        number = 0
        while True:
            try:
                line = handle.readline(MAX_LINE_BYTES + 1)
            except IsADirectoryError:
                raise UserError(f"{path}: is a folder; pass {flag} a JSON Lines file") from None
            except OSError as exc:
                raise UserError(f"{path}: cannot read the {what} file: {exc.strerror or exc}") from None
            if not line:
                return
            number += 1
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                raise UserError(
                    f"{path}:{number}: a line longer than {MAX_LINE_BYTES // 2**20} MiB (is {flag} a JSON Lines "
                    "file? a device such as /dev/zero is not); split it or pass the right file"
                )
            yield number, line.rstrip(b"\n")


def require_regular_file(path: str | Path, what: str, flag: str) -> None:
    """Refuse a pipe, a device or process substitution where the file is read more than once."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what} file; pass {flag} with an existing JSON Lines file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} file: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path}: is a folder; pass {flag} a JSON Lines file")
    if not stat.S_ISREG(mode):
        raise UserError(
            f"{path}: not a regular file (a pipe, a device or a process substitution can be read only once, and "
            f"{what} files are read twice); save it to a file first and pass {flag} that file"
        )


def read_whole_file(path: str | Path, what: str, limit: int) -> bytes:
    """A small input file's bytes (a config, a recipe, a constitution), read only when it is a regular file of at
    most ``limit`` bytes: a device (``/dev/zero``), a pipe or a runaway file is refused before any read.

    Raises OSError (a missing file, a folder, no permission) for the caller to word, and UserError for the rest."""
    path = Path(path)
    info = path.stat()
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: not a regular file (a device such as /dev/zero, or a pipe); save the {what} to "
                        "a file and pass that file")
    if info.st_size > limit:
        raise UserError(f"{path}: {info.st_size / 2**20:.1f} MiB is larger than a {what} can be "
                        f"({limit / 2**20:g} MiB); is it the right file?")
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:  # grew since the stat
        raise UserError(f"{path}: larger than a {what} can be ({limit / 2**20:g} MiB); is it the right file?")
    return data


def parse_json_line(line: bytes | str) -> object:
    """One JSON value; ValueError (with a message for the user) when it is not JSON or is nested too deeply."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise ValueError("not valid UTF-8; save the file as UTF-8") from None
    except RecursionError:
        raise ValueError("nested too deeply (more than Python's recursion limit); flatten it") from None
    if (_SURROGATE_ESCAPE_BYTES if isinstance(line, bytes) else _SURROGATE_ESCAPE).search(line):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            # A JSON escape like \\ud800 alone decodes to half a surrogate pair: not text any output can hold.
            raise ValueError(f"contains an unpaired surrogate ({exc.object[exc.start]!r}), which is not valid "
                             "Unicode; fix the escape") from None
    return value


#: A JSON escape of a surrogate code point (half of a pair, or alone), the only way a lone one gets into a str.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


def count_lines(path: str | Path) -> int:
    """Complete lines of a file, streamed (a torn last line, still being written, is not a row yet); 0 when
    there is no file."""
    path = Path(path)
    if not path.is_file():
        return 0
    count = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def read_json_objects(path: str | Path | None, what: str, flag: str, example: str = "") -> list[tuple[int, dict]]:
    """``(line number, row)`` for every non-empty line of a JSON Lines input file.

    One UserError lists every bad line (invalid JSON, not an object) before any work starts.
    """
    return [(number, row) for _, number, row in read_json_rows(path, what, flag, example)]


def read_json_rows(path: str | Path | None, what: str, flag: str, example: str = "",
                   shard: Shard | None = None) -> list[tuple[Path, int, dict]]:
    """``(file, line number, row)`` for every non-empty line of a JSON Lines file, or of a folder of shard parts
    (``core.shards.data_files``: all of them, or the one of ``shard``), in order.

    One UserError lists every bad line (invalid JSON, not an object) before any work starts.
    """
    if not path:
        raise UserError(f"{flag} is required: the {what} file (JSON Lines)")
    path = Path(path)
    rows, problems = [], []
    for source in data_files(path, flag, shard):
        for number, line in iter_lines(source, what, flag):
            if not line.strip():
                continue
            try:
                row = parse_json_line(line)
            except ValueError as exc:
                problems.append(f"{source}:{number}: {exc}")
                continue
            if not isinstance(row, dict):
                problems.append(f"{source}:{number}: expected a JSON object, got {type(row).__name__}")
                continue
            rows.append((source, number, row))
    if problems:
        raise UserError("\n".join(problems + [f"{len(problems)} bad line(s) in {path}; fix them (nothing was done)"]))
    if not rows:
        raise UserError(f"{path}: no rows" + (f"; the {what} file needs JSON lines like {example}" if example else ""))
    return rows


def read_json_object(path: str | Path, limit: int = MAX_LINE_BYTES) -> dict | None:
    """A JSON object file a command wrote (a manifest, a report, a stamp), or None when it is missing, unreadable,
    larger than ``limit``, nested too deeply or not an object: such a file is redone or ignored, never fatal."""
    try:
        value = parse_json_line(read_whole_file(path, "JSON file", limit))
    except (OSError, ValueError, UserError):
        return None
    return value if isinstance(value, dict) else None
