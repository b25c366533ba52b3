"""Property-based fuzzing (hypothesis): random and mutated bytes as images and videos, random query structures and
random setting values, thrown at the processor and the engine. Only MossVLError subclasses may escape the public
API, a hostile query's batch neighbours are always answered exactly as alone, and the process's peak memory stays
under a bound for the whole run."""

from __future__ import annotations

import contextlib
import io
import math
import warnings

import numpy as np
import pytest
from corpus import GOOD_QUERIES, PEAK_BYTES_PER_CASE, peak_rss_bytes, reset_peak_rss
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mossvl.errors import MossVLError
from mossvl.inference.engine import Engine
from mossvl.inference.request import PreparedRequest

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure here is reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FUZZ_PEAK_BYTES = 2 * PEAK_BYTES_PER_CASE  # for a whole fuzz run


@pytest.fixture
def peak_bound():
    """Fails the test when its peak resident memory rose more than FUZZ_PEAK_BYTES above where it started."""
    start = reset_peak_rss()
    yield
    growth = peak_rss_bytes() - start
    assert growth < FUZZ_PEAK_BYTES, f"peak memory rose by {growth >> 20} MiB"


@pytest.fixture(scope="module")
def engine(golden_model, limited_processor):
    return Engine(golden_model, limited_processor)


@pytest.fixture(scope="module")
def samples(media) -> dict[str, bytes]:
    """Small valid files of each kind, for mutation."""
    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    out = {}
    for kind in ("png", "jpeg", "gif", "webp", "bmp", "tiff"):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format=kind)
        out[kind] = buffer.getvalue()
    with open(media.good_video, "rb") as handle:
        out["mp4"] = handle.read()
    with open(media.paths["mkv_50"], "rb") as handle:
        out["mkv"] = handle.read()
    return out


def plan_and_load(processor, kind: str, path: str) -> None:
    """Plan and load one media file; only a MossVLError may come out (warnings are allowed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            planner = processor.image_processor if kind == "image" else processor.video_processor
            for item in planner.plan([path]):
                item.load()
        except MossVLError:
            pass


@FUZZ
@given(
    data=st.binary(min_size=0, max_size=4096),
    suffix=st.sampled_from([".png", ".jpg", ".gif", ".mp4", ".mkv"]),
)
def test_random_bytes_as_media_raise_only_media_errors(limited_processor, tmp_path, peak_bound, data, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(data)
    plan_and_load(limited_processor, "image" if suffix in (".png", ".jpg", ".gif") else "video", str(path))


@FUZZ
@given(
    kind=st.sampled_from(["png", "jpeg", "gif", "webp", "bmp", "tiff", "mp4", "mkv"]),
    cut=st.floats(0.05, 1.0),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=12),
)
def test_mutated_media_raise_only_media_errors(
    limited_processor, samples, tmp_path, peak_bound, kind, cut, flips
):
    data = bytearray(samples[kind][: max(1, math.ceil(len(samples[kind]) * cut))])
    for where, value in flips:
        data[int(where * len(data))] = value
    path = tmp_path / f"mutated.{kind}"
    path.write_bytes(bytes(data))
    plan_and_load(limited_processor, "video" if kind in ("mp4", "mkv") else "image", str(path))


# Strings that mean something to the normaliser, the processor or a file system, besides random text.
SPECIAL_TEXT = st.sampled_from(
    [
        "<|image|>",
        "<|video|>",
        "<|image_pad|>",
        "<|im_end|>",
        "caf\udce9",
        "\0",
        "",
        " ",
        ".",
        "/",
        "../",
        "a" * 300,
    ]
)
KEYS = st.sampled_from(
    [
        "prompt", "messages", "conversations", "images", "videos", "system_prompt", "media_kwargs",
        "generate_kwargs", "role", "content", "type", "text", "image", "video", "image_url", "url", "path",
        "video_path", "segments", "frames", "timestamps", "fps", "max_pixels", "min_pixels", "video_fps",
        "max_frames", "num_extract_threads", "temperature", "top_k", "seed", "max_new_tokens", "from", "value",
    ]
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(
        alphabet=st.characters(exclude_characters=":"), max_size=12
    ),  # no "http://": nothing leaves the box
    SPECIAL_TEXT,
    st.sampled_from(["user", "assistant", "system", "image", "video", "text", "image_url"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=5)),
    max_leaves=20,
)


@FUZZ
@given(query=st.one_of(VALUES, st.dictionaries(KEYS, VALUES, min_size=1, max_size=6)))
def test_random_queries_raise_only_mossvl_errors(engine, peak_bound, query):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(MossVLError):
            assert isinstance(engine.prepare(query, {"max_new_tokens": 2}), PreparedRequest)


SETTING_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2, 2),
    st.text(max_size=4),
    st.lists(st.integers(-5, 500), max_size=3),
)
SETTING_KEYS = st.sampled_from(
    [
        "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "stop", "seed",
        "stop_token_ids", "min_pixels", "max_pixels", "multi_image_max_pixels", "video_max_pixels", "video_fps",
        "min_frames", "max_frames", "num_extract_threads",
    ]
)  # fmt: skip


@settings(FUZZ, max_examples=30)
@given(changes=st.dictionaries(SETTING_KEYS, SETTING_VALUES, min_size=1, max_size=5), video=st.booleans())
def test_random_settings_never_cost_the_neighbours_their_answers(
    engine, media, good_answers, peak_bound, changes, video
):
    media_key = "videos" if video else "images"
    hostile = {"prompt": "Describe.", media_key: [media.good_video if video else media.good_image], **changes}
    hostile.setdefault("max_new_tokens", 2)
    if isinstance(hostile["max_new_tokens"], int) and not isinstance(hostile["max_new_tokens"], bool):
        hostile["max_new_tokens"] = min(hostile["max_new_tokens"], 4)  # keep an accepted setting quick
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = engine.generate([GOOD_QUERIES[0](media), hostile, GOOD_QUERIES[1](media)], max_new_tokens=3)
    assert [results[0].text, results[2].text] == good_answers
    assert results[0].ok and results[2].ok
    assert results[1].ok or isinstance(results[1].exception, MossVLError), results[1].error
