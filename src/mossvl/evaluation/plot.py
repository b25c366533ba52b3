"""PNG figure of an evaluation: accuracy per task with chance markers, and predicted vs true time for temporal tasks."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .scoring import TEMPORAL_TOLERANCE

if TYPE_CHECKING:
    from .report import EvalReport


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
