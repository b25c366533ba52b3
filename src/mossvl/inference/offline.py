"""The official offline methods of the MOSS-VL model (reference §1.2–1.4), as a mixin over the shared engine.

``MossVLOfflineMixin`` gives the model ``offline_generate`` (queue worker), ``offline_batch_generate``,
``offline_image_generate`` and ``offline_video_generate`` with the official names, arguments, defaults and
return values, plus ``cancel_offline_generate``. Everything runs on :class:`~mossvl.inference.engine.Engine`
(imported lazily: this module is imported by the model's module).

Sessions (unverified in the reference; the semantics chosen here):

* ``offline_generate`` keeps one conversation per worker. A query with ``persist_session: True`` continues it
  (only its new tokens are prefilled; the KV cache is reused) and is kept in it; other queries are one-shot.
  ``reset_session`` / ``clear_history`` start a new conversation first.
* ``offline_batch_generate`` returns ``session_states[i] = {"session_id", "messages"}``: ``messages`` is the whole
  conversation including the new answer. Passing the states back continues each conversation (its messages are
  put before the query's). Queries with ``persist_session: True`` also keep their KV cache (the most recent
  ``MAX_LIVE_SESSIONS``), which a follow-up with that ``session_id`` reuses instead of re-prefilling.
  ``reset_session`` ignores the given state.
* Unlike the official method, the queries of one batch may have different media and generate kwargs.
"""

from __future__ import annotations

import queue
import threading
import uuid
import weakref
from collections import OrderedDict, deque
from typing import Any

from .. import constants as C
from ..errors import MossVLError, QueryError

MAX_LIVE_SESSIONS = 8

_CONTENT_KEYS = ("messages", "prompt", "conversations")
_CANCEL_KEYS = ("cancel_current_generate", "stop_generation")
_RESET_KEYS = ("reset_session", "clear_history")

# Per-model state kept outside the nn.Module so that models stay deep-copyable and picklable.
_cancel_events: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_live_sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cancel_event(model) -> threading.Event:
    return _cancel_events.setdefault(model, threading.Event())


def _session_registry(model) -> OrderedDict:
    return _live_sessions.setdefault(model, OrderedDict())


def _has_content(message: dict) -> bool:
    return any(key in message for key in _CONTENT_KEYS)


def _wants_reset(query: dict) -> bool:
    return any(bool(query.get(key)) for key in _RESET_KEYS)


class MossVLOfflineMixin:
    """Official offline generation methods; mixed into ``MossVLForConditionalGeneration``."""

    # ----- queue worker ---------------------------------------------------------------------------------------

    def offline_generate(
        self,
        processor,
        input_queue: queue.Queue,
        output_queue: queue.Queue,
        vision_chunked_length: int = C.VISION_CHUNKED_LENGTH,
    ) -> None:
        """Serve queries from ``input_queue`` until ``{"stop_offline_generate": True}``.

        Each query answers on ``output_queue`` with ``"<|round_start|>"``, text chunks (streamed deltas, or one chunk
        with ``stream_output: False``), then ``"<|round_end|>"``; a failing query sends a chunk starting with
        ``"[ERROR] "`` and the worker goes on. ``{"cancel_current_generate": True}`` (or ``stop_generation``) on the
        queue, or :meth:`cancel_offline_generate`, ends the running round early; a stop message that arrives
        while a query runs takes effect after it.
        """
        from .engine import Engine

        worker = _OfflineWorker(Engine(self, processor, vision_chunked_length), input_queue, output_queue)
        worker.cancel_event = _cancel_event(self)
        worker.serve()

    def cancel_offline_generate(self) -> None:
        """End the round that an ``offline_generate`` worker of this model is running (no effect when idle)."""
        _cancel_event(self).set()

    # ----- synchronous batch ----------------------------------------------------------------------------------

    def offline_batch_generate(
        self,
        processor,
        queries: list[dict],
        session_states: list[dict | None] | None = None,
        vision_chunked_length: int = C.VISION_CHUNKED_LENGTH,
    ) -> dict:
        """Answer a list of queries in one batch.

        Returns ``{"results": [{index, text, input_text, messages}], "session_states": [...]}``; a query that
        fails gets ``text`` "" and an ``error`` message while the others are answered.
        """
        from .engine import Engine, RunState, _error_result
        from .prompts import as_query, build_prompt
        from .session import Session

        if not isinstance(queries, list):
            raise QueryError(f"queries must be a list of query dicts, got {type(queries).__name__}")
        states = list(session_states) if session_states is not None else [None] * len(queries)
        if len(states) != len(queries):
            raise QueryError(f"session_states has {len(states)} entries for {len(queries)} queries")
        engine = Engine(self, processor, vision_chunked_length)
        registry = _session_registry(self)
        outcomes: list[tuple[Any, list[dict], str | None] | None] = [None] * len(queries)
        fresh: dict[int, Any] = {}
        for index, (raw, state) in enumerate(zip(queries, states, strict=True)):
            try:
                query = as_query(raw)
                history = [] if _wants_reset(query) or not state else list(state.get("messages") or [])
                session = registry.get(state.get("session_id")) if state and history else None
                if session is not None and _same_messages(session.messages, history):
                    registry.move_to_end(state["session_id"])
                    result = session.send(query)
                    result.input_text = _render(session.messages[:-1])
                    outcomes[index] = (result, session.messages, state["session_id"])
                else:
                    fresh[index] = engine.request_for(build_prompt(query, history=history))
            except MossVLError as exc:
                outcomes[index] = (_error_result(exc), [], None)

        persist = [i for i in fresh if bool(as_query(queries[i]).get("persist_session"))]
        keep = RunState() if persist else None
        order = list(fresh)
        results = _run_batch(engine, [fresh[i] for i in order], keep)
        for position, index in enumerate(order):
            result = results[position]
            messages = fresh[index].prompt.messages
            if result.ok:
                messages = messages + [_assistant(result.text)]
            session_id = None
            if index in persist and result.ok and keep is not None and keep.cache is not None:
                session = Session(engine=engine, messages=messages)
                session.adopt(keep, position)
                session_id = uuid.uuid4().hex
                registry[session_id] = session
                while len(registry) > MAX_LIVE_SESSIONS:
                    registry.popitem(last=False)
            outcomes[index] = (result, messages, session_id)

        out_results, out_states = [], []
        for index, (result, messages, session_id) in enumerate(outcomes):
            entry = {
                "index": index,
                "text": result.text,
                "input_text": result.input_text,
                "messages": list(messages),
            }
            if result.error is not None:
                entry["error"] = result.error
            out_results.append(entry)
            out_states.append({"session_id": session_id, "messages": list(messages)})
        return {"results": out_results, "session_states": out_states}

    # ----- single-shot helpers --------------------------------------------------------------------------------

    def offline_image_generate(
        self,
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
        return _single(self, processor, query, generate_kwargs, vision_chunked_length)

    def offline_video_generate(
        self,
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
        return _single(self, processor, query, generate_kwargs, vision_chunked_length)


# ----- helpers ------------------------------------------------------------------------------------------------


def _same_messages(first: list[dict], second: list[dict]) -> bool:
    try:
        return first == second
    except (ValueError, TypeError):  # in-memory frames (arrays) have no plain equality
        return False


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _render(messages: list[dict]) -> str:
    from ..processing.prompt import render_chat

    return render_chat(messages)


def _run_batch(engine, requests: list, keep) -> list:
    """Results of fresh requests in one batch; with ``keep`` the batch cache is kept for sessions."""
    from .engine import _error_result, _PrefillError, collate, collect

    if keep is None:
        return collect(engine.stream_requests(requests))
    results, encoded = {}, {}
    for position, request in enumerate(requests):
        try:
            encoded[position] = engine.encode(request.prompt)
        except MossVLError as exc:
            results[position] = _error_result(exc, request)
    order = list(encoded)
    if order:
        batch = collate([encoded[p] for p in order], engine.pad_token_id)
        try:
            events = engine.run([requests[p] for p in order], batch, indices=order, keep=keep)
            results.update({event.index: event.result for event in events if event.result is not None})
        except _PrefillError:
            # Fall back to the isolating path; the rows then keep no cache.
            keep.cache = None
            return collect(engine.stream_requests(requests))
    return [results[p] for p in sorted(results)]


def _single(model, processor, query: dict, generate_kwargs: dict, vision_chunked_length: int) -> str:
    from .engine import Engine

    engine = Engine(model, processor, vision_chunked_length)
    result = engine.generate([engine.request(query, generate_kwargs)])[0]
    result.raise_for_error()
    return result.text


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


class _OfflineWorker:
    """The loop behind ``offline_generate``: one query at a time, control messages read between decode steps."""

    def __init__(self, engine, input_queue: queue.Queue, output_queue: queue.Queue):
        self.engine = engine
        self.input_queue = input_queue
        self.output_queue = output_queue
        self.cancel_event = threading.Event()
        self.backlog: deque = deque()
        self.session = None
        self.stopping = False
        self.cancelled = False

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

    def poll(self) -> bool:
        """Between decode steps: read control messages (queue others for later); True to cancel the round."""
        while True:
            try:
                message = self.input_queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(message, dict) and not _has_content(message):
                self.cancelled |= any(bool(message.get(key)) for key in _CANCEL_KEYS)
                self.stopping |= bool(message.get("stop_offline_generate"))
            else:
                self.backlog.append(message)
        if self.cancel_event.is_set():
            self.cancel_event.clear()
            self.cancelled = True
        return self.cancelled

    def answer(self, query: Any) -> None:
        from .session import Session

        self.cancelled = False
        self.cancel_event.clear()
        self.output_queue.put(C.ROUND_START)
        try:
            if not isinstance(query, dict):
                raise QueryError(f"a queued query must be a dict, got {type(query).__name__}")
            stream = bool(query.get("stream_output", query.get("stream", True)))
            if _wants_reset(query):
                self.session = None
            if query.get("persist_session"):
                self.session = self.session or Session(engine=self.engine)
                events = self.session.stream_events(query, cancel=self.poll)
            else:
                events = self.engine.stream([query], cancel=self.poll)
            held = []
            for event in events:
                if event.delta:
                    if stream:
                        self.output_queue.put(event.delta)
                    else:
                        held.append(event.delta)
                if event.result is not None and event.result.error is not None:
                    self.output_queue.put(C.ERROR_PREFIX + event.result.error)
            if held:
                self.output_queue.put("".join(held))
        except Exception as exc:  # noqa: BLE001 - the worker must survive any failing query
            self.output_queue.put(f"{C.ERROR_PREFIX}{type(exc).__name__}: {exc}")
        finally:
            self.output_queue.put(C.ROUND_END)
