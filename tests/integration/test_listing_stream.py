"""`beaver jobs` against a real `beaver run` holding 200,100 jobs: the listing is produced in parts
while the controller serves everything else (runtime/jobs.py `listing`, server `_stream`), its
answer is the offline one when nothing changes, and a client that leaves midway harms nothing."""

from __future__ import annotations

import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from beaver_sim.demo import RunProcess
from beaver_sim.runtime.server import request, socket_path
from tests.beaver_process import beaver, serving

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_env")]

RUN = [
    *("--workers", "2", "--timeout", "5s", "--work-min", "1ms", "--work-max", "5ms"),
    *("--failure-rate", "0", "--snapshot-interval", "60s", "--metrics-port", "0"),
]
RUNNABLE = 100  # jobs that run and complete; the others wait for a date far away
WAITING = 200_000
LATER = 4102444800  # 2100-01-01: never due while a test runs


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    """A data directory holding RUNNABLE jobs then WAITING delayed ones, enqueued offline, and
    their ids in enqueue order."""
    tmp = tmp_path_factory.mktemp("listing")
    ids = [f"run-{i:03d}" for i in range(RUNNABLE)] + [f"wait-{i:06d}" for i in range(WAITING)]
    jobs = [{"id": i, "payload": {"type": "compute", "n": 1}} for i in ids[:RUNNABLE]]
    jobs += [{"id": i, "payload": {"n": 1}, "not_before": LATER} for i in ids[RUNNABLE:]]
    (tmp / "jobs.json").write_bytes(orjson.dumps(jobs))
    data_dir = str(tmp / "d")
    beaver("enqueue", "--file", str(tmp / "jobs.json"), "--create", "--data-dir", data_dir)
    return data_dir, ids


@pytest.fixture
def run(template: tuple[str, list[str]], tmp_path: Path) -> Iterator[tuple[RunProcess, str]]:
    """A `beaver run` on a copy of the template, once its RUNNABLE jobs have completed."""
    data_dir = str(tmp_path / "d")
    shutil.copytree(template[0], data_dir)
    with serving(data_dir, RUN) as proc:
        deadline = time.monotonic() + 60
        while request(data_dir, {"op": "status"})["status"]["completed"] < RUNNABLE:
            assert time.monotonic() < deadline, "the runnable jobs did not complete"
            time.sleep(0.05)
        yield proc, data_dir


def listing_request(data_dir: str) -> socket.socket:
    """A connection that has asked for every job and read nothing yet."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(socket_path(data_dir))
    s.sendall(orjson.dumps({"op": "jobs", "state": None, "limit": None}))
    s.shutdown(socket.SHUT_WR)
    return s


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply.get("ok") is True, reply
    return reply


def test_a_running_controllers_listing_is_the_offline_one(run: tuple[RunProcess, str]) -> None:
    proc, data_dir = run
    argvs = [
        ("jobs", "--json"),
        ("jobs",),
        ("jobs", "--json", "--state", "completed", "--limit", "7"),
        ("jobs", "--json", "--state", "delayed", "--limit", "150000"),
        ("jobs", "--json", "--limit", "0"),
    ]
    live = [beaver(*argv, "--data-dir", data_dir).stdout for argv in argvs]
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=60) == 0
    offline = [beaver(*argv, "--data-dir", data_dir).stdout for argv in argvs]
    assert live == offline
    assert len(orjson.loads(live[0])) == RUNNABLE + WAITING
    assert len(live[1].splitlines()) == RUNNABLE + WAITING


def test_other_requests_are_served_while_a_listing_is_held_midway(
    run: tuple[RunProcess, str], template: tuple[str, list[str]]
) -> None:
    """The listing's client reads its first bytes, then nothing: the server cannot write more
    than a socket's and a transport's buffers ahead, so the listing is held midway. Meanwhile an
    enqueue and a cancel are answered (durable), and the rest of the listing follows the rule:
    the job enqueued after it began is not listed, and the last job, cancelled meanwhile, is
    listed as cancelled (its part was built after the cancel: the listing was not built at once)."""
    _, data_dir = run
    ids = template[1]
    s = listing_request(data_dir)
    head = s.recv(1 << 12)
    assert head.startswith(b'{"ok":true,"jobs":[')
    ok(request(data_dir, {"op": "enqueue", "jobs": [["late", {"n": 1}, {"not_before": LATER}]]}, timeout=30))
    assert ok(request(data_dir, {"op": "cancel", "ids": [ids[-1]]}, timeout=30))["cancelled"] == 1
    assert ok(request(data_dir, {"op": "status"}, timeout=30))["status"]["jobs"] == len(ids) + 1
    body = head + read_all(s)
    s.close()
    assert len(body) > 8 << 20  # more than the buffers could hold ahead of the client
    rows = ok(orjson.loads(body))["jobs"]
    assert [r["id"] for r in rows] == ids
    assert rows[-1] == {"id": ids[-1], "state": "cancelled", "attempts": 0}
    assert rows[-2] == {"id": ids[-2], "state": "delayed", "attempts": 0, "not_before": LATER}


def test_clients_leaving_midway_do_not_harm_the_server(run: tuple[RunProcess, str]) -> None:
    proc, data_dir = run
    for read in (0, 1 << 12, 1 << 20):
        s = listing_request(data_dir)
        got = 0
        while got < read:
            got += len(s.recv(min(1 << 16, read - got)))
        s.close()  # unread answer: the server's next write fails (reset)
        ok(request(data_dir, {"op": "enqueue", "jobs": [[f"after-{read}", {"n": 1}]]}, timeout=30))
    rows = ok(request(data_dir, {"op": "jobs", "state": None, "limit": None}, timeout=60))["jobs"]
    assert len(rows) == RUNNABLE + WAITING + 3
    assert proc.proc.poll() is None
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=60) == 0
    assert not [line for line in proc.lines if "warning" in line or "Traceback" in line], proc.lines
