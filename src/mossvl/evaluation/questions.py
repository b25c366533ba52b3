"""Question sets: load a JSON list or JSONL file of evaluation questions into validated `Question` records.

A record has ``question`` (sent to the model verbatim) and ``answer``, plus optional ``id`` (default: its position),
``task`` (default "default"), ``images`` / ``videos`` (paths relative to the file's folder; a video may also be
``{"video_path": ..., "segments": ...}``), ``choices`` or ``options`` (multiple choice: the answer is a letter A, B, ...
or one choice's text; a choice may carry its label, "A. cat"; put the options in the question text yourself),
``answer_seconds`` (temporal grounding; ``answer`` may then be left out) and ``duration`` (clip length in seconds,
for the chance level of temporal questions). Other fields are kept in ``meta``. How a question is scored follows
from its fields (see :mod:`mossvl.evaluation.scoring`).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MediaError, QueryError
from ..processing.media_refs import is_url, resolve_media_path
from .scoring import gold_choice

_KNOWN_FIELDS = (
    "id",
    "task",
    "question",
    "answer",
    "images",
    "videos",
    "choices",
    "answer_seconds",
    "duration",
)
SCORINGS = ("temporal", "choice", "number", "exact")
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")


@dataclass(frozen=True)
class Question:
    """One evaluation question; media paths are absolute (or URLs), `scoring` says how its answer is judged."""

    id: str
    task: str
    question: str
    answer: str
    images: tuple[str, ...] = ()
    videos: tuple[str | dict, ...] = ()
    choices: tuple[str, ...] | None = None
    answer_seconds: float | None = None
    duration: float | None = None
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def scoring(self) -> str:
        if self.answer_seconds is not None:
            return "temporal"
        if self.choices is not None:
            return "choice"
        if _NUMBER.match(self.answer.strip()):
            return "number"
        return "exact"

    def to_query(self) -> dict:
        """The inference query of this question: prompt plus media (placeholders are added by the engine)."""
        return {"prompt": self.question, "images": list(self.images), "videos": list(self.videos)}

    def media_paths(self) -> list[str]:
        videos = [v["video_path"] if isinstance(v, dict) else v for v in self.videos]
        return [p for p in (*self.images, *videos) if not is_url(p)]


def load_questions(path: str | os.PathLike, check_media: bool = False) -> list[Question]:
    """Questions of a JSON list (or ``{"questions": [...]}``) or JSONL file, in file order.

    Raises QueryError naming the line (JSONL) or index (JSON) and the field of a malformed record, and, with
    `check_media`, MediaError naming the question whose media file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise QueryError(f"question file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    questions, seen = [], {}
    for where, record in _records(text, path):
        question = _parse(record, where, path.parent, default_id=str(len(questions)))
        if question.id in seen:
            raise QueryError(f"{where}: duplicate id {question.id!r} (first at {seen[question.id]})")
        seen[question.id] = where
        questions.append(question)
    if check_media:
        for question in questions:
            for media in question.media_paths():
                if not Path(media).is_file():
                    raise MediaError(f"question {question.id!r}: media file {media!r} does not exist")
    return questions


def _records(text: str, path: Path) -> list[tuple[str, object]]:
    """(location, parsed record) pairs; the location reads like 'FILE line 3' or 'FILE item 2'."""
    start = text.lstrip()[:1]
    if path.suffix.lower() != ".jsonl" and (
        start == "[" or (start == "{" and path.suffix.lower() == ".json")
    ):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QueryError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict) and isinstance(data.get("questions"), list):
            data = data["questions"]
        if not isinstance(data, list):
            raise QueryError(
                f"{path}: expected a JSON list of questions (or an object with a 'questions' list)"
            )
        return [(f"{path} item {index}", record) for index, record in enumerate(data)]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append((f"{path} line {number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise QueryError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
    return records


def _string(record: dict, key: str, where: str, default: str | None = None) -> str:
    value = record.get(key, default)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise QueryError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return value


def _seconds(record: dict, key: str, where: str) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise QueryError(f"{where}: field {key!r} must be a non-negative number of seconds, got {value!r}")
    return float(value)


def _media(record: dict, key: str, where: str, base_dir: Path) -> tuple:
    value = record.get(key, [])
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        raise QueryError(f"{where}: field {key!r} must be a list of paths, got {type(value).__name__}")
    items = []
    for index, item in enumerate(value):
        if key == "videos" and isinstance(item, dict):
            if not isinstance(item.get("video_path"), str):
                raise QueryError(f"{where}: {key}[{index}] is a dict without a 'video_path' string")
            items.append({**item, "video_path": resolve_media_path(item["video_path"], base_dir)})
        elif isinstance(item, str) and item:
            items.append(resolve_media_path(item, base_dir))
        else:
            raise QueryError(f"{where}: {key}[{index}] must be a path string, got {item!r}")
    return tuple(items)


def _parse(record: object, where: str, base_dir: Path, default_id: str) -> Question:
    if not isinstance(record, dict):
        raise QueryError(f"{where}: expected an object, got {type(record).__name__}")
    answer_seconds = _seconds(record, "answer_seconds", where)
    answer_default = f"{answer_seconds:.1f} seconds" if answer_seconds is not None else None
    choices = record.get("choices", record.get("options"))
    if choices is not None:
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)
        ):
            raise QueryError(f"{where}: field 'choices' must be a list of at least two non-empty strings")
        if len(choices) > 26:
            raise QueryError(
                f"{where}: field 'choices' has {len(choices)} options; at most 26 (A-Z) are supported"
            )
        choices = tuple(choices)
    question = Question(
        id=_string(record, "id", where, default_id),
        task=_string(record, "task", where, "default"),
        question=_string(record, "question", where),
        answer=_string(record, "answer", where, answer_default),
        images=_media(record, "images", where, base_dir),
        videos=_media(record, "videos", where, base_dir),
        choices=choices,
        answer_seconds=answer_seconds,
        duration=_seconds(record, "duration", where),
        meta={k: v for k, v in record.items() if k not in _KNOWN_FIELDS},
    )
    if choices is not None and gold_choice(question.answer, choices) is None:
        raise QueryError(
            f"{where}: field 'answer' {question.answer!r} is neither an option letter "
            f"(A-{chr(64 + len(choices))}) nor the text of one of the choices"
        )
    return question
