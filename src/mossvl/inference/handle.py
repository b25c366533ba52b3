"""The caller's side of a submitted request: its stream of text deltas, its final result, and cancellation.

The engine thread pushes events; any other thread (or an asyncio event loop) reads them. Every method is safe to
call from any thread while generation runs.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator

from .request import Result, StreamEvent, error_result, new_request_id


class RequestHandle:
    """A submitted request. Iterate it for text deltas (an error raises after the last delta), or call
    ``result()``; ``events()`` / ``aevents()`` also give token ids and the final Result."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        self._events: queue.SimpleQueue[StreamEvent] = queue.SimpleQueue()
        self._done = threading.Event()
        self._cancelled = threading.Event()
        self._result: Result | None = None
        self._async: tuple[asyncio.AbstractEventLoop, asyncio.Queue] | None = None
        self._lock = threading.Lock()

    @classmethod
    def failed(cls, exc: BaseException) -> RequestHandle:
        """A handle that is already done, with ``exc`` as its error result."""
        handle = cls(new_request_id())
        handle.push(StreamEvent("", result=error_result(exc, handle.request_id)))
        return handle

    # ----- engine side -----------------------------------------------------------------------------------------

    def push(self, event: StreamEvent) -> None:
        with self._lock:
            if event.result is not None:
                self._result = event.result
            self._events.put(event)
            if self._async is not None:
                loop, async_queue = self._async
                try:
                    loop.call_soon_threadsafe(async_queue.put_nowait, event)
                except RuntimeError:  # the reader's event loop is closed: nobody listens any more
                    self._async = None
            if event.result is not None:
                self._done.set()

    # ----- caller side -----------------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop generating at the next step; the result then has ``finish_reason`` "cancelled"."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Result:
        """The final Result (waits for it); TimeoutError after ``timeout`` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} did not finish within {timeout} s")
        return self._result

    def poll(self, timeout: float) -> StreamEvent | None:
        """The next event, or None when none comes within ``timeout`` seconds."""
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def events(self, timeout: float | None = None) -> Iterator[StreamEvent]:
        """Events as they come, up to and including the one carrying the Result (read them from one place only)."""
        while True:
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"request {self.request_id}: no output within {timeout} s") from None
            yield event
            if event.result is not None:
                return

    def __iter__(self) -> Iterator[str]:
        for event in self.events():
            if event.delta:
                yield event.delta
            if event.result is not None:
                event.result.raise_for_error()

    async def aevents(self) -> AsyncIterator[StreamEvent]:
        """``events()`` for an asyncio consumer (one consumer per handle)."""
        async_queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            while True:  # events pushed before the consumer arrived
                try:
                    async_queue.put_nowait(self._events.get_nowait())
                except queue.Empty:
                    break
            self._async = (asyncio.get_running_loop(), async_queue)
        while True:
            event = await async_queue.get()
            yield event
            if event.result is not None:
                return
