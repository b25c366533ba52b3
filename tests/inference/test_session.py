"""Sessions: follow-up turns reuse the cache and equal a full re-prefill of the same conversation tokens.

The reference for turn k is one fresh prefill of every token of the conversation so far (turn prompts, the
answers as generated, the ``<|im_end|>`` that closes each answer) with all media of all turns; with the rotated
decode query it must give the same greedy tokens as the session's continuation forwards. The same token
sequence is also checked against the processor's rendering of the whole conversation (outside answer spans).
"""

import pytest

from mossvl.inference.engine import Engine
from mossvl.inference.request import MediaInput, PreparedRequest
from mossvl.inference.session import Session

MAX_NEW = 6


def turns(media, first: str) -> list:
    opening = {"prompt": "Describe the image.", "images": [media["img_a"]]}
    return [
        opening if first == "image" else "What is the color of the sky?",
        "And what else?",
        {"prompt": "Now this one?", "images": [media["img_d"]]},
        {"prompt": "and the video", "videos": [media["vid_a"]], "media_kwargs": {"num_extract_threads": 1}},
    ]


def media_inputs(processor, query, first_index: int) -> list[MediaInput]:
    """The media of a turn as the engine receives them (pixels, not cached features), keyed ``m<index>`` from
    ``first_index`` on: the engine takes equal keys for the same media (its cache and prefix sharing do)."""
    if not isinstance(query, dict):
        return []
    images = processor.image_processor.process(query.get("images", []))
    videos = processor.video_processor.process(query.get("videos", []), num_extract_threads=1)
    return [
        MediaInput(p.grid_thw, f"m{i}", pixels=p.pixel_values)
        for i, p in enumerate(images + videos, start=first_index)
    ]


def reprefill_reference(session: Session, session_turns: list, answers: list[list[int]], streams):
    """Greedy tokens of each turn when everything the session fed before that turn's answer is prefilled at once
    (with all media so far), and each turn's prompt tokens as the session fed them."""
    engine = Engine(session.engine.model, session.engine.processor)
    expected, segments, media, previous = [], [], [], 0
    for query, answer, stream in zip(session_turns, answers, streams, strict=True):
        media += media_inputs(engine.processor, query, len(media))
        # The stream holds the turn's prompt, then every answer token but the last.
        prompt_end = len(stream) - max(len(answer) - 1, 0)
        ids = stream[:prompt_end]
        settings = engine.inputs.settings({"max_new_tokens": MAX_NEW})
        expected.append(engine.submit(PreparedRequest(ids, list(media), settings)).result().token_ids)
        # The previous answer's last sampled token (when it was not EOS) opens this turn's chunk.
        opening = 1 if previous and answers[len(segments) - 1][-1] not in engine.eos_token_ids else 0
        segments.append(ids[previous + opening :])
        previous = len(stream)
    return expected, segments


def assert_segments_in_order(full: list[int], segments: list[list[int]]) -> None:
    """``full`` = segments[0] + gap + segments[1] + gap + ... (gaps are the re-tokenised answers)."""
    assert full[: len(segments[0])] == segments[0]
    position = len(segments[0])
    for segment in segments[1:]:
        found = next(
            (
                i
                for i in range(position, len(full) - len(segment) + 1)
                if full[i : i + len(segment)] == segment
            ),
            None,
        )
        assert found is not None, f"segment {segment} not found after position {position}"
        position = found + len(segment)
    assert position == len(full)


@pytest.mark.parametrize("first", ["image", "text"])
def test_session_equals_full_reprefill_with_rotated_decode(rotq_model, golden_processor, media, first):
    session = Session(Engine(rotq_model, golden_processor), generate_kwargs={"max_new_tokens": MAX_NEW})
    session_turns = turns(media, first)
    answers, cached, streams = [], [], []
    for query in session_turns:
        result = session.send(query)
        assert result.ok, result.error
        answers.append(result.token_ids)
        cached.append(session.cached_tokens)
        streams.append(list(result.sequence.tokens))
    assert cached == sorted(cached) and cached[0] > 0
    expected, segments = reprefill_reference(session, session_turns, answers, streams)
    assert answers == expected
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * len(session_turns)
    # The official way: render the whole conversation (answers as text) and tokenize it in one go.
    official = session.engine.prepare({"messages": session.messages[:-1]})
    assert_segments_in_order(official.input_ids, segments)


def test_session_default_mode_differs_from_reprefill_only_through_the_quirk(
    golden_model, golden_processor, media
):
    """In HF-parity mode a session still answers every turn; its first turn equals a fresh single query."""
    session = Session(Engine(golden_model, golden_processor), generate_kwargs={"max_new_tokens": MAX_NEW})
    first = session.send(turns(media, "image")[0])
    second = session.send("And what else?")
    assert first.ok and second.ok
    alone = Engine(golden_model, golden_processor).generate(
        [turns(media, "image")[0]], max_new_tokens=MAX_NEW
    )[0]
    assert first.token_ids == alone.token_ids


def test_failed_turn_keeps_the_conversation_usable(golden_model, golden_processor, media):
    session = Session(Engine(golden_model, golden_processor), generate_kwargs={"max_new_tokens": 4})
    session.send("Hello")
    before = (list(session.messages), session.cached_tokens)
    bad = session.send({"prompt": "look", "images": [media["img_a"] + ".missing.png"]})
    assert bad.finish_reason == "error" and "not found" in bad.error
    assert (session.messages, session.cached_tokens) == before
    good = session.send("Still there?")
    assert good.ok and len(session.messages) == 4


def test_abandoned_stream_falls_back_to_reprefill(rotq_model, golden_processor):
    engine = Engine(rotq_model, golden_processor)
    session = Session(engine, generate_kwargs={"max_new_tokens": 5})
    session.send("Hello")
    stream = session.stream("Tell me more")
    next(stream)
    stream.close()
    assert session.cached_tokens == 0 and len(session.messages) == 2
    # The next turn re-prefills the recorded conversation, like a session started from those messages.
    restarted = Session(engine, messages=session.messages, generate_kwargs={"max_new_tokens": 5})
    assert session.send("Again").token_ids == restarted.send("Again").token_ids
    assert session.cached_tokens > 0


def test_reset_forgets_everything(golden_model, golden_processor):
    session = Session(Engine(golden_model, golden_processor), generate_kwargs={"max_new_tokens": 3})
    first = session.send("Hello")
    session.send("More")
    session.reset()
    assert session.messages == [] and session.cached_tokens == 0
    assert session.send("Hello").token_ids == first.token_ids
