"""What the queue accepts: a job is checked whole at the door (`beaver enqueue` before it touches the
data directory, `Controller.enqueue` before it logs anything), so an accepted job can always run.

- Sizes are bytes of JSON, as the log stores them: a job is refused if any record it may ever have
  (its ENQUEUE, a DISPATCH, a FAIL or DEAD with the longest reason: `records.record_bound`) would not
  fit `max_record_bytes`.
- A payload is stored exactly or refused: nested at most MAX_DEPTH deep (serde_json's default limit;
  orjson itself writes no more than 254 levels), numbers that JSON and orjson keep as they are
  (integers within 64 bits, finite floats; a literal such as `1e-400` that would become 0.0, or a
  30-digit integer that would become a float, is refused), string keys, valid Unicode.
- Errors name the job (its id cut short by `brief`) and the problem, on one line.

`loads_exact` parses a job file or a request so that the numbers orjson would change are seen;
`check_payload` is the one payload check, for every path a job comes in by."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from beaver_sim.core import records as R
from beaver_sim.errors import BeaverError, brief
from beaver_sim.storage.wal import RecordTooLarge

MAX_DEPTH = 128  # containers nested in a payload, the payload object itself counted
_INT_RANGE = range(-(2**63), 2**64)  # what orjson reads and writes as an integer
_RISKY = re.compile(rb"\d{19}|[eE][-+]?\d{3}")  # a number orjson may change: long, or a 3-digit exponent
_NONZERO = re.compile(r"[1-9]")


class PayloadRefused(BeaverError):
    """A payload or job id that cannot be stored exactly, or whose records would not fit the log."""


class Inexact:
    """A number in a parsed document that orjson would not keep as written (see `loads_exact`)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def loads_exact(data: bytes | str) -> Any:
    """`orjson.loads(data)`, except that a number it would change or refuse (an integer beyond 64
    bits, a float literal that overflows or underflows to 0.0) is an `Inexact` in the result, for
    `check_payload` to refuse naming its job. Only a document with a long digit run or a 3-digit
    exponent somewhere is parsed a second time, by the standard library, to find them. ValueError
    if it is not JSON."""
    raw = data.encode() if isinstance(data, str) else data
    risky = _RISKY.search(raw) is not None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        if not risky:  # else it may be a number orjson refuses (1e400): the second parse names the job
            raise
    if not risky:
        return doc
    try:
        return json.loads(raw.decode(), parse_int=_exact_int, parse_float=_exact_float, parse_constant=_no)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None


def _no(text: str) -> None:
    raise ValueError(f"{text} is not JSON")


def _exact_int(text: str) -> int | Inexact:
    if len(text) > 21:  # beyond 64 bits whatever the digits (and int() of huge texts is refused)
        return Inexact(text)
    n = int(text)
    return n if n in _INT_RANGE else Inexact(text)


def _exact_float(text: str) -> float | Inexact:
    f = float(text)
    if math.isinf(f) or (f == 0.0 and _NONZERO.search(text.split("e")[0].split("E")[0])):
        return Inexact(text)
    return f


def check_payload(job_id: str, payload: Any, who: str = "") -> bytes:
    """The payload's JSON bytes, or PayloadRefused naming the job: not an object, nested deeper
    than MAX_DEPTH, a number that would not be stored as given, a non-string key, text that is
    not valid Unicode, a value that is not JSON. `who` names the job in errors (default: its id)."""
    if not isinstance(payload, dict):
        who = who or f"job {brief(job_id)}"
        raise PayloadRefused(f"{who}: payload must be an object, got {type(payload).__name__}")
    try:
        body = orjson.dumps(payload)
    except TypeError as e:  # depth, a big int, a bad key or string, an Inexact: say where
        who = who or f"job {brief(job_id)}"
        _walk(who, payload)
        raise PayloadRefused(f"{who}: payload is not storable JSON ({e})") from None
    # fast and exact: fewer brackets than the bound cannot nest deeper, and a non-finite float (which
    # orjson writes as null) needs a null in the text
    if body.count(b"{") + body.count(b"[") > MAX_DEPTH or b"null" in body:
        _walk(who or f"job {brief(job_id)}", payload)
    return body


MAX_DELAY = 10 * 366 * 86400.0  # seconds: a delay or not_before further off is a mistake


def check_when(key: str, value: Any) -> float:
    """A job's `delay` (seconds from its enqueue) or `not_before` (epoch seconds) as a float;
    ValueError saying what is wrong: not a finite number, a negative delay, too far off."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("is not a finite number of seconds")
    if key == "delay" and not 0 <= value <= MAX_DELAY:
        raise ValueError(f"must be in [0, {MAX_DELAY:.0f}] seconds")
    if key == "not_before" and not 0 <= value <= 4e9 + MAX_DELAY:
        raise ValueError("is not a time in epoch seconds")
    return float(value)


def result_json(value: Any) -> bytes:
    """A handler's result as the ACK stores it: its JSON bytes, or PayloadRefused saying why not
    (the payload's rules, but any JSON value: a tuple is stored as a list)."""
    try:
        body = orjson.dumps(value)
    except TypeError as e:
        _walk("result", value)
        raise PayloadRefused(f"result is not storable JSON ({e})") from None
    if body.count(b"{") + body.count(b"[") > MAX_DEPTH or b"null" in body:
        _walk("result", value)
    return body


def _walk(who: str, payload: Any) -> None:
    """Find the first thing in `payload` that check_payload refuses and raise naming it."""
    stack: list[tuple[Any, str, int]] = [(payload, "payload" if who != "result" else "value", 1)]
    while stack:
        value, where, depth = stack.pop()
        problem = ""
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                problem = f"nested deeper than {MAX_DEPTH} levels"
            elif isinstance(value, dict):
                for key, item in reversed(value.items()):
                    if not isinstance(key, str):
                        problem = f"key {brief(key)} is not a string"
                        break
                    stack.append((item, f"{where}[{brief(key, 30)}]", depth + 1))
            else:
                items = reversed(list(enumerate(value)))
                stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in items)
        elif isinstance(value, Inexact):
            text = (
                value.text if len(value.text) <= 40 else f"{value.text[:40]}...[{len(value.text)} characters]"
            )
            problem = f"number {text} cannot be stored exactly (use a string)"
        elif isinstance(value, bool) or value is None:
            pass
        elif isinstance(value, int):
            if value not in _INT_RANGE:
                problem = f"an integer of {value.bit_length()} bits is beyond 64 bits (use a string)"
        elif isinstance(value, float):
            if not math.isfinite(value):
                problem = f"{value} is not a JSON number"
        elif isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                problem = "a string is not valid Unicode (a lone surrogate)"
        else:
            problem = f"a {type(value).__name__} is not JSON"
        if problem:
            where = where if len(where) <= 80 else f"{where[:40]}...{where[-30:]}"  # one short line
            raise PayloadRefused(f"{who}: {where}: {problem}")


def all_fit(ids: list[Any], payloads: list[Any], max_record_bytes: int) -> bool:
    """True if every (id, payload) of a batch passes `check_job`, decided over the whole batch at
    once (a few C passes, not a Python call chain per job); False when any might not, and the
    caller checks job by job for the exact error. Sufficient, not necessary: ids that JSON escapes
    (or non-ASCII ones), payloads that are not plain dicts or whose text holds `null` or more
    brackets than one payload may have in all send the batch down the exact path."""
    if len(ids) != len(payloads) or set(map(type, ids)) != {str} or set(map(type, payloads)) != {dict}:
        return False
    if "" in ids:
        return False
    try:
        id_text, text = orjson.dumps(ids), orjson.dumps(payloads)  # each a JSON list
        # the longest payload's JSON; each freed at once (keeping 100,000 small orjson outputs
        # alive costs 3 us apiece in allocation, 20 times the encoding)
        longest = max(map(len, map(orjson.dumps, payloads)))
    except TypeError:
        return False
    n = len(ids)
    if len(id_text) != sum(map(len, ids)) + 3 * n + 1:  # a byte a character: nothing escaped
        return False
    # each payload has at least its own brace: if all of them hold MAX_DEPTH - 1 more brackets at
    # most, none nests deeper than MAX_DEPTH (check_payload's test, summed; 1: the list's bracket)
    if text.count(b"{") + text.count(b"[") - 1 - n > MAX_DEPTH - 1 or b"null" in text:
        return False
    return R.record_bound(max(map(len, ids)) + 2, longest) <= max_record_bytes


def check_job(job_id: Any, payload: Any, max_record_bytes: int, who: str = "") -> bytes:
    """Everything about one job that holds whatever the queue's state: its id, its payload, and
    that its largest record fits (else RecordTooLarge). Returns the payload's JSON bytes."""
    if not isinstance(job_id, str) or not job_id:
        raise PayloadRefused(f"{who or 'job'}: id must be a non-empty string, got {brief(job_id)}")
    try:
        id_json = len(orjson.dumps(job_id))
    except TypeError:
        raise PayloadRefused(
            f"{who or 'job'}: id {brief(job_id)} is not valid Unicode (a lone surrogate)"
        ) from None
    body = check_payload(job_id, payload, who)  # names the job only when it refuses (the hot path)
    need = R.record_bound(id_json, len(body))
    if need > max_record_bytes:
        who = who or f"job {brief(job_id)}"
        raise RecordTooLarge(
            f"{who}: its records may take {need} bytes (id {id_json}, payload {len(body)}); "
            f"the limit is max_record_bytes = {max_record_bytes}"
        )
    return body
