"""Scoring per kind (exact, number, choice, temporal) and chance levels."""

from __future__ import annotations

import pytest

from mossvl.evaluation import Question, chance_levels, score_answer
from mossvl.evaluation.scoring import (
    gold_choice,
    normalize,
    parse_number,
    parse_seconds,
    predicted_choice,
    temporal_chance,
)


def _q(answer="red", task="t", **fields) -> Question:
    return Question(id=fields.pop("id", "0"), task=task, question="?", answer=answer, **fields)


@pytest.mark.parametrize(
    ("prediction", "correct"),
    [
        ("red", True),
        ("Red.", True),
        ("  RED  ", True),
        ("the red", True),
        ("reddish", False),
        ("red circle", False),
    ],
)
def test_exact_match_is_normalised(prediction, correct):
    assert score_answer(_q("red"), prediction).correct is correct


def test_normalize_drops_articles_punctuation_and_spaces():
    assert normalize("The  Red-Circle, appears!") == "red circle appears"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3.0),
        ("There are 3 shapes.", 3.0),
        ("three", 3.0),
        ("Four shapes", 4.0),
        ("2.5", 2.5),
        ("none", None),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_number_scoring_counts_unparsed():
    question = _q("3")
    assert question.scoring == "number"
    assert score_answer(question, "3 shapes") == score_answer(question, "three")
    assert score_answer(question, "There are 3.").correct
    assert not score_answer(question, "4").correct and score_answer(question, "4").parsed
    assert (
        score_answer(question, "many") == score_answer(question, "")
        and not score_answer(question, "many").parsed
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2.5 seconds", 2.5), ("at 2.5s", 2.5), ("3", 3.0), ("0:02.5", 2.5), ("1:05", 65.0), ("soon", None)],
)
def test_parse_seconds(text, seconds):
    assert parse_seconds(text) == seconds


def test_temporal_accuracy_within_half_a_second():
    question = _q("2.3 seconds", answer_seconds=2.3, duration=6.0)
    assert question.scoring == "temporal"
    assert score_answer(question, "2.3 seconds").correct
    assert score_answer(question, "2.8 seconds").correct and score_answer(question, "1.8").correct
    wrong = score_answer(question, "2.9 seconds")
    assert not wrong.correct and wrong.parsed and wrong.value == 2.9
    assert not score_answer(question, "I don't know").parsed


CHOICES = ("A. a red circle", "B. the blue square", "C. nothing")


@pytest.mark.parametrize(
    ("prediction", "index"),
    [
        ("B", 1),
        ("(B)", 1),
        ("b.", 1),
        ("B. the blue square", 1),
        ("C) nothing at all", 2),
        ("The answer is C", 2),
        ("Answer: A", 0),
        ("blue square", 1),
        ("A red circle", 0),
        ("the answer is a red circle", 0),
        ("I think the blue square appears first", 1),
        ("red circle or blue square", None),
        ("D", None),
        ("no idea", None),
    ],
)
def test_predicted_choice(prediction, index):
    assert predicted_choice(prediction, CHOICES) == index


def test_gold_choice_accepts_letter_or_text():
    assert gold_choice("B", CHOICES) == gold_choice("blue square", CHOICES) == 1
    assert gold_choice("purple", CHOICES) is None
    question = _q("red circle", choices=("red circle", "green circle"))
    assert score_answer(question, "red circle").correct and score_answer(question, "A").correct
    assert not score_answer(question, "green circle").correct
    assert not score_answer(question, "yellow").parsed


def test_temporal_chance_is_the_uniform_hit_probability():
    assert temporal_chance(3.0, 6.0) == pytest.approx(1 / 6)
    assert temporal_chance(0.2, 4.0) == pytest.approx(0.7 / 4)
    assert temporal_chance(5.9, 6.0) == pytest.approx(0.6 / 6)
    assert temporal_chance(0.3, 0.5) == 1.0


def test_chance_levels_per_task():
    questions = [
        _q("red", "color", id="1"),
        _q("blue", "color", id="2"),
        _q("Red", "color", id="3"),
        _q("2", "count", id="4"),
        _q("2.0", "count", id="5"),
        _q("4", "count", id="6"),
        _q("x", "order", id="7", choices=("x", "y")),
        _q("x", "order", id="8", choices=("x", "y", "z", "w")),
        _q("3.0 seconds", "temporal", id="9", answer_seconds=3.0, duration=6.0),
        _q("1.0 seconds", "undated", id="10", answer_seconds=1.0),
    ]
    assert chance_levels(questions) == pytest.approx(
        {"color": 1 / 2, "count": 1 / 2, "order": (1 / 2 + 1 / 4) / 2, "temporal": 1 / 6, "undated": None}
    )
