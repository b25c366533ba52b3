"""Synthetic realtime streams: every event is visible exactly from its frame on, replies name it with the frame's
time, prompts and replies line up in the training and evaluation records, and generation is reproducible."""

import json

import numpy as np
import pytest

from mossvl.data.synthetic_streams import (
    LINE_X,
    STREAM_TASKS,
    generate_streams,
    make_stream,
    sample_stream,
    training_record,
)
from mossvl.processing.video import stream_frames


def streams(count: int = 150):
    return [make_stream(0, "train", index) for index in range(count)]


def centre(shape) -> float:
    return shape.x + shape.size / 2


def test_tasks_kinds_and_event_frames_are_balanced_and_in_range():
    made = streams()
    assert {s.task for s in made} == set(STREAM_TASKS)
    kinds = {kind: sum(s.kind == kind for s in made) for kind in ("event", "no_event", "barge_in")}
    assert all(count >= 15 for count in kinds.values()), kinds
    for s in made:
        assert 8 <= s.scene.num_frames <= 14 and s.scene.fps in (1, 2)
        assert s.prompts[0][0] == 0
        for frame in s.replies:
            assert 1 <= frame <= s.scene.num_frames - 2  # silent first and last frames
        if s.kind == "no_event":
            assert not s.replies
        if s.kind == "barge_in":
            (_, _), (switch, _) = s.prompts
            assert all(frame <= switch - 2 or frame >= switch for frame in s.replies)
            assert s.task != "move"


@pytest.mark.parametrize("task", STREAM_TASKS)
def test_the_reply_frame_is_the_first_frame_that_shows_the_event(task):
    checked = 0
    for s in streams():
        if s.task != task or s.kind != "event":
            continue
        ((frame, reply),) = s.replies.items()
        assert reply.endswith(f" at {frame / s.scene.fps:.1f} seconds.")
        before, after = s.scene.frames[frame - 1], s.scene.frames[frame]
        words = reply.split()
        if task == "appear":
            name = " ".join(words[1:3])
            assert name not in [x.name for x in before] and name in [x.name for x in after]
        elif task == "vanish":
            name = " ".join(words[1:3])
            assert name in [x.name for x in before] and name not in [x.name for x in after]
        elif task == "recolor":
            kind, color = words[1], words[3]
            assert [x.color for x in before if x.shape == kind] != [color]
            assert [x.color for x in after if x.shape == kind] == [color]
        elif task == "move":
            assert all(a == b for a, b in zip(s.scene.frames[0], before, strict=True))
            assert before != after
        else:
            name = " ".join(words[1:3])
            (old,) = [x for x in before if x.name == name]
            (new,) = [x for x in after if x.name == name]
            middle = LINE_X + 1
            assert (centre(old) - middle) * (centre(new) - middle) < 0
            assert min(abs(centre(old) - middle), abs(centre(new) - middle)) >= 3.5
        checked += 1
    assert checked >= 5


def test_training_record_layout():
    s = next(s for s in streams() if s.kind == "barge_in")
    record = training_record(s, "clip.mp4")
    roles = [turn["role"] for turn in record["conversations"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    first, second = record["conversations"][2]["content"], record["conversations"][4]["content"]
    switch = s.prompts[1][0]
    assert first.count("<|video|>") == switch and second.startswith("<|silence|><|video|>")
    assert first.count("<|video|>") + second.count("<|video|>") == s.scene.num_frames
    assert record["videos"] == [{"video_path": "clip.mp4", "segments": [[t] for t in s.scene.timestamps]}]


def test_generated_files_decode_to_the_rendered_frames(tmp_path):
    manifest = generate_streams(tmp_path, 6, 0, 2, seed=3, progress=False)
    assert manifest["splits"]["train"]["streams"] == 6
    records = [json.loads(line) for line in (tmp_path / "test_streams.jsonl").read_text().splitlines()]
    assert len(records) == 2 and len((tmp_path / "train.jsonl").read_text().splitlines()) == 6
    record = records[0]
    stream = make_stream(3, "test", 0)
    decoded = list(stream_frames(tmp_path / record["video"], record["fps"]))
    assert [t for _, t in decoded] == pytest.approx(stream.scene.timestamps)
    for (pixels, _), index in zip(decoded, range(stream.scene.num_frames), strict=True):
        error = np.abs(pixels.astype(int) - stream.scene.render(index).astype(int)).mean()
        assert error < 4  # H.264 at crf 18
    again = tmp_path / "again"
    generate_streams(again, 6, 0, 2, seed=3, progress=False)
    assert (again / "train.jsonl").read_text() == (tmp_path / "train.jsonl").read_text()


def test_the_bundled_sample_stream():
    s = sample_stream()
    assert s.replies == {7: "A red circle appeared at 3.5 seconds."}
    assert s.prompts == [(0, "Tell me when a red shape appears.")]
