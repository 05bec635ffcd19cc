"""Text cut to fit a line: messages, progress lines, plot labels and flag reasons quote with it."""

from __future__ import annotations

import textwrap


def shorten(text: str, width: int, placeholder: str = "...") -> str:
    """``text`` on one line (whitespace collapsed), at most ``width`` characters: cut at a word boundary
    (``textwrap.shorten``), or inside the first word when it alone is longer (a URL, text without spaces)."""
    one_line = " ".join(str(text).split())
    short = textwrap.shorten(one_line, width, placeholder=placeholder)
    if short == placeholder.lstrip() and one_line:
        return one_line[: width - len(placeholder)] + placeholder
    return short
