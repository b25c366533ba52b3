"""The engine on the golden tiny model: per-request settings, streaming, errors, stopping, generation defaults."""

import pytest

from mossvl.errors import MediaError, QueryError
from mossvl.inference.core import EngineConfig
from mossvl.inference.engine import Engine


@pytest.fixture
def engine(golden_model, golden_processor):
    return Engine(golden_model, golden_processor)


def mixed_queries(media) -> list[dict]:
    """Different media, lengths and settings (greedy, sampled with a seed, a penalty, top-k 1)."""
    return [
        {
            "prompt": "Describe the image.",
            "images": [media["img_a"]],
            "generate_kwargs": {"max_new_tokens": 12},
        },
        {"prompt": "What is the color of the sky?", "generate_kwargs": {"max_new_tokens": 5}},
        {
            "prompt": "What happens?",
            "videos": [media["vid_a"]],
            "media_kwargs": {"num_extract_threads": 1, "max_frames": 3},
            "generate_kwargs": {
                "max_new_tokens": 9,
                "do_sample": True,
                "temperature": 0.8,
                "top_p": 0.9,
                "seed": 3,
            },
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "image", "image": media["img_d"]}, "Compare."]}
            ],
            "generate_kwargs": {"max_new_tokens": 7, "repetition_penalty": 1.3},
        },
        {
            "prompt": "Top-k one is greedy.",
            "generate_kwargs": {"max_new_tokens": 6, "do_sample": True, "top_k": 1, "seed": 0},
        },
    ]


def test_batch_equals_single_queries(engine, media):
    queries = mixed_queries(media)
    batched = engine.generate(queries)
    singles = [engine.generate([query])[0] for query in queries]
    assert [r.error for r in batched] == [None] * len(queries)
    assert [r.token_ids for r in batched] == [r.token_ids for r in singles]
    assert [r.text for r in batched] == [r.text for r in singles]
    assert [len(r.token_ids) for r in batched] == [12, 5, 9, 7, 6]


def test_top_k_one_sampling_equals_greedy(engine):
    sampled = engine.generate(["Hello there"], max_new_tokens=6, do_sample=True, top_k=1, seed=5)[0]
    greedy = engine.generate(["Hello there"], max_new_tokens=6)[0]
    assert sampled.token_ids == greedy.token_ids


def test_seeded_sampling_is_reproducible_and_temperature_zero_is_greedy(engine):
    first = engine.generate(["Hello"], max_new_tokens=10, do_sample=True, temperature=1.5, seed=11)[0]
    again = engine.generate(["Hello"], max_new_tokens=10, do_sample=True, temperature=1.5, seed=11)[0]
    greedy = engine.generate(["Hello"], max_new_tokens=10)[0]
    cold = engine.generate(["Hello"], max_new_tokens=10, do_sample=True, temperature=0.0, seed=11)[0]
    assert first.token_ids == again.token_ids
    assert cold.token_ids == greedy.token_ids


def test_stream_deltas_concatenate_to_the_result(engine, media):
    for query in mixed_queries(media)[:3]:
        handle = engine.submit(query)
        events = list(handle.events())
        result = events[-1].result
        assert "".join(event.delta for event in events) == result.text
        assert [t for event in events for t in event.token_ids] == result.token_ids
        assert result.text == engine.tokenizer.decode(result.token_ids, skip_special_tokens=True)
        assert result.prompt_tokens > 0 and result.completion_tokens == len(result.token_ids)
        assert (
            result.first_token_time >= result.arrival_time and result.finish_time >= result.first_token_time
        )


def test_usage_counts_vision_tokens_apart_from_text(engine, media):
    image = engine.generate([{"prompt": "Describe.", "images": [media["img_a"]], "max_new_tokens": 2}])[0]
    assert image.vision_tokens == 2 * 3 + 1  # a 64x96 image: 2x3 merged tokens and one separator
    assert engine.generate([{"prompt": "Hi", "max_new_tokens": 2}])[0].vision_tokens == 0


def test_a_bad_query_gets_an_error_result_and_the_others_run(engine, media):
    good = {
        "prompt": "Describe the image.",
        "images": [media["img_a"]],
        "generate_kwargs": {"max_new_tokens": 4},
    }
    missing = {"prompt": "Describe it.", "images": [media["img_a"] + ".missing.png"]}
    unknown_kwarg = {"prompt": "Hi", "generate_kwargs": {"beam_width": 3}}
    mismatch = {"prompt": "<|image|> and <|image|>", "images": [media["img_a"]]}
    results = engine.generate([good, missing, unknown_kwarg, mismatch, good])
    assert results[0].ok and results[4].ok
    assert results[0].token_ids == results[4].token_ids == engine.generate([good])[0].token_ids
    assert "not found" in results[1].error and isinstance(results[1].exception, MediaError)
    assert "beam_width" in results[2].error and isinstance(results[2].exception, QueryError)
    assert "placeholder" in results[3].error
    assert [r.finish_reason for r in results[1:4]] == ["error"] * 3
    with pytest.raises(MediaError, match="not found"):
        results[1].raise_for_error()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": 1.5}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"stop": [""]}, "stop"),
        ({"do_sample": "yes"}, "do_sample"),
        ({"temperature": float("nan")}, "temperature"),
        ({"num_beams": 4}, "num_beams"),
        ({"num_return_sequences": 2}, "num_return_sequences"),
        ({"vision_chunked_length": 0}, "vision_chunked_length"),
    ],
)
def test_invalid_generate_kwargs_name_the_setting(engine, kwargs, message):
    result = engine.generate([{"prompt": "Hi", "generate_kwargs": kwargs}])[0]
    assert result.finish_reason == "error" and message in result.error


def test_max_new_tokens_zero_returns_empty(engine):
    result = engine.generate(["Hi"], max_new_tokens=0)[0]
    assert (result.text, result.token_ids, result.finish_reason) == ("", [], "length")


def test_eos_token_ends_the_answer_without_text(golden_model, golden_processor):
    engine = Engine(golden_model, golden_processor)
    greedy = engine.generate(["Hello"], max_new_tokens=6)[0]
    stopped = engine.generate(["Hello"], max_new_tokens=6, stop_token_ids=[greedy.token_ids[2]])[0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == greedy.token_ids[:3]
    assert stopped.text == engine.tokenizer.decode(greedy.token_ids[:2])


def test_stop_string_cuts_the_answer_and_never_streams_it(engine):
    full = engine.generate(["Hello"], max_new_tokens=20)[0]
    stop = full.text[4:6]
    assert stop and "\ufffd" not in stop
    streamed = "".join(engine.stream("Hello", max_new_tokens=20, stop=[stop]))
    result = engine.generate(["Hello"], max_new_tokens=20, stop=stop)[0]
    assert result.text == full.text[: full.text.index(stop)] == streamed
    assert result.finish_reason == "stop"
    assert len(result.token_ids) < len(full.token_ids)


def test_requests_finish_independently_and_keep_their_own_limits(engine):
    results = engine.generate([{"prompt": "Hi", "max_new_tokens": n} for n in (1, 8, 3)])
    assert [len(r.token_ids) for r in results] == [1, 8, 3]
    alone = engine.generate([{"prompt": "Hi", "max_new_tokens": 8}])[0]
    assert results[1].token_ids == alone.token_ids


def test_generation_config_gives_the_defaults_and_calls_override_them(golden_model, golden_processor):
    """The golden checkpoint's generation_config.json sets no length: the official 1024 applies; an engine's
    kwargs and a call's kwargs come on top in that order."""
    assert Engine(golden_model, golden_processor).defaults.max_new_tokens == 1024
    golden_model.generation_config.max_new_tokens = 3
    try:
        engine = Engine(golden_model, golden_processor)
        assert len(engine.generate(["Hi"])[0].token_ids) == 3
        assert len(engine.generate(["Hi"], max_new_tokens=5)[0].token_ids) == 5
        assert (
            len(engine.generate([{"prompt": "Hi", "max_new_tokens": 2}], max_new_tokens=5)[0].token_ids) == 2
        )
        wide = Engine(golden_model, golden_processor, generate_kwargs={"max_new_tokens": 4})
        assert len(wide.generate(["Hi"])[0].token_ids) == 4
    finally:
        golden_model.generation_config.max_new_tokens = None


def test_checkpoint_sequence_bias_steers_every_request_and_bad_ids_fail_alone(golden_model, golden_processor):
    """A bias in generation_config.json applies to each request (as a realtime checkpoint's silence bias does); a
    request that biases a token the vocabulary lacks fails alone, naming it."""
    plain = Engine(golden_model, golden_processor).generate([{"prompt": "Hi", "max_new_tokens": 4}])[0]
    favourite = plain.token_ids[0] + 1
    golden_model.generation_config.sequence_bias = [[[favourite], 100.0]]
    try:
        engine = Engine(golden_model, golden_processor)
        steered, unbiased, bad = engine.generate(
            [
                {"prompt": "Hi", "max_new_tokens": 4},
                {
                    "prompt": "Hi",
                    "max_new_tokens": 4,
                    "generate_kwargs": {"sequence_bias": {(favourite,): 0.0}},
                },
                {"prompt": "Hi", "generate_kwargs": {"sequence_bias": {(10**6,): -1.0}}},
            ]
        )
    finally:
        golden_model.generation_config.sequence_bias = None
    assert steered.token_ids == [favourite] * 4
    assert unbiased.token_ids == plain.token_ids
    assert isinstance(bad.exception, QueryError) and "[1000000] are outside the vocabulary" in bad.error


def test_chunked_prefill_gives_the_same_tokens(golden_model, golden_processor, media):
    """Frames one at a time through the vision tower and the prompt in 3-token chunks: the same answer."""
    query = {"prompt": "What happens?", "videos": [media["vid_a"]], "max_new_tokens": 8}
    whole = Engine(golden_model, golden_processor).generate([query])[0]
    config = EngineConfig(prefill_chunk_frames=1, prefill_chunk_tokens=3, media_cache_bytes=0)
    chunked = Engine(golden_model, golden_processor, config).generate([query])[0]
    assert whole.ok and chunked.token_ids == whole.token_ids


def test_engine_config_is_checked(golden_model, golden_processor):
    with pytest.raises(QueryError, match="max_batch_size"):
        Engine(golden_model, golden_processor, EngineConfig(max_batch_size=0))
    with pytest.raises(QueryError, match="kv_cache_bytes"):
        Engine(golden_model, golden_processor, EngineConfig(kv_cache_bytes=-5))
