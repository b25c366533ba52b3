"""The int8 KV cache (``EngineConfig.kv_cache_dtype="int8"``): the pool's quantized storage and row operations, and
the engine on the golden tiny model with it.

Pool: a round trip is off by at most absmax / 254 per element, and every row operation (growth, swap, prefix copy,
repack, dropping a vision prefix) leaves exactly the quantized form of what a model-dtype pool holds after the
same operations, so values and scales always move together. Engine: greedy tokens equal the golden ones on every
golden case (measured logit drift against the fp32 cache: at most 0.022, with logits of magnitude up to 4.3; the
test allows 0.05); prefix sharing gives the tokens of unshared int8 runs, and sessions and the sliding visual
window give the fp32 cache's tokens (the window's vision memory being the quantized form of the fp32 one's).
"""

import copy
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_golden_engine import SINGLE_RUN_CASES, case_queries

from mossvl.errors import ConfigError, QueryError
from mossvl.inference.core import CapacityError, EngineConfig
from mossvl.inference.engine import Engine
from mossvl.inference.kv_pool import KVPool, PoolAccess, dequantize, quantize
from mossvl.inference.realtime import RealtimeConfig, RealtimeSession
from mossvl.inference.session import Session

TIMEOUT = 60
# Largest logit difference between the int8 and the fp32 cache over the golden cases' steps: 0.022 measured.
LOGIT_DRIFT_BOUND = 0.05
CONFIG = SimpleNamespace(num_hidden_layers=3, cross_attention_layers=[1], num_key_value_heads=2, head_dim=64)
TEXT, VISION = 0, 1  # a self-attention and the cross-attention layer of CONFIG


def pools() -> tuple[KVPool, KVPool]:
    return KVPool(CONFIG, torch.float32, "cpu"), KVPool(CONFIG, torch.float32, "cpu", "int8")


def entries(count: int, seed: int) -> torch.Tensor:
    """(kv_heads, count, head_dim) K or V entries whose magnitudes differ from token to token."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.rand(CONFIG.num_key_value_heads, count, 1, generator=generator) * 10
    return torch.randn(CONFIG.num_key_value_heads, count, CONFIG.head_dim, generator=generator) * scale


def write_text(pool: KVPool, row: int, count: int, seed: int) -> None:
    """Append ``count`` text entries to a row, as a prefill chunk does."""
    start = pool.text_len[row]
    access = PoolAccess(pool, slice(row, row + 1), torch.tensor([start]), start + count, 0)
    access.update(entries(count, seed)[None], entries(count, seed + 1)[None], TEXT)
    pool.text_len[row] += count


def write_vision(pool: KVPool, row: int, count: int, seed: int) -> None:
    pool.write_vision(VISION, row, entries(count, seed), entries(count, seed + 1))
    pool.vision_len[row] += count


def assert_quantized_copy(fp: KVPool, q8: KVPool) -> None:
    """Every used entry of the int8 pool is the quantized form of the model-dtype pool's entry."""
    assert (q8.text_len, q8.vision_len) == (fp.text_len, fp.vision_len)
    for layer, lengths in ((TEXT, fp.text_len), (VISION, fp.vision_len)):
        for row, length in enumerate(lengths):
            rows = slice(row, row + 1)
            for exact, stored in zip(fp.read(layer, rows, length), q8.read(layer, rows, length), strict=True):
                assert torch.equal(stored, dequantize(*quantize(exact), torch.float32))


def test_round_trip_error_is_at_most_absmax_over_254():
    _, pool = pools()
    pool.reserve(2, 8, 8, 1 << 30)
    keys, values = entries(8, 0), entries(8, 1)
    keys[:, 3] = 0.0  # an all-zero vector has scale 0 and stays exactly 0
    pool.write_vision(VISION, 1, keys, values)
    read_keys, read_values = pool.read(VISION, slice(1, 2), 8)
    assert read_keys.dtype == read_values.dtype == torch.float32
    for exact, read in ((keys, read_keys[0]), (values, read_values[0])):
        bound = exact.abs().amax(-1, keepdim=True) / 254
        assert bool(((read - exact).abs() <= bound * (1 + 1e-6)).all())
        assert float((read - exact).abs().max()) > 0  # it is lossy: the bound is what is tested
    assert torch.equal(read_keys[0, :, 3], torch.zeros(2, 64))
    # Unused slots (row 0, past row 1's entries) are zeros, so masked attention over them stays finite.
    unused = pool.read(VISION, slice(0, 2), pool.vision_capacity)
    assert torch.equal(unused[0][0], torch.zeros_like(unused[0][0]))
    assert torch.equal(unused[1][1, :, 8:], torch.zeros_like(unused[1][1, :, 8:]))


def test_decode_writes_quantize_each_rows_entry():
    fp, q8 = pools()
    for pool in (fp, q8):
        pool.reserve(3, 16, 0, 1 << 30)
        for row in range(3):
            write_text(pool, row, 2 + row, seed=10 * row)
        starts = torch.tensor(pool.text_len)
        access = PoolAccess(pool, slice(0, 3), starts, int(starts.max()) + 1, 0)
        step = torch.stack([entries(1, seed) for seed in (7, 8, 9)])
        keys, values = access.update(step, step * 2, TEXT)
        assert keys.shape == (3, 2, 5, 64) and keys.dtype == torch.float32
        pool.text_len = [length + 1 for length in pool.text_len]
    assert_quantized_copy(fp, q8)


def test_row_operations_move_values_and_scales_together():
    fp, q8 = pools()
    for pool in (fp, q8):
        pool.reserve(2, 5, 6, 1 << 30)
        write_text(pool, 0, 5, seed=1)
        write_vision(pool, 0, 6, seed=2)
        write_text(pool, 1, 3, seed=3)
        write_vision(pool, 1, 2, seed=4)
    assert_quantized_copy(fp, q8)
    for pool in (fp, q8):  # growth: more rows, longer rows
        pool.reserve(4, 600, 300, 1 << 30)
        assert (pool.rows, pool.text_capacity, pool.vision_capacity) == (4, 768, 512)
        write_text(pool, 2, 7, seed=5)
        write_vision(pool, 3, 9, seed=6)
    assert_quantized_copy(fp, q8)
    steps = [
        lambda pool: pool.swap(0, 3),
        lambda pool: pool.copy_prefix(0, 1, 0, 5),
        lambda pool: pool.copy_prefix(2, 0, 4, 0),
        lambda pool: pool.drop_vision_prefix(3, 4),
        lambda pool: pool.repack([3, 1, 0]),
    ]
    for step in steps:
        for pool in (fp, q8):
            step(pool)
        assert_quantized_copy(fp, q8)
    assert (q8.rows, q8.text_capacity, q8.vision_capacity) == (3, 256, 256)
    assert q8.text_len == [5, 0, 4] and q8.vision_len == [2, 5, 0]
    q8.repack([])
    assert q8.nbytes == 0 and not (q8.keys or q8.values or q8.key_scales or q8.value_scales)


def test_byte_accounting_counts_the_scales_and_shows_the_saving():
    sizes = {}
    for dtype, cache in ((torch.float32, "model"), (torch.bfloat16, "model"), (torch.float32, "int8")):
        pool = KVPool(CONFIG, dtype, "cpu", cache)
        pool.reserve(3, 300, 20, 1 << 30)
        buffers = [*pool.keys.values(), *pool.values.values()]
        if cache == "int8":
            buffers += [*pool.key_scales.values(), *pool.value_scales.values()]
        assert pool.nbytes == sum(buffer.nbytes for buffer in buffers)
        sizes[str(dtype)[6:] if cache == "model" else cache] = (
            pool.text_token_bytes,
            pool.vision_token_bytes,
        )
    # Per token, layer and KV head: K and V of 64 entries, plus (int8) a float32 scale each.
    assert sizes == {
        "float32": (2 * 2 * 2 * 64 * 4, 1 * 2 * 2 * 64 * 4),
        "bfloat16": (2 * 2 * 2 * 64 * 2, 1 * 2 * 2 * 64 * 2),
        "int8": (2 * 2 * 2 * (64 + 4), 1 * 2 * 2 * (64 + 4)),
    }


def test_unknown_kv_cache_dtypes_are_refused(golden_model, golden_processor):
    with pytest.raises(ConfigError, match=r"unknown KV cache dtype 'fp8'; use one of \['model', 'int8'\]"):
        KVPool(CONFIG, torch.float32, "cpu", "fp8")
    with pytest.raises(QueryError, match=r"kv_cache_dtype='int4' is invalid: expected None or one of"):
        Engine(golden_model, golden_processor, EngineConfig(kv_cache_dtype="int4"))


def logits_of(engine: Engine) -> list[torch.Tensor]:
    """Record every logits tensor the engine's runner returns (prefill ends and decode steps)."""
    recorded = []
    forward = engine.core.runner.forward

    def recording(*args, **kwargs):
        logits = forward(*args, **kwargs)
        if logits is not None:
            recorded.append(logits)
        return logits

    engine.core.runner.forward = recording
    return recorded


def test_golden_cases_give_the_golden_tokens_with_an_int8_cache(
    golden_model, golden_processor, golden_dir, golden_json, golden_expected
):
    int8 = Engine(golden_model, golden_processor, EngineConfig(kv_cache_dtype="int8"))
    exact = Engine(golden_model, golden_processor)
    assert int8.core.pool.quantized and not exact.core.pool.quantized
    drift = 0.0
    for case in golden_json["cases"]:
        queries = case_queries(case, golden_dir)
        if case["name"] not in SINGLE_RUN_CASES:
            results = int8.generate(queries)
            expected = golden_expected(case["name"])["gen_tokens"].tolist()
            assert [r.token_ids for r in results] == expected, case["name"]
        for query in queries:  # one at a time, so that the recorded logits line up
            logits = [logits_of(engine) for engine in (int8, exact)]
            tokens = [engine.generate([query])[0].token_ids for engine in (int8, exact)]
            assert tokens[0] == tokens[1], case["name"]
            assert len(logits[0]) == len(logits[1]) == len(tokens[0])
            drift = max(drift, *(float((a - b).abs().max()) for a, b in zip(*logits, strict=True)))
    assert 0 < drift < LOGIT_DRIFT_BOUND


def test_prefix_sharing_with_an_int8_cache(golden_model, golden_processor, media):
    config = {"kv_cache_dtype": "int8", "media_cache_bytes": 0}
    engine = Engine(golden_model, golden_processor, EngineConfig(**config))
    fresh = Engine(golden_model, golden_processor, EngineConfig(prefix_cache_size=0, **config))
    questions = [
        {
            "prompt": q,
            "videos": [media["vid_a"]],
            "max_new_tokens": 6,
            "media_kwargs": {"num_extract_threads": 1},
        }
        for q in ("What happens?", "What moves?")
    ]
    first, second = (engine.generate([q])[0] for q in questions)
    assert first.cached_tokens == 0 and second.cached_tokens > 20
    assert [first.token_ids, second.token_ids] == [r.token_ids for r in fresh.generate(questions)]
    exact = [r.token_ids for r in Engine(golden_model, golden_processor).generate(questions)]
    # The fp32 cache's 5th token of the second answer is a near tie (top-2 logits 0.0009 apart, under the int8
    # drift), so the answers agree up to there.
    assert first.token_ids == exact[0] and second.token_ids[:4] == exact[1][:4]


def test_session_turns_with_an_int8_cache(golden_model, golden_processor, media):
    turns = ["What is the color of the sky?", {"prompt": "And this?", "images": [media["img_a"]]}, "Why?"]
    answers = {}
    for cache in ("model", "int8"):
        engine = Engine(golden_model, golden_processor, EngineConfig(kv_cache_dtype=cache))
        session = Session(engine, generate_kwargs={"max_new_tokens": 5})
        answers[cache] = [session.send(turn).token_ids for turn in turns]
        assert engine.stats()["kept_sequences"] == 1 and session.cached_tokens > 40
    assert answers["int8"] == answers["model"]


def realtime_run(model, processor, cache: str):
    """Ten frames through a realtime session with a 3-second window; returns the engine, the session, its pool
    row and the vision lengths after each frame."""
    engine = Engine(model, processor, EngineConfig(prefix_cache_size=0, kv_cache_dtype=cache))
    session = RealtimeSession(
        engine, RealtimeConfig(initial_prompt="Watch.", max_new_tokens=2, visual_window=3.0)
    )
    session.start()
    rng = np.random.default_rng(0)
    lengths = []
    for index in range(10):
        session.push_frame(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), float(index))
        while (event := session.poll_event(TIMEOUT)).kind != "response_done":
            assert event.kind not in ("closed", "error"), event
        lengths.append(engine.core.pool.vision_len[session._sequence.row])  # noqa: SLF001 - reads its KV
    return engine, session, session._sequence.row, lengths  # noqa: SLF001


def test_the_visual_window_with_an_int8_cache(golden_model, golden_processor):
    exact, exact_session, exact_row, exact_lengths = realtime_run(golden_model, golden_processor, "model")
    int8, int8_session, row, lengths = realtime_run(golden_model, golden_processor, "int8")
    assert lengths == exact_lengths and max(lengths) == lengths[-1] < 10 * lengths[0]
    assert int8_session.fed_tokens == exact_session.fed_tokens  # the same prompts, frames and answers
    # The vision memory left after the window moved is the quantized form of the fp32 cache's (same frames).
    for layer in int8.core.pool.cross_layers:
        held = int8.core.pool.read(layer, slice(row, row + 1), lengths[-1])
        reference = exact.core.pool.read(layer, slice(exact_row, exact_row + 1), lengths[-1])
        for stored, value in zip(held, reference, strict=True):
            assert torch.equal(stored, dequantize(*quantize(value), torch.float32))
    for session in (exact_session, int8_session):
        session.close(TIMEOUT)


@pytest.mark.parametrize(("bits", "expected"), [(8, "int8"), (4, "model")])
def test_the_kv8_packaging_makes_int8_the_default(golden_model, golden_processor, caplog, bits, expected):
    model = copy.copy(golden_model)
    model.generation_config = copy.deepcopy(golden_model.generation_config)
    model.generation_config.cache_implementation = "quantized"
    model.generation_config.cache_config = {"backend": "hqq", "nbits": bits, "q_group_size": 64}
    with caplog.at_level(logging.INFO, logger="mossvl.inference.core"):
        assert Engine(model, golden_processor).core.kv_cache_dtype == expected
    assert ("asks for an 8-bit quantized cache" in caplog.text) == (bits == 8)
    explicit = Engine(model, golden_processor, EngineConfig(kv_cache_dtype="model"))
    assert explicit.core.kv_cache_dtype == "model" and not explicit.core.pool.quantized


def test_an_int8_cache_admits_what_fp32_cannot(golden_model, golden_processor, media):
    query = {"prompt": "Describe.", "images": [media["img_a"]], "max_new_tokens": 6}
    result = Engine(golden_model, golden_processor).generate([query])[0]
    fp32 = KVPool(golden_model.config.text_config, torch.float32, "cpu")
    needed = fp32.bytes_for(1, result.prompt_tokens + 6, result.vision_tokens)
    limit = EngineConfig(kv_cache_bytes=needed // 2)
    with pytest.raises(CapacityError, match="KV memory"):
        Engine(golden_model, golden_processor, limit).generate([query])[0].raise_for_error()
    limit.kv_cache_dtype = "int8"
    assert Engine(golden_model, golden_processor, limit).generate([query])[0].token_ids == result.token_ids
