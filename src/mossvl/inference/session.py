"""Multi-turn conversations that keep their KV cache: a follow-up prefills only its own new tokens.

A Session holds the conversation's messages and its cache: the text K/V of every token so far and, in the
cross-attention slots, the vision K/V of every image and frame seen so far. A follow-up turn renders only what
ChatML adds after the previous answer (``<|im_end|>``, ``\\n``, the new messages, ``<|im_start|>assistant\\n``),
encodes only the media of the new turn, and runs one continuation forward on the cache: positions continue from
the cache's next XRoPE position and the new frames' K/V are appended to the vision memory.

Equivalence with re-prefilling the whole conversation (what the official API does each turn): with
``config.rotate_cross_query_in_decode=True`` every token's hidden states are the same whether it was computed in
a decode step or in a prefill, so a session gives the same greedy tokens as a full re-prefill of the same token
sequence. In the default HF-parity mode (False) the answer tokens of earlier turns were computed in decode steps
whose cross-attention query was *not* rotated (the official quirk), while a re-prefill rotates it; their cached
K/V, and therefore later turns, differ slightly from a full re-prefill. The official API itself also re-tokenises
earlier answers from text, which may split them differently from the tokens that were generated; a session keeps
the generated tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..constants import VISION_CHUNKED_LENGTH
from ..errors import MossVLError
from .engine import Engine, Result, RunState, StreamEvent, _error_result, _PrefillError
from .prompts import build_followup, build_prompt


class Session:
    """A conversation with one MOSS-VL model that reuses its KV cache from turn to turn.

    ``messages``: normalised messages of the finished turns (earlier history may be given to start from; it is
    prefilled with the first turn). ``media_kwargs`` / ``generate_kwargs`` are defaults for every turn.
    """

    def __init__(
        self,
        model=None,
        processor=None,
        *,
        engine: Engine | None = None,
        messages: list[dict] | None = None,
        media_kwargs: dict | None = None,
        generate_kwargs: dict | None = None,
        vision_chunked_length: int = VISION_CHUNKED_LENGTH,
    ):
        self.engine = engine or Engine(model, processor, vision_chunked_length)
        self.messages: list[dict] = list(messages or [])
        self.media_kwargs = dict(media_kwargs or {})
        self.generate_kwargs = dict(generate_kwargs or {})
        self.last_result: Result | None = None
        self._state: RunState | None = None

    @property
    def cached_tokens(self) -> int:
        """Text tokens held in the cache (0 before the first turn or after a reset)."""
        return 0 if self._state is None else int(self._state.attention_mask.shape[1])

    def adopt(self, state: RunState, index: int) -> None:
        """Continue from the row answering ``index`` in a finished batch run made with ``keep=state``."""
        self._state = state.select(index)

    def reset(self) -> None:
        """Forget the conversation and free its cache."""
        self.messages = []
        self._state = None
        self.last_result = None

    def send(self, query: Any, cancel: Callable[[], bool] | None = None, **generate_kwargs) -> Result:
        """Run one turn and return its Result (an error result if the turn failed)."""
        for _ in self.stream_events(query, cancel=cancel, **generate_kwargs):
            pass
        return self.last_result

    def stream(
        self, query: Any, cancel: Callable[[], bool] | None = None, **generate_kwargs
    ) -> Iterator[str]:
        """Run one turn, yielding text deltas; the Result is in ``last_result`` afterwards (errors raise)."""
        for event in self.stream_events(query, cancel=cancel, **generate_kwargs):
            if event.delta:
                yield event.delta
        self.last_result.raise_for_error()

    def stream_events(
        self, query: Any, cancel: Callable[[], bool] | None = None, **generate_kwargs
    ) -> Iterator[StreamEvent]:
        """Run one turn as engine events (index 0). A turn abandoned mid-stream drops the cache (the next turn
        re-prefills the conversation); a cancelled one (``cancel``) keeps it and records the partial answer."""
        engine = self.engine
        try:
            if self._state is None:
                prompt = build_prompt(query, self.media_kwargs, history=self.messages)
                new_messages = prompt.messages[len(self.messages) :]
                batch = engine.encode(prompt)
            else:
                prompt = build_followup(query, self.media_kwargs)
                new_messages = prompt.messages
                batch = engine.encode_continuation(self._state.pending[0], prompt)
            request = engine.request_for(prompt, {**self.generate_kwargs, **generate_kwargs})
        except MossVLError as exc:
            self.last_result = _error_result(exc)
            yield StreamEvent(0, "", self.last_result)
            return

        state, keep = self._state, RunState()
        self._state = None  # invalid until the turn completes: the cache is being extended
        try:
            yield from self._run(request, batch, state, keep, cancel)
        except _PrefillError as exc:
            self.last_result = _error_result(exc.__cause__, request)
            yield StreamEvent(0, "", self.last_result)
            return
        self._state = keep
        self.messages += new_messages
        self.messages.append(
            {"role": "assistant", "content": [{"type": "text", "text": self.last_result.text}]}
        )

    def _run(self, request, batch, state: RunState | None, keep: RunState, cancel) -> Iterator[StreamEvent]:
        events = self.engine.run(
            [request],
            batch,
            cancel=cancel,
            cache=state.cache if state is not None else None,
            past_attention_mask=state.attention_mask if state is not None else None,
            keep=keep,
        )
        for event in events:
            if event.result is not None:
                self.last_result = event.result
            yield event
