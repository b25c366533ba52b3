"""Realtime sessions: the official API and queue worker, equivalence with one from-scratch prefill of the same
frames and prompts, barge-in, pacing, the bounded frame queue and the sliding visual window."""

import queue
import time

import numpy as np
import pytest
import torch

from mossvl import constants as C
from mossvl.errors import QueryError
from mossvl.inference.core import EngineConfig
from mossvl.inference.engine import Engine
from mossvl.inference.realtime import RealtimeConfig, RealtimeSession

TIMEOUT = 60


def frames(count: int, seed: int = 0, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def wait_for(session: RealtimeSession, kind: str, count: int = 1) -> list:
    """Events up to and including the ``count``-th event of ``kind``."""
    events, seen = [], 0
    while seen < count:
        event = session.poll_event(TIMEOUT)
        assert event is not None, f"no {kind} event within {TIMEOUT} s"
        events.append(event)
        seen += event.kind == kind
        assert event.kind != "closed" or kind == "closed", events
    return events


def test_answers_equal_one_prefill_of_the_same_stream(rotq_model, golden_processor):
    """With the rotated decode query, every token the session generated is the greedy choice of a single
    from-scratch forward over the same tokens and frames."""
    engine = Engine(rotq_model, golden_processor)
    session = RealtimeSession(
        engine, RealtimeConfig(initial_prompt="Watch.", system_prompt="Be brief.", max_new_tokens=4)
    )
    session.start()
    wait_for(session, "ready")
    images = frames(4)
    for index, image in enumerate(images[:2]):
        session.push_frame(image, float(index))
        wait_for(session, "response_done")
    session.push_prompt("What changed?")
    wait_for(session, "response_done")
    session.push_prompt_frame("And now?", images[2], 2.0)
    session.push_frame(images[3], 3.0)
    wait_for(session, "response_done")
    session.close(TIMEOUT)
    assert len(session.answers) >= 4

    stream = torch.tensor([session.fed_tokens])
    items = [engine.processor.image_processor.plan([image])[0] for image in images]
    with torch.no_grad():
        logits = rotq_model(
            input_ids=stream,
            pixel_values=torch.cat([item.load() for item in items]),
            grid_thw=torch.tensor([item.grid_thw for item in items]),
        ).logits[0]
    greedy = logits.argmax(-1).tolist()
    for start, tokens in session.answers:
        for offset, token in enumerate(tokens):
            if start + offset - 1 < len(greedy):
                assert greedy[start + offset - 1] == token


def test_raw_output_and_the_queue_worker(golden_model, golden_processor):
    inputs, outputs = queue.Queue(), queue.Queue()
    inputs.put({"initial_prompt": "Describe.", "system_prompt": None, "frame_queue_size": 8})
    for index, image in enumerate(frames(2)):
        inputs.put({"frame": image, "timestamp": float(index)})
    inputs.put({"prompt": "Anything else?"})
    inputs.put({"frame": "not an image", "timestamp": 5.0})
    inputs.put({"stop_online_generate": True})
    golden_model.online_generate(golden_processor, inputs, outputs, max_new_tokens=3)
    chunks = [outputs.get_nowait() for _ in range(outputs.qsize())]
    assert chunks.count(C.ROUND_START) == chunks.count(C.ROUND_END) >= 1
    assert any(chunk.startswith(C.ERROR_PREFIX) for chunk in chunks)


def test_a_prompt_interrupts_an_answer_and_is_answered(endless_model, golden_processor):
    engine = Engine(endless_model, golden_processor)
    session = RealtimeSession(engine, RealtimeConfig(initial_prompt="Talk.", max_new_tokens=5000))
    session.start()
    session.push_frame(frames(1)[0], 0.0)
    events = wait_for(session, "text", 3)
    session.push_prompt("Stop and answer this.")
    events += wait_for(session, "interrupted")
    session_answers = len(session.answers)
    session.close(TIMEOUT)
    interrupted = [e for e in events if e.kind == "interrupted"]
    assert interrupted and session_answers >= 1
    assert len(session.answers[0][1]) < 5000


def test_pacing_caps_tokens_per_second(endless_model, golden_processor):
    engine = Engine(endless_model, golden_processor)
    session = RealtimeSession(
        engine, RealtimeConfig(initial_prompt="Talk.", max_new_tokens=6, max_tokens_per_turn=10)
    )
    session.start()
    wait_for(session, "ready")
    start = time.monotonic()
    session.push_frame(frames(1)[0], 0.0)
    wait_for(session, "response_done")
    session.close(TIMEOUT)
    tokens = len(session.answers[0][1])
    assert tokens >= 3  # it may stop early on <|silence|> or <|vision_start|>
    assert time.monotonic() - start >= (tokens - 1) * 0.1  # at 10 tokens per second


def test_frame_queue_drops_the_oldest_and_timestamps_must_not_decrease(golden_model, golden_processor):
    session = RealtimeSession(Engine(golden_model, golden_processor), RealtimeConfig(frame_queue_size=2))
    images = frames(3)
    assert [session.push_frame(image, float(i)) for i, image in enumerate(images)] == [False, False, True]
    assert session.pending_frames == 2
    with pytest.raises(QueryError, match="must not decrease"):
        session.push_frame(images[0], 1.5)
    with pytest.raises(QueryError, match="non-empty"):
        session.push_prompt("  ")
    with pytest.raises(QueryError, match="frame_queue_size"):
        RealtimeSession(Engine(golden_model, golden_processor), RealtimeConfig(frame_queue_size=0))
    for bias in (float("nan"), 1e6, True):
        with pytest.raises(QueryError, match="silence_bias"):
            RealtimeSession(Engine(golden_model, golden_processor), RealtimeConfig(silence_bias=bias))


def test_the_visual_window_keeps_memory_flat(golden_model, golden_processor):
    """A long stream compressed in time: with a 3-second window the vision memory holds the last few frames."""
    engine = Engine(golden_model, golden_processor, EngineConfig(prefix_cache_size=0))
    session = RealtimeSession(
        engine, RealtimeConfig(initial_prompt="Watch.", max_new_tokens=1, visual_window=3.0)
    )
    session.start()
    lengths = []
    for index, image in enumerate(frames(30, size=32)):
        session.push_frame(image, float(index))
        wait_for(session, "response_done")
        sequence = session._sequence  # noqa: SLF001 - the test reads the KV it holds
        lengths.append(engine.core.pool.vision_len[sequence.row])
    session.close(TIMEOUT)
    per_frame = lengths[0]
    assert max(lengths[10:]) <= 4 * per_frame and lengths[-1] == lengths[15]


@pytest.mark.slow
def test_an_hour_at_one_frame_per_second_keeps_memory_flat(golden_model, golden_processor):
    """3600 frames with 1-second timestamps, each fed as soon as the previous one was answered, and a 60-second
    window: the vision memory stays at 61 frames and the process grows only by the text's KV."""
    from pathlib import Path

    def rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    engine = Engine(golden_model, golden_processor, EngineConfig(prefix_cache_size=0))
    config = RealtimeConfig(
        initial_prompt="Watch.", max_new_tokens=1, visual_window=60.0, frame_queue_size=3600
    )
    session = RealtimeSession(engine, config)
    session.start()
    image = frames(1, size=32)[0]
    vision, memory = [], []
    for second in range(3600):
        session.push_frame(image, float(second))
        wait_for(session, "response_done")
        if second % 300 == 299:
            vision.append(engine.core.pool.vision_len[session._sequence.row])  # noqa: SLF001
            memory.append(rss_mb())
    text_mb = len(session.fed_tokens) * engine.core.pool.text_token_bytes / 2**20
    session.close(TIMEOUT, drain=True)
    per_frame = vision[0] // 61  # a full window holds 61 frames (t - 60 .. t)
    assert vision == [61 * per_frame] * len(vision)
    # All text is kept, so memory grows with the text's KV and nothing else: its buffer grows by doubling, and a
    # reallocation briefly holds the old buffer too (the allocator may keep that memory).
    assert memory[-1] - memory[0] < 4 * text_mb + 100
