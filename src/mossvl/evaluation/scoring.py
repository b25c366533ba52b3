"""Judging one answer against a question, per scoring kind, and the chance level of each task.

Scoring kinds (chosen by `Question.scoring`):

* ``exact``: normalised exact match (case, punctuation, articles and extra spaces ignored): "The red circle." == "red circle".
* ``number``: the first number in the answer (digits or a number word up to twenty) equals the gold number.
* ``choice``: the option the answer picks, read as a choice's text, an option letter ("B", "(B)", "B. ...",
  "the answer is B") or the one choice whose text it contains, is the gold option.
* ``temporal``: the first time in the answer ("2.5 seconds", "2.5s", "0:02.5") is within ±0.5 s of ``answer_seconds``.

An answer that yields no number, option or time is "unparsed": wrong, and counted separately.

Chance levels: ``choice`` 1 / number of options; ``exact`` and ``number`` 1 / number of distinct gold answers of the
task in the question set; ``temporal`` the probability that a guess drawn uniformly over the clip [0, duration] lands
within ±0.5 s of the gold time (unknown without ``duration``). A task's chance is the mean over its questions.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .questions import Question

TEMPORAL_TOLERANCE = 0.5
_NUMBER_WORD_LIST = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)  # fmt: skip
NUMBER_WORDS = {word: value for value, word in enumerate(_NUMBER_WORD_LIST)}
_ARTICLES = {"a", "an", "the"}
_NUMBER = re.compile(
    r"(?<![\w.])[+-]?(?:\d+(?:\.\d+)?|\.\d+)|\b(" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE
)
_TIME = re.compile(r"(?<![\w.])(?:(\d+):(\d{1,2}(?:\.\d+)?)|(\d+(?:\.\d+)?|\.\d+))")
_LABEL = re.compile(r"^\s*\(?([A-Z])\s*[.:)]\s*")
_BARE_LETTER = re.compile(r"^\s*\(?([A-Za-z])\)?[.:)]?\s*$")
_LEADING_LETTER = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.:)])")
_ANSWER_LETTER = re.compile(r"\b(?i:answer|option|choice)\s*(?i:is|:)?\s*\(?([A-Z])\)?(?!\w)")


def normalize(text: str) -> str:
    """Lower-case words of `text` without punctuation, articles and extra spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    words = re.sub(r"[^\w\s]", " ", text).split()
    return " ".join(word for word in words if word not in _ARTICLES)


def parse_number(text: str) -> float | None:
    """The first number in `text`, as digits or an English number word up to twenty."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    if match.group(1) is not None:
        return float(NUMBER_WORDS[match.group(1).lower()])
    return float(match.group(0))


def parse_seconds(text: str) -> float | None:
    """The first time in `text` in seconds: a plain number ("2.5 seconds") or minutes:seconds ("1:02.5")."""
    match = _TIME.search(text)
    if match is None:
        return None
    if match.group(1) is not None:
        return int(match.group(1)) * 60 + float(match.group(2))
    return float(match.group(3))


def choice_text(choice: str) -> str:
    """A choice without a leading option label such as "A. " or "(A) "."""
    return _LABEL.sub("", choice, count=1)


def _letter_index(letter: str, choices: Sequence[str]) -> int | None:
    index = ord(letter.upper()) - ord("A")
    return index if 0 <= index < len(choices) else None


def _text_index(text: str, choices: Sequence[str]) -> int | None:
    wanted = normalize(text)
    matches = [i for i, c in enumerate(choices) if normalize(choice_text(c)) == wanted]
    return matches[0] if matches else None


def gold_choice(answer: str, choices: Sequence[str]) -> int | None:
    """Index of the gold option: `answer` is an option letter or the text of one choice."""
    match = _BARE_LETTER.match(answer)
    if match:
        return _letter_index(match.group(1), choices)
    return _text_index(answer, choices)


def predicted_choice(prediction: str, choices: Sequence[str]) -> int | None:
    """Index of the option an answer picks, or None when it names none (or several) of them."""
    index = _text_index(prediction, choices)
    if index is not None:
        return index
    for pattern in (_BARE_LETTER, _LEADING_LETTER, _ANSWER_LETTER):
        match = pattern.search(prediction)
        if match:
            letter = next(group for group in match.groups() if group)
            return _letter_index(letter, choices)
    said = f" {normalize(prediction)} "
    contained = [i for i, c in enumerate(choices) if f" {normalize(choice_text(c))} " in said]
    return contained[0] if len(contained) == 1 else None


@dataclass(frozen=True)
class Score:
    """Judgement of one answer; `value` is the parsed number, option index or seconds (None when unparsed)."""

    correct: bool
    parsed: bool
    value: float | None = None


def score_answer(question: Question, prediction: str) -> Score:
    """Judge `prediction` against the gold answer of `question` by its scoring kind."""
    kind = question.scoring
    if kind == "exact":
        return Score(normalize(prediction) == normalize(question.answer), True)
    if kind == "number":
        value = parse_number(prediction)
        return Score(
            value is not None and abs(value - float(question.answer)) < 1e-6, value is not None, value
        )
    if kind == "choice":
        index = predicted_choice(prediction, question.choices)
        gold = gold_choice(question.answer, question.choices)
        return Score(index is not None and index == gold, index is not None, index)
    seconds = parse_seconds(prediction)
    if seconds is None:
        return Score(False, False)
    return Score(abs(seconds - question.answer_seconds) <= TEMPORAL_TOLERANCE + 1e-9, True, seconds)


def temporal_chance(seconds: float, duration: float, tolerance: float = TEMPORAL_TOLERANCE) -> float:
    """P(|U - seconds| <= tolerance) for a guess U drawn uniformly from [0, duration]."""
    if duration <= 0:
        return 1.0
    covered = min(duration, seconds + tolerance) - max(0.0, seconds - tolerance)
    return max(0.0, min(1.0, covered / duration))


def chance_levels(questions: Sequence[Question]) -> dict[str, float | None]:
    """Chance accuracy per task (None when a temporal question has no duration)."""
    answer_space: dict[tuple[str, str], set] = defaultdict(set)
    for q in questions:
        if q.scoring == "number":
            answer_space[q.task, "number"].add(float(q.answer))
        elif q.scoring == "exact":
            answer_space[q.task, "exact"].add(normalize(q.answer))
    per_task: dict[str, list[float | None]] = defaultdict(list)
    for q in questions:
        if q.scoring == "choice":
            chance = 1 / len(q.choices)
        elif q.scoring == "temporal":
            chance = None if q.duration is None else temporal_chance(q.answer_seconds, q.duration)
        else:
            chance = 1 / len(answer_space[q.task, q.scoring])
        per_task[q.task].append(chance)
    return {
        task: None if any(c is None for c in chances) else sum(chances) / len(chances)
        for task, chances in per_task.items()
    }
