"""Errors shared by every layer: storage/ raises them, core/ and the CLI report them. Kept below both
so that storage/ never imports core/."""

from __future__ import annotations


class BeaverError(Exception):
    """Base of every error beaver_sim reports to a user as one line."""


class CorruptLog(BeaverError):
    """The WAL or a snapshot cannot be trusted; the message names file, offset and seq."""


def brief(value: object, limit: int = 60) -> str:
    """`repr(value)` cut to about `limit` characters, saying how long it was: an error that names a
    1 MB job id stays one short line."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str) else len(text)
    return f"{text[:limit]}...[{size} characters]"
