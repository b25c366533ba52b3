"""The corpus on the other surfaces: ``mossvl run`` (one query file holding every JSON case between good queries),
the HTTP server (hostile requests while good ones run), a realtime session (hostile frames between good ones) and
the fine-tuning loader (hostile records among good ones). Each bad input gets its named error, the others are
answered, nothing hangs."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import warnings

import httpx
import numpy as np
import pytest
import torch
from corpus import CASES, GENERATE, GOOD_QUERIES, SECONDS_PER_CASE, TEST_LIMITS

import mossvl
from mossvl.cli.main import main
from mossvl.errors import MediaError, MediaWarning, QueryError
from mossvl.inference.engine import Engine
from mossvl.inference.realtime import RealtimeConfig, RealtimeSession
from mossvl.processing.processor import MossVLProcessor
from mossvl.serving.app import ServerConfig, create_app
from mossvl.serving.background import BackgroundServer
from mossvl.serving.media import MediaPolicy
from mossvl.training.data import SFTDataset

pytestmark = [
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.filterwarnings("ignore::mossvl.errors.MediaWarning"),  # asserted where it is the point
]


# ----- mossvl run ---------------------------------------------------------------------------------------------


def run_cli(golden_dir, path) -> tuple[int, list[dict]]:
    code = main(
        ["run", "--input", str(path), "--checkpoint", str(golden_dir), "--quiet", "--max-new-tokens", "3"]
    )
    return code, json.loads(path.with_name(f"{path.stem}_results.json").read_text())["results"]


def test_cli_run_answers_the_good_queries_of_a_hostile_file(golden_dir, media, tmp_path, monkeypatch):
    # The CLI has no flags for the processor limits yet: give its processor the corpus' short fetch timeouts.
    loaded = MossVLProcessor.from_pretrained.__func__
    monkeypatch.setattr(
        MossVLProcessor,
        "from_pretrained",
        classmethod(lambda cls, path, **kwargs: loaded(cls, path, limits=TEST_LIMITS, **kwargs)),
    )
    # A query file whose entries are not all objects is refused as a whole (a one-line error), by design; the
    # lone-surrogate prompt has its own test below.
    cases = [
        case
        for case in CASES
        if case.json and isinstance(case.build(media), dict) and case.name != "prompt_lone_surrogate"
    ]
    good = [build(media) for build in GOOD_QUERIES]
    clean, hostile = tmp_path / "clean.jsonl", tmp_path / "hostile.jsonl"
    clean.write_text("".join(json.dumps(query) + "\n" for query in good))
    hostile.write_text(
        "".join(json.dumps(q) + "\n" for q in [good[0], *(c.build(media) for c in cases), good[1]])
    )
    code, clean_results = run_cli(golden_dir, clean)
    assert code == 0
    answers = [result["text"] for result in clean_results]
    start = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MediaWarning)
        code, results = run_cli(golden_dir, hostile)
    assert time.monotonic() - start < SECONDS_PER_CASE * 4
    assert code == 1  # some queries failed, and the exit status says so
    assert [results[0]["text"], results[-1]["text"]] == answers
    assert results[0]["error"] is None and results[-1]["error"] is None
    for case, result in zip(cases, results[1:-1], strict=True):
        if case.error is None:
            assert result["error"] is None and result["text"], case.name
        else:
            assert result["error"] and re.search(case.message, result["error"]), (case.name, result["error"])


def test_cli_run_survives_a_prompt_with_a_lone_surrogate(golden_dir, media, tmp_path):
    path = tmp_path / "surrogate.jsonl"
    path.write_text(json.dumps({"prompt": "caf\udce9"}) + "\n" + json.dumps(GOOD_QUERIES[1](media)) + "\n")
    code, results = run_cli(golden_dir, path)
    assert code == 1 and re.search("not valid UTF-8", results[0]["error"]) and results[1]["text"]


# ----- the HTTP server ----------------------------------------------------------------------------------------


def part(url: str, kind: str = "image_url") -> dict:
    return {"type": kind, kind: {"url": url}}


SERVER_CASES = [
    # (name, request body changes, status, message regex)
    ("bomb", lambda m: {"messages": [user(part(f"file://{m.paths['bomb']}"))]}, 400, "max_image_pixels"),
    ("over_limit", lambda m: {"messages": [user(part(f"file://{m.paths['big']}"))]}, 400, "max_image_pixels"),
    ("directory", lambda m: {"messages": [user(part(m.paths["folder_png"]))]}, 400, "is a directory"),
    ("fifo", lambda m: {"messages": [user(part(m.paths["fifo_png"]))]}, 400, "is a FIFO"),
    ("symlink_loop", lambda m: {"messages": [user(part(m.paths["loop_png"]))]}, 400, "(?i)symlink loop"),
    ("device", lambda m: {"messages": [user(part("/dev/zero"))]}, 400, "outside the allowed media folder"),
    ("url_stalls", lambda m: {"messages": [user(part(m.urls["stall"]))]}, 400, "no answer within"),
    ("url_trickles", lambda m: {"messages": [user(part(m.urls["trickle"]))]}, 400, "longer than"),
    ("url_floods", lambda m: {"messages": [user(part(m.urls["flood"]))]}, 413, "--max-media-bytes"),
    ("url_too_large", lambda m: {"messages": [user(part(m.urls["oversized"]))]}, 413, "--max-media-bytes"),
    (
        "video_header_lies",
        lambda m: {"messages": [user(part(m.paths["huge_frames"], "video_url"))]},
        400,
        "max_video_frame_pixels",
    ),
    (
        "video_truncated",
        lambda m: {"messages": [user(part(m.paths["faststart_90"], "video_url"))]},
        200,
        "",
    ),
    ("lone_surrogate", lambda m: {"messages": [user("caf\udce9")]}, 400, "not valid UTF-8"),
    ("prompt_200k", lambda m: {"messages": [user("ab " * 66_667)]}, 400, "max_prompt_tokens"),
    ("max_pixels_zero", lambda m: {"mm_processor_kwargs": {"max_pixels": 0}}, 400, "max_pixels=0"),
    ("min_pixels_2e8", lambda m: {"mm_processor_kwargs": {"min_pixels": 2e8}}, 400, "min_pixels="),
    ("fps_nan", lambda m: {"mm_processor_kwargs": {"fps": float("nan")}}, 400, "video_fps=nan"),
    (
        "threads_absurd",
        lambda m: {"mm_processor_kwargs": {"num_extract_threads": 10**9}},
        400,
        "num_extract_threads",
    ),
    ("temperature_nan", lambda m: {"temperature": float("nan")}, 400, "temperature"),
    ("seed_huge", lambda m: {"seed": 2**80}, 400, "seed"),
]


def user(*parts) -> dict:
    content = (
        parts[0] if len(parts) == 1 and isinstance(parts[0], str) else [*parts, {"type": "text", "text": "?"}]
    )
    return {"role": "user", "content": content}


@pytest.fixture(scope="module")
def server(golden_model, limited_processor, media):
    engine = Engine(golden_model, limited_processor)
    policy = MediaPolicy(
        allowed_local_dir=media.root,
        allow_remote=True,
        max_media_bytes=TEST_LIMITS.max_media_bytes,
        fetch_timeout=TEST_LIMITS.fetch_timeout,
        fetch_deadline=TEST_LIMITS.fetch_deadline,
    )
    with BackgroundServer(create_app(engine, ServerConfig(model_name="golden", media=policy))) as running:
        yield running.url


def post(url: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", content=json.dumps(body), timeout=60)


@pytest.mark.parametrize(
    ("name", "change", "status", "message"), SERVER_CASES, ids=[c[0] for c in SERVER_CASES]
)
def test_server_answers_others_while_a_hostile_request_fails(
    server, media, golden_dir, name, change, status, message
):
    base = {"model": "golden", "max_tokens": 3, "messages": [user("Say something.")]}
    expected = post(server, base).json()["choices"][0]["message"]["content"]
    good: list[httpx.Response] = []
    neighbours = [threading.Thread(target=lambda: good.append(post(server, base))) for _ in range(3)]
    for thread in neighbours:
        thread.start()
    start = time.monotonic()
    response = post(server, {**base, **change(media)})
    elapsed = time.monotonic() - start
    for thread in neighbours:
        thread.join(SECONDS_PER_CASE)
    assert response.status_code == status, response.text
    assert elapsed < SECONDS_PER_CASE
    if status != 200:
        assert re.search(message, response.json()["error"]["message"]), response.text
    assert [r.status_code for r in good] == [200] * 3
    assert all(r.json()["choices"][0]["message"]["content"] == expected for r in good)


# ----- a realtime session -------------------------------------------------------------------------------------

HOSTILE_FRAMES = [
    (lambda m: m.paths["bomb"], "max_image_pixels"),
    (lambda m: m.paths["folder_png"], "is a directory"),
    (lambda m: m.paths["fifo_png"], "is a FIFO"),
    (lambda m: np.full((32, 32, 3), np.nan, np.float32), "finite floats"),
    (lambda m: torch.zeros(3, 32, 32, dtype=torch.bfloat16), "cannot read image"),
    (lambda m: m.urls["stall"], "no answer within"),
]


def test_realtime_session_reports_hostile_frames_and_goes_on(golden_model, limited_processor, media):
    session = RealtimeSession(Engine(golden_model, limited_processor), RealtimeConfig(max_new_tokens=2))
    session.start()
    good = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for index, (build, _) in enumerate(HOSTILE_FRAMES):
        session.push_frame(build(media), float(2 * index), seq_no=2 * index)
        session.push_frame(good, float(2 * index + 1), seq_no=2 * index + 1)
    session.close(SECONDS_PER_CASE * 2, drain=True)
    events = []
    while (event := session.poll_event(0)) is not None:
        events.append(event)
    errors = {e.seq_no: e.text for e in events if e.kind == "error"}
    processed = {e.seq_no for e in events if e.kind == "frame_processed"}
    assert sorted(errors) == list(range(0, 2 * len(HOSTILE_FRAMES), 2))
    for index, (_, message) in enumerate(HOSTILE_FRAMES):
        assert re.search(message, errors[2 * index]), errors[2 * index]
    assert processed == set(range(1, 2 * len(HOSTILE_FRAMES), 2))
    assert events[-1].kind == "closed"


def test_realtime_session_survives_a_prompt_with_a_lone_surrogate(golden_model, limited_processor):
    session = RealtimeSession(Engine(golden_model, limited_processor), RealtimeConfig(max_new_tokens=2))
    session.start()
    with contextlib.suppress(QueryError):  # refusing it at the push is as good as reporting it
        session.push_prompt("caf\udce9")
    session.push_prompt("Say something.")
    session.close(SECONDS_PER_CASE, drain=True)
    events = []
    while (event := session.poll_event(0)) is not None:
        events.append(event)
    assert any(event.kind == "response_done" for event in events), [e.kind for e in events]


# ----- the fine-tuning loader ---------------------------------------------------------------------------------


def test_loader_skips_hostile_records_and_loads_the_others(limited_processor, media, tmp_path):
    good = {"prompt": "What is it?", "response": "A picture.", "images": [media.good_image]}
    hostile = [
        ({"images": [media.paths["bomb"]]}, MediaError, "max_image_pixels"),
        ({"images": [media.paths["big"]]}, MediaError, "max_image_pixels"),
        ({"images": [media.paths["random_png"]]}, MediaError, "cannot read image"),
        ({"images": [media.paths["folder_png"]]}, QueryError, "is a directory"),
        ({"images": [media.paths["fifo_png"]]}, QueryError, "is a FIFO"),
        ({"images": [media.paths["loop_png"]]}, QueryError, "symlink loop"),
        ({"images": [media.urls["stall"]]}, MediaError, "no answer within"),
        ({"images": [media.urls["flood"]]}, MediaError, "larger than"),
        ({"videos": [media.paths["huge_frames"]]}, MediaError, "max_video_frame_pixels"),
        ({"videos": [media.paths["five_hours"]]}, MediaError, "max_video_seconds"),
        ({"videos": [media.paths["random_mp4"]]}, MediaError, "cannot open video"),
        ({"prompt": "caf\udce9"}, QueryError, "not valid UTF-8"),
        ({"prompt": "a" * 2_000_000}, QueryError, "max_prompt_chars"),
    ]
    records = [good]
    for change, _, _ in hostile:
        records += [{"prompt": "What is it?", "response": "Something.", **change}, good]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))

    strict = SFTDataset(path, limited_processor)
    for number, (_, error, message) in enumerate(hostile):
        with pytest.raises(error, match=rf"record {2 * number + 1}: .*{message}"):
            strict.load(2 * number + 1)

    lenient = SFTDataset(path, limited_processor, skip_bad_records=True)
    start = time.monotonic()
    samples = [lenient[index] for index in range(len(lenient))]
    assert time.monotonic() - start < SECONDS_PER_CASE * 2
    reference = strict.load(0)
    assert all(torch.equal(sample["input_ids"], reference["input_ids"]) for sample in samples)
    assert sorted(lenient.skipped) == list(range(1, len(records), 2))


def test_loader_reads_a_truncated_video_and_says_how_much(limited_processor, media, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(
        json.dumps({"prompt": "?", "response": "A clip.", "videos": [media.paths["mkv_50"]]}) + "\n"
    )
    with pytest.warns(MediaWarning, match=r"read \d\.\d+ s of the 10\.00 s"):
        sample = SFTDataset(path, limited_processor).load(0)
    assert int(sample["grid_thw"][0, 0]) >= 1


def test_mossvl_chat_downloads_a_video_url_and_removes_the_file(golden_model, limited_processor, media, web):
    import gc
    import glob

    before = set(glob.glob("/tmp/mossvl-video-*"))
    answer = mossvl.chat(
        golden_model,
        limited_processor,
        {"prompt": "Describe.", "videos": [f"{web.url}/clip.mp4"]},
        **GENERATE,
    )
    local = mossvl.chat(
        golden_model, limited_processor, {"prompt": "Describe.", "videos": [media.good_video]}, **GENERATE
    )
    gc.collect()
    assert answer == local
    assert set(glob.glob("/tmp/mossvl-video-*")) == before  # the download is gone once the media was used
