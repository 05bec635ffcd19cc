"""URLs as they may be recorded or shown: without a user, a password, a query or a fragment.

A base URL may carry credentials (``http://user:password@host/v1``) or a key in its query
(``?api-key=...``); neither may reach a manifest, an errors file, a report, a row or the terminal.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# A URL inside free text (an error message, a recipe value): a scheme, then everything up to a space or quote.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str | None) -> str | None:
    """``url`` with its user, password, query and fragment removed (``None`` stays ``None``)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # not parseable as a URL (an unbalanced IPv6 bracket): keep only its scheme
        return url.split("://", 1)[0] + "://<redacted>" if "://" in url else "<redacted>"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (see ``redact_url``)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)) or "", text)


def redact_values(value: Any) -> Any:
    """A copy of a JSON-like value with every URL in its strings redacted (for manifests and reports)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_values(item) for item in value]
    return value
