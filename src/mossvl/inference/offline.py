"""The official offline methods of the MOSS-VL model (``offline_generate``, ``offline_batch_generate``,
``offline_image_generate``, ``offline_video_generate``) with the official names, arguments, defaults and return
values, on the shared engine. ``model_methods`` attaches them to the model class.

Sessions (the official contract is not public; the semantics chosen here):

* ``offline_generate`` keeps one conversation per worker. A query with ``persist_session: True`` continues it
  (only its new tokens are prefilled) and is kept in it; other queries are one-shot. ``reset_session`` /
  ``clear_history`` start a new conversation first.
* ``offline_batch_generate`` returns ``session_states[i] = {"session_id", "messages"}``: ``messages`` is the whole
  conversation including the new answer. Passing the states back continues each conversation (its messages are
  put before the query's). Queries with ``persist_session: True`` also keep their KV (the most recent
  ``MAX_LIVE_SESSIONS``), which a follow-up with that ``session_id`` reuses instead of re-prefilling.
  ``reset_session`` ignores the given state.
* Unlike the official method, the queries of one batch may have different media and generate kwargs.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections import OrderedDict, deque
from typing import Any

from .. import constants as C
from ..errors import MossVLError, QueryError
from .engine import Engine, engine_for
from .handle import RequestHandle
from .session import Session

MAX_LIVE_SESSIONS = 8
POLL_SECONDS = 0.05

_CONTENT_KEYS = ("messages", "prompt", "conversations")
_CANCEL_KEYS = ("cancel_current_generate", "stop_generation")
_RESET_KEYS = ("reset_session", "clear_history")


def _has_content(message: Any) -> bool:
    return isinstance(message, dict) and any(key in message for key in _CONTENT_KEYS)


def _wants_reset(query: dict) -> bool:
    return any(bool(query.get(key)) for key in _RESET_KEYS)


class _OfflineState:
    """Per-model state of the official methods: the cancel flag and the batch helper's live sessions."""

    def __init__(self):
        self.cancel = threading.Event()
        self.sessions: OrderedDict[str, Session] = OrderedDict()

    def __deepcopy__(self, memo: dict) -> _OfflineState:
        return _OfflineState()

    def __reduce__(self):
        return (_OfflineState, ())


def _state(model) -> _OfflineState:
    return model.__dict__.setdefault("_mossvl_offline", _OfflineState())


# ----- queue worker -------------------------------------------------------------------------------------------


def offline_generate(
    model,
    processor,
    input_queue: queue.Queue,
    output_queue: queue.Queue,
    vision_chunked_length: int = C.VISION_CHUNKED_LENGTH,
) -> None:
    """Serve queries from ``input_queue`` until ``{"stop_offline_generate": True}``.

    Each query answers on ``output_queue`` with ``"<|round_start|>"``, text chunks (streamed deltas, or one chunk
    with ``stream_output: False``), then ``"<|round_end|>"``; a failing query sends a chunk starting with
    ``"[ERROR] "`` and the worker goes on. ``{"cancel_current_generate": True}`` (or ``stop_generation``) on the
    queue, or ``model.cancel_offline_generate()``, ends the running round early; a stop message that arrives
    while a query runs takes effect after it. ``vision_chunked_length`` is accepted for compatibility (the engine
    chunks the vision prefill itself).
    """
    worker = _OfflineWorker(engine_for(model, processor), input_queue, output_queue, _state(model).cancel)
    worker.serve()


def cancel_offline_generate(model) -> None:
    """End the round that an ``offline_generate`` worker of this model is running (no effect when idle)."""
    _state(model).cancel.set()


class _OfflineWorker:
    """The loop behind ``offline_generate``: one query at a time, control messages read while it runs."""

    def __init__(
        self, engine: Engine, input_queue: queue.Queue, output_queue: queue.Queue, cancel: threading.Event
    ):
        self.engine = engine
        self.input_queue = input_queue
        self.output_queue = output_queue
        self.cancel_event = cancel
        self.backlog: deque = deque()
        self.session: Session | None = None
        self.stopping = False

    def serve(self) -> None:
        while not self.stopping:
            message = self.backlog.popleft() if self.backlog else self.input_queue.get()
            if isinstance(message, dict) and not _has_content(message):
                # A pure control message: stop ends the loop; a cancel with nothing running is a no-op.
                self.stopping = bool(message.get("stop_offline_generate"))
                continue
            self.answer(message)
            if isinstance(message, dict) and message.get("stop_offline_generate"):
                self.stopping = True
        # Queries read ahead while polling for control messages go back for whoever serves the queue next.
        while self.backlog:
            self.input_queue.put(self.backlog.popleft())

    def cancel_requested(self) -> bool:
        """Read control messages (queue other queries for later); True when the running round must end."""
        cancelled = False
        while True:
            try:
                message = self.input_queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(message, dict) and not _has_content(message):
                cancelled |= any(bool(message.get(key)) for key in _CANCEL_KEYS)
                self.stopping |= bool(message.get("stop_offline_generate"))
            else:
                self.backlog.append(message)
        if self.cancel_event.is_set():
            self.cancel_event.clear()
            cancelled = True
        return cancelled

    def answer(self, query: Any) -> None:
        self.cancel_event.clear()
        self.output_queue.put(C.ROUND_START)
        try:
            if not isinstance(query, dict):
                raise QueryError(f"a queued query must be a dict, got {type(query).__name__}")
            stream = bool(query.get("stream_output", query.get("stream", True)))
            if _wants_reset(query) and self.session is not None:
                self.session.reset()
                self.session = None
            new_messages = None
            if query.get("persist_session"):
                self.session = self.session or Session(self.engine)
                handle, new_messages = self.session.submit(query)
            else:
                handle = self.engine.submit(query)
            result = self._relay(handle, stream)
            if new_messages is not None:
                self.session.record(result, new_messages)
            if result.error is not None:
                self.output_queue.put(C.ERROR_PREFIX + result.error)
        except Exception as exc:  # noqa: BLE001 - the worker must survive any failing query
            self.output_queue.put(f"{C.ERROR_PREFIX}{type(exc).__name__}: {exc}")
        finally:
            self.output_queue.put(C.ROUND_END)

    def _relay(self, handle: RequestHandle, stream: bool):
        held = []
        while True:
            event = handle.poll(POLL_SECONDS)
            if event is None:
                if self.cancel_requested():
                    handle.cancel()
                continue
            if event.delta:
                if stream:
                    self.output_queue.put(event.delta)
                else:
                    held.append(event.delta)
            if event.result is not None:
                if held:
                    self.output_queue.put("".join(held))
                return event.result


# ----- synchronous batch --------------------------------------------------------------------------------------


def offline_batch_generate(
    model,
    processor,
    queries: list[dict],
    session_states: list[dict | None] | None = None,
    vision_chunked_length: int = C.VISION_CHUNKED_LENGTH,
) -> dict:
    """Answer a list of queries together (continuous batching).

    Returns ``{"results": [{index, text, input_text, messages}], "session_states": [...]}``; a query that fails
    gets ``text`` "" and an ``error`` message while the others are answered.
    """
    if not isinstance(queries, list):
        raise QueryError(f"queries must be a list of query dicts, got {type(queries).__name__}")
    states = list(session_states) if session_states is not None else [None] * len(queries)
    if len(states) != len(queries):
        raise QueryError(f"session_states has {len(states)} entries for {len(queries)} queries")
    engine = engine_for(model, processor)
    sessions = _state(model).sessions
    turns = []
    for index, (raw, state) in enumerate(zip(queries, states, strict=True)):
        try:
            turns.append(_start_turn(engine, sessions, raw, state))
        except Exception as exc:  # noqa: BLE001 - a malformed query or state fails alone; the others still run
            failed = (
                exc
                if isinstance(exc, MossVLError)
                else QueryError(f"query #{index}: {type(exc).__name__}: {exc}")
            )
            turns.append((Session(engine), None, RequestHandle.failed(failed), []))

    results, out_states = [], []
    for index, (session, session_id, handle, new_messages) in enumerate(turns):
        result = handle.result()
        input_text = result.input_text
        session.record(result, new_messages)
        if session_id is None or not result.ok:
            engine.close_sequence(result.sequence)
            session_id = None
        else:
            sessions[session_id] = session
            sessions.move_to_end(session_id)
            while len(sessions) > MAX_LIVE_SESSIONS:
                _, evicted = sessions.popitem(last=False)
                evicted.reset()
        messages = session.messages if result.ok else [*session.messages, *new_messages]
        entry = {"index": index, "text": result.text, "input_text": input_text, "messages": list(messages)}
        if result.error is not None:
            entry["error"] = result.error
        results.append(entry)
        out_states.append({"session_id": session_id, "messages": list(messages)})
    return {"results": results, "session_states": out_states}


def _start_turn(engine: Engine, sessions: OrderedDict[str, Session], raw: Any, state: Any) -> tuple:
    """(session, session id or None, handle, new messages) of one batch query and its session state."""
    query = raw if isinstance(raw, dict) else {"prompt": raw}
    if state is not None and not isinstance(state, dict):
        raise QueryError(f"a session state must be a dict or None, got {type(state).__name__}")
    history = [] if _wants_reset(query) or not state else list(state.get("messages") or [])
    session_id = state.get("session_id") if state and history else None
    session = sessions.get(session_id) if isinstance(session_id, str) else None
    if session is None or not _same_messages(session.messages, history):
        session = Session(engine, messages=history)
        session_id = uuid.uuid4().hex if query.get("persist_session") else None
    else:
        sessions.move_to_end(session_id)
    handle, new_messages = session.submit(query)
    return session, session_id, handle, new_messages


def _same_messages(first: list[dict], second: list[dict]) -> bool:
    try:
        return first == second
    except (ValueError, TypeError):  # in-memory frames (arrays) have no plain equality
        return False


# ----- single-shot helpers ------------------------------------------------------------------------------------


def offline_image_generate(
    model,
    processor,
    prompt: str,
    image: Any,
    *,
    shortest_edge: int = C.MIN_PIXELS,
    longest_edge: int = C.MAX_PIXELS,
    multi_image_max_pixels: int = C.MULTI_IMAGE_MAX_PIXELS,
    patch_size: int = C.PATCH_SIZE,
    temporal_patch_size: int = C.TEMPORAL_PATCH_SIZE,
    merge_size: int = C.MERGE_SIZE,
    image_mean: Any = C.IMAGE_MEAN,
    image_std: Any = C.IMAGE_STD,
    system_prompt: str | None = None,
    vision_chunked_length: int = C.VISION_CHUNKED_LENGTH,
    **generate_kwargs: Any,
) -> str:
    """Answer one prompt about one image (path, URL or PIL image); returns the answer text."""
    _check_fixed(
        processor.image_processor, patch_size, temporal_patch_size, merge_size, image_mean, image_std
    )
    media = {
        "min_pixels": shortest_edge,
        "max_pixels": longest_edge,
        "multi_image_max_pixels": multi_image_max_pixels,
    }
    query = {"prompt": prompt, "images": [image], "media_kwargs": media, "system_prompt": system_prompt}
    return engine_for(model, processor).chat(query, **generate_kwargs)


def offline_video_generate(
    model,
    processor,
    prompt: str,
    video: Any,
    *,
    shortest_edge: int = C.MIN_PIXELS,
    longest_edge: int = C.MAX_PIXELS,
    video_max_pixels: int = C.VIDEO_MAX_PIXELS,
    video_fps: float = C.VIDEO_FPS,
    min_frames: int = C.MIN_FRAMES,
    max_frames: int = C.MAX_FRAMES,
    num_extract_threads: int = C.NUM_EXTRACT_THREADS,
    patch_size: int = C.PATCH_SIZE,
    temporal_patch_size: int = C.TEMPORAL_PATCH_SIZE,
    merge_size: int = C.MERGE_SIZE,
    image_mean: Any = C.IMAGE_MEAN,
    image_std: Any = C.IMAGE_STD,
    system_prompt: str | None = None,
    vision_chunked_length: int = C.VISION_CHUNKED_LENGTH,
    **generate_kwargs: Any,
) -> str:
    """Answer one prompt about one video (path or ``{"video_path", "segments"}``); returns the answer text."""
    _check_fixed(
        processor.video_processor, patch_size, temporal_patch_size, merge_size, image_mean, image_std
    )
    media = {
        "min_pixels": shortest_edge,
        "max_pixels": longest_edge,
        "video_max_pixels": video_max_pixels,
        "video_fps": video_fps,
        "min_frames": min_frames,
        "max_frames": max_frames,
        "num_extract_threads": num_extract_threads,
    }
    query = {"prompt": prompt, "videos": [video], "media_kwargs": media, "system_prompt": system_prompt}
    return engine_for(model, processor).chat(query, **generate_kwargs)


def _check_fixed(processor, patch_size, temporal_patch_size, merge_size, image_mean, image_std) -> None:
    """Patch geometry and normalisation belong to the checkpoint; a call may only repeat them."""
    expected = {
        "patch_size": processor.patch_size,
        "temporal_patch_size": processor.temporal_patch_size,
        "merge_size": processor.merge_size,
        "image_mean": list(processor.image_mean),
        "image_std": list(processor.image_std),
    }
    given = {
        "patch_size": patch_size,
        "temporal_patch_size": temporal_patch_size,
        "merge_size": merge_size,
        "image_mean": list(image_mean),
        "image_std": list(image_std),
    }
    wrong = sorted(key for key in expected if given[key] != expected[key])
    if wrong:
        raise QueryError(
            f"{wrong} cannot be changed per call: the checkpoint's processor uses "
            f"{ {key: expected[key] for key in wrong} }, got { {key: given[key] for key in wrong} }"
        )
