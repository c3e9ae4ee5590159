"""What the CLI tells a newcomer: a known-unsafe run says its violations are expected, violations
carry invariant names, a recovery that replays nothing says why, simulated paths say `sim:`, flag
errors quote what was typed, a typo'd config key gets a suggestion, `demo --help` is right."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from beaver_sim.cli import build_parser, main
from beaver_sim.sim.checker import CODES, INVARIANTS

pytestmark = pytest.mark.usefixtures("clean_env")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_invariant_has_a_stable_kebab_case_code() -> None:
    assert CODES.keys() == INVARIANTS.keys()
    assert len(set(CODES.values())) == len(CODES)
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)+", code) for code in CODES.values())
    assert CODES[1] == "acknowledged-job-lost"


def test_a_sweep_without_fsync_says_its_violations_are_expected_and_names_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["crash-sweep", "--jobs", "10", "--fsync", "never", "--crash-model", "power-loss"]
    code, out, _ = run(capsys, *argv, "--executor", "serial", "--no-progress", "--no-minimize")
    assert code == 1
    assert "violations found, as expected without fsync" in out
    assert re.search(r"^  1 acknowledged-job-lost at point \d+: job ", out, re.M), out
    code, out, _ = run(capsys, *argv, "--executor", "serial", "--json", "--no-minimize")
    r = json.loads(out)
    assert code == 1 and all(v["code"] == CODES[v["invariant"]] for v in r["violations"])


def test_a_sweep_of_a_mutant_says_so_and_a_safe_sweep_says_nothing_of_the_kind(
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["crash-sweep", "--jobs", "6", "--executor", "serial", "--no-progress", "--no-minimize"]
    code, out, _ = run(capsys, *base, "--mutant", "no-fsync", "--crash-model", "power-loss")
    assert code == 1 and "as expected of the mutant no-fsync" in out
    code, out, _ = run(capsys, *base, "--crash-model", "power-loss")
    assert code == 0 and "expected" not in out


def test_a_recovery_that_replays_nothing_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sim", "--jobs", "100", "--crash-at-offset", "5000", "--crash-model", "power-loss"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "0 records replayed (the crash came before the first record was fsynced)" in out
    assert re.search(r"survived   LSN \d+ of 5000: a power loss keeps only what was fsynced", out), out
    assert "100 enqueue(s) never acknowledged were sent again" in out
    code, out, _ = run(capsys, *argv, "--json")
    s = json.loads(out)
    assert s["recovery"]["resubmitted"] == 100 and s["crash"]["durable_lsn"] < 5000


def test_a_process_crash_counts_the_enqueues_found_in_the_log(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "sim", "--jobs", "100", "--crash-at-offset", "5000")
    assert code == 0 and "49 records replayed," in out
    assert "100 enqueue(s) never acknowledged were sent again; 49 of them were already in the log" in out


def test_simulated_paths_say_sim(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "sim", "--jobs", "20", "--mutant", "seq-reset-on-rotation", "--crash-at-time", "1",
        "--snapshot-interval", "0.2", "--crash-model", "power-loss",
    )  # fmt: skip
    assert code == 1 and "sim:/run/wal/wal-" in out and "./data" not in out  # the refusal names the file
    assert "as expected of the mutant seq-reset-on-rotation" in out


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--jobs", "-5"], "beaver sim: error: --jobs -5: must be 0 or more"),
        (["--rate", "-1"], "beaver sim: error: --rate -1: must be 0 or more"),
        (["--crash-at-offset", "abc"], "--crash-at-offset abc: expected a WAL byte offset"),
        (["--crash-at-record", "1.5"], "--crash-at-record 1.5: expected a record number"),
        (["--crash-at-time", "soon"], "--crash-at-time soon: expected virtual seconds"),
        (["--crash-at-point", "#2"], "--crash-at-point #2: expected a point name"),
    ],
)
def test_sim_flag_errors_quote_what_was_typed(
    capsys: pytest.CaptureFixture[str], argv: list[str], problem: str
) -> None:
    try:
        code = main(["sim", *argv])
    except SystemExit as e:  # argparse's usage error
        code = e.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and problem in err, err
    assert "rate" not in err or "rate" in " ".join(argv)
    assert "lsn:" not in err and "record:" not in err


def test_a_typoed_config_key_gets_the_closest_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text("wokrer_count: 4\n")
    assert main(["status", "--config", "c.yaml", "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "c.yaml: unknown key 'wokrer_count' (did you mean 'worker_count'?)" in err, err
    assert not (tmp_path / "d").exists()


def test_demo_help_names_its_own_data_dir_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "./data/run" not in text and "default: a temporary one, removed" in text
