"""The crash explorer: the static view says what a crash at one byte keeps and what recovery did
(the same figures nbval compares), and the live widget redraws it when the slider moves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.explorer import crash_view, explorer, summary
from beaver_sim.sim.workload import Workload

SIM = Simulation(workload=Workload(jobs=12), seed=5)


def test_the_view_marks_the_crash_and_says_what_recovery_did() -> None:
    fig, crashed = crash_view(SIM, 1500, "power-loss")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "WAL offset (bytes)"
    assert "crash at byte 1500" in [t.get_text() for t in ax.get_legend().get_texts()]
    text = summary(crashed)
    assert text.startswith("power-loss crash at byte 1500") and "invariants held" in text
    assert f"replayed {crashed.summary['recovery']['records_replayed']} record(s)" in text


def test_the_summary_names_the_record_the_crash_byte_tears_not_the_last_whole_one() -> None:
    wal = SIM.run().wal
    row = wal[(wal["life"] == 0) & (wal["type"] == "fail")].iloc[0]  # a record with one before it
    inside = int(row["lsn"]) + int(row["bytes"]) // 2
    _fig, crashed = crash_view(SIM, inside, "process")
    assert crashed.summary["crash"]["record"][0] == row["seq"] - 1  # the run's report: the last whole one
    text = summary(crashed, wal)
    assert f"(inside record {row['seq']}, fail; the last whole one before it: {row['seq'] - 1})" in text
    assert text == summary(crashed)  # without the log, summary runs the uncrashed run itself


def test_the_widget_redraws_when_the_offset_moves() -> None:
    box = explorer(SIM, step=10)
    slider, models = box.children[0].children
    image, text = box.children[1], box.children[2]
    first_image, first_text = bytes(image.value), text.value
    assert first_image.startswith(b"\x89PNG") and f"crash at byte {slider.value}" in first_text
    slider.value = 200
    assert "process crash at byte 200" in text.value and bytes(image.value) != first_image
    models.value = "power-loss"
    assert text.value.startswith("<p>power-loss crash at byte 200")
