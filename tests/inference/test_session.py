"""Sessions: follow-up turns reuse the cache and equal a full re-prefill of the same conversation tokens.

The reference for turn k is one fresh prefill of every token of the conversation so far (turn prompts, the
answers as generated, the ``<|im_end|>`` that closes each answer) with all media of all turns; with the rotated
decode query it must give the same greedy tokens as the session's continuation forwards. The same token
sequence is also checked against the processor's rendering of the whole conversation (outside answer spans).
"""

import pytest
import torch

from mossvl.inference.engine import Encoded, Engine, collect
from mossvl.inference.prompts import build_followup, build_prompt
from mossvl.inference.session import Session
from mossvl.processing.prompt import render_chat

MAX_NEW = 6


def turns(media, first: str) -> list:
    opening = {"prompt": "Describe the image.", "images": [media["img_a"]]}
    return [
        opening if first == "image" else "What is the color of the sky?",
        "And what else?",
        {"prompt": "Now this one?", "images": [media["img_d"]]},
        {"prompt": "and the video", "videos": [media["vid_a"]], "media_kwargs": {"num_extract_threads": 1}},
    ]


def reprefill_reference(engine: Engine, session_turns: list, answers: list[list[int]]):
    """Greedy tokens of each turn when the whole conversation so far is prefilled at once, and the known token
    segments of the conversation (everything but the answers)."""
    ids, pixels, grids, blank = [], [], [], None
    expected, segments = [], []
    pending: list[int] = []
    for index, query in enumerate(session_turns):
        prompt = build_prompt(query) if index == 0 else build_followup(query)
        chunk = engine.encode(prompt) if index == 0 else engine.encode_continuation(pending, prompt)
        chunk_ids = chunk.input_ids[0].tolist()
        ids += chunk_ids
        # The answer's last sampled token (when it is not EOS) belongs to the answer, the rest is prompt.
        segments.append(chunk_ids[max(len(pending) - 1, 0) :])
        if prompt.images or prompt.videos:
            pixels.append(chunk.pixel_values)
            grids.append(chunk.grid_thw)
        elif index == 0:
            blank = (chunk.pixel_values, chunk.grid_thw)
        pixel_values = torch.cat(pixels) if pixels else blank[0]
        grid_thw = torch.cat(grids) if grids else blank[1]
        batch = Encoded(
            torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), pixel_values, grid_thw
        )
        batch.media_nums_per_sample = [grid_thw.shape[0]]
        request = engine.request_for(prompt, {"max_new_tokens": MAX_NEW})
        expected.append(collect(engine.run([request], batch))[0].token_ids)
        answer = answers[index]
        ended = bool(answer) and answer[-1] in engine.eos_token_ids
        ids += answer[:-1]
        pending = [engine.im_end_id] if ended else answer[-1:] + [engine.im_end_id]
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
    session = Session(rotq_model, golden_processor, generate_kwargs={"max_new_tokens": MAX_NEW})
    session_turns = turns(media, first)
    answers, cached = [], []
    for query in session_turns:
        result = session.send(query)
        assert result.ok, result.error
        answers.append(result.token_ids)
        cached.append(session.cached_tokens)
    assert cached == sorted(cached) and cached[0] > 0
    expected, segments = reprefill_reference(session.engine, session_turns, answers)
    assert answers == expected
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * len(session_turns)
    # The official way: render the whole conversation (answers as text) and tokenize it in one go.
    official = session.engine.encode(build_prompt({"messages": session.messages}))
    assert_segments_in_order(official.input_ids[0].tolist(), segments)
    assert render_chat(session.messages[:-1]) == build_prompt({"messages": session.messages}).text


def test_session_default_mode_differs_from_reprefill_only_through_the_quirk(
    golden_model, golden_processor, media
):
    """In HF-parity mode a session still answers every turn; its first turn equals a fresh single query."""
    session = Session(golden_model, golden_processor, generate_kwargs={"max_new_tokens": MAX_NEW})
    first = session.send(turns(media, "image")[0])
    second = session.send("And what else?")
    assert first.ok and second.ok
    alone = Engine(golden_model, golden_processor).generate(
        [turns(media, "image")[0]], max_new_tokens=MAX_NEW
    )[0]
    assert first.token_ids == alone.token_ids


def test_failed_turn_keeps_the_conversation_usable(golden_model, golden_processor, media):
    session = Session(golden_model, golden_processor, generate_kwargs={"max_new_tokens": 4})
    session.send("Hello")
    before = (list(session.messages), session.cached_tokens)
    bad = session.send({"prompt": "look", "images": [media["img_a"] + ".missing.png"]})
    assert bad.finish_reason == "error" and "not found" in bad.error
    assert (session.messages, session.cached_tokens) == before
    good = session.send("Still there?")
    assert good.ok and len(session.messages) == 4


def test_abandoned_stream_falls_back_to_reprefill(rotq_model, golden_processor):
    session = Session(rotq_model, golden_processor, generate_kwargs={"max_new_tokens": 5})
    session.send("Hello")
    stream = session.stream("Tell me more")
    next(stream)
    stream.close()
    assert session.cached_tokens == 0 and len(session.messages) == 2
    # The next turn re-prefills the recorded conversation, like a session started from those messages.
    restarted = Session(
        rotq_model, golden_processor, messages=session.messages, generate_kwargs={"max_new_tokens": 5}
    )
    assert session.send("Again").token_ids == restarted.send("Again").token_ids
    assert session.cached_tokens > 0


def test_reset_forgets_everything(golden_model, golden_processor):
    session = Session(golden_model, golden_processor, generate_kwargs={"max_new_tokens": 3})
    first = session.send("Hello")
    session.send("More")
    session.reset()
    assert session.messages == [] and session.cached_tokens == 0
    assert session.send("Hello").token_ids == first.token_ids
