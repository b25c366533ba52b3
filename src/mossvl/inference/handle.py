"""The caller's side of a submitted request: its stream of text deltas, its final result, and cancellation.

The engine thread pushes events; any other thread (or an asyncio event loop) reads them. Every method is safe to
call from any thread while generation runs.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator

from .event_channel import EventChannel
from .request import Result, StreamEvent, error_result, new_request_id


class RequestHandle:
    """A submitted request. Iterate it for text deltas (an error raises after the last delta), or call
    ``result()``; ``events()`` / ``aevents()`` also give token ids and the final Result."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        self._events: EventChannel[StreamEvent] = EventChannel()
        self._done = threading.Event()
        self._cancelled = threading.Event()
        self._result: Result | None = None

    @classmethod
    def failed(cls, exc: BaseException) -> RequestHandle:
        """A handle that is already done, with ``exc`` as its error result."""
        handle = cls(new_request_id())
        handle.push(StreamEvent("", result=error_result(exc, handle.request_id)))
        return handle

    # ----- engine side -----------------------------------------------------------------------------------------

    def push(self, event: StreamEvent) -> None:
        if event.result is not None:
            self._result = event.result
        self._events.put(event)
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
        return self._events.get(timeout)

    def events(self, timeout: float | None = None) -> Iterator[StreamEvent]:
        """Events as they come, up to and including the one carrying the Result (read them from one place only)."""
        while True:
            event = self._events.get(timeout)
            if event is None:
                raise TimeoutError(f"request {self.request_id}: no output within {timeout} s")
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
        async for event in self._events.stream(lambda event: event.result is not None):
            yield event
