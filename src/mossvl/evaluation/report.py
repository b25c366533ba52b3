"""The result of an evaluation: per-question judgements, per-task accuracy against chance, and the files that show them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .questions import Question
from .scoring import TEMPORAL_TOLERANCE, chance_levels, score_answer


@dataclass(frozen=True)
class QuestionResult:
    id: str
    task: str
    scoring: str
    question: str
    answer: str
    prediction: str
    correct: bool
    parsed: bool
    value: float | None
    answer_seconds: float | None


@dataclass(frozen=True)
class TaskResult:
    """Accuracy of one task; `mae_seconds` (temporal tasks) is over the answers that gave a time."""

    task: str
    scoring: str
    n: int
    correct: int
    accuracy: float
    chance: float | None
    unparsed: int
    mae_seconds: float | None


@dataclass(frozen=True)
class EvalReport:
    results: list[QuestionResult]
    tasks: list[TaskResult]

    @property
    def accuracy(self) -> float:
        """Micro accuracy over all questions."""
        return sum(r.correct for r in self.results) / max(1, len(self.results))

    @property
    def macro_accuracy(self) -> float:
        return sum(t.accuracy for t in self.tasks) / max(1, len(self.tasks))

    def to_dict(self) -> dict:
        return {
            "n": len(self.results),
            "accuracy": self.accuracy,
            "macro_accuracy": self.macro_accuracy,
            "temporal_tolerance_seconds": TEMPORAL_TOLERANCE,
            "tasks": [asdict(task) for task in self.tasks],
        }

    def to_markdown(self) -> str:
        lines = [
            "| task | scoring | n | accuracy | chance | unparsed | MAE (s) |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for t in self.tasks:
            mae = "–" if t.mae_seconds is None else f"{t.mae_seconds:.2f}"
            lines.append(
                f"| {t.task} | {t.scoring} | {t.n} | {percent(t.accuracy)} | {percent(t.chance)} | {t.unparsed} | {mae} |"
            )
        lines.append(
            f"| **all** | | {len(self.results)} | {percent(self.accuracy)} (macro {percent(self.macro_accuracy)}) "
            f"| | {sum(t.unparsed for t in self.tasks)} | |"
        )
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write results.json, results.md, predictions.jsonl and eval.png into `out_dir`; returns their paths."""
        from .plot import plot_report  # matplotlib is slow to import; only writing a report needs it

        return write_report_files(out_dir, self, lambda path: plot_report(self, path))


def write_report_files(out_dir: str | os.PathLike, report, plot: Callable[[Path], None]) -> dict[str, Path]:
    """Write a report's results.json (``to_dict``), results.md (``to_markdown``), predictions.jsonl (one line per
    entry of ``results``) and eval.png (``plot``) into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "results.json",
        "markdown": out_dir / "results.md",
        "predictions": out_dir / "predictions.jsonl",
        "plot": out_dir / "eval.png",
    }
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(report.to_markdown(), encoding="utf-8")
    with open(paths["predictions"], "w", encoding="utf-8") as f:
        for result in report.results:
            f.write(json.dumps(asdict(result), ensure_ascii=False) + "\n")
    plot(paths["plot"])
    return paths


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def build_report(questions: Sequence[Question], predictions: Sequence[str]) -> EvalReport:
    """Judge each prediction against its question and aggregate per task (tasks in order of first appearance)."""
    if len(questions) != len(predictions):
        raise ValueError(f"{len(questions)} questions but {len(predictions)} predictions")
    results = []
    for question, prediction in zip(questions, predictions, strict=True):
        score = score_answer(question, prediction)
        results.append(
            QuestionResult(
                id=question.id,
                task=question.task,
                scoring=question.scoring,
                question=question.question,
                answer=question.answer,
                prediction=prediction,
                correct=score.correct,
                parsed=score.parsed,
                value=score.value,
                answer_seconds=question.answer_seconds,
            )
        )
    chances = chance_levels(questions)
    tasks = []
    for task in dict.fromkeys(r.task for r in results):
        rows = [r for r in results if r.task == task]
        timed = [r for r in rows if r.scoring == "temporal" and r.parsed]
        tasks.append(
            TaskResult(
                task=task,
                scoring="+".join(dict.fromkeys(r.scoring for r in rows)),
                n=len(rows),
                correct=sum(r.correct for r in rows),
                accuracy=sum(r.correct for r in rows) / len(rows),
                chance=chances[task],
                unparsed=sum(not r.parsed for r in rows),
                mae_seconds=sum(abs(r.value - r.answer_seconds) for r in timed) / len(timed)
                if timed
                else None,
            )
        )
    return EvalReport(results, tasks)
