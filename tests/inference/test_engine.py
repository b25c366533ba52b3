"""Engine behaviour on the golden tiny model: batching with per-row settings, streaming, errors, stopping."""

import copy

import pytest

from mossvl.errors import MediaError, QueryError
from mossvl.inference.engine import Engine, collect


@pytest.fixture
def engine(golden_model, golden_processor):
    return Engine(golden_model, golden_processor)


def mixed_queries(media) -> list[dict]:
    """Different media, lengths and settings in one batch (greedy, sampled with a seed, a penalty, top-k 1)."""
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
    queries = mixed_queries(media)[:3]
    texts = {i: "" for i in range(len(queries))}
    results = {}
    for event in engine.stream(queries):
        texts[event.index] += event.delta
        if event.result is not None:
            assert event.index not in results
            results[event.index] = event.result
    assert sorted(results) == [0, 1, 2]
    assert all(texts[i] == results[i].text for i in results)
    tokenizer = engine.tokenizer
    assert all(
        results[i].text == tokenizer.decode(results[i].token_ids, skip_special_tokens=True) for i in results
    )


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
    ],
)
def test_invalid_generate_kwargs_name_the_setting(engine, kwargs, message):
    result = engine.generate([{"prompt": "Hi", "generate_kwargs": kwargs}])[0]
    assert result.finish_reason == "error" and message in result.error


def test_max_new_tokens_zero_returns_empty(engine):
    result = engine.generate(["Hi"], max_new_tokens=0)[0]
    assert (result.text, result.token_ids, result.finish_reason) == ("", [], "length")


def test_eos_token_ends_the_row_without_text(engine):
    greedy = engine.generate(["Hello"], max_new_tokens=6)[0]
    engine.eos_token_ids = engine.eos_token_ids | {greedy.token_ids[2]}
    stopped = engine.generate(["Hello"], max_new_tokens=6)[0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == greedy.token_ids[:3]
    assert stopped.text == engine.tokenizer.decode(greedy.token_ids[:2])


def test_stop_string_cuts_the_answer_and_never_streams_it(engine):
    full = engine.generate(["Hello"], max_new_tokens=20)[0]
    stop = full.text[4:6]
    assert stop and "\ufffd" not in stop
    streamed = "".join(event.delta for event in engine.stream(["Hello"], max_new_tokens=20, stop=[stop]))
    result = engine.generate(["Hello"], max_new_tokens=20, stop=stop)[0]
    assert result.text == full.text[: full.text.index(stop)] == streamed
    assert result.finish_reason == "stop"
    assert len(result.token_ids) < len(full.token_ids)


def test_cancel_between_decode_steps(engine):
    steps = []

    def cancel() -> bool:
        steps.append(1)
        return len(steps) >= 3

    events = list(engine.stream(["Hello", "World"], max_new_tokens=50, cancel=cancel))
    results = collect(events)
    assert [r.finish_reason for r in results] == ["cancelled", "cancelled"]
    assert [len(r.token_ids) for r in results] == [3, 3]


def test_rows_finish_independently_and_keep_their_own_limits(engine):
    results = engine.generate([{"prompt": "Hi", "max_new_tokens": n} for n in (1, 8, 3)])
    assert [len(r.token_ids) for r in results] == [1, 8, 3]
    alone = engine.generate([{"prompt": "Hi", "max_new_tokens": 8}])[0]
    assert results[1].token_ids == alone.token_ids


def test_vision_chunked_length_reaches_the_vision_tower(golden_model, golden_processor, media):
    model = copy.deepcopy(golden_model)
    seen = []
    forward = model.model.visual.forward

    def spy(*args, chunk_size=None, **kwargs):
        seen.append(chunk_size)
        return forward(*args, chunk_size=chunk_size, **kwargs)

    model.model.visual.forward = spy
    query = {"prompt": "Compare.", "images": [media["img_a"], media["img_d"]], "max_new_tokens": 4}
    chunked = Engine(model, golden_processor, vision_chunked_length=1).generate([query])[0]
    per_query = Engine(model, golden_processor).generate([{**query, "vision_chunked_length": 2}])[0]
    assert seen == [1, 2]
    assert (
        chunked.token_ids
        == per_query.token_ids
        == Engine(golden_model, golden_processor).generate([query])[0].token_ids
    )
