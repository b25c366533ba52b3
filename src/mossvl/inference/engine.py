"""The engine: one model, one processor, continuous batching in a background thread, a thread-safe public API.

``submit(query)`` prepares the request in the caller's thread (media decoding included) and returns a
``RequestHandle`` at once; the engine thread steps the core while any request is queued or running and exits
when idle (it starts again on the next submission). Everything above this (the Python API, the official offline
methods, sessions, realtime, the CLI, the HTTP server) uses only this module's public names.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..constants import IM_END
from ..errors import MossVLError, QueryError
from .core import EngineConfig, EngineCore, Sequence
from .handle import RequestHandle
from .inputs import InputProcessor, preparation_errors
from .media_cache import MediaCache
from .request import PreparedRequest, Result
from .sampling import GenerationSettings

_live_engines: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_engine_threads() -> None:
    # An engine thread still inside torch when the interpreter tears down aborts the process.
    for engine in list(_live_engines):
        engine.shutdown(cancel=True, timeout=10)


class EngineOverloadedError(MossVLError):
    """The engine's queue is full (``EngineConfig.max_waiting``); try again later."""


class Engine:
    """Generation for one MOSS-VL model and its processor; every method may be called from any thread.

    ``generate_kwargs``: engine-wide defaults between the checkpoint's ``generation_config.json`` and each call's
    own kwargs (see ``inputs`` for the full precedence).
    """

    def __init__(
        self,
        model,
        processor,
        config: EngineConfig | None = None,
        generate_kwargs: dict | None = None,
    ):
        self.model = model
        self.processor = processor
        self.config = config or EngineConfig()
        self.config.check()
        self.tokenizer = processor.tokenizer
        self.media_cache = MediaCache(self.config.media_cache_bytes)
        base = GenerationSettings.from_generation_config(getattr(model, "generation_config", None))
        defaults = GenerationSettings.from_kwargs(generate_kwargs, base=base)
        merge = model.config.vision_config.spatial_merge_size
        self.inputs = InputProcessor(processor, defaults, self.media_cache, merge)
        self.eos_token_ids = eos_token_ids(model, self.tokenizer)
        self.core = EngineCore(model, self.tokenizer, self.config, self.eos_token_ids, self.media_cache)
        self._lock = threading.Lock()
        self._pending: deque[tuple[PreparedRequest, RequestHandle]] = deque()
        self._to_close: list[Sequence] = []
        self._thread: threading.Thread | None = None
        self._handles: weakref.WeakSet[RequestHandle] = weakref.WeakSet()
        _live_engines.add(self)

    @property
    def defaults(self) -> GenerationSettings:
        """Generation settings of a query that sets none."""
        return self.inputs.defaults

    # ----- requests ------------------------------------------------------------------------------------------

    def prepare(
        self,
        query: Any,
        generate_kwargs: dict | None = None,
        media_kwargs: dict | None = None,
        base_dir: str | Path | None = None,
        history: list[dict] | None = None,
    ) -> PreparedRequest:
        """A request from a query; raises a MossVLError naming the problem for bad input (an error of another
        type is raised as a PreparationError naming it)."""
        with preparation_errors():
            return self.inputs.prepare(query, generate_kwargs, media_kwargs, base_dir, history)

    def submit(self, query: Any, generate_kwargs: dict | None = None, **prepare_kwargs: Any) -> RequestHandle:
        """Queue a query (or a PreparedRequest) and return its handle at once.

        A query that cannot be prepared, whatever the error, gets a handle whose result is that error (so one bad
        query of a batch never stops the others); EngineOverloadedError is raised when ``EngineConfig.max_waiting``
        requests already wait.
        """
        try:
            request = (
                query
                if isinstance(query, PreparedRequest)
                else self.prepare(query, generate_kwargs, **prepare_kwargs)
            )
        except Exception as exc:  # noqa: BLE001 - prepare names foreign errors; this only keeps the guarantee
            return RequestHandle.failed(exc)
        handle = RequestHandle(request.request_id)
        with self._lock:
            limit = self.config.max_waiting
            if limit is not None and len(self._pending) + len(self.core.waiting) >= limit:
                raise EngineOverloadedError(
                    f"the engine already has {limit} requests waiting (EngineConfig.max_waiting); try again later"
                )
            self._pending.append((request, handle))
            self._handles.add(handle)
            self._wake()
        return handle

    def generate(self, queries: Iterable[Any], **generate_kwargs: Any) -> list[Result]:
        """Results of many queries, in order; each query's failure is its own error result."""
        handles = [self.submit(query, generate_kwargs) for query in queries]
        return [handle.result() for handle in handles]

    def chat(self, query: Any, **generate_kwargs: Any) -> str:
        """The answer text of one query; its error raises."""
        result = self.submit(query, generate_kwargs).result()
        result.raise_for_error()
        return result.text

    def stream(self, query: Any, **generate_kwargs: Any) -> Iterator[str]:
        """Text deltas of one query as they are generated; its error raises at the end."""
        yield from self.submit(query, generate_kwargs)

    def close_sequence(self, sequence: Sequence | None) -> None:
        """Free the KV a kept sequence holds (sessions and realtime streams call it when they end)."""
        if sequence is None:
            return
        with self._lock:
            self._to_close.append(sequence)
            self._wake()

    def stats(self) -> dict[str, int]:
        """Queue depth, running requests, kept sequences, KV pool and media-cache sizes (a snapshot)."""
        with self._lock:
            waiting = len(self._pending) + len(self.core.waiting)
        return {
            "waiting": waiting,
            "running": self.core.num_running,
            "kept_sequences": len(self.core.kept),
            "cached_prefixes": len(self.core.cached),
            "kv_cache_bytes": self.core.pool.nbytes,
            "kv_cache_limit_bytes": self.core.kv_limit,
            "media_cache_bytes": self.media_cache.nbytes,
            "media_cache_hits": self.media_cache.hits,
            "media_cache_misses": self.media_cache.misses,
        }

    def shutdown(self, cancel: bool = False, timeout: float | None = None) -> None:
        """Wait until the queued and running requests are done (``cancel``: cancel them first)."""
        if cancel:
            with self._lock:
                for handle in list(self._handles):
                    handle.cancel()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # ----- the engine thread ---------------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mossvl-engine", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while self._pending:
                    self.core.add(*self._pending.popleft())
                for sequence in self._to_close:
                    self.core.close_sequence(sequence)
                self._to_close.clear()
                if not self.core.has_work():
                    self.core.idle()
                    self._thread = None
                    return
            try:
                self.core.step()
            except Exception as exc:  # noqa: BLE001 - an engine bug must end the requests, not hang them
                self.core.fail_all(QueryError(f"internal engine error: {type(exc).__name__}: {exc}"))


def eos_token_ids(model, tokenizer) -> set[int]:
    """End-of-answer ids: the checkpoint's generation_config, else its config, else ``<|im_end|>``."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.convert_tokens_to_ids(IM_END)
    return {eos} if isinstance(eos, int) else set(eos)


class _SharedEngines:
    """Engines stored on a model object; a copy or a pickle of the model starts without them."""

    def __init__(self):
        self.by_processor: dict[int, tuple[weakref.ref, Engine]] = {}
        self.lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> _SharedEngines:
        return _SharedEngines()

    def __reduce__(self):
        return (_SharedEngines, ())


def engine_for(model, processor) -> Engine:
    """The engine the Python API and the model's official methods share for a model and processor: made once and
    kept on the model (its media cache and kept sessions last as long as the model; its thread only runs while
    it has work)."""
    shared = model.__dict__.setdefault("_mossvl_engines", _SharedEngines())
    with shared.lock:
        entry = shared.by_processor.get(id(processor))
        if entry is None or entry[0]() is not processor:
            entry = (weakref.ref(processor), Engine(model, processor))
            shared.by_processor[id(processor)] = entry
        return entry[1]
