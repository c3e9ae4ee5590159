"""Handlers to show the worker pool at work (notebooks/10-real-processes.ipynb), named in the config
as `type: beaver_sim.examples.handlers:function`. A handler takes the payload dict; raising fails
the attempt. These leave a trace in the file system, since a handler's return value is discarded."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any


def whoami(payload: dict[str, Any]) -> None:
    """Sleep `seconds` (so attempts overlap), then write `<pid> <thread name>` to `out`/`name`:
    which process and thread of the pool ran the attempt."""
    time.sleep(float(payload.get("seconds", 0.0)))
    me = f"{os.getpid()} {threading.current_thread().name}\n"
    Path(payload["out"], payload["name"]).write_text(me)


def sleep(payload: dict[str, Any]) -> None:
    """Sleep `seconds`: a handler slower than the task timeout is abandoned, not interrupted."""
    time.sleep(float(payload["seconds"]))
