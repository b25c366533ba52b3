"""Multi-turn conversations that keep their KV in the engine: a follow-up prefills only its own new tokens.

A turn after the first renders, with the checkpoint's chat template, only what the template adds after the
previous answer (the answer's end-of-turn text, the new messages, the generation prompt), encodes only the new
turn's media, and continues the kept sequence: positions continue from its next XRoPE position and new frames'
K/V are appended to its vision memory. The sequence holds the answer tokens as generated (the official API
re-tokenises earlier answers from their text each turn instead).

Equivalence with re-prefilling the whole conversation: with ``config.rotate_cross_query_in_decode=True`` every
token's hidden states are the same whether computed in a decode step or a prefill, so a session gives the same
greedy tokens as one prefill of the same token sequence. In the default HF-parity mode the answers' tokens were
decoded with an un-rotated cross-attention query (the official quirk), so later turns differ slightly from a full
re-prefill. When the engine evicted the sequence (memory pressure), the next turn re-prefills the conversation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import MossVLError
from ..processing.conversation import Conversation
from ..processing.prompt import continuation_text
from .engine import Engine
from .handle import RequestHandle
from .request import PreparedRequest, Result


class Session:
    """A conversation with one engine that reuses its KV from turn to turn.

    ``messages``: normalised messages of the finished turns (history given here is prefilled with the first turn).
    ``media_kwargs`` / ``generate_kwargs`` are defaults of every turn.
    """

    def __init__(
        self,
        engine: Engine,
        messages: list[dict] | None = None,
        media_kwargs: dict | None = None,
        generate_kwargs: dict | None = None,
    ):
        self.engine = engine
        self.messages: list[dict] = list(messages or [])
        self.media_kwargs = dict(media_kwargs or {})
        self.generate_kwargs = dict(generate_kwargs or {})
        self.last_result: Result | None = None
        self._sequence = None
        self._last_token: int | None = None

    @property
    def cached_tokens(self) -> int:
        """Tokens held in the engine for this conversation (0 before the first turn, after a reset or eviction)."""
        sequence = self._sequence
        return len(sequence.tokens) if sequence is not None and sequence.alive else 0

    def reset(self) -> None:
        """Forget the conversation and free its KV."""
        self.engine.close_sequence(self._sequence)
        self.messages, self._sequence, self._last_token, self.last_result = [], None, None, None

    def submit(self, query: Any, **generate_kwargs: Any) -> tuple[RequestHandle, list[dict]]:
        """Start a turn; returns its handle and the turn's new messages (pass both to ``record``).

        A turn that cannot be prepared gets a handle whose result is the error.
        """
        try:
            conversation = self.engine.inputs.conversation(query)
            settings = {**self.generate_kwargs, **generate_kwargs}
            media = {**self.media_kwargs, **conversation.media_kwargs}
            if self._sequence is not None and self._sequence.alive:
                request = self._continuation(conversation, settings, media)
            else:
                turn = {"messages": conversation.messages, "generate_kwargs": conversation.generate_kwargs}
                request = self.engine.prepare(turn, settings, media, history=self.messages)
        except MossVLError as exc:
            return RequestHandle.failed(exc), []
        request.keep_sequence = True
        return self.engine.submit(request), conversation.messages

    def _continuation(self, conversation: Conversation, settings: dict, media: dict) -> PreparedRequest:
        template = self.engine.processor.chat_template
        text = continuation_text(template, self.messages, conversation.messages)
        pending = [] if self._last_token is None else [self._last_token]
        request = self.engine.inputs.encode(
            text,
            conversation.images,
            conversation.videos,
            media,
            self.engine.inputs.settings(settings, conversation.generate_kwargs),
            self.messages + conversation.messages,
            prefix_ids=pending,
        )
        request.sequence = self._sequence
        # The whole conversation's prompt, as a re-prefill would render it.
        request.input_text = self.engine.processor.render(self.messages + conversation.messages)
        return request

    def record(self, result: Result, new_messages: list[dict]) -> None:
        """Take a finished turn into the conversation (a failed one changes nothing)."""
        self.last_result = result
        if not result.ok:
            if result.sequence is None and self._sequence is not None and not self._sequence.alive:
                self._sequence = None
            return
        self.messages += new_messages
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": result.text}]})
        self._sequence = result.sequence
        stops = self.engine.eos_token_ids
        last = result.token_ids[-1] if result.token_ids else None
        # The last sampled token was never fed; an end-of-turn token is rewritten by the template's closing text.
        self._last_token = None if last is None or last in stops else last

    def send(self, query: Any, **generate_kwargs: Any) -> Result:
        """Run one turn and return its Result (an error result if the turn failed)."""
        handle, new_messages = self.submit(query, **generate_kwargs)
        result = handle.result()
        self.record(result, new_messages)
        return result

    def stream(self, query: Any, **generate_kwargs: Any) -> Iterator[str]:
        """Run one turn, yielding text deltas; its error raises at the end. A stream abandoned before its end
        cancels the turn and drops the KV (the next turn re-prefills the recorded conversation)."""
        handle, new_messages = self.submit(query, **generate_kwargs)
        finished = False
        try:
            for event in handle.events():
                if event.delta:
                    yield event.delta
            finished = True
        finally:
            result = handle.result() if finished else None
            if not finished:
                handle.cancel()
                abandoned = handle.result()
                self.engine.close_sequence(abandoned.sequence)
                self.engine.close_sequence(self._sequence)
                self._sequence, self._last_token = None, None
        self.record(result, new_messages)
        result.raise_for_error()
