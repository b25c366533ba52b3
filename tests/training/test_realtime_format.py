"""The realtime SFT format: a training sample's tokens and frames are exactly what a realtime session feeds for the
same frames and prompts, and the labels supervise the silences, the replies and the end of each reply."""

import json

import pytest
import torch

import mossvl
from mossvl import constants as C
from mossvl.data.synthetic_streams import make_stream, training_record, write_stream_video
from mossvl.inference.engine import Engine
from mossvl.inference.realtime_script import ScriptedStream, play_stream
from mossvl.training.data import SFTDataset
from mossvl.training.loss import decision_positions


def barge_in_stream():
    """The first generated stream that answers before and after a mid-stream prompt change."""
    for index in range(500):
        stream = make_stream(0, "train", index)
        if stream.kind == "barge_in" and len(stream.replies) == 2:
            return stream
    raise AssertionError("no barge-in stream with two replies in 500")


@pytest.fixture(scope="module")
def demo():
    return mossvl.load()


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    folder = tmp_path_factory.mktemp("realtime")
    stream = barge_in_stream()
    write_stream_video(stream, folder / "clip.mp4")
    record = training_record(stream, "clip.mp4")
    (folder / "data.jsonl").write_text(json.dumps(record) + "\n")
    return stream, folder


def test_training_tokens_equal_what_a_realtime_session_feeds(demo, sample):
    model, processor = demo
    stream, folder = sample
    features = SFTDataset(folder / "data.jsonl", processor)[0]
    tokenizer = processor.tokenizer
    silence, vision_start = tokenizer.convert_tokens_to_ids([C.SILENCE, C.VISION_START])

    # The model's choices are scripted as the sample's targets: after each frame its reply then <|vision_start|>
    # (the session stops there and the next frame's region starts with it), or <|silence|>.
    script = []
    for frame in range(stream.scene.num_frames):
        reply = stream.replies.get(frame)
        script += (
            tokenizer(reply, add_special_tokens=False)["input_ids"] + [vision_start] if reply else [silence]
        )
    engine = Engine(model, processor)
    engine.core._sample = lambda actives, logits: [script.pop(0) for _ in actives]
    clip = ScriptedStream.from_video(
        folder / "clip.mp4", stream.scene.fps, dict(stream.prompts), C.REALTIME_SYSTEM_PROMPT
    )
    played = play_stream(engine, clip)
    engine.shutdown()
    assert not script
    assert [r.text for r in played.replies] == [
        stream.replies.get(f, "") for f in range(stream.scene.num_frames)
    ]

    # The session never feeds its last <|silence|>, nor the end of the turn the training sample closes.
    ending = tokenizer(C.IM_END + "\n", add_special_tokens=False)["input_ids"]
    assert played.fed_tokens + [silence] + ending == features["input_ids"].tolist()
    frames = [processor.image_processor.plan([image])[0] for image, _ in clip.frames]
    assert features["grid_thw"].tolist() == [list(item.grid_thw) for item in frames]
    torch.testing.assert_close(features["pixel_values"], torch.cat([item.load() for item in frames]))


def test_labels_supervise_silences_replies_and_reply_ends(demo, sample):
    _, processor = demo
    stream, folder = sample
    features = SFTDataset(folder / "data.jsonl", processor)[0]
    tokenizer = processor.tokenizer
    ids, labels = features["input_ids"].tolist(), features["labels"].tolist()
    supervised = [token for token, label in zip(ids, labels, strict=True) if label != C.IGNORE_INDEX]
    silence, vision_start, im_end = tokenizer.convert_tokens_to_ids([C.SILENCE, C.VISION_START, C.IM_END])
    expected = []
    bounds = [start for start, _ in stream.prompts] + [stream.scene.num_frames]
    for turn, (start, _) in enumerate(stream.prompts):
        expected += [silence] if turn else []  # the opener a session writes after a barge-in
        for frame in range(start, bounds[turn + 1]):
            reply = stream.replies.get(frame)
            if reply is None:
                expected.append(silence)
            else:
                expected += tokenizer(reply, add_special_tokens=False)["input_ids"]
                expected.append(vision_start)
        expected.append(im_end)
    assert supervised == expected


def test_the_weighted_decisions_of_a_sample_are_the_choices_after_each_frame(demo, sample):
    _, processor = demo
    stream, folder = sample
    features = SFTDataset(folder / "data.jsonl", processor)[0]
    frame_end, silence = processor.tokenizer.convert_tokens_to_ids([C.VISION_END, C.SILENCE])
    after_frame = set(((features["input_ids"] == frame_end).nonzero().flatten() + 1).tolist())
    decisions = set(decision_positions(features["labels"][None])[0].nonzero().flatten().tolist())
    assert len(after_frame) == stream.scene.num_frames and after_frame <= decisions
    # Besides: the <|silence|> that opens the assistant turn of the prompt that arrives with a frame (barge-in).
    openers = decisions - after_frame
    assert len(openers) == len(stream.prompts) - 1 == 1
    assert [int(features["labels"][k]) for k in openers] == [silence]
