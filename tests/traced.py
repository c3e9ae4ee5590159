"""A `beaver run` under strace, fed job files one `beaver enqueue` at a time: the recording both
syscall tests (test_syscalls.py, test_crash_states.py) read."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from beaver_sim.demo import RunProcess

BEAVER = [sys.executable, "-m", "beaver_sim.cli"]


def feed_traced_controller(wrap: list[str], data_dir: str, files: list[Path], pause: float) -> None:
    """Start `wrap + beaver run` (snapshots every 50 ms), enqueue each file through it (the running
    controller must answer), `pause` seconds apart so jobs run and snapshots happen in between,
    then SIGTERM the traced process itself (not strace) and require a clean exit."""
    run_argv = [*BEAVER, "run", "--data-dir", data_dir, "--metrics-port", "0", "--snapshot-interval", "50ms"]
    run = RunProcess([*wrap, *run_argv])
    pid = 0
    try:
        pid = int(run.wait_line(re.compile(r"pid (\d+)"), 60).group(1))
        run.wait_line(re.compile("^ready"), 60)
        for path in files:
            argv = [*BEAVER, "enqueue", "--data-dir", data_dir, "--file", str(path)]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0 and "via the running controller" in out.stdout, out.stderr
            time.sleep(pause)
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)  # the traced `beaver run`, not strace
        else:
            run.proc.kill()
        assert run.proc.wait(timeout=60) == 0
