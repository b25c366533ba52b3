"""Question-set loader: formats, path resolution, derived scoring kinds, and errors that name the bad record."""

from __future__ import annotations

import json

import pytest

from mossvl.errors import MediaError, QueryError
from mossvl.evaluation import load_questions


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_jsonl_and_json_list_load_the_same_questions(tmp_path):
    records = [
        {"id": "a", "task": "color", "question": "What color?", "images": ["img/a.png"], "answer": "red"},
        {"task": "count", "question": "How many?", "images": ["/abs/b.png"], "answer": 3},
        {"task": "temporal", "question": "When?", "videos": ["v.mp4"], "answer_seconds": 2.3, "duration": 6},
        {
            "question": "Pick",
            "choices": ["A. cat", "B. dog"],
            "answer": "B",
            "videos": [{"video_path": "w.mp4"}],
        },
    ]
    from_jsonl = load_questions(_write_jsonl(tmp_path / "q.jsonl", records))
    (tmp_path / "q.json").write_text(json.dumps({"questions": records}))
    assert load_questions(tmp_path / "q.json") == from_jsonl
    first, second, third, fourth = from_jsonl
    assert first.images == (str(tmp_path / "img/a.png"),)
    assert (second.id, second.answer, second.images) == ("1", "3", ("/abs/b.png",))
    assert (third.answer, third.answer_seconds, third.duration) == ("2.3 seconds", 2.3, 6.0)
    assert (fourth.task, fourth.videos) == ("default", ({"video_path": str(tmp_path / "w.mp4")},))
    assert (fourth.choices, fourth.meta) == (("A. cat", "B. dog"), {})
    assert [q.scoring for q in from_jsonl] == ["exact", "number", "temporal", "choice"]
    assert first.to_query() == {
        "prompt": "What color?",
        "images": [str(tmp_path / "img/a.png")],
        "videos": [],
    }


def test_extra_fields_are_kept_in_meta(tmp_path):
    (question,) = load_questions(
        _write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "x", "fps": "15/2"}])
    )
    assert question.meta == {"fps": "15/2"}


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"question": "q", "answer": "a"}, {"answer": "a"}], r"q\.jsonl line 2: field 'question'"),
        ([{"question": "q"}], r"line 1: field 'answer' must be a non-empty string"),
        ([{"question": "q", "answer": "a", "images": "x.png", "videos": [3]}], r"videos\[0\] must be a path"),
        ([{"question": "q", "answer": "a", "videos": [{"segments": []}]}], "without a 'video_path'"),
        ([{"question": "q", "answer_seconds": -1}], "'answer_seconds' must be a non-negative number"),
        ([{"question": "q", "answer": "a", "choices": ["only"]}], "at least two"),
        (
            [{"question": "q", "answer": "C", "choices": ["x", "y"]}],
            r"'answer' 'C' is neither an option letter \(A-B\)",
        ),
        (
            [{"id": "x", "question": "q", "answer": "a"}, {"id": "x", "question": "q", "answer": "b"}],
            "duplicate id",
        ),
        (["just a string"], "line 1: expected an object"),
    ],
)
def test_malformed_records_name_line_and_field(tmp_path, records, message):
    with pytest.raises(QueryError, match=message):
        load_questions(_write_jsonl(tmp_path / "q.jsonl", records))


def test_json_list_errors_name_the_item(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps([{"question": "q", "answer": "a"}, {"question": "", "answer": "a"}]))
    with pytest.raises(QueryError, match=r"q\.json item 1: field 'question'"):
        load_questions(path)


def test_invalid_json_and_missing_file(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{oops\n')
    with pytest.raises(QueryError, match="line 2: not valid JSON"):
        load_questions(path)
    with pytest.raises(QueryError, match="does not exist"):
        load_questions(tmp_path / "missing.jsonl")


def test_check_media_names_the_question_and_file(tmp_path):
    (tmp_path / "here.png").write_bytes(b"")
    path = _write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"id": "ok", "question": "q", "answer": "a", "images": ["here.png"]},
            {"id": "bad", "question": "q", "answer": "a", "videos": ["gone.mp4"]},
        ],
    )
    assert len(load_questions(path)) == 2
    with pytest.raises(MediaError, match=r"question 'bad': media file .*gone\.mp4"):
        load_questions(path, check_media=True)
