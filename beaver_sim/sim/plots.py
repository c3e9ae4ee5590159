"""Plots for the teaching notebooks: each function takes a DataFrame the simulator produced and returns
the Axes it drew on (titled by `title=`), so a notebook can add a line or a label to it.

Nothing here reads a clock or draws a random number: the same DataFrame gives the same figure. The
functions use pyplot only to create figures (so Jupyter's inline backend shows them) and never pick a
backend, so they work under Agg in scripts and CI as well."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.typing import ColorType, LineStyleType, RcKeyType

# One color per outcome, the same in every notebook; unknown outcomes get the next tab10 color.
OUTCOME_COLORS = {
    "ok": "#4c9f70",
    "completed": "#4c9f70",
    "recovered": "#4c9f70",
    "failed": "#edae49",
    "refused": "#edae49",
    "timeout": "#d1495b",
    "late": "#8e8e8e",
    "stale": "#8e8e8e",
    "dead": "#30343f",
    "violation": "#d1495b",
    "lost": "#d1495b",
    "new": "#4c9f70",  # what a reboot finds after a snapshot write (notebook 03)
    "old": "#edae49",
    "corrupt": "#d1495b",
    "nothing": "#30343f",
}
_RC: dict[RcKeyType, Any] = {
    "figure.figsize": (7.0, 3.2),
    "figure.dpi": 100,
    "figure.constrained_layout.use": True,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": "medium",
    "legend.frameon": False,
    "svg.hashsalt": "beaver_sim",  # fixed ids if someone saves SVG: diffs stay readable
}


def setup_notebook(seed: int = 0) -> None:
    """Fix the plot style, pandas display options and the global seeds, so that every notebook renders
    the same text on every run (strict nbval compares it). The simulator has its own seeded RNGs."""
    mpl.rcParams.update(_RC)
    pd.set_option("display.max_rows", 40)
    pd.set_option("display.max_columns", 20)
    pd.set_option("display.width", 110)
    pd.set_option("display.precision", 4)
    random.seed(seed)
    np.random.seed(seed)


AXIS_LABELS = {  # column -> axis label with its unit; other columns: the name, underscores as spaces
    "offset": "WAL offset (bytes)",
    "lsn": "WAL offset (bytes)",
    "record": "crash after record (seq)",
    "time": "crash time (virtual s)",
    "crash time": "crash time (virtual s)",
    "records_replayed": "records replayed (count)",
    "model_seconds": "modelled recovery time (s)",
    "seconds": "measured recovery time (wall-clock s)",
    "model ms": "modelled recovery time (ms)",
    "measured ms": "measured recovery time (wall-clock ms)",
    "ms": "recovery time (ms)",
    "wal_bytes": "WAL read (bytes)",
    "failure_rate": "failure rate (fraction of attempts)",
}


def axis_label(column: str) -> str:
    """The label of an axis showing `column`, naming its unit."""
    return AXIS_LABELS.get(column, column.replace("_", " "))


def _axes(ax: Axes | None, title: str | None) -> Axes:
    """The Axes to draw on (a new figure's when None), titled. Notebooks assign the result (`ax = ...`):
    nbval runs cells without IPython history, so a trailing `;` does not silence a cell's last value."""
    ax = ax if ax is not None else plt.subplots()[1]
    if title:
        ax.set_title(title)
    return ax


def _palette(name: str) -> list[tuple[float, float, float, float]]:
    """The colors of a qualitative colormap (tab10, Dark2), in order, as RGBA: calling it with an
    index, which the type stubs know, rather than reading `.colors`, which only a ListedColormap has."""
    cmap = mpl.colormaps[name]
    return [cmap(i) for i in range(cmap.N)]


def outcome_colors(outcomes: Sequence[str]) -> dict[str, str]:
    """A color per outcome: the fixed ones first, then tab10 in sorted order for the rest."""
    extra = iter(_palette("tab10"))
    return {o: OUTCOME_COLORS.get(o) or mpl.colors.to_hex(next(extra)) for o in sorted(set(outcomes))}


def _legend(ax: Axes, colors: dict[str, str], title: str | None = None) -> Legend:
    handles = [Patch(color=c, label=o) for o, c in colors.items()]
    return ax.legend(handles=handles, title=title, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def timeline(
    attempts: pd.DataFrame,
    *,
    worker: str = "worker",
    start: str = "start",
    duration: str = "duration",
    outcome: str = "outcome",
    label: str | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """One bar per attempt on its worker's row over virtual time, colored by outcome: shows dispatch,
    retries and attempts that ran past their timeout. `label` names a column written on each bar
    (e.g. the job), so that one job's retries can be followed from worker to worker."""
    ax = _axes(ax, title)
    colors = outcome_colors(attempts[outcome].astype(str))
    for (w, o), rows in attempts.groupby([worker, outcome], sort=True):
        spans = list(zip(rows[start], rows[duration]))
        ax.broken_barh(spans, (w - 0.4, 0.8), color=colors[str(o)], edgecolor="white", linewidth=0.5)
    if label is not None:
        for s, d, w, text in zip(attempts[start], attempts[duration], attempts[worker], attempts[label]):
            ax.text(s + d / 2, w, str(text), ha="center", va="center", fontsize=6, clip_on=True)
    ax.set_yticks(sorted(attempts[worker].unique()))
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("worker (number)")
    ax.grid(axis="y", visible=False)
    _legend(ax, colors, outcome)
    return ax


def outcome_grid(
    df: pd.DataFrame,
    *,
    row: str,
    col: str,
    value: str,
    label: str | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """A table of categorical outcomes (e.g. crash point x crash model), one colored cell each, the
    `label` column (default: the value) written in it. Rows and columns keep their first-seen order."""
    ax = _axes(ax, title)
    rows = list(dict.fromkeys(df[row]))
    cols = list(dict.fromkeys(df[col]))
    colors = outcome_colors(df[value].astype(str))
    text = df[label or value].astype(str)
    for (r, c, v), t in zip(df[[row, col, value]].itertuples(index=False), text):
        y, x = rows.index(r), cols.index(c)
        ax.add_patch(Rectangle((x, y), 1, 1, color=colors[str(v)], ec="white", lw=2))
        ax.text(x + 0.5, y + 0.5, t, ha="center", va="center", fontsize=8, color="white")
    ax.set_xlim(0, len(cols))
    ax.set_ylim(len(rows), 0)
    ax.set_xticks(np.arange(len(cols)) + 0.5, cols)
    ax.set_yticks(np.arange(len(rows)) + 0.5, rows)
    ax.tick_params(length=0)
    ax.grid(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)
    _legend(ax, colors, value)
    return ax


def outcome_map(
    df: pd.DataFrame,
    *,
    x: str = "offset",
    outcome: str = "outcome",
    by: str | None = None,
    marks: dict[str, Sequence[float]] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Outcomes of a crash sweep along the crash position (a WAL offset, a record index), one strip per
    value of `by` (e.g. the crash model): where along the log each design loses or keeps data.
    `marks` draws labelled vertical lines (the first acknowledgement, snapshots, segment rotations),
    so the reader can see which event turns an outcome on or off."""
    ax = _axes(ax, title)
    groups = list(dict.fromkeys(df[by])) if by else [None]
    colors = outcome_colors(df[outcome].astype(str))
    for i, g in enumerate(groups):
        part = df if g is None else df[df[by] == g]
        for o, rows in part.groupby(outcome, sort=True):
            ax.scatter(rows[x], np.full(len(rows), i), s=14, marker="|", color=colors[str(o)], linewidths=2)
    ax.set_yticks(range(len(groups)), [str(g) if g is not None else "" for g in groups])
    ax.set_ylim(len(groups) - 0.4, -0.6)  # the first group on top
    ax.set_xlabel(axis_label(x))
    ax.grid(axis="y", visible=False)
    legend = _legend(ax, colors, outcome)
    if marks:
        dashes: tuple[LineStyleType, ...] = ("--", ":", "-.", (0, (5, 1)))
        styles = iter(zip(_palette("Dark2"), dashes))
        handles = []
        for name, xs in marks.items():
            color, style = next(styles)
            for at in xs:
                ax.axvline(at, color=color, linestyle=style, linewidth=1)
            handles.append(Line2D([], [], color=color, linestyle=style, label=name))
        ax.add_artist(legend)
        ax.legend(handles=handles, title="marks", loc="lower left", bbox_to_anchor=(1.0, 0.0))
    return ax


def recovery_time(
    df: pd.DataFrame,
    *,
    x: str = "records_replayed",
    y: str = "model_seconds",
    hue: str | None = None,
    lines: bool = True,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Recovery time against the work recovery did (records replayed, bytes read) or against when
    the crash came, one series per `hue`; `lines=False` for a scatter. The straight line is why
    snapshots exist."""
    ax = _axes(ax, title)
    groups = df.groupby(hue, sort=True) if hue else [(None, df)]
    for name, rows in groups:
        rows = rows.sort_values(x)
        ax.plot(
            rows[x],
            rows[y],
            marker="o",
            ms=3,
            lw=1 if lines else 0,
            label=None if name is None else str(name),
        )
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    if hue:
        ax.legend(title=hue)
    return ax


def attempts_histogram(
    jobs: pd.DataFrame,
    *,
    attempts: str = "attempts",
    status: str = "status",
    max_retry: int | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """How many jobs needed 1, 2, ... attempts, stacked by final status; a dashed line at `max_retry`
    shows that no job goes past it."""
    ax = _axes(ax, title)
    table = jobs.groupby([attempts, status]).size().unstack(fill_value=0).sort_index()
    colors = outcome_colors(table.columns.astype(str))
    bottom = np.zeros(len(table))
    for s in table.columns:
        ax.bar(table.index, table[s], bottom=bottom, color=colors[str(s)], label=str(s), width=0.7)
        bottom += table[s].to_numpy()
    ax.set_ylim(0, bottom.max() * 1.08)
    if max_retry is not None:  # the limit sits after the last allowed bar, with room for the next one
        ax.axvline(max_retry + 0.5, ls="--", color="black", lw=1)
        ax.text(max_retry + 0.55, bottom.max(), f"max_retry = {max_retry}", fontsize=8, va="top")
        ax.set_xlim(0.4, max(table.index.max(), max_retry + 1) + 0.6)
    ax.set_xticks(table.index)
    ax.set_xlabel("attempts per job")
    ax.set_ylabel("jobs (count)")
    ax.legend(title=status, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def rates(
    df: pd.DataFrame,
    *,
    x: str = "failure_rate",
    ys: Sequence[str] = ("retried", "dead"),
    dashed: Sequence[str] = (),
    ylabel: str | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Several counts (or fractions) against one swept parameter, e.g. retries and dead letters as the
    failure rate grows; the `dashed` columns (a theory to compare with) get no markers, and the colour
    of the measured column their name starts with (`dead fraction (theory)` that of `dead fraction`),
    so each theory reads with its measurement. Plot a rate and a fraction on separate axes. The y label
    defaults to the plotted columns' names, which say their unit (`retries per job`)."""
    ax = _axes(ax, title)
    rows = df.sort_values(x)
    colors: dict[str, ColorType] = {}
    style: dict[str, Any]
    for y in ys:
        if y in dashed:
            measured = [m for m in colors if y.startswith(m)]
            style = {"ls": "--", "lw": 1.5, "color": colors[measured[0]] if measured else None}
        else:
            style = {"marker": "o", "ms": 3, "lw": 1}
        (line,) = ax.plot(rows[x], rows[y], label=y.replace("_", " "), **style)
        colors.setdefault(y, line.get_color())
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(ylabel or ", ".join(axis_label(y) for y in ys if y not in dashed))
    ax.legend()
    return ax
