"""The official offline methods: the queue worker protocol (rounds, errors, stop, cancel, sessions) and the batch
helper's session states. Methods are called through the mixin so that they work on the plain golden model."""

import queue
import threading

import pytest

from mossvl.constants import ERROR_PREFIX, ROUND_END, ROUND_START
from mossvl.errors import QueryError
from mossvl.inference.engine import Engine
from mossvl.inference.session import Session

TIMEOUT = 30


@pytest.fixture
def image(golden_dir):
    return str(golden_dir / "media" / "img_a_64x96.png")


class Worker:
    """An offline_generate worker thread with helpers to read whole rounds."""

    def __init__(self, model, processor):
        self.model = model
        self.inputs: queue.Queue = queue.Queue()
        self.outputs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(
            target=model.offline_generate, args=(processor, self.inputs, self.outputs), daemon=True
        )
        self.thread.start()

    def round(self) -> list[str]:
        """The chunks of the next round, between its round_start and round_end."""
        assert self.outputs.get(timeout=TIMEOUT) == ROUND_START
        chunks = []
        while (chunk := self.outputs.get(timeout=TIMEOUT)) != ROUND_END:
            chunks.append(chunk)
        return chunks

    def stop(self) -> None:
        self.inputs.put({"stop_offline_generate": True})
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


def answer(model, processor, query) -> str:
    return Engine(model, processor).generate([query])[0].text


def test_queue_rounds_stream_the_engine_answer_and_survive_errors(golden_model, golden_processor, image):
    worker = Worker(golden_model, golden_processor)
    good = {"prompt": "Describe the image.", "images": [image], "generate_kwargs": {"max_new_tokens": 8}}
    worker.inputs.put(good)
    worker.inputs.put(
        {"prompt": "Broken.", "images": [image + ".missing.png"], "stop_offline_generate": False}
    )
    worker.inputs.put("not a dict")
    worker.inputs.put({"prompt": "Hi", "generate_kwargs": {"max_new_tokens": 4}, "stream_output": False})
    first = worker.round()
    assert len(first) > 1 and "".join(first) == answer(golden_model, golden_processor, good)
    error = worker.round()
    assert len(error) == 1 and error[0].startswith(ERROR_PREFIX) and "not found" in error[0]
    assert worker.round()[0].startswith(ERROR_PREFIX)
    whole = worker.round()
    assert whole == [answer(golden_model, golden_processor, {"prompt": "Hi", "max_new_tokens": 4})]
    worker.stop()


def test_query_and_stop_up_front_finishes_the_query_first(golden_model, golden_processor):
    inputs, outputs = queue.Queue(), queue.Queue()
    inputs.put({"prompt": "Hi", "generate_kwargs": {"max_new_tokens": 3}})
    inputs.put({"stop_offline_generate": True})
    inputs.put({"prompt": "never answered"})
    golden_model.offline_generate(golden_processor, inputs, outputs)
    chunks = [outputs.get_nowait() for _ in range(outputs.qsize())]
    assert chunks[0] == ROUND_START and chunks[-1] == ROUND_END and chunks.count(ROUND_START) == 1
    assert inputs.qsize() == 1


def test_cancel_message_ends_the_running_round(golden_model, golden_processor, image):
    worker = Worker(golden_model, golden_processor)
    long_query = {
        "prompt": "Describe the image.",
        "images": [image],
        "generate_kwargs": {"max_new_tokens": 5000},
    }
    worker.inputs.put(long_query)
    assert worker.outputs.get(timeout=TIMEOUT) == ROUND_START
    assert worker.outputs.get(timeout=TIMEOUT)  # generation is under way
    worker.inputs.put({"cancel_current_generate": True})
    chunks = []
    while (chunk := worker.outputs.get(timeout=TIMEOUT)) != ROUND_END:
        chunks.append(chunk)
    assert len(chunks) < 4000
    # The worker goes on with the next query; an idle cancel is a no-op.
    worker.inputs.put({"stop_generation": True})
    worker.inputs.put({"prompt": "Hi", "generate_kwargs": {"max_new_tokens": 3}})
    assert "".join(worker.round()) == answer(
        golden_model, golden_processor, {"prompt": "Hi", "max_new_tokens": 3}
    )
    worker.stop()


def test_cancel_method_and_stop_during_a_round(golden_model, golden_processor, image):
    worker = Worker(golden_model, golden_processor)
    worker.inputs.put({"prompt": "Describe.", "images": [image], "generate_kwargs": {"max_new_tokens": 5000}})
    assert worker.outputs.get(timeout=TIMEOUT) == ROUND_START
    assert worker.outputs.get(timeout=TIMEOUT)
    worker.inputs.put({"stop_offline_generate": True})  # deferred until the round ends
    golden_model.cancel_offline_generate()
    while worker.outputs.get(timeout=TIMEOUT) != ROUND_END:
        pass
    worker.thread.join(TIMEOUT)
    assert not worker.thread.is_alive()


def test_persisted_session_continues_and_reset_starts_over(golden_model, golden_processor):
    worker = Worker(golden_model, golden_processor)
    kwargs = {"max_new_tokens": 4}
    worker.inputs.put({"prompt": "Hello", "generate_kwargs": kwargs, "persist_session": True})
    worker.inputs.put({"prompt": "More", "generate_kwargs": kwargs, "persist_session": True})
    worker.inputs.put(
        {"prompt": "Hello", "generate_kwargs": kwargs, "persist_session": True, "reset_session": True}
    )
    first, follow_up, restarted = "".join(worker.round()), "".join(worker.round()), "".join(worker.round())
    worker.stop()
    assert restarted == first == answer(golden_model, golden_processor, {"prompt": "Hello", **kwargs})
    session = Session(Engine(golden_model, golden_processor), generate_kwargs=kwargs)
    session.send("Hello")
    assert follow_up == session.send("More").text
    assert follow_up != answer(golden_model, golden_processor, {"prompt": "More", **kwargs})


def test_batch_generate_session_states_continue_conversations(golden_model, golden_processor, image):
    queries = [
        {"prompt": "Describe the image.", "images": [image], "max_new_tokens": 5, "persist_session": True},
        {"prompt": "Hello", "max_new_tokens": 5},
        {"prompt": "Bad", "images": [image + ".missing.png"]},
    ]
    out = golden_model.offline_batch_generate(golden_processor, queries)
    results, states = out["results"], out["session_states"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert "error" in results[2] and "error" not in results[0]
    assert states[0]["session_id"] and states[1]["session_id"] is None
    assert [m["role"] for m in states[1]["messages"]] == ["user", "assistant"]

    follow = [{"prompt": "And then?", "max_new_tokens": 5}] * 2
    again = golden_model.offline_batch_generate(golden_processor, follow, [states[0], states[1]])
    for result, state in zip(again["results"], again["session_states"], strict=True):
        assert result["input_text"].count("<|im_start|>user") == 2
        assert len(state["messages"]) == 4
    assert again["session_states"][0]["session_id"] == states[0]["session_id"]

    # Without a live session the conversation is re-prefilled from its messages (the official behaviour).
    history = states[1]["messages"] + [{"role": "user", "content": "And then?"}]
    assert again["results"][1]["text"] == answer(
        golden_model, golden_processor, {"messages": history, "max_new_tokens": 5}
    )
    # With one, the follow-up equals the same turn in a Session.
    session = Session(Engine(golden_model, golden_processor), generate_kwargs={"max_new_tokens": 5})
    session.send(queries[0])
    assert again["results"][0]["text"] == session.send("And then?").text
    reset = golden_model.offline_batch_generate(
        golden_processor, [{**queries[1], "reset_session": True}], [again["session_states"][1]]
    )
    assert reset["results"][0]["text"] == results[1]["text"]
    with pytest.raises(QueryError, match="session_states"):
        golden_model.offline_batch_generate(golden_processor, queries, [None])
