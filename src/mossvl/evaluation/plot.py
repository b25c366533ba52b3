"""PNG figures of evaluations: accuracy per task with chance markers and predicted vs true time for temporal tasks;
for realtime streams, detection per task against chance and the response delays."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .scoring import TEMPORAL_TOLERANCE

if TYPE_CHECKING:
    from .report import EvalReport
    from .streams import StreamReport


def plot_report(report: EvalReport, path: str | os.PathLike) -> None:
    """Save the figure of `report` to `path` (Agg canvas: no display and no global pyplot state)."""
    timed = [r for r in report.results if r.scoring == "temporal"]
    figure = Figure(figsize=(11 if timed else 6.5, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2 if timed else 1, squeeze=False)[0]

    bars = axes[0]
    names = [t.task for t in report.tasks]
    positions = range(len(names))
    bars.bar(positions, [100 * t.accuracy for t in report.tasks], color="#4c72b0", label="accuracy")
    chance = [(i, 100 * t.chance) for i, t in enumerate(report.tasks) if t.chance is not None]
    if chance:
        xs, ys = zip(*chance, strict=True)
        bars.scatter(xs, ys, marker="_", s=900, linewidths=2.5, color="#c44e52", zorder=3, label="chance")
    bars.set_xticks(list(positions), names, rotation=30, ha="right")
    bars.set_ylim(0, 115)
    bars.set_ylabel("accuracy (%)")
    bars.set_title(f"accuracy per task (all: {100 * report.accuracy:.1f}%, n={len(report.results)})")
    bars.legend(loc="upper center", ncols=2, fontsize="small")

    if timed:
        scatter = axes[1]
        parsed = [r for r in timed if r.parsed]
        top = max([r.answer_seconds for r in timed] + [r.value for r in parsed] + [1.0]) + 0.5
        diagonal = [0.0, top]
        scatter.fill_between(
            diagonal,
            [x - TEMPORAL_TOLERANCE for x in diagonal],
            [x + TEMPORAL_TOLERANCE for x in diagonal],
            color="#55a868",
            alpha=0.2,
            label=f"±{TEMPORAL_TOLERANCE:g} s",
        )
        scatter.plot(diagonal, diagonal, color="#55a868", linewidth=1)
        scatter.scatter(
            [r.answer_seconds for r in parsed],
            [r.value for r in parsed],
            c=["#4c72b0" if r.correct else "#c44e52" for r in parsed],
            s=14,
            zorder=3,
        )
        scatter.set_xlim(0, top)
        scatter.set_ylim(0, top)
        scatter.set_xlabel("true event time (s)")
        scatter.set_ylabel("predicted time (s)")
        unparsed = len(timed) - len(parsed)
        scatter.set_title(f"temporal grounding (n={len(timed)}, unparsed {unparsed})")
        scatter.legend(loc="upper left", fontsize="small")
    figure.savefig(path, dpi=100)


def plot_stream_report(report: StreamReport, path: str | os.PathLike) -> None:
    """Save the realtime figure: recall, precision and false alarms per task (chance as lines), and delays."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    bars, delays = figure.subplots(1, 2)
    tasks = report.per_task()
    names = list(tasks)
    series = [
        ("recall", "#4c72b0", "recall"),
        ("precision", "#55a868", "precision"),
        ("false_alarm_rate", "#c44e52", "false alarms (event-free streams)"),
    ]
    width = 0.8 / len(series)
    for k, (key, color, label) in enumerate(series):
        values = [100 * (getattr(tasks[name], key) or 0.0) for name in names]
        xs = [i + (k - 1) * width for i in range(len(names))]
        bars.bar(xs, values, width, color=color, label=label)
        chance = report.chance.get(key)
        if chance is not None:
            bars.axhline(100 * chance, color=color, linestyle=":", linewidth=1.2)
    bars.set_xticks(range(len(names)), names)
    bars.set_ylim(0, 115)
    bars.set_ylabel("%")
    overall = report.overall
    bars.set_title(f"per task (n={overall.streams} streams; dotted: chance)", fontsize="medium")
    bars.legend(loc="upper center", ncols=3, fontsize="small")

    found = [d for r in report.results for d in r.delays_frames]
    missed = overall.events - overall.detected
    labels = [f"{d}" for d in range(report.tolerance + 1)] + ["missed"]
    counts = [found.count(d) for d in range(report.tolerance + 1)] + [missed]
    delays.bar(labels, counts, color=["#4c72b0"] * (report.tolerance + 1) + ["#c44e52"])
    delays.set_xlabel("frames from the event's first visible frame to the reply")
    delays.set_ylabel("events")
    delays.set_title(f"response delay ({overall.events} events)", fontsize="medium")
    figure.savefig(path, dpi=100)
