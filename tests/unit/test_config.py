"""load_config: precedence flag > BEAVER_* environment > YAML > default, durations and sizes,
`{data_dir}` paths, and every bad key or value reported as one line naming where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from beaver_sim.config import load_config, parse_duration, parse_size
from beaver_sim.core.types import BeaverError, Config

pytestmark = pytest.mark.usefixtures("clean_env")

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_built_in_defaults_without_a_file() -> None:
    config = load_config(None, {})
    assert config == Config()
    assert config.wal_dir == "./data/run/wal"


def test_repo_default_yaml_holds_the_seed_values() -> None:
    config = load_config(str(REPO / "configs" / "default.yaml"), {})
    assert (config.worker_count, config.task_timeout, config.snapshot_interval) == (8, 3.0, 2.0)
    assert (config.max_retry, config.metrics_port, config.metrics_host) == (3, 9090, "127.0.0.1")
    assert (config.work_min, config.work_max, config.failure_rate, config.fsync) == (0.1, 0.5, 0.1, "always")
    assert config.wal_path == "./data/run/wal" and config.snapshot_path == "./data/run/snap"


def test_configs_default_yaml_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    write(tmp_path, "worker_count: 3\n", "configs/default.yaml")
    assert load_config(None, {}).worker_count == 3


def test_precedence_flag_over_environment_over_yaml_over_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "worker_count: 3\ntask_timeout: 4s\nmax_retry: 5\n")
    monkeypatch.setenv("BEAVER_TASK_TIMEOUT", "250ms")
    monkeypatch.setenv("BEAVER_MAX_RETRY", "6")
    config = load_config(path, {"max_retry": "7", "worker_count": None})
    assert config.worker_count == 3  # YAML (the flag was not given)
    assert config.task_timeout == 0.25  # environment over YAML
    assert config.max_retry == 7  # flag over environment
    assert config.snapshot_interval == Config().snapshot_interval  # default


def test_beaver_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEAVER_CONFIG", write(tmp_path, "seed: 9\n"))
    assert load_config(None, {}).seed == 9


def test_data_dir_placeholder_follows_the_final_data_dir(tmp_path: Path) -> None:
    path = write(tmp_path, 'data_dir: /a\nwal_path: "{data_dir}/log"\n')
    config = load_config(path, {"data_dir": "/b"})
    assert (config.wal_dir, config.snapshot_dir) == ("/b/log", "/b/snap")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3s", 3.0), ("500ms", 0.5), ("2m", 120.0), ("1m30s", 90.0), ("1h", 3600.0), ("0.25", 0.25),
     ("1.5s", 1.5), (2, 2.0), (0.1, 0.1)],
)  # fmt: skip
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["3x", "", "s", "3 s", "-1s", "1s2", True, None, [1]])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_sizes_and_handlers(tmp_path: Path) -> None:
    assert parse_size("64MiB") == 64 << 20 and parse_size(4096) == 4096 and parse_size("1KB") == 1000
    path = write(tmp_path, "segment_bytes: 1MiB\nhandlers: {resize: myapp.tasks:resize}\n")
    config = load_config(path, {})
    assert config.segment_bytes == 1 << 20 and config.handlers == {"resize": "myapp.tasks:resize"}


def test_handlers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEAVER_HANDLERS", "a=m.x:f, b=m:g")
    assert load_config(None, {}).handlers == {"a": "m.x:f", "b": "m:g"}


@pytest.mark.parametrize(
    ("yaml_text", "fragments"),
    [
        ("wrkers: 3\n", ["unknown key 'wrkers'"]),
        ("worker_count: three\n", ["worker_count", "'three'", "integer"]),
        ("worker_count: 2.5\n", ["worker_count", "integer"]),
        ("worker_count: true\n", ["worker_count", "integer"]),
        ("worker_count: 0\n", ["worker_count must be >= 1"]),
        ("task_timeout: 3x\n", ["task_timeout", "'3x'", "duration"]),
        ("task_timeout: 0s\n", ["task_timeout must be > 0"]),
        ("fsync: sometimes\n", ["fsync must be one of always, interval, never"]),
        ("failure_rate: 2\n", ["failure_rate must be in [0, 1]"]),
        ("failure_rate: lots\n", ["failure_rate", "number"]),
        ("work_min: 2s\nwork_max: 1s\n", ["work duration range"]),
        ("metrics_port: 70000\n", ["metrics_port must be in 0..65535"]),
        ("executor: gpu\n", ["executor must be thread or process"]),
        ("segment_bytes: lots\n", ["segment_bytes", "size"]),
        ("handlers: {resize: not-a-spec}\n", ["handlers", "module:function"]),
        ("data_dir: 5\n", ["data_dir", "string"]),
        ("worker_count: [1\n", ["invalid YAML at line"]),
        ("- 1\n- 2\n", ["must be a mapping"]),
    ],
)
def test_every_bad_value_is_one_line_naming_the_file(
    tmp_path: Path, yaml_text: str, fragments: list[str]
) -> None:
    path = write(tmp_path, yaml_text)
    with pytest.raises(BeaverError) as err:
        load_config(path, {})
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(path)
    for fragment in fragments:
        assert fragment in msg


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(BeaverError, match=r"nope\.yaml: cannot read config"):
        load_config(str(tmp_path / "nope.yaml"), {})


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEAVER_WORKER_COUNT", "many")
    with pytest.raises(BeaverError, match=r"^environment BEAVER_WORKER_COUNT: worker_count: 'many'"):
        load_config(None, {})


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(BeaverError, match=r"^flag --timeout: task_timeout: 'soon' is not a duration"):
        load_config(None, {"task_timeout": "soon"}, flag_names={"task_timeout": "--timeout"})
    with pytest.raises(BeaverError, match=r"^flag --workers: worker_count must be >= 1"):
        load_config(None, {"worker_count": "0"}, flag_names={"worker_count": "--workers"})


def test_an_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing\n"), {}) == Config()


def test_wal_recovery_is_a_known_mode() -> None:
    assert Config().wal_recovery == "tolerate-tail" and not Config(wal_recovery="strict").problems()
    assert Config(wal_recovery="lenient").problems() == [
        "wal_recovery must be one of tolerate-tail, strict, got 'lenient'"
    ]
