"""The limits themselves: InputLimits validation, the range checks of media and generation settings (property
tests: every value is either accepted in range or refused naming the setting), what a path is, the fetch helper's
caps and timeouts, temporary downloads, and truncated videos refused on request."""

from __future__ import annotations

import gc
import math
import os
import re
import socket
import time

import pytest
from corpus import noise_clip
from hypothesis import given, settings
from hypothesis import strategies as st

from mossvl.errors import ConfigError, MediaError, MediaTooLargeError, MediaWarning, QueryError
from mossvl.inference.sampling import GenerationSettings
from mossvl.processing.limits import InputLimits, check_media_settings
from mossvl.processing.sources import DownloadedFile, fetch_bytes, local_file_error
from mossvl.processing.video import probe_video

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
)


@pytest.mark.parametrize(
    "field", ["max_prompt_tokens", "max_image_pixels", "fetch_timeout", "max_memory_share"]
)
@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, True, "10"])
def test_input_limits_refuse_values_that_are_not_positive_numbers(field, value):
    with pytest.raises(ConfigError, match=rf"InputLimits\.{field}="):
        InputLimits(**{field: value})


def test_memory_share_is_at_most_one_and_flags_are_bools():
    with pytest.raises(ConfigError, match="max_memory_share"):
        InputLimits(max_memory_share=1.5)
    with pytest.raises(ConfigError, match="allow_truncated_videos"):
        InputLimits(allow_truncated_videos="no")


MEDIA_RANGES = {  # setting: (low, high) under the default limits, None = a budget may be switched off
    "min_pixels": (1, InputLimits().max_pixels_per_frame),
    "max_pixels": (1, InputLimits().max_pixels_per_frame),
    "multi_image_max_pixels": (1, InputLimits().max_total_pixels),
    "video_max_pixels": (1, InputLimits().max_total_pixels),
    "min_frames": (1, InputLimits().max_frames),
    "max_frames": (1, InputLimits().max_frames),
    "num_extract_threads": (1, InputLimits().max_extract_threads),
}


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(MEDIA_RANGES)), value=ANY_VALUE)
def test_media_settings_are_accepted_in_range_or_refused_by_name(name, value):
    low, high = MEDIA_RANGES[name]
    fits = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and float(value).is_integer()
        and low <= value <= high
    )
    if value is None and name.endswith("image_max_pixels") or value is None and name == "video_max_pixels":
        assert check_media_settings({name: value}, InputLimits())[name] is None
    elif fits:
        assert check_media_settings({name: value}, InputLimits())[name] == int(value)
    else:
        with pytest.raises(
            QueryError, match=rf"media setting {name}=.* is invalid: expected an integer in \["
        ):
            check_media_settings({name: value}, InputLimits())


@settings(max_examples=100, deadline=None)
@given(value=ANY_VALUE)
def test_video_fps_must_be_finite_positive_and_at_most_the_limit(value):
    fits = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 120
    if fits:
        assert check_media_settings({"video_fps": value}, InputLimits())["video_fps"] == float(value)
    else:
        with pytest.raises(QueryError, match=r"video_fps=.* is invalid: expected a number in \(0, 120\]"):
            check_media_settings({"video_fps": value}, InputLimits())


def test_pairs_are_ordered_and_the_limits_move_the_bounds():
    with pytest.raises(QueryError, match=r"max_pixels=100 is invalid: expected an integer in \[4096, "):
        check_media_settings({"min_pixels": 4096, "max_pixels": 100}, InputLimits())
    with pytest.raises(QueryError, match=r"max_frames=2 is invalid: expected an integer in \[5, "):
        check_media_settings({"min_frames": 5, "max_frames": 2}, InputLimits())
    assert check_media_settings({"num_extract_threads": 64}, InputLimits(max_extract_threads=64)) == {
        "num_extract_threads": 64
    }


NUMERIC_SETTINGS = ["max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed"]


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(NUMERIC_SETTINGS), value=ANY_VALUE)
def test_generation_settings_are_valid_or_refused_by_name(name, value):
    try:
        settings_ = GenerationSettings.from_kwargs({name: value, "do_sample": True})
    except QueryError as exc:
        assert re.search(rf"generate kwarg {name}=.* is invalid: expected ", str(exc)), exc
        return
    chosen = getattr(settings_, name)
    if value is not None:
        assert chosen == value and not isinstance(chosen, bool)
    if name == "temperature":
        assert chosen <= 0 or 1e-6 <= chosen <= 100
    if name == "repetition_penalty":
        assert 0.01 <= chosen <= 100


def test_stop_settings_of_the_wrong_shape_are_named():
    with pytest.raises(QueryError, match=r"generate kwarg stop=5 is invalid"):
        GenerationSettings.from_kwargs({"stop": 5})
    with pytest.raises(QueryError, match=r"generate kwarg stop_token_ids=True is invalid"):
        GenerationSettings.from_kwargs({"stop_token_ids": True})
    with pytest.raises(QueryError, match=r"stop_token_ids=\(\d+,\) is invalid"):
        GenerationSettings.from_kwargs({"stop_token_ids": [10**30]})


def test_local_file_error_names_what_a_path_is(tmp_path):
    regular = tmp_path / "a.png"
    regular.write_bytes(b"x")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "loop2", tmp_path / "loop1")
    os.symlink(tmp_path / "loop1", tmp_path / "loop2")
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "sock"))
        cases = {
            str(regular): None,
            str(tmp_path): "image path .* is a directory, not a regular file",
            str(tmp_path / "fifo"): "is a FIFO \\(named pipe\\)",
            "/dev/null": "is a character device",
            str(tmp_path / "sock"): "is a socket",
            str(tmp_path / "loop1"): "is a symlink loop",
            str(tmp_path / "dangling"): "file not found: .* is a symlink to a missing target",
            str(tmp_path / "missing.png"): "image file not found: .*missing.png",
            str(regular / "below"): "image file not found",
            "a\0b": "contains a NUL character",
            str(empty): "image file is empty \\(0 bytes\\)",
        }
        for path, message in cases.items():
            problem = local_file_error(path, "image")
            assert problem is None if message is None else re.search(message, problem), (path, problem)


def test_fetch_refuses_a_declared_size_over_the_cap_at_once(web):
    start = time.monotonic()
    with pytest.raises(MediaTooLargeError, match=r"larger than 1000 bytes \(10000000000 bytes seen"):
        fetch_bytes(f"{web.url}/oversized", InputLimits(max_media_bytes=1000, fetch_timeout=5), "image")
    assert time.monotonic() - start < 2


def test_fetch_stops_a_flood_at_the_cap(web):
    start = time.monotonic()
    with pytest.raises(MediaTooLargeError, match=r"larger than 100000 bytes"):
        fetch_bytes(f"{web.url}/flood", InputLimits(max_media_bytes=100_000, fetch_timeout=5), "video")
    assert time.monotonic() - start < 2


def test_fetch_timeouts_and_deadline(web):
    limits = InputLimits(fetch_timeout=0.3, fetch_deadline=0.8)
    for path, message, seconds in [
        ("stall", "no answer within 0.3 s", 0.3),
        ("stall_body", r"no answer within 0.3 s \(InputLimits.fetch_timeout\) after 100 bytes", 0.3),
        ("trickle", r"longer than 0.8 s \(InputLimits.fetch_deadline\)", 0.8),
    ]:
        start = time.monotonic()
        with pytest.raises(MediaError, match=message):
            fetch_bytes(f"{web.url}/{path}", limits, "image")
        assert seconds <= time.monotonic() - start < seconds + 3, path


def test_fetch_names_refused_connections_and_other_schemes():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(MediaError, match=r"cannot fetch image http://127.0.0.1:\d+/x: .*(refused|Errno)"):
        fetch_bytes(f"http://127.0.0.1:{port}/x", InputLimits(fetch_timeout=1), "image")
    with pytest.raises(MediaError, match="only http:// and https:// URLs are fetched"):
        fetch_bytes("ftp://127.0.0.1/x", InputLimits(), "image")


def test_a_download_lives_as_long_as_its_object(web):
    download = DownloadedFile(f"{web.url}/clip.mp4", InputLimits(), "video")
    path = download.path
    assert path.endswith(".mp4") and os.path.getsize(path) == len(web.files["/clip.mp4"])
    del download
    gc.collect()
    assert not os.path.exists(path)
    before = set(os.listdir("/tmp"))
    with pytest.raises(MediaError):
        DownloadedFile(f"{web.url}/flood", InputLimits(max_media_bytes=10_000), "video")
    assert set(os.listdir("/tmp")) - before == set()  # a failed download leaves no file behind


def test_whole_videos_pass_without_warnings_and_truncated_ones_can_be_refused(media, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", MediaWarning)
        for name in ("whole_faststart.mp4", "whole_index_at_end.mp4", "whole.mkv"):
            assert probe_video(media.root / name).num_frames == 100
        assert probe_video(noise_clip(tmp_path / "short.mp4", 3)).num_frames == 3
    strict = InputLimits(allow_truncated_videos=False)
    with pytest.raises(MediaError, match=r"truncated or damaged: read \d+ of the 100 frames.*refused"):
        probe_video(media.paths["faststart_90"], strict)
    with pytest.warns(MediaWarning, match=r"using the \d+ frames \([\d.]+ s\) that were read"):
        index = probe_video(media.paths["faststart_90"])
    assert 50 < index.num_frames < 100
