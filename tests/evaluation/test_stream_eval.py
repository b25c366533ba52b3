"""Realtime stream evaluation: matching replies to events, the metrics, chance, record validation and the report."""

import json

import pytest

from mossvl.errors import MediaError, QueryError
from mossvl.evaluation.streams import (
    StreamCase,
    StreamEvent,
    chance_metrics,
    evaluate_streams,
    load_streams,
    metrics,
    score_stream,
)


def case(events=(), frames=10, fps=2.0, kind=None, task="appear") -> StreamCase:
    return StreamCase(
        id=f"s{len(events)}",
        task=task,
        kind=kind or ("event" if events else "no_event"),
        video="/nowhere.mp4",
        fps=fps,
        num_frames=frames,
        prompts={0: "Tell me when a red shape appears."},
        events=tuple(
            StreamEvent(f, f / fps, f"A red circle appeared at {f / fps:.1f} seconds.") for f in events
        ),
    )


def replies(frames=10, **said) -> list[str]:
    out = [""] * frames
    for frame, text in said.items():
        out[int(frame[1:])] = text
    return out


def test_a_reply_on_the_event_frame_is_an_exact_timely_detection():
    result = score_stream(case([4]), replies(f4="A red circle appeared at 2.0 seconds."), tolerance=2)
    assert (result.detected, result.delays_frames, result.false_alarms) == (1, [0], [])
    assert (result.exact, result.timed) == (1, 1)


def test_late_early_and_wrong_time_replies():
    late = score_stream(case([4]), replies(f7="A red circle appeared at 3.5 seconds."), tolerance=2)
    assert (late.detected, late.false_alarms) == (0, [7])
    early = score_stream(case([4]), replies(f3="x", f5="A red circle appeared at 9.0 seconds."), tolerance=2)
    assert (early.detected, early.delays_frames, early.false_alarms) == (1, [1], [3])
    assert (early.exact, early.timed) == (0, 0)
    double = score_stream(case([4]), replies(f4="a", f5="b"), tolerance=2)
    assert (double.detected, double.false_alarms) == (1, [5])


def test_metrics_and_false_alarm_rate_over_streams():
    results = [
        score_stream(case([4]), replies(f4="A red circle appeared at 2.0 seconds."), 2),
        score_stream(case([2, 6], kind="barge_in"), replies(f3="x"), 2),
        score_stream(case(), replies(), 2),
        score_stream(case(), replies(f1="x"), 2),
    ]
    m = metrics(results)
    assert (m.events, m.detected, m.responses) == (3, 2, 3)
    assert m.recall == pytest.approx(2 / 3) and m.precision == pytest.approx(2 / 3)
    assert m.median_delay_frames == 0.5 and m.median_delay_seconds == 0.25
    assert (m.event_free_streams, m.false_alarm_rate) == (2, 0.5)
    assert m.exact == 0.5


def test_chance_speaks_at_the_event_rate():
    cases = [case([3]), case()]
    chance = chance_metrics(cases, tolerance=2, runs=300)
    assert chance["rate"] == pytest.approx(1 / 20)
    # P(speaking on at least one of 10 frames) at 5% per frame.
    assert chance["false_alarm_rate"] == pytest.approx(1 - 0.95**10, abs=0.06)
    assert 0.05 < chance["recall"] < 0.25


def test_records_are_validated(tmp_path):
    path = tmp_path / "streams.jsonl"
    good = {"video": "a.mp4", "fps": 2, "num_frames": 8, "prompts": [{"frame": 0, "text": "p"}], "events": []}
    path.write_text(json.dumps(good) + "\n")
    with pytest.raises(MediaError, match="a.mp4 does not exist"):
        load_streams(path)
    assert load_streams(path, check_media=False)[0].kind == "no_event"
    bad = {**good, "events": [{"frame": 9, "time": 4.5, "reply": "r"}]}
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(QueryError, match=r"frames \[9\] are outside the stream's 8 frames"):
        load_streams(path, check_media=False)
    path.write_text(json.dumps({**good, "prompts": [{"frame": 2, "text": "p"}]}) + "\n")
    with pytest.raises(QueryError, match="first prompt must arrive at frame 0"):
        load_streams(path, check_media=False)
    path.write_text('{"video": ')
    with pytest.raises(QueryError, match="invalid JSON"):
        load_streams(path)


def test_report_files(tmp_path):
    cases = [case([4]), case(task="move")]
    answers = {cases[0].id: replies(f4="A red circle appeared at 2.0 seconds."), cases[1].id: replies()}
    report = evaluate_streams(cases, lambda c: answers[c.id], concurrency=2, progress=False)
    paths = report.write(tmp_path)
    table = paths["markdown"].read_text()
    assert "| **all** | 2 | 1 | 100.0% | 100.0% | 0 fr (0 s) | 0.0% of 1 | 100.0% | 100.0% |" in table
    assert "chance (speaks after 5.0% of frames)" in table
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    assert json.loads(paths["json"].read_text())["tasks"]["move"]["false_alarm_rate"] == 0.0
