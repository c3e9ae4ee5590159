"""One client process must not starve the others (runtime/server.py: PEER_CONNECTIONS,
PEER_STREAMS). A real process leaks connections to a real `beaver run` faster than the server's
bounds free them, for longer than READ_TIMEOUT; meanwhile other real client processes enqueue, ask
the status and cancel, and each is answered at once. Before the per-process share, the flood held
every one of the MAX_CONNECTIONS slots: every other client was refused busy until the flood
stopped. Likewise a real process that asks for MAX_STREAMS listings and reads none: it holds its
share of them, and another process's `beaver jobs` is answered at once; before, it held all of
them and `beaver jobs` was busy until they were dropped (WRITE_TIMEOUT)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from beaver_sim.runtime.server import (
    MAX_CONNECTIONS,
    MAX_STREAMS,
    PEER_CONNECTIONS,
    PEER_STREAMS,
    READ_TIMEOUT,
    WRITE_TIMEOUT,
    request,
    socket_path,
)
from tests import hostile_client
from tests.beaver_process import beaver, serving

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_env")]

RUN = ("--workers", "2", "--timeout", "5s", "--failure-rate", "0", "--metrics-port", "0")
LATER = 4102444800  # 2100-01-01: never due while the test runs
FLOOD = 2 * READ_TIMEOUT  # seconds: it outlasts its first connections' timeout (refilling its share)
# and the other clients' commands, with room on a loaded machine
# a refused client waits for the flood's first connections to time out (READ_TIMEOUT) or for the
# flood to end: an answer within half of that was not refused (a command's start-up included)
PROMPT = READ_TIMEOUT / 2


def timed(*argv: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.monotonic()  # wall-clock ok: real processes
    out = beaver(*argv, timeout=60)
    return time.monotonic() - t0, out


def test_a_process_leaking_connections_does_not_keep_the_other_clients_out(tmp_path: Path) -> None:
    jobs = [{"id": f"later-{i}", "payload": {"n": i}, "not_before": LATER} for i in range(3)]
    (tmp_path / "jobs.json").write_bytes(orjson.dumps(jobs))
    (tmp_path / "more.json").write_bytes(orjson.dumps([{"id": "meanwhile", "payload": {"n": 1}}]))
    data_dir = str(tmp_path / "d")
    beaver("enqueue", "--file", str(tmp_path / "jobs.json"), "--create", "--data-dir", data_dir)
    with serving(data_dir, RUN) as run:
        flooder = subprocess.Popen(
            [sys.executable, hostile_client.__file__, "flood", socket_path(data_dir), str(FLOOD)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert flooder.stdout is not None
            assert flooder.stdout.readline() == hostile_client.SATURATED + "\n"  # it holds what it can
            took: dict[str, float] = {}
            took["enqueue"], _ = timed(
                "enqueue", "--file", str(tmp_path / "more.json"), "--data-dir", data_dir
            )
            assert took["enqueue"] < PROMPT, took
            took["status"], out = timed("status", "--json", "--data-dir", data_dir)
            assert took["status"] < PROMPT and orjson.loads(out.stdout)["jobs"] == 4, took
            took["cancel"], _ = timed("cancel", "later-0", "later-1", "--data-dir", data_dir)
            assert took["cancel"] < PROMPT, took
            for i in range(20):  # and this process's own round trips, one request each, not retried
                t0 = time.monotonic()  # wall-clock ok: real processes
                answer = request(data_dir, {"op": "status"}, timeout=30)
                took[f"status {i}"] = time.monotonic() - t0
                assert answer["ok"] is True and took[f"status {i}"] < PROMPT, (answer, took)
            assert flooder.poll() is None, took  # all of it while the flood went on
            out, _ = flooder.communicate(timeout=FLOOD + 60)
        finally:
            flooder.kill()
            flooder.wait()
        assert flooder.returncode == 0
        seen = orjson.loads(out.strip().splitlines()[-1])
        # the flood was held to its share: refused as one process, never by the whole cap; its
        # first PEER_CONNECTIONS, idle, were answered at READ_TIMEOUT, and it filled its share again
        assert seen.get(f"busy: {MAX_CONNECTIONS} requests open at once", 0) == 0, seen
        assert seen[f"busy: {PEER_CONNECTIONS} requests open from this process (pid P)"] > 1000, seen
        timed_out = f"bad request: incomplete after {READ_TIMEOUT:g} s"
        assert sum(n for error, n in seen.items() if error.startswith(timed_out)) >= PEER_CONNECTIONS, seen
        states = {
            r["id"]: r["state"] for r in orjson.loads(beaver("jobs", "--json", "--data-dir", data_dir).stdout)
        }
        assert states == {
            "later-0": "cancelled",
            "later-1": "cancelled",
            "later-2": "delayed",
            "meanwhile": states["meanwhile"],
        }
        assert states["meanwhile"] in ("pending", "in_flight", "completed")
        warned = [line for line in run.lines if re.search(r"warning: process \d+ holds", line)]
        assert warned and all(f"holds {PEER_CONNECTIONS} control requests open" in line for line in warned)
        assert not [line for line in run.lines if "Traceback" in line or "fatal" in line], run.lines


def test_a_process_holding_listings_it_never_reads_does_not_keep_the_other_listings_out(
    tmp_path: Path,
) -> None:
    # a listing of them is far more than the socket's buffers hold: one never read stays open
    jobs = [{"id": f"wait-{i:05d}", "payload": {"n": i}, "not_before": LATER} for i in range(20_000)]
    (tmp_path / "jobs.json").write_bytes(orjson.dumps(jobs))
    data_dir = str(tmp_path / "d")
    beaver("enqueue", "--file", str(tmp_path / "jobs.json"), "--create", "--data-dir", data_dir)
    with serving(data_dir, RUN) as run:
        hold = ("hold", socket_path(data_dir), str(MAX_STREAMS), str(WRITE_TIMEOUT))  # dropped by then
        holder = subprocess.Popen(
            [sys.executable, hostile_client.__file__, *hold],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert holder.stdin is not None and holder.stdout is not None
            with holder.stdin:
                holder.stdin.write(b'{"op": "jobs", "state": null, "limit": null}')
            seen = orjson.loads(holder.stdout.readline())
            assert seen == {
                "began": PEER_STREAMS,
                f"busy: {PEER_STREAMS} listings open from this process (pid P)": MAX_STREAMS - PEER_STREAMS,
            }
            took, out = timed("jobs", "--json", "--limit", "3", "--data-dir", data_dir)
            assert [r["id"] for r in orjson.loads(out.stdout)] == ["wait-00000", "wait-00001", "wait-00002"]
            assert took < PROMPT, took
            assert holder.poll() is None, took  # answered while the holder held its listings
            holder.wait(timeout=WRITE_TIMEOUT + 60)
        finally:
            holder.kill()
            holder.wait()
        assert holder.returncode == 0
        warned = [line for line in run.lines if "listings open: more from it are answered busy" in line]
        assert warned and all(f"holds {PEER_STREAMS} listings open" in line for line in warned), run.lines
        assert not [line for line in run.lines if "Traceback" in line or "fatal" in line], run.lines
