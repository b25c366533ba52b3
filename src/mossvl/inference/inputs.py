"""From a user query to a ``PreparedRequest``: conversation, chat template, media planning, cache lookups, settings.

Runs in the caller's thread (or a server's worker thread), so decoding media never stalls the engine loop.
Generation settings are merged here, in one place, in this order (later wins): the official defaults, the
checkpoint's ``generation_config.json``, the engine's or call's kwargs, the query's own ``generate_kwargs``.
Media settings likewise: the processor's config files, the call's ``media_kwargs``, the query's own.

Every failure while preparing is a MossVLError: the processor's limits refuse oversized prompts and media before
they are tokenized or decoded, and an error of any other type (a library's, or a bug) becomes a
``PreparationError`` that names the original type, so one bad query can never take its neighbours down.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import MossVLError, PreparationError, QueryError
from ..processing.conversation import Conversation, conversation_from_query
from ..processing.limits import check_media_settings, check_prompt_chars, check_prompt_tokens
from ..processing.processor import MossVLProcessor, canonical_media_kwargs
from .media_cache import MediaCache
from .request import MediaInput, PreparedRequest
from .sampling import GenerationSettings


def pop_vision_chunked_length(generate_kwargs: dict) -> None:
    """Check and drop the official ``vision_chunked_length`` knob: the engine splits the vision prefill into
    chunks of at most ``EngineConfig.prefill_chunk_frames`` frames, which bounds memory at least as tightly."""
    value = generate_kwargs.pop("vision_chunked_length", None)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise QueryError(f"vision_chunked_length={value!r} is invalid: expected an int >= 1")


@contextmanager
def preparation_errors() -> Iterator[None]:
    """Let MossVLErrors through and turn any other exception into a PreparationError naming its type."""
    try:
        yield
    except MossVLError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever breaks on one query is that query's error
        raise PreparationError(f"{type(exc).__name__}: {exc}") from exc


class InputProcessor:
    """Prepares requests for one model and processor; ``defaults`` are the engine's generation settings."""

    def __init__(
        self,
        processor: MossVLProcessor,
        defaults: GenerationSettings,
        media_cache: MediaCache,
        merge_size: int,
    ):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.defaults = defaults
        self.media_cache = media_cache
        self.merge_size = merge_size
        self.image_token_id = processor.image_token_id

    def settings(self, *layers: dict | None) -> GenerationSettings:
        """Generation settings: the engine defaults, then each kwargs layer in order."""
        settings = self.defaults
        with preparation_errors():
            for layer in layers:
                if layer:
                    if not isinstance(layer, dict):
                        raise QueryError(f"generate kwargs must be a dict, got {type(layer).__name__}")
                    layer = dict(layer)
                    pop_vision_chunked_length(layer)
                    settings = GenerationSettings.from_kwargs(layer, base=settings)
            vocabulary = len(self.tokenizer)
            for ids, _ in settings.sequence_bias:
                if max(ids) >= vocabulary:
                    raise QueryError(
                        f"sequence_bias token ids {list(ids)} are outside the vocabulary ({vocabulary} tokens)"
                    )
        return settings

    def conversation(
        self, query: Any, base_dir: str | Path | None = None, history: list[dict] | None = None
    ) -> Conversation:
        """The query as a Conversation (a Conversation passes through; ``history`` is put before it)."""
        with preparation_errors():
            if isinstance(query, Conversation):
                if history:
                    return Conversation(history + query.messages, query.media_kwargs, query.generate_kwargs)
                return query
            return conversation_from_query(query, base_dir, history=history)

    def prepare(
        self,
        query: Any,
        generate_kwargs: dict | None = None,
        media_kwargs: dict | None = None,
        base_dir: str | Path | None = None,
        history: list[dict] | None = None,
    ) -> PreparedRequest:
        """A new request from a query (a prompt string, a message list, a query dict or a Conversation); ``generate_kwargs`` /
        ``media_kwargs`` are defaults under the query's own. Raises a MossVLError for bad input."""
        conversation = self.conversation(query, base_dir, history)
        settings = self.settings(generate_kwargs, conversation.generate_kwargs)
        with preparation_errors():
            media = {**(media_kwargs or {}), **conversation.media_kwargs}
            text = self.processor.render(conversation.messages)
        return self.encode(
            text, conversation.images, conversation.videos, media, settings, conversation.messages
        )

    def encode(
        self,
        text: str,
        images: Sequence[Any],
        videos: Sequence[Any],
        media_kwargs: dict,
        settings: GenerationSettings,
        messages: list[dict] | None = None,
        prefix_ids: Sequence[int] = (),
    ) -> PreparedRequest:
        """A request for rendered ``text`` with placeholders, after ``prefix_ids`` (a continuation's pending
        tokens). Media come from the cache when their key is known, else their pixels are loaded now. The prompt
        is checked against the processor's limits (characters before tokenizing, then tokens) before any media is
        loaded."""
        limits = self.processor.limits
        with preparation_errors():
            # Checked even when no media uses them: a bad setting is refused the same way on every query.
            media_kwargs = check_media_settings(canonical_media_kwargs(media_kwargs), limits)
            check_prompt_chars(text, limits)
            if not images and not videos:
                self.processor.check_text([text])
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                planned_media = []
            else:
                # The text must fit before any media is decoded (its placeholders change it by a few tokens).
                check_prompt_tokens(len(self.tokenizer(text, add_special_tokens=False)["input_ids"]), limits)
                planned = self.processor.plan(text, list(images), list(videos), **media_kwargs)
                ids = planned.input_ids[0].tolist()
                planned_media = planned.media[0]
            check_prompt_tokens(len(ids), limits)
            media: list[MediaInput] = [self.media_input(item) for item in planned_media]
        vision_tokens = sum(
            t * (h * w // self.merge_size**2 + 1) for t, h, w in (item.grid_thw for item in media)
        )
        return PreparedRequest(
            input_ids=[*prefix_ids, *ids],
            media=media,
            settings=settings,
            input_text=text,
            messages=list(messages or []),
            vision_tokens=vision_tokens,
        )

    def media_input(self, item) -> MediaInput:
        """A planned media item for the engine: its cached vision features, else its pixels (loaded now)."""
        features = self.media_cache.get(item.key)
        with preparation_errors():
            pixels = None if features is not None else item.load()
        return MediaInput(item.grid_thw, item.key, features, pixels, item.timestamps)
