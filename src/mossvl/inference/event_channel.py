"""Events from a producer thread to one consumer: a thread that polls, or an asyncio event loop.

Request handles and realtime sessions both hand their events over this way: the engine or session thread puts,
the caller reads from any thread, or iterates asynchronously from its event loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

Event = TypeVar("Event")


class EventChannel(Generic[Event]):
    """A thread-safe event queue with one reader: ``get`` from a thread, or ``stream`` in an asyncio loop."""

    def __init__(self):
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._async: tuple[asyncio.AbstractEventLoop, asyncio.Queue] | None = None
        self._lock = threading.Lock()

    def put(self, event: Event) -> None:
        """Deliver an event to the asyncio reader if there is one, else queue it for ``get``."""
        with self._lock:
            if self._async is not None:
                loop, async_queue = self._async
                try:
                    loop.call_soon_threadsafe(async_queue.put_nowait, event)
                    return
                except RuntimeError:  # the reader's event loop is closed: keep the event for a thread instead
                    self._async = None
            self._events.put(event)

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None when none comes within ``timeout`` seconds."""
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    async def stream(self, is_last: Callable[[Event], bool]) -> AsyncIterator[Event]:
        """The events for an asyncio reader, those queued before it came first, up to the one ``is_last`` picks."""
        async_queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            while True:
                try:
                    async_queue.put_nowait(self._events.get_nowait())
                except queue.Empty:
                    break
            self._async = (asyncio.get_running_loop(), async_queue)
        while True:
            event = await async_queue.get()
            yield event
            if is_last(event):
                return
