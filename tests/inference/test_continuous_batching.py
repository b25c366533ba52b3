"""Continuous batching: requests join and leave a running batch, from many threads, with cancellation, admission
limits, the media cache and a KV pool that decode steps never copy."""

import threading
import time

import pytest
import torch

from mossvl.inference.core import EngineConfig
from mossvl.inference.engine import Engine, EngineOverloadedError
from mossvl.inference.handle import RequestHandle
from mossvl.inference.request import PreparedRequest

TIMEOUT = 60


def reference(golden_model, golden_processor, queries):
    """Each query answered alone by a fresh engine."""
    return [Engine(golden_model, golden_processor).generate([q])[0].token_ids for q in queries]


def test_a_request_joins_a_running_batch_and_answers_as_alone(golden_model, golden_processor, media):
    long_query = {"prompt": "Describe the image.", "images": [media["img_a"]], "max_new_tokens": 60}
    short_query = {"prompt": "What happens?", "videos": [media["vid_a"]], "max_new_tokens": 6}
    expected = reference(golden_model, golden_processor, [long_query, short_query])
    engine = Engine(golden_model, golden_processor)
    first = engine.submit(long_query)
    events = first.events(timeout=TIMEOUT)
    for _ in range(5):  # the long request is decoding
        next(events)
    second = engine.submit(short_query)
    second_result = second.result(TIMEOUT)
    assert not first.done  # the short one finished while the long one was still running
    first_result = first.result(TIMEOUT)
    assert [first_result.token_ids, second_result.token_ids] == expected
    assert second_result.first_token_time < first_result.finish_time


def test_submissions_from_many_threads_with_cancellations(golden_model, golden_processor, media):
    queries = [
        {"prompt": f"Question number {i}?", "max_new_tokens": 4 + i % 5}
        if i % 3
        else {"prompt": "Describe.", "images": [media["img_d"]], "max_new_tokens": 5}
        for i in range(12)
    ]
    expected = reference(golden_model, golden_processor, queries)
    engine = Engine(golden_model, golden_processor, EngineConfig(max_batch_size=4))
    cancelled = engine.submit({"prompt": "A long answer.", "max_new_tokens": 5000})
    handles: dict[int, object] = {}

    def client(indices):
        for i in indices:
            handles[i] = engine.submit(queries[i])

    threads = [threading.Thread(target=client, args=(range(k, 12, 3),)) for k in range(3)]
    for thread in threads:
        thread.start()
    doomed = engine.submit({"prompt": "Never mind.", "max_new_tokens": 5000})
    doomed.cancel()
    for thread in threads:
        thread.join(TIMEOUT)
    next(cancelled.events(timeout=TIMEOUT))
    cancelled.cancel()
    results = {i: handle.result(TIMEOUT) for i, handle in handles.items()}
    assert [results[i].token_ids for i in range(12)] == expected
    assert cancelled.result(TIMEOUT).finish_reason == "cancelled"
    assert len(cancelled.result().token_ids) < 5000
    assert doomed.result(TIMEOUT).finish_reason == "cancelled"


def test_admission_waits_for_room_and_keeps_every_answer(golden_model, golden_processor):
    queries = [{"prompt": f"Tell me {i}", "max_new_tokens": 3 + i} for i in range(6)]
    expected = reference(golden_model, golden_processor, queries)
    engine = Engine(golden_model, golden_processor, EngineConfig(max_batch_size=2))
    assert [r.token_ids for r in engine.generate(queries)] == expected


def test_a_request_that_can_never_fit_fails_at_once(golden_model, golden_processor, media):
    config = EngineConfig(kv_cache_bytes=200_000)
    engine = Engine(golden_model, golden_processor, config)
    small, big = engine.generate(
        [
            {"prompt": "Hi", "max_new_tokens": 3},
            {"prompt": "Describe.", "images": [media["img_a"]], "max_new_tokens": 5000},
        ]
    )
    assert small.ok and len(small.token_ids) == 3
    assert big.finish_reason == "error" and "KV memory" in big.error and "kv_cache_bytes" in big.error


def test_a_prompt_beyond_the_context_is_refused(golden_model, golden_processor):
    engine = Engine(golden_model, golden_processor)
    limit = golden_model.config.text_config.max_position_embeddings
    golden_model.config.text_config.max_position_embeddings = 20
    try:
        result = Engine(golden_model, golden_processor).generate(["word " * 40])[0]
    finally:
        golden_model.config.text_config.max_position_embeddings = limit
    assert result.finish_reason == "error" and "max_position_embeddings" in result.error
    assert engine.generate(["word " * 40], max_new_tokens=2)[0].ok


def test_a_full_queue_refuses_new_requests(golden_model, golden_processor):
    engine = Engine(golden_model, golden_processor, EngineConfig(max_batch_size=1, max_waiting=1))
    running = engine.submit({"prompt": "Long", "max_new_tokens": 5000})
    next(running.events(timeout=TIMEOUT))
    queued = engine.submit({"prompt": "Next", "max_new_tokens": 2})
    with pytest.raises(EngineOverloadedError, match="max_waiting"):
        engine.submit({"prompt": "One too many", "max_new_tokens": 2})
    running.cancel()
    assert queued.result(TIMEOUT).ok


def test_the_media_cache_skips_decoding_and_the_vision_tower(
    golden_model, golden_processor, media, monkeypatch
):
    engine = Engine(golden_model, golden_processor)
    calls = []
    encode = engine.core.runner.encode_frames
    monkeypatch.setattr(engine.core.runner, "encode_frames", lambda *a: calls.append(1) or encode(*a))
    questions = ["What happens?", "What is moving?", "What colour is it?"]
    answers = [
        engine.generate([{"prompt": q, "videos": [media["vid_a"]], "max_new_tokens": 6}])[0]
        for q in questions
    ]
    assert len(calls) == 1 and engine.stats()["media_cache_hits"] == 2
    uncached = Engine(golden_model, golden_processor, EngineConfig(media_cache_bytes=0))
    for question, answer in zip(questions, answers, strict=True):
        query = {"prompt": question, "videos": [media["vid_a"]], "max_new_tokens": 6}
        assert uncached.generate([query])[0].token_ids == answer.token_ids
    other_fps = {"prompt": questions[0], "videos": [media["vid_a"]], "video_fps": 0.5, "max_new_tokens": 2}
    engine.generate([other_fps])
    assert len(calls) == 2  # other media settings are another cache entry


def test_decode_steps_write_in_place_and_the_pool_is_released_when_idle(
    golden_model, golden_processor, media
):
    engine = Engine(golden_model, golden_processor, EngineConfig(prefix_cache_size=0))
    pool = engine.core.pool
    handle = engine.submit({"prompt": "Describe.", "images": [media["img_a"]], "max_new_tokens": 200})
    events = handle.events(timeout=TIMEOUT)
    next(events)
    layer = pool.self_layers[0]
    address = pool.keys[layer].data_ptr()
    for _ in range(20):
        next(events)
    assert pool.keys[layer].data_ptr() == address  # no reallocation or copy of the cache while decoding
    handle.cancel()
    handle.result(TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while engine.core.pool.nbytes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.core.pool.nbytes == 0 and engine.stats()["running"] == 0


def test_requests_that_start_alike_share_their_prefix_kv(golden_model, golden_processor, media, tmp_path):
    """Questions about the same video reuse the first one's KV up to where they differ; a same-size image with
    other pixels has the same token ids but different media keys, so nothing past it is shared."""
    from PIL import Image

    fresh = Engine(golden_model, golden_processor, EngineConfig(prefix_cache_size=0, media_cache_bytes=0))
    engine = Engine(golden_model, golden_processor)
    questions = [
        {"prompt": q, "videos": [media["vid_a"]], "max_new_tokens": 6}
        for q in ("What happens?", "What moves?")
    ]
    first, second = (engine.generate([q])[0] for q in questions)
    assert first.cached_tokens == 0 and second.cached_tokens > 20
    assert [first.token_ids, second.token_ids] == [r.token_ids for r in fresh.generate(questions)]
    assert engine.stats()["cached_prefixes"] == 2

    other = tmp_path / "other.png"
    Image.open(media["img_a"]).transpose(Image.Transpose.ROTATE_180).save(other)
    image_questions = [
        {"prompt": "Describe.", "images": [path], "max_new_tokens": 6}
        for path in (media["img_a"], str(other))
    ]
    results = [engine.generate([q])[0] for q in image_questions]
    pad = golden_processor.image_token_id
    prompt = engine.prepare(image_questions[1]).input_ids
    assert results[1].cached_tokens <= prompt.index(pad)
    assert [r.token_ids for r in results] == [r.token_ids for r in fresh.generate(image_questions)]


def test_a_step_prefills_short_prompts_together_but_one_chunk_and_one_vision_unit_at_most(
    golden_model, golden_processor, media
):
    """Driving the core by hand: while one request decodes, a step prefills several short prompts at once, but
    never more than one chunk's worth (``prefill_chunk_tokens``) nor more than one vision unit, so the decoding
    request waits for at most one chunk and realtime frames each get a decode step."""
    engine = Engine(golden_model, golden_processor, EngineConfig(prefill_chunk_tokens=64))
    core = engine.core

    def add(query) -> PreparedRequest:
        request = engine.prepare({**query, "max_new_tokens": 40} if isinstance(query, dict) else query)
        core.add(request, RequestHandle(request.request_id))
        return request

    running = add({"prompt": "Talk."})
    core.step()
    assert len(core.decoding) == 1
    short = [add({"prompt": f"Hi {i}"}) for i in range(3)]
    assert sum(len(r.input_ids) for r in short) <= 64
    core.step()
    assert len(core.decoding) == 4 and not core.prefilling
    assert core.decoding[0].request is running and len(core.decoding[0].generated) == 3  # a token a step
    long = [add({"prompt": "Please answer this. " * 2 + str(i)}) for i in range(2)]
    assert all(32 < len(r.input_ids) <= 64 for r in long)
    core.step()
    assert len(core.decoding) == 5 and len(core.prefilling) == 1  # a second prompt would pass the chunk
    core.step()
    assert len(core.decoding) == 6
    images = [add({"prompt": "Hi", "images": [media[name]]}) for name in ("img_a", "img_d")]
    assert all(len(r.input_ids) < 32 for r in images)
    core.step()
    assert len(core.decoding) == 7 and len(core.prefilling) == 1  # the second image waits for the next step
    with torch.inference_mode():  # as in the engine thread
        core.fail_all(RuntimeError("test over"))


def test_questions_about_one_video_submitted_together_encode_it_once_and_share_its_kv(
    golden_model, golden_processor, media, monkeypatch
):
    """An eval harness sends all questions of a video at once: the later ones wait for the first one's prefill
    (which runs first anyway), then copy its KV; one with another system prompt still skips the vision tower."""
    engine = Engine(golden_model, golden_processor)
    calls = []
    encode = engine.core.runner.encode_frames
    monkeypatch.setattr(engine.core.runner, "encode_frames", lambda *a: calls.append(1) or encode(*a))
    queries = [
        {"prompt": q, "videos": [media["vid_a"]], "max_new_tokens": 6}
        for q in ("What happens?", "What moves?", "What colour is it?")
    ]
    queries.append({**queries[0], "system_prompt": "Answer in one word."})
    results = engine.generate(queries)
    assert all(r.ok for r in results) and len(calls) == 1
    assert results[0].cached_tokens == 0 and results[1].cached_tokens > 20 and results[2].cached_tokens > 20
    assert (
        results[3].cached_tokens < 20
    )  # another system prompt: the start differs, only the features are reused
    alone = Engine(golden_model, golden_processor, EngineConfig(prefix_cache_size=0, media_cache_bytes=0))
    assert [r.token_ids for r in results] == [alone.generate([q])[0].token_ids for q in queries]
