"""Parsing action text into values: pure functions shared by the built-in environments."""

from __future__ import annotations

import re

# ASCII digits only: str.isdigit() and int() also accept other scripts' digits ('٣', '３'), which
# would make the accepted format depend on Unicode tables instead of what the prompt shows.
_INTEGER = re.compile(r"[+-]?[0-9]+")

# Far above any answer the built-ins ask for, far below Python's int() limit (4300 digits), so a
# model that emits a wall of digits gets a clear "too long" instead of an exception.
MAX_INTEGER_DIGITS = 30


def parse_integer(text: str) -> int | None:
    """The integer an action states, or None when the action is not exactly one integer.

    Accepted: optional surrounding whitespace (anything `str.strip()` removes), an optional `+` or `-`
    sign, 1 to 30 ASCII digits (leading zeros allowed: `007` is 7), and at most one trailing period
    (`42.`). Everything else is rejected: empty text, words (`the answer is 42`), separators (`1,000`,
    `1 000`), decimals (`42.0`), expressions (`6*7`), non-ASCII digits, and two integers.
    """
    body = text.strip()
    if body.endswith("."):
        body = body[:-1].rstrip()
    if not _INTEGER.fullmatch(body):
        return None
    if len(body.lstrip("+-")) > MAX_INTEGER_DIGITS:
        return None
    return int(body)


def excerpt(text: str, limit: int = 40) -> str:
    """A short, repr-quoted view of an action for feedback messages (actions can be huge)."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)
