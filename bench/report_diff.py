"""The report's word diff on repetitive and long texts: the LCS diff (rapidfuzz) against difflib's matcher.

    python -m bench.report_diff            # prints one line per case; difflib only where it ends in seconds

Texts: "ha " x N against "no " x N (no word shared: difflib matches the spaces one by one), "x y " x N
against "x z " x N (every other word shared: many short matches, difflib's worst case) and a 5,000-word
shifted cycle of 101 words.  Times are one run each (time.perf_counter), on the machine named in bench/README.md.
"""

from __future__ import annotations

import difflib
import time

from cai.report import _TOKEN, word_diff


def _difflib(before: str, after: str) -> None:
    difflib.SequenceMatcher(None, _TOKEN.findall(before), _TOKEN.findall(after), autojunk=False).get_opcodes()


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def main() -> None:
    cycle = " ".join(f"w{i % 101}" for i in range(5000)), " ".join(f"w{(100 - i) % 101}" for i in range(5000))
    cases = [("ha/no x 300", "ha " * 300, "no " * 300, True), ("ha/no x 1,000", "ha " * 1000, "no " * 1000, False),
             ("x y/x z x 500", "x y " * 250, "x z " * 250, True), ("x y/x z x 5,000", "x y " * 2500, "x z " * 2500, False),
             ("shifted cycle, 5,000 words", *cycle, False)]
    for name, before, after, with_difflib in cases:
        ours = _timed(word_diff, before, after)
        theirs = f"{_timed(_difflib, before, after):.2f} s" if with_difflib else "not run (minutes)"
        print(f"{name:28} word_diff {ours * 1000:7.1f} ms   difflib {theirs}")


if __name__ == "__main__":
    main()
