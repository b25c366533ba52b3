"""Runner and report with fake answer functions: batching, per-task table, JSON/markdown/predictions/PNG files."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mossvl.data.synthetic import generate_dataset
from mossvl.errors import MossVLError
from mossvl.evaluation import Question, evaluate, load_questions


def _questions() -> list[Question]:
    return [
        Question("c1", "color", "What color?", "red"),
        Question("c2", "color", "What color?", "blue"),
        Question("n1", "count", "How many?", "3"),
        Question("o1", "order", "Which first?", "A", choices=("red circle", "blue square")),
        Question("t1", "temporal", "When?", "2.3 seconds", answer_seconds=2.3, duration=6.0),
        Question("t2", "temporal", "When?", "4.0 seconds", answer_seconds=4.0, duration=8.0),
        Question("t3", "temporal", "When?", "1.0 seconds", answer_seconds=1.0, duration=4.0),
    ]


ANSWERS = {
    "c1": "Red.",
    "c2": "green",
    "n1": "three",
    "o1": "red circle",
    "t1": "2.6 s",
    "t2": "5 seconds",
    "t3": "?",
}


def test_evaluate_batches_and_aggregates_per_task():
    calls = []

    def answer_fn(batch):
        calls.append([q.id for q in batch])
        return [ANSWERS[q.id] for q in batch]

    report = evaluate(_questions(), answer_fn, batch_size=3, progress=False)
    assert calls == [["c1", "c2", "n1"], ["o1", "t1", "t2"], ["t3"]]
    assert [r.correct for r in report.results] == [True, False, True, True, True, False, False]
    tasks = {t.task: t for t in report.tasks}
    assert list(tasks) == ["color", "count", "order", "temporal"]
    assert (tasks["color"].n, tasks["color"].accuracy, tasks["color"].chance) == (2, 0.5, 0.5)
    assert (tasks["order"].scoring, tasks["order"].chance) == ("choice", 0.5)
    temporal = tasks["temporal"]
    assert (temporal.correct, temporal.unparsed) == (1, 1)
    assert temporal.mae_seconds == pytest.approx((0.3 + 1.0) / 2)
    assert temporal.chance == pytest.approx((1 / 6 + 1 / 8 + 1 / 4) / 3)
    assert report.accuracy == pytest.approx(4 / 7)
    assert report.macro_accuracy == pytest.approx((0.5 + 1 + 1 + 1 / 3) / 4)


def test_answer_function_must_return_one_string_per_question():
    with pytest.raises(MossVLError, match="returned 1 answers .* batch of 2 questions"):
        evaluate(_questions()[:2], lambda batch: ["red"], batch_size=2, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(_questions(), lambda batch: [], batch_size=0, progress=False)


def test_report_files(tmp_path):
    report = evaluate(_questions(), lambda batch: [ANSWERS[q.id] for q in batch], progress=False)
    paths = report.write(tmp_path / "out")
    summary = json.loads(paths["json"].read_text())
    assert summary["n"] == 7 and summary["accuracy"] == pytest.approx(4 / 7)
    assert [t["task"] for t in summary["tasks"]] == ["color", "count", "order", "temporal"]
    markdown = paths["markdown"].read_text()
    assert "| color | exact | 2 | 50.0% | 50.0% | 0 | – |" in markdown
    assert "| temporal | temporal | 3 | 33.3% |" in markdown and "| 0.65 |" in markdown
    predictions = [json.loads(line) for line in paths["predictions"].read_text().splitlines()]
    assert [p["prediction"] for p in predictions] == list(ANSWERS.values())
    with Image.open(paths["plot"]) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 100


def test_plot_without_temporal_tasks(tmp_path):
    report = evaluate(_questions()[:3], lambda batch: ["red"] * len(batch), progress=False)
    with Image.open(report.write(tmp_path)["plot"]) as image:
        assert image.format == "PNG"


def test_oracle_scores_every_synthetic_task_perfectly(tmp_path):
    generate_dataset(tmp_path, 0, 0, 32, seed=1, progress=False)
    questions = load_questions(tmp_path / "test_questions.jsonl", check_media=True)
    report = evaluate(questions, lambda batch: [q.answer for q in batch], progress=False)
    assert report.accuracy == 1.0
    scorings = {t.task: t.scoring for t in report.tasks}
    assert scorings == {
        "color": "exact",
        "shape": "exact",
        "count": "number",
        "position": "exact",
        "event": "exact",
        "order": "choice",
        "direction": "exact",
        "temporal": "temporal",
    }
    assert all(t.chance is not None and 0 < t.chance < 1 for t in report.tasks)
    assert {t.task: t.mae_seconds for t in report.tasks}["temporal"] == 0.0
