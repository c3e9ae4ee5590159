"""Operating the queue, in-process. `beaver jobs` and `beaver job ID` on real files, without a
controller and through a running one: states, attempts, a dead job's reason while the log holds its
DEAD record (null once checkpoints deleted it), each attempt's dispatch and end, an unknown id
(exit 1), bad flags (one line, exit 2). `beaver enqueue` refuses a data directory that does not
exist unless --create. An unknown flag is refused under the name of the command it was given to.
A crash sweep interrupted by Ctrl-C prints the points that finished (the real SIGINT to a process
pool is in tests/integration/test_operate.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from beaver_sim.cli import build_parser, main
from beaver_sim.core import records as R
from beaver_sim.core.durable import Storage
from beaver_sim.core.types import Backoff, BeaverError, Config
from beaver_sim.runtime import service as service_module
from beaver_sim.runtime.jobs import answer
from beaver_sim.runtime.server import request
from beaver_sim.runtime.service import Service, enqueue, status_of
from beaver_sim.sim import sweep
from beaver_sim.sim.checker import CODES
from beaver_sim.storage.fs import RealFS

pytestmark = pytest.mark.usefixtures("clean_env")


def out_of(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    got = capsys.readouterr()
    return code, got.out, got.err


@contextlib.contextmanager
def _captured() -> Iterator[io.StringIO]:
    """stdout of an in-process command, under hypothesis (which cannot share capsys)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        yield out


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Jobs in every state, logged through the one transition function: `a` failed once then
    completed, `b` dead after two attempts, `c` in flight, `d` pending, `odd id` pending."""
    root = tmp_path / "d"
    storage = Storage.open(RealFS(), str(root))
    for rec in [
        R.enqueue("a", {"n": 1}),
        R.enqueue("b", {"n": 2}),
        R.enqueue("c", {"n": 3}),
        R.dispatch("a", 1, 0, 10.5),
        R.fail("a", 1, "ValueError: no"),
        R.dispatch("b", 1, 1, 11.0),
        R.timeout("b", 1),
        R.dispatch("c", 1, 2, 12.0),
        R.dispatch("a", 2, 0, 13.0),
        R.ack("a", 2, {"sum": 3}),
        R.dispatch("b", 2, 1, 14.0),
        R.dead("b", 2, "failed: OSError: disk"),
        R.enqueue("d", {"n": 4}),
        R.enqueue("odd id", {}),
    ]:
        storage.append(rec)
    storage.close()
    return root


def test_jobs_lists_every_job_with_its_state_attempts_and_a_dead_jobs_reason(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = ["--data-dir", str(data_dir)]
    code, out, _ = out_of(capsys, "jobs", "--json", *d)
    assert code == 0
    assert orjson.loads(out) == [
        {"id": "a", "state": "completed", "attempts": 2, "result": {"sum": 3}},
        {"id": "b", "state": "dead", "attempts": 2, "reason": "failed: OSError: disk"},
        {"id": "c", "state": "in_flight", "attempts": 1},
        {"id": "d", "state": "pending", "attempts": 0},
        {"id": "odd id", "state": "pending", "attempts": 0},
    ]
    assert out_of(capsys, "jobs", "--state", "pending", "--limit", "1", "--json", *d)[1] == (
        '[{"id":"d","state":"pending","attempts":0}]\n'
    )
    code, out, _ = out_of(capsys, "jobs", *d)
    assert out.splitlines() == [
        'a completed attempts=2 result={"sum":3}',
        'b dead attempts=2 reason="failed: OSError: disk"',
        "c in_flight attempts=1",
        "d pending attempts=0",
        "'odd id' pending attempts=0",
    ]
    assert out_of(capsys, "jobs", "--limit", "0", "--json", *d)[1] == "[]\n"


def test_job_shows_one_job_and_its_attempts_from_the_log(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = ["--data-dir", str(data_dir)]
    code, out, _ = out_of(capsys, "job", "b", "--json", *d)
    assert code == 0
    assert orjson.loads(out) == {
        "id": "b",
        "state": "dead",
        "attempts": 2,
        "payload": {"n": 2},
        "lease": None,
        "reason": "failed: OSError: disk",
        "result": None,
        "history": [
            {"attempt": 1, "worker": 1, "deadline": 11.0, "dispatch_seq": 6}
            | {"outcome": "timed_out", "end_seq": 7, "error": None},
            {"attempt": 2, "worker": 1, "deadline": 14.0, "dispatch_seq": 11}
            | {"outcome": "dead", "end_seq": 12, "error": "failed: OSError: disk"},
        ],
        "history_complete": True,
        "running": False,
    }
    job_c = orjson.loads(out_of(capsys, "job", "c", "--json", *d)[1])
    assert job_c["lease"] == {"attempt": 1, "worker": 2, "deadline": 12.0}
    assert job_c["history"][0]["outcome"] is None and job_c["reason"] is None
    code, out, _ = out_of(capsys, "job", "a", *d)
    assert code == 0 and "state     completed" in out and 'result    {"sum":3}' in out
    assert (
        "attempt 1: dispatched at seq 4 to worker 0, deadline 10.500; failed at seq 5: ValueError: no" in out
    )
    assert "attempt 2: dispatched at seq 9 to worker 0, deadline 13.000; completed at seq 10" in out
    assert out_of(capsys, "job", "odd id", *d)[1].startswith("id        'odd id'\n")


def test_a_dead_jobs_reason_and_a_results_survive_checkpoints_that_deleted_their_records(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = Storage.open(RealFS(), str(data_dir))
    for n in range(3):  # two snapshots are kept: the third deletes the first segment
        storage.append(R.enqueue(f"later-{n}", {}))
        storage.checkpoint()
    storage.close()
    assert not (data_dir / "wal" / "wal-00000000000000000001.log").exists()
    d = ["--data-dir", str(data_dir)]
    rows = orjson.loads(out_of(capsys, "jobs", "--state", "dead", "--json", *d)[1])
    assert rows == [{"id": "b", "state": "dead", "attempts": 2, "reason": "failed: OSError: disk"}]
    job = orjson.loads(out_of(capsys, "job", "b", "--json", *d)[1])
    assert (job["state"], job["attempts"], job["reason"]) == ("dead", 2, "failed: OSError: disk")
    assert (job["history"], job["history_complete"]) == ([], False)  # the attempts went with the log
    assert orjson.loads(out_of(capsys, "job", "a", "--json", *d)[1])["result"] == {"sum": 3}


def test_an_unknown_id_is_one_line_and_exit_1(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = out_of(capsys, "job", "zzz", "--data-dir", str(data_dir))
    assert (code, out) == (1, "")
    assert err == f"beaver job: no job zzz in {data_dir}\n"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["jobs", "--state", "waiting"], "beaver jobs: error: argument --state: invalid choice: 'waiting'"),
        (["jobs", "--limit", "-1"], "beaver jobs: error: argument --limit: expected a whole number"),
        (["job"], "beaver job: error: the following arguments are required: id"),
        (["jobs", "--data-dir", "nowhere"], "beaver jobs: error: nowhere: no such data directory"),
        (["job", "x", "--data-dir", "nowhere"], "beaver job: error: nowhere: no such data directory"),
    ],
)
def test_bad_flags_and_missing_directories_are_one_line(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(argv)
    except SystemExit as e:  # a usage error: argparse exits
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and fragment in err, err
    assert not Path("nowhere").exists()


def test_bad_job_requests_on_the_socket_are_refused(data_dir: Path) -> None:
    storage = Storage.open(RealFS(), str(data_dir))
    q = storage.state
    storage.close()
    assert answer(q, {"op": "job", "id": 7}) == {"ok": False, "error": "bad request: id must be a string"}
    assert "state must be one of" in answer(q, {"op": "jobs", "state": "waiting"})["error"]
    for limit in (-1, 1.5, True, "3"):
        assert answer(q, {"op": "jobs", "limit": limit})["ok"] is False
    assert answer(q, {"op": "job", "id": "nope"}) == {"ok": True, "job": None}


def test_jobs_and_job_ask_a_running_controller(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a controller running, the state comes over its socket: the files' reader is not used."""
    config = Config(
        data_dir=str(tmp_path / "d"),
        worker_count=2,
        work_min=0.0,
        work_max=0.001,
        failure_rate=1.0,
        max_retry=2,
        metrics_port=0,
    )
    d = ["--data-dir", config.data_dir]

    def no_files(*_: Any, **__: Any) -> None:
        raise BeaverError("read the files although a controller runs")

    async def go() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        service = Service(config, serve_metrics=False)
        await service.start()
        runner = asyncio.create_task(service.run())
        await asyncio.to_thread(enqueue, config, [(f"j{i}", {"i": i}) for i in range(4)])
        while (await asyncio.to_thread(status_of, config))["dead"] < 4:
            await asyncio.sleep(0.01)
        monkeypatch.setattr(service_module, "read_state", no_files)
        assert await asyncio.to_thread(main, ["jobs", "--json", *d]) == 0
        rows = orjson.loads(capsys.readouterr().out)
        assert await asyncio.to_thread(main, ["job", "j2", "--json", *d]) == 0
        job = orjson.loads(capsys.readouterr().out)
        bad = await asyncio.to_thread(request, config.data_dir, {"op": "jobs", "limit": -2})
        assert bad["ok"] is False
        service.request_stop()
        await runner
        await service.close()
        return rows, job

    rows, job = asyncio.run(go())
    assert [(r["id"], r["state"], r["attempts"]) for r in rows] == [(f"j{i}", "dead", 2) for i in range(4)]
    assert all(r["reason"].startswith("failed: SimulatedFailure") for r in rows)
    assert job["running"] is True and job["payload"] == {"i": 2} and job["history_complete"] is True
    assert [a["outcome"] for a in job["history"]] == ["failed", "dead"]


def test_enqueue_refuses_a_data_dir_that_does_not_exist_unless_create(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "jobs.json"
    path.write_bytes(orjson.dumps([{"id": "a", "payload": {}}]))
    typo = tmp_path / "typo" / "d"
    code, out, err = out_of(capsys, "enqueue", "--file", str(path), "--data-dir", str(typo))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith(f"beaver enqueue: error: {typo}: no such data directory")
    assert not (tmp_path / "typo").exists()
    code, out, _ = out_of(capsys, "enqueue", "--create", "--file", str(path), "--data-dir", str(typo))
    assert code == 0 and "1 new" in out
    code, out, _ = out_of(capsys, "enqueue", "--file", str(path), "--data-dir", str(typo))
    assert code == 0 and "0 new, 1 already present" in out


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_an_interrupted_sweep_prints_the_points_that_finished_and_exits_130(
    fsync: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C (a KeyboardInterrupt) after the second batch of points: those are reported, with the
    violations found at them, and nothing else ran."""
    real, batches = sweep._collect, []

    def collect_then_interrupt(*args: Any) -> None:
        real(*args)
        batches.append(len(args[1]))
        if len(batches) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "_collect", collect_then_interrupt)
    argv = [
        "crash-sweep",
        "--jobs",
        "6",
        "--executor",
        "serial",
        "--fsync",
        fsync,
        "--crash-model",
        "power-loss",
    ]
    code, out, err = out_of(capsys, *argv, "--json")
    assert (code, err) == (130, "")
    got = orjson.loads(out)
    assert got["interrupted"] is True and 0 < got["done"] < got["points"] and len(batches) == 2
    assert (fsync == "never") == bool(got["violations"])
    assert all(v["code"] == CODES[v["invariant"]] for v in got["violations"])
    batches.clear()
    code, out, _ = out_of(capsys, *argv)
    first = out.splitlines()[0]
    assert code == 130 and first.startswith("interrupted after ")
    assert f"of {got['points']} crash points done" in first
    if fsync == "never":
        assert f"{len(got['violations'])} violation(s) among them:" in first
    else:
        assert first.endswith("invariants ok at every one of them")


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every leaf (sub)command of the CLI, as the words that name it."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path
    for action in subs:
        for name, sub in action.choices.items():
            yield from commands(sub, (*path, name))


def required_args(parser: argparse.ArgumentParser) -> list[str]:
    """A value for each required argument, so that only the unknown flag is wrong."""
    out: list[str] = []
    for a in parser._actions:
        if a.required and not isinstance(a, argparse._SubParsersAction):
            value = str(next(iter(a.choices))) if a.choices else "x"
            out += [a.option_strings[0], value] if a.option_strings else [value]
    return out


def parser_of(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


ALL_COMMANDS = list(commands(build_parser()))


def test_every_command_is_listed() -> None:
    assert {("enqueue",), ("jobs",), ("job",), ("wal", "verify"), ("crash-sweep",)} <= set(ALL_COMMANDS)


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=" ".join)
def test_an_unknown_flag_is_refused_under_the_commands_own_name(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """`beaver enqueue ... --fsync sometimes` says `beaver enqueue: error: unrecognized arguments`,
    the form docs/contracts.md promises, for every command (not `beaver: error`)."""
    argv = [*path, *required_args(parser_of(path)), "--no-such-flag", "v"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err == f"beaver {' '.join(path)}: error: unrecognized arguments: --no-such-flag v (see --help)\n"


def test_an_attempt_whose_dispatch_a_checkpoint_deleted_still_shows_how_it_ended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "d"
    storage = Storage.open(RealFS(), str(root))
    storage.append(R.enqueue("x", {}))
    storage.append(R.dispatch("x", 1, 0, 5.0))
    for n in range(3):  # the segment with x's ENQUEUE and DISPATCH is deleted
        storage.append(R.enqueue(f"other-{n}", {}))
        storage.checkpoint()
    storage.append(R.fail("x", 1, "boom"))
    storage.close()
    d = ["--data-dir", str(root)]
    job = orjson.loads(out_of(capsys, "job", "x", "--json", *d)[1])
    assert (job["state"], job["attempts"], job["history_complete"]) == ("pending", 1, False)
    assert job["history"] == [
        {"attempt": 1, "worker": None, "deadline": None, "dispatch_seq": None}
        | {"outcome": "failed", "end_seq": 6, "error": "boom"}
    ]
    code, out, _ = out_of(capsys, "job", "x", *d)
    assert code == 0 and "attempt 1: dispatched before the log starts; failed at seq 6: boom" in out


@settings(max_examples=25)
@example(ids=["-x", "--json", "a b", "tab\tid", "nul\x00", "quote\"'", "🦫"])
@given(ids=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6, unique=True))
def test_any_job_id_is_listed_and_found_exactly(ids: list[str]) -> None:
    """Ids are any non-empty string (control characters, quotes, spaces, surrogate-free Unicode):
    `jobs --json` gives each back exactly, `job ID --json` finds each (after `--`: an id may start
    with a dash), one line per job in text."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "d"
        storage = Storage.open(RealFS(), str(root))
        for n, job_id in enumerate(ids):
            storage.append(R.enqueue(job_id, {"n": n}))
        storage.close()
        d = ["--data-dir", str(root)]
        with _captured() as out:
            assert main(["jobs", "--json", *d]) == 0
        assert [r["id"] for r in orjson.loads(out.getvalue())] == ids
        for n, job_id in enumerate(ids):
            with _captured() as out:
                assert main(["job", "--json", *d, "--", job_id]) == 0
            assert orjson.loads(out.getvalue())["payload"] == {"n": n}
        with _captured() as out:
            assert main(["jobs", *d]) == 0
        assert len(out.getvalue().splitlines()) == len(ids)


def test_requeue_and_cancel_offline_write_under_the_lock_and_refuse_in_one_line(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = ["--data-dir", str(data_dir)]
    assert out_of(capsys, "requeue", "b", *d)[1] == (
        f"requeued 1 job in {data_dir} (written directly: no controller running); durable\n"
    )
    assert out_of(capsys, "cancel", "d", "odd id", "--json", *d)[1] == '{"cancelled":2,"durable":true}\n'
    rows = {r["id"]: r for r in orjson.loads(out_of(capsys, "jobs", "--json", *d)[1])}
    assert (rows["b"]["state"], rows["b"]["attempts"]) == ("pending", 2)
    assert rows["d"]["state"] == rows["odd id"]["state"] == "cancelled"
    st = orjson.loads(out_of(capsys, "status", "--json", *d)[1])
    assert (st["pending"], st["cancelled"], st["dead"]) == (1, 2, 0)
    dump = out_of(capsys, "wal", "dump", "--json", *d)[1]  # one JSON object per line
    assert dump.count('"type":"revive"') == 1 and dump.count('"type":"cancel"') == 2
    before = sorted(p.read_bytes() for p in (data_dir / "wal").iterdir())
    for argv, fragment in [
        (["cancel", "c"], "cannot cancel job 'c': it is in_flight"),
        (["cancel", "a"], "cannot cancel job 'a': it is completed"),
        (["requeue", "a"], "cannot requeue job 'a': it is completed (only a dead job can be requeued)"),
        (["requeue", "zz"], "cannot requeue job 'zz': no such job"),
        (["requeue"], "name the jobs (or --dead: every dead job)"),
        (["cancel", "d", "--data-dir", str(data_dir / "typo")], "typo: no such data directory"),
    ]:
        code, out, err = out_of(capsys, argv[0], *d, *argv[1:])  # a later --data-dir wins
        assert (code, out) == (2, "") and err.count("\n") == 1, err
        assert err.startswith(f"beaver {argv[0]}: error: ") and fragment in err, err
    assert sorted(p.read_bytes() for p in (data_dir / "wal").iterdir()) == before
    assert not (data_dir / "typo").exists()


def test_requeue_dead_and_cancel_go_through_a_running_controller(tmp_path: Path) -> None:
    config = Config(
        data_dir=str(tmp_path / "d"),
        worker_count=1,
        work_min=0.0,
        work_max=0.001,
        failure_rate=1.0,
        max_retry=2,
        metrics_port=0,
    )

    async def go() -> tuple[dict[str, Any], list[int], dict[str, Any]]:
        service = Service(config, serve_metrics=False)
        await service.start()
        runner = asyncio.create_task(service.run())
        await asyncio.to_thread(enqueue, config, [(f"j{i}", {"i": i}) for i in range(3)])
        while (await asyncio.to_thread(status_of, config))["dead"] < 3:
            await asyncio.sleep(0.01)
        requeued, how = await asyncio.to_thread(service_module.operate_on, config, "requeue", [], True)
        assert how == "via the running controller"
        bad = await asyncio.to_thread(request, config.data_dir, {"op": "cancel", "ids": ["nope"]})
        while (await asyncio.to_thread(status_of, config))["dead"] < 3:  # each runs its fresh budget
            await asyncio.sleep(0.01)
        attempts = [service.controller.state.jobs[f"j{i}"].attempt for i in range(3)]
        service.request_stop()
        await runner
        await service.close()
        return {"requeued": requeued}, attempts, bad

    answer_, attempts, bad = asyncio.run(go())
    assert answer_ == {"requeued": 3} and attempts == [4, 4, 4]
    assert bad == {"ok": False, "error": "cannot cancel job 'nope': no such job"}


def test_a_job_file_may_delay_a_job_and_bad_delays_are_one_line(tmp_path: Path) -> None:
    from beaver_sim.cli import read_jobs
    from beaver_sim.config import load_config

    good = tmp_path / "jobs.json"
    good.write_text(
        '[{"id": "a", "payload": {}, "delay": "1m30s"},'
        ' {"id": "b", "payload": {}, "not_before": "2030-01-01T00:00:00+00:00"},'
        ' {"id": "c", "payload": {}, "not_before": 1900000000}, {"id": "d", "payload": {}}]'
    )
    assert read_jobs(str(good)) == [
        ("a", {}, {"delay": 90.0}),
        ("b", {}, {"not_before": 1893456000.0}),
        ("c", {}, {"not_before": 1900000000.0}),
        ("d", {}),
    ]
    for job, fragment in [
        ('{"id": "x", "payload": {}, "delay": "soon"}', "job #1 ('x'): delay 'soon' is not a duration"),
        ('{"id": "x", "payload": {}, "delay": -5}', "job #1 ('x'): delay -5 must be in [0, "),
        ('{"id": "x", "payload": {}, "not_before": "2030-01-01T00:00"}', "needs its UTC offset"),
        ('{"id": "x", "payload": {}, "delay": 1, "not_before": 2}', "give delay or not_before, not both"),
        ('{"id": "x", "payload": {}, "when": 1}', "unknown field 'when'"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(f"[{job}]")
        with pytest.raises(BeaverError) as e:
            read_jobs(str(bad))
        assert str(e.value).startswith(f"{bad}: ") and fragment in str(e.value) and "\n" not in str(e.value)
    assert load_config(None, {"retry_backoff": "1s..2m"}).retry_backoff == Backoff(1.0, 120.0, 0.5)
    assert load_config(None, {"retry_backoff": {"base": "500ms", "max": 10, "jitter": 0}}).retry_backoff == (
        Backoff(0.5, 10.0, 0.0)
    )
    assert load_config(None, {}).retry_backoff is None
    for value, fragment in [
        ("5s..1s", "0 < base <= max"),
        ("fast", "is not a backoff"),
        ({"base": 1}, "mapping"),
    ]:
        with pytest.raises(BeaverError, match="retry_backoff") as e:
            load_config(None, {"retry_backoff": value})
        assert fragment in str(e.value)


def _wall_clock(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """A real handler: its result is when it ran (wall time) and which attempt it was."""
    return {"ran_at": time.time(), "job": ctx.job_id, "attempt": ctx.attempt}


def test_a_delayed_job_waits_on_the_wall_clock_across_a_restart_of_beaver_run(tmp_path: Path) -> None:
    """Real mode: the delay is made absolute on wall time when accepted, survives a clean stop (the
    job still delayed) and a new controller, runs no earlier, and its handler's result is kept."""
    config = Config(data_dir=str(tmp_path / "d"), worker_count=1, metrics_port=0, snapshot_interval=0)

    async def serve(until: Any) -> Service:
        service = Service(config, serve_metrics=False, handlers={"clock": _wall_clock})
        await service.start()
        runner = asyncio.create_task(service.run())
        while not until(service):
            await asyncio.sleep(0.01)
        service.request_stop()
        await runner
        await service.close()
        return service

    async def go() -> tuple[float, dict[str, Any], float]:
        sent = time.time()
        await asyncio.to_thread(enqueue, config, [("d", {"type": "clock"}, {"delay": 0.8})])
        first = await serve(lambda s: "d" in s.controller.state.not_before)
        not_before = first.controller.state.not_before["d"]
        second = await serve(lambda s: s.controller.state.stats()["completed"] == 1)
        return sent, second.controller.state.results["d"], not_before

    sent, result, not_before = asyncio.run(go())
    assert sent + 0.8 <= not_before <= time.time()
    assert result["ran_at"] >= not_before and (result["job"], result["attempt"]) == ("d", 1)
