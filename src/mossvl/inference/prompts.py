"""From a user query (str, messages or query dict) to a Prompt: messages, rendered ChatML text, media, kwargs.

Query normalisation and ChatML rendering are the processor's (``processing.prompt``); this module adds what
inference needs on top: the query's media and generate kwargs (a ``media_kwargs`` / ``generate_kwargs`` dict,
or the same keys at the top level of the query, as the official batch helper accepts), and the rendering of a
follow-up turn that continues a cached conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..constants import IM_START
from ..errors import QueryError
from ..processing.processor import IMAGE_KWARGS, KWARG_ALIASES, VIDEO_KWARGS
from ..processing.prompt import normalize_query, render_chat
from .sampling import GenerationSettings

_GENERATE_KEYS = {f for f in GenerationSettings.__dataclass_fields__} | {"stop_strings"}
_MEDIA_KEYS = {*IMAGE_KWARGS, *VIDEO_KWARGS, *KWARG_ALIASES}


@dataclass
class Prompt:
    """One query, normalised. ``text`` is the ChatML prompt with ``<|image|>`` / ``<|video|>`` placeholders (the
    official ``input_text``); ``images`` / ``videos`` are the media units in placeholder order."""

    messages: list[dict]
    text: str
    images: list[Any] = field(default_factory=list)
    videos: list[Any] = field(default_factory=list)
    media_kwargs: dict = field(default_factory=dict)
    generate_kwargs: dict = field(default_factory=dict)
    vision_chunked_length: int | None = None

    @property
    def input_text(self) -> str:
        return self.text


def as_query(query: Any) -> dict:
    """A query dict from a plain prompt string, a message list or a query dict."""
    if isinstance(query, str):
        return {"prompt": query}
    if isinstance(query, list):
        return {"messages": query}
    if isinstance(query, dict):
        return query
    raise QueryError(f"a query must be a string, a message list or a dict, got {type(query).__name__}")


def query_kwargs(query: dict, media_defaults: dict | None = None) -> tuple[dict, dict, int | None]:
    """(media kwargs, generate kwargs, vision_chunked_length) of a query: defaults < top-level keys < dicts."""
    media = {**(media_defaults or {}), **{k: v for k, v in query.items() if k in _MEDIA_KEYS}}
    own_media = query.get("media_kwargs") or {}
    own_generate = query.get("generate_kwargs") or {}
    if not isinstance(own_media, dict) or not isinstance(own_generate, dict):
        raise QueryError("'media_kwargs' and 'generate_kwargs' must be dicts")
    media.update(own_media)
    generate = {k: v for k, v in query.items() if k in _GENERATE_KEYS}
    generate.update(own_generate)
    chunk = generate.pop("vision_chunked_length", query.get("vision_chunked_length"))
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise QueryError(f"vision_chunked_length={chunk!r} is invalid: expected an int >= 1")
    return media, generate, chunk


def build_prompt(
    query: Any,
    media_kwargs: dict | None = None,
    base_dir: str | None = None,
    history: list[dict] | None = None,
) -> Prompt:
    """Normalise ``query`` (relative media paths against ``base_dir``) into a Prompt.

    ``media_kwargs`` are defaults under the query's own. ``history`` (normalised messages of earlier turns) is put
    before the query's messages, for stateless multi-turn use.
    """
    query = as_query(query)
    media, generate, chunk = query_kwargs(query, media_kwargs)
    conversation = normalize_query(query, base_dir)
    messages = list(history or []) + conversation.messages
    images, videos = _media_of(messages, "image"), _media_of(messages, "video")
    return Prompt(messages, render_chat(messages), images, videos, media, generate, chunk)


def build_followup(query: Any, media_kwargs: dict | None = None, base_dir: str | None = None) -> Prompt:
    """The prompt of a follow-up turn on a cached conversation: ``text`` is only what comes after the previous
    answer's ``<|im_end|>`` ("\\n" + the new messages + the generation prompt); ``messages`` are the new ones."""
    prompt = build_prompt(query, media_kwargs, base_dir)
    prompt.text = "\n" + prompt.text
    if not prompt.text.startswith("\n" + IM_START):
        raise QueryError("a follow-up turn must render to ChatML messages")
    return prompt


def _media_of(messages: list[dict], kind: str) -> list[Any]:
    return [item[kind] for m in messages for item in m["content"] if item["type"] == kind]
