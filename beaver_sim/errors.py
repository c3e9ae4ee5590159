"""Errors shared by every layer: storage/ raises them, core/ and the CLI report them. Kept below both
so that storage/ never imports core/."""

from __future__ import annotations


class BeaverError(Exception):
    """Base of every error beaver_sim reports to a user as one line."""


class CorruptLog(BeaverError):
    """The WAL or a snapshot cannot be trusted; the message names file, offset and seq."""
