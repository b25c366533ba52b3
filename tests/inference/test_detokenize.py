"""Incremental detokenisation: UTF-8-safe deltas that add up to the full decode, and stop-string holding."""

import random

import pytest

from mossvl.inference.detokenize import IncrementalDetokenizer, TextStream


@pytest.fixture(scope="module")
def tokenizer(golden_processor):
    return golden_processor.tokenizer


def stream_all(tokenizer, ids, stop=()):
    stream = TextStream(tokenizer, stop)
    deltas = [stream.push(i) for i in ids] + [stream.finish()]
    return deltas, stream


def test_multibyte_characters_are_never_split(tokenizer):
    text = "héllo 视频 wörld 😀 ok"
    ids = tokenizer.encode(text)
    deltas, stream = stream_all(tokenizer, ids)
    assert "".join(deltas) == text == stream.text
    assert all("\ufffd" not in delta for delta in deltas)
    # Several ids carry the bytes of one CJK character or emoji: they yield nothing until it is complete.
    assert deltas.count("") > 1
    assert "视" in deltas and "😀" in deltas


def test_deltas_add_up_to_decode_of_golden_generations(tokenizer, golden_expected):
    for case in ("text_only", "image_single", "video_single", "interleaved"):
        ids = golden_expected(case)["gen_tokens"][0].tolist()
        deltas, _ = stream_all(tokenizer, ids)
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)


def test_random_ids_with_invalid_utf8_and_specials(tokenizer):
    rng = random.Random(0)
    vocab = len(tokenizer)
    for _ in range(200):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 25))]
        detok = IncrementalDetokenizer(tokenizer)
        parts = [detok.push(i) for i in ids] + [detok.flush()]
        assert "".join(parts) == tokenizer.decode(ids, skip_special_tokens=True)
        # Only the final flush may release a trailing U+FFFD of an unfinished character.
        assert all(not part.endswith("\ufffd") for part in parts[:-1])


def test_stop_strings_cut_the_text_and_are_held_back(tokenizer):
    rng = random.Random(1)
    stops = ["ab", "xyz", " the"]
    for _ in range(200):
        ids = [rng.randrange(384) for _ in range(rng.randrange(1, 30))]
        deltas, stream = stream_all(tokenizer, ids, stops)
        full = tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((full.find(s) for s in stops if s in full), default=len(full))
        assert "".join(deltas) == full[:cut] == stream.text
        assert stream.stopped == (cut < len(full))


def test_partial_stop_string_is_released_when_it_does_not_complete(tokenizer):
    stream = TextStream(tokenizer, ["xyz"])
    released = "".join(stream.push(i) for i in tokenizer.encode("abc x"))
    assert released == "abc "
    assert stream.finish() == "x"
