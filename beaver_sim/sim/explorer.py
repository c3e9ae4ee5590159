"""The crash explorer: pick a WAL offset, see what a crash there keeps and what recovery does.

`crash_view` runs the real simulation crashed at one byte and draws the log as it was written
(records coloured by type along the WAL's byte offsets), the crash line, what the crash model
kept, and a summary of recovery. `explorer` puts a slider over the offsets for JupyterLab
(ipywidgets); a notebook's committed output stays the static `crash_view` figure, so strict nbval
can compare it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import CrashPlan
from beaver_sim.sim.results import SimResult

TYPE_COLORS = {
    "enqueue": "#4c72b0",
    "dispatch": "#dd8452",
    "ack": "#55a868",
    "fail": "#c44e52",
    "timeout": "#8172b3",
    "requeue": "#937860",
    "dead": "#222222",
}


def hit(wal: pd.DataFrame, lsn: int) -> str:
    """The record a crash at byte `lsn` tears, from the uncrashed run's log (`wal`: life 0), with the
    last whole record before it: the run's own report (`crash.record`) names only the latter."""
    inside = wal[(wal["lsn"] <= lsn) & (lsn < wal["lsn"] + wal["bytes"])]
    before = wal[wal["lsn"] + wal["bytes"] <= lsn]
    last = "no whole record before it"
    if len(before):
        last = f"the last whole one before it: {before['seq'].iloc[-1]}"
    if inside.empty:
        where = "past the last record" if len(before) == len(wal) else "in a segment header"
        return f"{where}; {last}"
    row = inside.iloc[0]
    return f"inside record {row['seq']}, {row['type']}; {last}"


def summary(r: SimResult, wal: pd.DataFrame | None = None) -> str:
    """One sentence on a crashed run: what survived, what recovery did, whether invariants held.
    `wal`: the uncrashed run's log, to name the record hit (default: run it)."""
    c, rec = r.summary["crash"], r.summary["recovery"]
    if wal is None:
        sim = r.sim
        assert isinstance(sim, Simulation)  # (results.py types it by what a result reads of it)
        wal = replace(sim, crash=None).run().wal
    kept = c["lsn"] if c["model"] == "process" else c["durable_lsn"]
    verdict = "invariants held" if r.ok else f"{len(r.violations)} violation(s), first: {r.violations[0]}"
    return (
        f"{c['model']} crash at byte {c['at']} ({hit(wal[wal['life'] == 0], c['at'])}): "
        f"the disk kept the log up to byte {kept}; recovery cut {rec['bytes_truncated']} torn byte(s), "
        f"replayed {rec['records_replayed']} record(s), resent {rec['resubmitted']} unacknowledged "
        f"enqueue(s); {verdict}"
    )


def crash_view(sim: Simulation, lsn: int, model: str = "process") -> tuple[Figure, SimResult]:
    """The log of `sim`'s uncrashed run, with a crash at byte `lsn` under `model` marked, and the
    crashed run itself (its summary says what recovery did)."""
    base = replace(sim, crash=None).run()
    crashed = replace(sim, crash=CrashPlan("lsn", lsn), model=model).run()
    wal = base.wal[base.wal["life"] == 0]
    fig, ax = plt.subplots(figsize=(11, 2.4), layout="constrained")
    for row in wal.itertuples():
        color = TYPE_COLORS.get(row.type, "grey")
        ax.barh(0, row.bytes, left=row.lsn, height=0.6, color=color, edgecolor="white", linewidth=0.4)
    c = crashed.summary["crash"]
    kept = c["lsn"] if model == "process" else c["durable_lsn"]
    end = int(wal["lsn"].iloc[-1] + wal["bytes"].iloc[-1])
    ax.axvspan(
        kept, end, facecolor="white", alpha=0.7, hatch="//", edgecolor="grey", label="lost in the crash"
    )
    ax.axvline(lsn, color="red", lw=2, label=f"crash at byte {lsn}")
    if model != "process":
        ax.axvline(c["durable_lsn"], color="black", ls="--", lw=1, label="last fdatasync")
    ax.set_xlim(0, end)
    ax.set_yticks([])
    ax.set_xlabel("WAL offset (bytes)")
    ax.set_title(f"{model} crash at byte {lsn}: what the log held, and what survived")
    types = [t for t in TYPE_COLORS if t in set(wal["type"])]
    handles: list[Artist] = [Patch(color=TYPE_COLORS[t], label=t) for t in types]
    handles += ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return fig, crashed


def explorer(sim: Simulation, model: str = "process", step: int = 1) -> Any:
    """A slider over the WAL's byte offsets that redraws `crash_view` live (JupyterLab): the
    figure as an image widget, the summary as text, so the widget's state is the view."""
    import html
    import io

    import ipywidgets as widgets  # only the live explorer needs it

    base = replace(sim, crash=None).run()
    end = int(base.end_lsn)
    slider = widgets.IntSlider(value=end // 2, min=0, max=end, step=step, description="crash at byte")
    models = widgets.ToggleButtons(options=["process", "power-loss"], value=model, description="model")
    image = widgets.Image(format="png")
    text = widgets.HTML()

    def draw(_change: Any = None) -> None:
        fig, crashed = crash_view(sim, slider.value, models.value)
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=80, bbox_inches="tight")
        plt.close(fig)
        image.value = png.getvalue()
        text.value = f"<p>{html.escape(summary(crashed, base.wal))}</p>"

    slider.observe(draw, names="value")
    models.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([slider, models]), image, text])
