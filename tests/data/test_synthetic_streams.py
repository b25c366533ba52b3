"""Synthetic realtime streams: every event is visible exactly from its frame on, replies name it with the frame's
time, prompts and replies line up in the training and evaluation records, and generation is reproducible."""

import json

import numpy as np
import pytest

from mossvl.data.synthetic import Shape
from mossvl.data.synthetic_streams import (
    LINE_X,
    STREAM_TASKS,
    StreamScene,
    frame_changes,
    generate_streams,
    make_stream,
    sample_stream,
    training_record,
)
from mossvl.processing.video import stream_frames


def streams(count: int = 150, decoy_share: float = 0.0):
    return [make_stream(0, "train", index, decoy_share=decoy_share) for index in range(count)]


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


@pytest.mark.parametrize("decoy_share", [0.0, 1.0])
@pytest.mark.parametrize("task", STREAM_TASKS)
def test_the_reply_frame_is_the_first_frame_that_shows_the_event(task, decoy_share):
    checked = 0
    for s in streams(decoy_share=decoy_share):
        if s.task != task or s.kind != "event":
            continue
        ((frame, reply),) = s.replies.items()
        assert reply.endswith(f" at {frame / s.scene.fps:.1f} seconds.")
        before, after = s.scene.frames[frame - 1], s.scene.frames[frame]
        words = reply.split()
        name = " ".join(words[:2]).lower()  # every reply opens with the shape's colour and kind
        if task == "appear":
            assert name not in [x.name for x in before] and name in [x.name for x in after]
            assert s.prompts[0][1].split()[-2:] in (["shape", "appears."], ["shows", "up."])
            assert words[0].lower() in s.prompts[0][1].split()
        elif task == "vanish":
            assert name in [x.name for x in before] and name not in [x.name for x in after]
        elif task == "recolor":
            (old,) = [x for x in before if x.name == name]
            (new,) = [x for x in after if (x.shape, x.x, x.y) == (old.shape, old.x, old.y)]
            assert new.color == words[3] != old.color
            assert f"the {name} " in s.prompts[0][1]
        elif task == "move":
            (mover,) = [x for x in before if x.name == name]
            assert all(mover in frame for frame in s.scene.frames[:frame])
            assert mover not in after
        else:
            (old,) = [x for x in before if x.name == name]
            (new,) = [x for x in after if x.name == name]
            middle = LINE_X + 1
            assert (centre(old) - middle) * (centre(new) - middle) < 0
            assert min(abs(centre(old) - middle), abs(centre(new) - middle)) >= 3.5
        checked += 1
    assert checked >= 5


def event_frames(s) -> list[int]:
    """Frames on which some shape has an event of the stream's task (``cross``: its centre passes the line)."""
    frames, middle = s.scene.frames, LINE_X + 1
    found = []
    for index in range(1, len(frames)):
        before, after = frames[index - 1], frames[index]
        if s.task == "cross":
            moved = zip(before, after, strict=True)
            changed = any((centre(a) - middle) * (centre(b) - middle) < 0 for a, b in moved)
        else:
            changed = before != after
        if changed:
            found.append(index)
    return found


@pytest.mark.parametrize("task", ["appear", "vanish", "recolor", "cross"])
def test_decoys_have_their_events_on_other_frames_as_often_before_the_target_as_after(task):
    checked, decoy_before = 0, []
    for s in streams(400, decoy_share=1.0):
        if s.task != task:
            continue
        events = event_frames(s)
        assert events and all(1 <= frame <= s.scene.num_frames - 2 for frame in events)
        if task != "appear" and s.kind != "barge_in":  # the prompt names a kind, and so does every decoy
            assert len({shape.shape for shape in s.scene.frames[0]}) == 1
        if s.kind == "event":
            ((frame, _),) = s.replies.items()
            decoys = set(events) - {frame}
            assert frame in events and 1 <= len(decoys) <= 2
            decoy_before += [decoy < frame for decoy in decoys]
        elif s.kind == "no_event":  # more decoys, so that the number of events tells nothing
            assert len(events) >= (1 if task == "cross" else 2)
        else:  # barge-in: the old prompt's event, if any, comes after the switch and is not answered
            switch = s.prompts[1][0]
            assert all(frame >= switch for frame in s.replies)
        checked += 1
    assert checked >= 40
    assert 0.3 <= sum(decoy_before) / len(decoy_before) <= 0.7  # order tells nothing about the target


def test_decoys_are_drawn_only_for_the_asked_splits_and_a_share_of_zero_changes_nothing(tmp_path):
    manifest = generate_streams(tmp_path, 4, 0, 3, seed=5, progress=False, decoy_share=1.0)
    assert manifest["decoy_share"] == {"train": 1.0}
    plain = tmp_path / "plain"
    generate_streams(plain, 4, 0, 3, seed=5, progress=False)
    assert (plain / "test_streams.jsonl").read_text() == (tmp_path / "test_streams.jsonl").read_text()
    assert (plain / "train.jsonl").read_text() != (tmp_path / "train.jsonl").read_text()
    with pytest.raises(ValueError, match=r"decoy_share must lie in \[0, 1\], got 1.5"):
        generate_streams(tmp_path, 1, 0, 0, decoy_share=1.5, progress=False)
    with pytest.raises(ValueError, match=r"narrate_share must lie in \[0, 1\], got -0.1"):
        generate_streams(tmp_path, 1, 0, 0, narrate_share=-0.1, progress=False)
    with pytest.raises(ValueError, match="unknown aid splits \\['dev'\\]"):
        generate_streams(tmp_path, 1, 0, 0, decoy_share=0.5, aid_splits=["dev"], progress=False)


def test_aid_frames_and_aid_tasks_shape_only_the_aid_splits(tmp_path):
    plain = tmp_path / "plain"
    generate_streams(plain, 4, 0, 3, seed=5, progress=False)
    manifest = generate_streams(
        tmp_path, 6, 0, 3, seed=5, progress=False, aid_frames=(6, 7), aid_tasks=["move", "appear"]
    )
    assert manifest["frames"] == {"train": [6, 7]} and manifest["aid_tasks"] == {"train": ["move", "appear"]}
    train = [json.loads(line) for line in (tmp_path / "train_streams.jsonl").read_text().splitlines()]
    assert [r["task"] for r in train] == ["move", "appear"] * 3
    assert all(6 <= r["num_frames"] <= 7 for r in train)
    assert (plain / "test_streams.jsonl").read_text() == (tmp_path / "test_streams.jsonl").read_text()
    with pytest.raises(ValueError, match=r"aid_frames must be \(least, most\) with 6 <= least <= most"):
        generate_streams(tmp_path, 1, 0, 0, aid_frames=(5, 9), progress=False)
    with pytest.raises(ValueError, match=r"unknown stream tasks \['jump'\]"):
        generate_streams(tmp_path, 1, 0, 0, aid_tasks=["jump"], progress=False)


def test_frame_changes_name_each_change_of_a_scene():
    red = Shape("red", "circle", 16, 4, 4)
    blue = Shape("blue", "square", 14, 40, 40)
    frames = [
        (red,),
        (red, blue),  # the blue square appears
        (Shape("green", "circle", 16, 4, 4), blue),  # the circle turns green
        (Shape("green", "circle", 16, 10, 4), blue),  # and starts moving
        (Shape("green", "circle", 16, 16, 4), blue),  # still moving: no news
        (Shape("green", "circle", 16, 16, 4),),  # the square vanishes; the circle stops
        (Shape("green", "circle", 16, 16, 4), Shape("yellow", "triangle", 14, 40, 40)),
    ]
    scene = StreamScene(230, 2, tuple(frames))
    assert [frame_changes(scene, index) for index in range(1, len(frames))] == [
        ["Blue square appeared at {time} seconds."],
        ["Red circle turned green at {time} seconds."],
        ["Green circle started moving at {time} seconds."],
        [],
        ["Blue square vanished at {time} seconds."],
        ["Yellow triangle appeared at {time} seconds."],
    ]
    # With the line, a move is news only when the centre crosses the line.
    step = [Shape("red", "square", 14, x, 20) for x in (2, 12, 22, 32, 42)]
    line_scene = StreamScene(230, 1, tuple((shape,) for shape in step), line=True)
    said = {index: frame_changes(line_scene, index) for index in range(1, len(step))}
    assert said == {1: [], 2: [], 3: ["Red square crossed the line at {time} seconds."], 4: []}
    assert centre(step[2]) < LINE_X + 1 < centre(step[3])


def test_narrated_streams_answer_every_change_and_keep_the_scene():
    for index in range(150):
        plain = make_stream(0, "train", index)
        told = make_stream(0, "train", index, narrate_share=1.0)
        assert told.scene == plain.scene
        if told.kind != "narrate":  # the last frame shows a change: left as it was
            assert told == plain and frame_changes(plain.scene, plain.scene.num_frames - 1)
            continue
        assert len(told.prompts) == 1 and "change" in told.prompts[0][1]
        for frame in range(1, told.scene.num_frames):
            changes = frame_changes(told.scene, frame)
            assert (frame in told.replies) == bool(changes)
            if changes:
                time = f"{frame / told.scene.fps:.1f}"
                assert told.replies[frame] == " ".join(c.format(time=time) for c in changes)
        for frame, reply in plain.replies.items():  # what a task prompt asked for is news too, in its words
            assert reply in told.replies[frame]
    assert make_stream(0, "test", 7, narrate_share=0.0) == make_stream(0, "test", 7)


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
    assert s.replies == {7: "Red circle appeared at 3.5 seconds."}
    assert s.prompts == [(0, "Tell me when a red shape appears.")]
    # The blue square appears first, at 1.5 s: a decoy, since the prompt asks about red shapes.
    assert [len(frame) for frame in s.scene.frames] == [0] * 3 + [1] * 4 + [2] * 5
