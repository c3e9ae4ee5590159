"""Every quantitative plot axis names its unit."""

from __future__ import annotations

from collections.abc import Iterator

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from beaver_sim.sim import plots


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def test_axis_labels_name_units() -> None:
    assert plots.axis_label("crash time") == "crash time (virtual s)"
    assert plots.axis_label("offset") == "WAL offset (bytes)"
    assert plots.axis_label("records_replayed") == "records replayed (count)"
    assert plots.axis_label("something_else") == "something else"


def test_each_helper_labels_its_axes_with_units() -> None:
    attempts = pd.DataFrame(
        {"worker": [0, 1], "start": [0.0, 0.1], "duration": [0.2, 0.3], "outcome": ["completed", "failed"]}
    )
    ax = plots.timeline(attempts)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("virtual time (s)", "worker (number)")
    sweep = pd.DataFrame({"offset": [10, 20], "outcome": ["ok", "ok"], "model": ["process", "power-loss"]})
    assert plots.outcome_map(sweep, by="model").get_xlabel() == "WAL offset (bytes)"
    rec = pd.DataFrame({"crash time": [0.5, 1.0], "records_replayed": [10, 20], "model ms": [0.1, 0.2]})
    ax = plots.recovery_time(rec, x="crash time", y="records_replayed")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("crash time (virtual s)", "records replayed (count)")
    jobs = pd.DataFrame({"attempts": [1, 2, 3], "status": ["completed", "completed", "dead"]})
    ax = plots.attempts_histogram(jobs, max_retry=3)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("attempts per job", "jobs (count)")
    by = pd.DataFrame(
        {"failure_rate": [0.1, 0.2], "retries per job": [0.1, 0.25], "dead fraction": [0.0, 0.01]}
    )
    ax = plots.rates(by, ys=["retries per job", "dead fraction"])
    assert ax.get_xlabel() == "failure rate (fraction of attempts)"
    assert ax.get_ylabel() == "retries per job, dead fraction"


def test_outcome_map_marks_and_timeline_labels_are_drawn() -> None:
    sweep = pd.DataFrame({"offset": [10, 20, 30], "outcome": ["ok", "violation", "ok"]})
    ax = plots.outcome_map(sweep, marks={"first acknowledgement": [15], "snapshot": [25, 28]})
    assert sorted(line.get_xdata()[0] for line in ax.lines) == [15, 25, 28]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["first acknowledgement", "snapshot"]
    attempts = pd.DataFrame(
        {"worker": [0, 0], "start": [0.0, 0.3], "duration": [0.2, 0.3], "outcome": ["failed", "completed"]}
    )
    ax = plots.timeline(attempts.assign(job=["a", "a"]), label="job")
    assert [t.get_text() for t in ax.texts] == ["a", "a"]


def test_theory_lines_take_their_measurements_colour_and_max_retry_is_in_view() -> None:
    by = pd.DataFrame(
        {"failure_rate": [0.1, 0.2], "dead fraction": [0.0, 0.01], "dead fraction (theory)": [0.001, 0.008]}
    )
    ax = plots.rates(by, ys=["dead fraction", "dead fraction (theory)"], dashed=["dead fraction (theory)"])
    measured, theory = ax.lines
    assert theory.get_color() == measured.get_color() and theory.get_linestyle() == "--"
    jobs = pd.DataFrame({"attempts": [1, 2, 3], "status": ["completed", "completed", "dead"]})
    ax = plots.attempts_histogram(jobs, max_retry=3)
    (marker,) = ax.lines
    assert marker.get_xdata()[0] == 3.5 and ax.get_xlim()[1] > 4
    assert [t.get_text() for t in ax.texts] == ["max_retry = 3"]
