"""Load `Config` from flags, `BEAVER_*` environment variables and a YAML file, in that precedence.

Durations are numbers of seconds or strings like `3s`, `500ms`, `2m`, `1m30s`; sizes are bytes or
`64MiB`. `{data_dir}` in `wal_path` / `snapshot_path` stands for the final data directory, so a
`--data-dir` flag moves the WAL and the snapshots with it. Any bad key or value is one BeaverError
line that names where it came from (file, variable or flag)."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from beaver_sim.core.types import Backoff, BeaverError, Config

DEFAULT_CONFIG = "configs/default.yaml"  # read from the working directory when present, as the seed did
ENV_PREFIX = "BEAVER_"
DURATION_KEYS = frozenset(
    {"task_timeout", "snapshot_interval", "fsync_interval", "work_min", "work_max", "restart_delay"}
)
SIZE_KEYS = frozenset({"segment_bytes", "max_record_bytes", "max_result_bytes"})
_TYPES = {f.name: f.type for f in fields(Config)}  # annotations are strings: "int", "float", ...
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?")
_SIZES = {
    None: 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
}
_HANDLER = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as `3s`, `500ms`, `2m`, `1m30s`, `0.5`."""
    if isinstance(value, bool):
        raise ValueError("is not a duration")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError("is not a duration")
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError("is not a duration (use e.g. 3s, 500ms, 2m, 1m30s or a number of seconds)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def parse_size(value: Any) -> int:
    """Bytes from an integer or a string such as `64MiB`, `4096`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError("is not a size (use e.g. 4096, 64KiB, 64MiB)")
    return int(m.group(1)) * _SIZES[m.group(2)]


def parse_handlers(value: Any) -> dict[str, str]:
    """{"type": "module:function"} from a mapping or from `type=module:function,...` text."""
    if isinstance(value, str):
        pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("must be type=module:function pairs separated by commas")
        value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of payload type to module:function")
    for kind, spec in value.items():
        if not isinstance(kind, str) or not isinstance(spec, str) or not _HANDLER.fullmatch(spec):
            raise ValueError(f"entry {kind!r}: {spec!r} is not module:function")
    return dict(value)


def parse_backoff(value: Any) -> Backoff | None:
    """`none`, `BASE..MAX` (durations; jitter 0.5) or a mapping {base, max, jitter}."""
    if value is None or value == "none":
        return None
    if isinstance(value, str):
        base, sep, top = value.partition("..")
        if not sep:
            raise ValueError("is not a backoff (use none, BASE..MAX such as 1s..5m, or {base, max, jitter})")
        return Backoff(parse_duration(base), parse_duration(top))
    if not isinstance(value, dict) or not {"base", "max"} <= set(value) <= {"base", "max", "jitter"}:
        raise ValueError("must be none, BASE..MAX or a mapping with base, max and optionally jitter")
    jitter = value.get("jitter", 0.5)
    if isinstance(jitter, bool) or not isinstance(jitter, int | float):
        raise ValueError("jitter must be a number in [0, 1]")
    return Backoff(parse_duration(value["base"]), parse_duration(value["max"]), float(jitter))


def _coerce(key: str, value: Any) -> Any:
    """The value of `key` as the type Config wants; ValueError with the reason otherwise."""
    if key in DURATION_KEYS:
        return parse_duration(value)
    if key in SIZE_KEYS:
        return parse_size(value)
    if key == "handlers":
        return parse_handlers(value)
    if key == "retry_backoff":
        return parse_backoff(value)
    kind = _TYPES[key]
    if kind == "int":
        if isinstance(value, bool | float):
            raise ValueError("must be an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError("must be an integer") from None
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError("must be a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError("must be a number") from None
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise BeaverError(f"{path}: cannot read config: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise BeaverError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise BeaverError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BeaverError(f"{path}: the config must be a mapping of keys to values")
    return data


def load_config(
    config_path: str | None, flags: dict[str, Any], *, flag_names: dict[str, str] | None = None
) -> Config:
    """The Config from `flags` (Config field names; None = not given) over BEAVER_* environment
    variables over the YAML file (`config_path`, else BEAVER_CONFIG, else configs/default.yaml
    when it exists) over the built-in defaults. `flag_names` maps keys to the flags errors name."""
    known = set(_TYPES)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def put(key: str, raw: Any, source: str) -> None:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(known))}"
            raise BeaverError(f"{source}: unknown key {key!r} ({hint})")
        try:
            values[key] = _coerce(key, raw)
        except ValueError as e:
            raise BeaverError(f"{source}: {key}: {raw!r} {e}") from None
        sources[key] = source

    path = config_path or os.environ.get(ENV_PREFIX + "CONFIG") or None
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    if path is not None:
        for key, raw in _read_yaml(path).items():
            put(str(key), raw, path)
    for key in sorted(known):
        env = ENV_PREFIX + key.upper()
        if env in os.environ:
            put(key, os.environ[env], f"environment {env}")
    for key, raw in flags.items():
        if raw is not None:
            put(key, raw, f"flag {(flag_names or {}).get(key, key)}")

    config = Config(**values)
    config.wal_path = config.wal_path.replace("{data_dir}", config.data_dir)
    config.snapshot_path = config.snapshot_path.replace("{data_dir}", config.data_dir)
    problems = config.problems()
    if problems:
        raise BeaverError("; ".join(_blame(p, sources) for p in problems))
    return config


def _blame(problem: str, sources: dict[str, str]) -> str:
    """Prefix a Config.problems() line with where its key was set."""
    key = problem.split(" ", 1)[0]
    if key.startswith("retry_backoff"):
        key = "retry_backoff"
    if key == "work":  # "work duration range must satisfy ..." is about work_min and work_max
        key = "work_max" if "work_max" in sources else "work_min"
    return f"{sources[key]}: {problem}" if key in sources else f"config: {problem}"
