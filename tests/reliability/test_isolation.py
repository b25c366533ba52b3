"""Every corpus case on the Python surfaces: ``mossvl.chat`` raises the named error; ``batch_chat``,
``offline_batch_generate`` and the ``offline_generate`` queue worker answer the good neighbours exactly as they are
answered alone and give the hostile query its named error; each case finishes in seconds without raising the
process's peak memory by more than a bound. Truncated videos are answered with a MediaWarning instead."""

from __future__ import annotations

import contextlib
import queue
import re
import threading
import time
import warnings

import pytest
from corpus import GENERATE, GOOD_QUERIES, PEAK_BYTES_PER_CASE, SECONDS_PER_CASE

import mossvl
from mossvl import constants as C
from mossvl.errors import MediaWarning, MossVLError
from mossvl.inference.offline import offline_batch_generate, offline_generate

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def expect_warning(case):
    """pytest.warns for a case that must be answered with a MediaWarning, else a no-op context."""
    return pytest.warns(MediaWarning, match=case.message) if case.error is None else contextlib.nullcontext()


def check_bounds(measured) -> None:
    assert measured.seconds < SECONDS_PER_CASE, f"took {measured.seconds:.1f} s"
    assert measured.peak_growth < PEAK_BYTES_PER_CASE, f"peak memory rose by {measured.peak_growth >> 20} MiB"


def with_generate(query):
    """A query that also carries the short generation setting (its own settings win)."""
    return {"max_new_tokens": GENERATE["max_new_tokens"], **query} if isinstance(query, dict) else query


def test_chat_raises_the_named_error(case, golden_model, limited_processor, media, peak):
    def run():
        if case.error is None:
            return mossvl.chat(golden_model, limited_processor, case.build(media), **GENERATE)
        with pytest.raises(case.error, match=case.message):
            mossvl.chat(golden_model, limited_processor, case.build(media), **GENERATE)
        return None

    with expect_warning(case):
        measured = peak(run)
    check_bounds(measured)
    if case.error is None:
        assert isinstance(measured.value, str) and measured.value


def test_batch_chat_answers_the_neighbours(case, golden_model, limited_processor, media, good_answers, peak):
    queries = [GOOD_QUERIES[0](media), case.build(media), GOOD_QUERIES[1](media)]
    with expect_warning(case):
        measured = peak(
            lambda: mossvl.batch_chat(golden_model, limited_processor, queries, errors="return", **GENERATE)
        )
    check_bounds(measured)
    first, hostile, last = measured.value
    assert [first, last] == good_answers
    if case.error is None:
        assert not hostile.startswith(C.ERROR_PREFIX)
    else:
        assert hostile.startswith(C.ERROR_PREFIX) and re.search(case.message, hostile), hostile


def test_batch_chat_raise_mode_names_the_query(case, golden_model, limited_processor, media, good_answers):
    queries = [GOOD_QUERIES[1](media), case.build(media)]
    if case.error is None:  # answered: nothing to raise
        with expect_warning(case):
            answers = mossvl.batch_chat(golden_model, limited_processor, queries, **GENERATE)
        assert answers[0] == good_answers[1] and answers[1]
        return
    with pytest.raises(MossVLError, match=rf"query #1: .*{case.message}"):
        mossvl.batch_chat(golden_model, limited_processor, queries, **GENERATE)


def test_offline_batch_answers_the_neighbours(
    case, golden_model, limited_processor, media, good_answers, peak
):
    queries = [with_generate(build(media)) for build in (GOOD_QUERIES[0], case.build, GOOD_QUERIES[1])]
    with expect_warning(case):
        measured = peak(lambda: offline_batch_generate(golden_model, limited_processor, queries))
    check_bounds(measured)
    first, hostile, last = measured.value["results"]
    assert [first["text"], last["text"]] == good_answers
    assert "error" not in first and "error" not in last
    if case.error is None:
        assert "error" not in hostile and hostile["text"]
    else:
        assert hostile["text"] == "" and re.search(case.message, hostile["error"]), hostile["error"]


def test_offline_batch_isolates_a_broken_session_state(golden_model, limited_processor, media, good_answers):
    queries = [with_generate(build(media)) for build in GOOD_QUERIES] + [{"prompt": "Hi"}]
    states = [None, None, {"session_id": 5, "messages": 17}]
    results = offline_batch_generate(golden_model, limited_processor, queries, states)["results"]
    assert [r["text"] for r in results[:2]] == good_answers
    assert re.search(r"query #2: TypeError: 'int' object is not iterable", results[2]["error"])


def test_queue_worker_answers_the_neighbours(
    case, golden_model, limited_processor, media, good_answers, peak
):
    inputs, outputs = queue.Queue(), queue.Queue()
    for build in (GOOD_QUERIES[0], case.build, GOOD_QUERIES[1]):
        inputs.put(with_generate(build(media)))

    def serve():
        worker = threading.Thread(
            target=offline_generate, args=(golden_model, limited_processor, inputs, outputs)
        )
        worker.start()
        chunks, deadline = [], time.monotonic() + SECONDS_PER_CASE
        while chunks.count(C.ROUND_END) < 3:  # queue.Empty here means the worker hangs
            chunks.append(outputs.get(timeout=max(deadline - time.monotonic(), 0.01)))
        # Stop only now: a stop read while a round runs ends the worker after that round, by design.
        inputs.put({"stop_offline_generate": True})
        worker.join(SECONDS_PER_CASE)
        assert not worker.is_alive(), "the queue worker does not stop"
        return chunks

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        measured = peak(serve)
    check_bounds(measured)
    rounds, current = [], None
    for chunk in measured.value:
        if chunk == C.ROUND_START:
            current = []
        elif chunk == C.ROUND_END:
            rounds.append(current)
        else:
            current.append(chunk)
    assert len(rounds) == 3
    assert ["".join(rounds[0]), "".join(rounds[2])] == good_answers
    errors = [chunk for chunk in rounds[1] if chunk.startswith(C.ERROR_PREFIX)]
    if case.error is None:
        assert not errors and rounds[1]
        assert any(re.search(case.message, str(w.message)) for w in caught if w.category is MediaWarning)
    else:
        assert len(errors) == 1 and re.search(case.message, errors[0]), rounds[1]
