"""The one normaliser of queries and training records: every accepted format becomes a ``Conversation``.

Formats (official offline API and SFT data):

* ``messages`` (or the training key ``conversations``): ``[{role, content}]`` with string content holding inline
  ``<|image|>`` / ``<|video|>`` placeholders fed by top-level ``images`` / ``videos``, or typed items: ``text``,
  ``image`` (``image`` / ``url`` / ``path`` / ``base64`` field, a PIL image or an array), ``image_url``, ``video``
  (``video`` / ``url`` / ``path`` field) and ``video_url``. ShareGPT ``{from, value}`` turns are accepted.
* ``prompt`` + ``images`` + ``videos`` (+ ``system_prompt``; ``response`` in training data): one user turn. For
  inference the media come first with no separator (the official CLI layout); training records get one
  ``"<|image|>\\n"`` / ``"<|video|>\\n"`` per media unit, as the official SFT code does.

A video is a path / URL, ``{"video_path", "segments": [[start, end] | [time], ...]}`` (one media unit per segment)
or pre-extracted ``{"frames", "timestamps" | "fps"}``. Media paths are resolved once, here, against ``base_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mossvl import constants as C
from mossvl.errors import QueryError
from mossvl.processing.media_refs import (
    is_url,
    media_path,
    resolve_media_path,
    units_per_placeholder,
    video_units,
)
from mossvl.processing.prompt import PLACEHOLDER_RE
from mossvl.processing.sources import local_file_error

ROLE_ALIASES = {
    "human": "user",
    "gpt": "assistant",
    "user": "user",
    "assistant": "assistant",
    "system": "system",
}
GENERATE_KEYS = frozenset(
    {
        "max_new_tokens",
        "do_sample",
        "temperature",
        "top_k",
        "top_p",
        "repetition_penalty",
        "stop",
        "stop_strings",
        "seed",
        "num_beams",
        "num_return_sequences",
        "vision_chunked_length",
    }
)
MEDIA_KEYS = frozenset(
    {
        "min_pixels",
        "max_pixels",
        "multi_image_max_pixels",
        "video_max_pixels",
        "video_fps",
        "min_frames",
        "max_frames",
        "num_extract_threads",
        "shortest_edge",
        "longest_edge",
        "video_minlen",
        "video_maxlen",
        "frame_extract_num_threads",
    }
)


@dataclass
class Conversation:
    """A normalised query or record.

    ``messages``: ``{"role", "content": [items]}`` with items ``{"type": "text", "text"}``, ``{"type": "image",
    "image": source}`` or ``{"type": "video", "video": unit}`` (one unit per video segment), media resolved.
    ``media_kwargs`` / ``generate_kwargs``: the query's own settings (a query may also put those keys at its top
    level, as the official batch helper accepts).
    """

    messages: list[dict[str, Any]]
    media_kwargs: dict[str, Any] = field(default_factory=dict)
    generate_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def media(self) -> list[tuple[str, Any]]:
        """(kind, source) of every image / video unit in text order."""
        return [
            (item["type"], item[item["type"]])
            for message in self.messages
            for item in message["content"]
            if item["type"] in ("image", "video")
        ]

    @property
    def images(self) -> list[Any]:
        return [source for kind, source in self.media if kind == "image"]

    @property
    def videos(self) -> list[Any]:
        return [source for kind, source in self.media if kind == "video"]

    @property
    def system_prompt(self) -> str | None:
        first = self.messages[0] if self.messages else None
        if first is None or first["role"] != "system":
            return None
        return "".join(item.get("text", "") for item in first["content"])


# ----- entry points -------------------------------------------------------------------------------------------


def conversation_from_query(
    query: Any,
    base_dir: str | Path | None = None,
    *,
    history: list[dict] | None = None,
    trim_trailing_assistant: bool = True,
) -> Conversation:
    """An inference query (a prompt string, a message list or a query dict) as a Conversation.

    ``history``: normalised messages of earlier turns, put before the query's own. Trailing assistant turns are
    dropped (the model answers the last user turn) unless ``trim_trailing_assistant`` is False.
    """
    query = _as_query(query)
    messages = _messages(query, base_dir, placeholder_separator="", check_files=False)
    system = _system_prompt(query, any(item["type"] == "video" for m in messages for item in m["content"]))
    if system is not None:
        if messages[0]["role"] == "system":
            raise QueryError("the query has both a system message and a system_prompt; keep one")
        messages.insert(0, {"role": "system", "content": [_text_item(system)]})
    messages = list(history or []) + messages
    if trim_trailing_assistant:
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
    if not any(message["role"] == "user" for message in messages):
        raise QueryError("the query has no user message")
    media_kwargs, generate_kwargs = _query_settings(query)
    return Conversation(messages, media_kwargs, generate_kwargs)


def conversation_from_record(record: Any, index: int, base_dir: str | Path) -> Conversation:
    """A training record as a Conversation (media files must exist), or QueryError naming ``record {index}``."""
    try:
        if not isinstance(record, dict):
            raise QueryError(f"expected a JSON object, got {type(record).__name__}")
        turns = [key for key in ("conversations", "messages") if key in record]
        if "prompt" in record and turns:
            raise QueryError(f"has both 'prompt' and '{turns[0]}'; use one format per record")
        if "prompt" in record and "response" not in record:
            raise QueryError("field 'response' is missing")
        messages = _messages(record, base_dir, placeholder_separator="\n", check_files=True)
        if record.get("system_prompt"):
            system = _text(record["system_prompt"], "system_prompt")
            messages.insert(0, {"role": "system", "content": [_text_item(system)]})
        if any(message["role"] == "system" for message in messages[1:]):
            raise QueryError("a system turn may only come first")
        if not any(message["role"] == "assistant" for message in messages):
            raise QueryError("the record has no assistant turn, so nothing would be learned")
    except QueryError as exc:
        raise QueryError(f"record {index}: {exc}") from exc
    return Conversation(messages)


# ----- shared normalisation -------------------------------------------------------------------------------------


def _as_query(query: Any) -> dict:
    if isinstance(query, str):
        return {"prompt": query}
    if isinstance(query, list):
        return {"messages": query}
    if isinstance(query, dict):
        return query
    raise QueryError(f"a query must be a string, a message list or a dict, got {type(query).__name__}")


def _messages(
    query: dict, base_dir: str | Path | None, placeholder_separator: str, check_files: bool
) -> list[dict]:
    """Typed messages of a query or record, media taken from its top-level pools in placeholder order."""
    images = [
        _image_source(item, base_dir, f"images[{i}]", check_files)
        for i, item in enumerate(_media_list(query, "images"))
    ]
    videos = [
        _video_source(item, base_dir, f"videos[{i}]", check_files)
        for i, item in enumerate(_media_list(query, "videos"))
    ]
    if "messages" in query or "conversations" in query:
        key = "messages" if "messages" in query else "conversations"
        raw = query[key]
        if not isinstance(raw, list) or not raw:
            raise QueryError(f"field '{key}' must be a non-empty list of {{role, content}} turns")
    elif "prompt" in query:
        key = "prompt"
        raw = _prompt_turns(query, placeholder_separator, len(images), sum(len(units) for units in videos))
    else:
        raise QueryError(
            f"a query needs 'messages', 'conversations' or 'prompt'; got keys {sorted(query)[:20]}"
        )
    pools = _Pools(images, videos, raw)
    messages = []
    for i, turn in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise QueryError(f"field '{where}' must be an object with 'role' and 'content', got {turn!r:.80}")
        role = ROLE_ALIASES.get(turn.get("role", turn.get("from")))
        if role is None:
            given = turn.get("role", turn.get("from"))
            raise QueryError(f"field '{where}.role' must be system, user or assistant, got {given!r}")
        content = turn.get("content", turn.get("value"))
        messages.append(
            {"role": role, "content": _content_items(content, pools, base_dir, where, check_files)}
        )
    return messages


def _prompt_turns(query: dict, separator: str, num_images: int, num_video_units: int) -> list[dict]:
    prompt = _text(query["prompt"], "prompt")
    if not PLACEHOLDER_RE.search(prompt):
        placeholders = [C.IMAGE_PLACEHOLDER] * num_images + [C.VIDEO_PLACEHOLDER] * num_video_units
        prompt = "".join(p + separator for p in placeholders) + prompt
    turns = [{"role": "user", "content": prompt}]
    if query.get("response") is not None:
        turns.append({"role": "assistant", "content": _text(query["response"], "response")})
    return turns


def _media_list(query: dict, key: str) -> list:
    value = query.get(key) or []
    if isinstance(value, str | dict):
        value = [value]
    if not isinstance(value, list | tuple):
        raise QueryError(f"field '{key}' must be a list, got {type(value).__name__}")
    return list(value)


def _count_placeholders(turns: list, placeholder: str) -> int:
    count = 0
    for turn in turns:
        content = turn.get("content", turn.get("value")) if isinstance(turn, dict) else None
        texts = [content] if isinstance(content, str) else []
        if isinstance(content, list):
            texts = [i if isinstance(i, str) else i.get("text") for i in content if isinstance(i, str | dict)]
        count += sum(text.count(placeholder) for text in texts if isinstance(text, str))
    return count


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise QueryError(f"field '{where}' must be a non-empty string, got {value!r:.80}")
    return value


def _text_item(text: str) -> dict:
    return {"type": "text", "text": text}


class _Pools:
    """Top-level ``images`` / ``videos`` (already resolved) consumed in order by inline placeholders."""

    def __init__(self, images: list, videos: list[list], turns: list):
        image_slots = _count_placeholders(turns, C.IMAGE_PLACEHOLDER)
        if image_slots != len(images):
            raise QueryError(
                f"field 'images' has {len(images)} entries but the text has {image_slots} "
                f"{C.IMAGE_PLACEHOLDER} placeholders"
            )
        video_slots = _count_placeholders(turns, C.VIDEO_PLACEHOLDER)
        counts = units_per_placeholder(video_slots, [len(units) for units in videos])
        if counts is None:
            raise QueryError(
                f"field 'videos' has {sum(len(u) for u in videos)} video units ({len(videos)} videos, segments "
                f"counted one each) but the text has {video_slots} {C.VIDEO_PLACEHOLDER} placeholders"
            )
        flat = iter(unit for units in videos for unit in units)
        self.images = iter(images)
        self.videos = iter([[next(flat) for _ in range(count)] for count in counts])

    def take(self, placeholder: str) -> list[dict]:
        if placeholder == C.IMAGE_PLACEHOLDER:
            return [{"type": "image", "image": next(self.images)}]
        return [{"type": "video", "video": unit} for unit in next(self.videos)]


def _content_items(
    content: Any, pools: _Pools, base_dir: str | Path | None, where: str, check_files: bool
) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        return _split_text(content, pools)
    if not isinstance(content, list):
        raise QueryError(
            f"field '{where}.content' must be a string or a list of items, got {type(content).__name__}"
        )
    items: list[dict] = []
    for j, item in enumerate(content):
        at = f"{where}.content[{j}]"
        if isinstance(item, str):
            items.extend(_split_text(item, pools))
            continue
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text":
            items.extend(_split_text(str(item.get("text", "")), pools))
        elif kind in ("image", "image_url"):
            items.append(
                {"type": "image", "image": _image_source(_source(item, kind, at), base_dir, at, check_files)}
            )
        elif kind in ("video", "video_url"):
            units = _video_source(_source(item, kind, at), base_dir, at, check_files)
            items.extend({"type": "video", "video": unit} for unit in units)
        else:
            raise QueryError(
                f"field '{at}': unknown content type {kind!r}; use text, image, image_url, video or video_url"
            )
    return items


def _source(item: dict, kind: str, where: str) -> Any:
    """The media source of a typed item: ``image`` / ``video`` / ``url`` / ``path`` / ``base64`` / ``*_url``."""
    if kind.endswith("_url"):
        value = item.get(kind)
        value = value.get("url") if isinstance(value, dict) else value
        if value is not None:
            return value
    base = kind.removesuffix("_url")
    for key in (base, "url", "path"):
        if item.get(key) is not None:
            return item[key]
    if item.get("base64") is not None:
        return f"data:{base}/*;base64,{item['base64']}"
    raise QueryError(f"field '{where}': {base} item has no '{base}', 'url' or 'path' field: {item!r:.120}")


def _image_source(value: Any, base_dir: str | Path | None, where: str, check_files: bool) -> Any:
    if isinstance(value, str | Path):
        value = media_path(value, base_dir, where)
        _check_exists(value, where, check_files)
        return value
    return resolve_media_path(value, base_dir)


def _video_source(value: Any, base_dir: str | Path | None, where: str, check_files: bool) -> list[Any]:
    """A video reference → its media units; pre-extracted frames are one unit as they are."""
    if isinstance(value, dict) and "frames" in value:
        return [value]
    units = video_units(value, base_dir, where)
    path = units[0]["video_path"] if isinstance(units[0], dict) else units[0]
    _check_exists(path, where + (".video_path" if isinstance(units[0], dict) else ""), check_files)
    return units


def _check_exists(path: Any, where: str, check_files: bool) -> None:
    if check_files and isinstance(path, str) and not is_url(path):
        problem = local_file_error(path)
        if problem is not None:
            raise QueryError(f"field '{where}': {problem}")


def _split_text(text: str, pools: _Pools) -> list[dict]:
    """Text with inline placeholders → typed items, media taken from the pools."""
    items: list[dict] = []
    position = 0
    for match in PLACEHOLDER_RE.finditer(text):
        if match.start() > position:
            items.append(_text_item(text[position : match.start()]))
        items.extend(pools.take(match.group()))
        position = match.end()
    if position < len(text):
        items.append(_text_item(text[position:]))
    return items


def _system_prompt(query: dict, has_video: bool) -> str | None:
    if query.get("system_prompt") is not None:
        return str(query["system_prompt"])
    kind = query.get("system_prompt_type")
    if kind is None and query.get("use_default_system_prompt"):
        kind = "video" if has_video else "text_image"
    if kind is None:
        return None
    if kind not in C.DEFAULT_SYSTEM_PROMPTS:
        raise QueryError(
            f"unknown system_prompt_type {kind!r}; use one of {sorted(C.DEFAULT_SYSTEM_PROMPTS)}"
        )
    return C.DEFAULT_SYSTEM_PROMPTS[kind]


def _query_settings(query: dict) -> tuple[dict, dict]:
    """(media kwargs, generate kwargs) of a query: top-level keys, then its ``media_kwargs`` / ``generate_kwargs``."""
    own_media, own_generate = query.get("media_kwargs") or {}, query.get("generate_kwargs") or {}
    if not isinstance(own_media, dict) or not isinstance(own_generate, dict):
        raise QueryError("'media_kwargs' and 'generate_kwargs' must be dicts")
    media = {key: value for key, value in query.items() if key in MEDIA_KEYS}
    generate = {key: value for key, value in query.items() if key in GENERATE_KEYS}
    return {**media, **own_media}, {**generate, **own_generate}
