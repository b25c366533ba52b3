"""Queries → conversations → ChatML text with `<|image|>`/`<|video|>` placeholders, and placeholder expansion.

Accepted query styles (reference §1.5): `messages` (string content with inline placeholders, or typed items
text / image / image_url / video), `prompt` + `images` + `videos` (+ `response` for training data), and the
training `conversations` key; top-level `images` / `videos` feed the inline placeholders in order.
"""

import re
from dataclasses import dataclass, field
from typing import Any

from mossvl import constants as C
from mossvl.errors import QueryError
from mossvl.processing.media_refs import resolve_media_path, units_per_placeholder, video_units

ROLES = ("system", "user", "assistant")
PLACEHOLDER_RE = re.compile(re.escape(C.IMAGE_PLACEHOLDER) + "|" + re.escape(C.VIDEO_PLACEHOLDER))

# Jinja twin of `render_chat`, stored with saved processors so `apply_chat_template` renders the same text.
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}{%- else %}"
    "{%- for item in message['content'] %}{%- if item['type'] == 'text' %}{{- item['text'] }}"
    "{%- elif item['type'] == 'image' %}{{- '<|image|>' }}{%- elif item['type'] == 'video' %}{{- '<|video|>' }}"
    "{%- endif %}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass
class Conversation:
    """A normalised query: messages whose content is a list of typed items, media referenced in text order."""

    messages: list[dict[str, Any]]
    media_kwargs: dict[str, Any] = field(default_factory=dict)

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


def _image_source(item: dict[str, Any], where: str) -> Any:
    if item["type"] == "image_url":
        url = item.get("image_url")
        return url.get("url") if isinstance(url, dict) else url
    for key in ("image", "url", "path"):
        if item.get(key) is not None:
            return item[key]
    raise QueryError(f"{where}: image item has no 'image' field: {item!r}")


def _video_units(source: Any, base_dir: str | None, field: str) -> list[Any]:
    """A video source → its media units (one per segment); pre-extracted frames are one unit as they are."""
    if isinstance(source, dict) and "frames" in source:
        return [source]
    return video_units(source, base_dir, field)


class _Pools:
    """Top-level `images` / `videos` consumed in order by inline placeholders."""

    def __init__(self, images: list[Any], videos: list[Any], placeholder_videos: int, base_dir: str | None):
        self.images = [resolve_media_path(i, base_dir) for i in images]
        units = [_video_units(v, base_dir, f"videos[{i}]") for i, v in enumerate(videos)]
        counts = units_per_placeholder(placeholder_videos, [len(u) for u in units])
        if counts is None:
            raise QueryError(
                f"{placeholder_videos} {C.VIDEO_PLACEHOLDER} placeholder(s) but {len(units)} video(s) "
                f"({sum(len(u) for u in units)} unit(s) after segment expansion)"
            )
        flat = iter(unit for group in units for unit in group)
        self.videos = [[next(flat) for _ in range(count)] for count in counts]
        self.next_image = 0
        self.next_video = 0

    def take(self, kind: str) -> list[dict[str, Any]]:
        if kind == "image":
            if self.next_image >= len(self.images):
                raise QueryError(f"more {C.IMAGE_PLACEHOLDER} placeholders than images ({len(self.images)})")
            self.next_image += 1
            return [{"type": "image", "image": self.images[self.next_image - 1]}]
        self.next_video += 1
        return [{"type": "video", "video": u} for u in self.videos[self.next_video - 1]]

    def check_consumed(self) -> None:
        if self.next_image != len(self.images):
            raise QueryError(
                f"{len(self.images)} image(s) given but only {self.next_image} {C.IMAGE_PLACEHOLDER} placeholder(s)"
            )


def _split_text(text: str, pools: _Pools | None, where: str) -> list[dict[str, Any]]:
    """Text with inline placeholders → typed items, media taken from the pools."""
    items: list[dict[str, Any]] = []
    pos = 0
    for match in PLACEHOLDER_RE.finditer(text):
        if match.start() > pos:
            items.append({"type": "text", "text": text[pos : match.start()]})
        if pools is None:
            raise QueryError(
                f"{where}: placeholder {match.group()} but the query has no top-level images/videos"
            )
        items.extend(pools.take("image" if match.group() == C.IMAGE_PLACEHOLDER else "video"))
        pos = match.end()
    if pos < len(text):
        items.append({"type": "text", "text": text[pos:]})
    return items


def _normalize_content(content: Any, pools: _Pools | None, base_dir: str | None, where: str) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        return _split_text(content, pools, where)
    if not isinstance(content, list):
        raise QueryError(
            f"{where}: content must be a string or a list of items, got {type(content).__name__}"
        )
    items: list[dict[str, Any]] = []
    for j, item in enumerate(content):
        at = f"{where}.content[{j}]"
        if isinstance(item, str):
            items.extend(_split_text(item, pools, at))
            continue
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text":
            items.extend(_split_text(str(item.get("text", "")), pools, at))
        elif kind in ("image", "image_url"):
            items.append({"type": "image", "image": resolve_media_path(_image_source(item, at), base_dir)})
        elif kind == "video":
            if item.get("video") is None:
                raise QueryError(f"{at}: video item has no 'video' field: {item!r}")
            units = _video_units(item["video"], base_dir, f"{at}.video")
            items.extend({"type": "video", "video": unit} for unit in units)
        else:
            raise QueryError(f"{at}: unknown content type {kind!r}; use text, image, image_url or video")
    return items


def _count_video_placeholders(messages: list[Any]) -> int:
    count = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        texts = [content] if isinstance(content, str) else []
        if isinstance(content, list):
            texts = [
                i if isinstance(i, str) else i.get("text", "") for i in content if isinstance(i, str | dict)
            ]
            texts = [t for t in texts if isinstance(t, str)]
        count += sum(t.count(C.VIDEO_PLACEHOLDER) for t in texts)
    return count


def _prompt_messages(query: dict[str, Any]) -> list[dict[str, Any]]:
    prompt = query["prompt"]
    if not isinstance(prompt, str):
        raise QueryError(f"'prompt' must be a string, got {type(prompt).__name__}")
    if PLACEHOLDER_RE.search(prompt):
        content: Any = prompt
    else:
        # Reference CLI layout: images first, then videos, then the text.
        n_images, n_videos = len(query.get("images") or []), len(query.get("videos") or [])
        content = C.IMAGE_PLACEHOLDER * n_images + C.VIDEO_PLACEHOLDER * n_videos + prompt
    messages = [{"role": "user", "content": content}]
    if query.get("response") is not None:
        messages.append({"role": "assistant", "content": query["response"]})
    return messages


def _system_prompt(query: dict[str, Any], has_video: bool) -> str | None:
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


def normalize_query(
    query: dict[str, Any], base_dir: str | None = None, *, trim_trailing_assistant: bool = True
) -> Conversation:
    """Any accepted query dict → Conversation (typed items, media in text order, relative paths resolved).

    Trailing assistant turns are dropped for inference (`trim_trailing_assistant`); keep them for training.
    """
    if not isinstance(query, dict):
        raise QueryError(f"a query must be a dict, got {type(query).__name__}")
    if "messages" in query or "conversations" in query:
        key = "messages" if "messages" in query else "conversations"
        raw = query[key]
        if not isinstance(raw, list) or not raw:
            raise QueryError(f"'{key}' must be a non-empty list of {{role, content}} dicts")
    elif "prompt" in query:
        key, raw = "prompt", _prompt_messages(query)
    else:
        raise QueryError(f"a query needs 'messages', 'conversations' or 'prompt'; got keys {sorted(query)}")

    images, videos = query.get("images") or [], query.get("videos") or []
    if not isinstance(images, list) or not isinstance(videos, list):
        raise QueryError("'images' and 'videos' must be lists")
    pools = _Pools(images, videos, _count_video_placeholders(raw), base_dir) if images or videos else None

    messages = []
    for i, message in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise QueryError(f"{where}: each message needs a role in {ROLES}, got {message!r}")
        content = _normalize_content(message.get("content"), pools, base_dir, where)
        messages.append({"role": message["role"], "content": content})
    if pools is not None:
        pools.check_consumed()

    system = _system_prompt(query, any(it["type"] == "video" for m in messages for it in m["content"]))
    if system is not None:
        if messages[0]["role"] == "system":
            raise QueryError("the query has both a system message and a system_prompt; keep one")
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    if trim_trailing_assistant:
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
    if not any(m["role"] == "user" for m in messages):
        raise QueryError(f"{key}: the query has no user message")
    media_kwargs = query.get("media_kwargs") or {}
    if not isinstance(media_kwargs, dict):
        raise QueryError(f"'media_kwargs' must be a dict, got {type(media_kwargs).__name__}")
    return Conversation(messages, dict(media_kwargs))


def _flatten(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for item in content:
        kind = item["type"]
        if kind == "text":
            parts.append(item["text"])
        elif kind in ("image", "image_url"):
            parts.append(C.IMAGE_PLACEHOLDER)
        elif kind == "video":
            parts.append(C.VIDEO_PLACEHOLDER)
        else:
            raise QueryError(f"unknown content type {kind!r}")
    return "".join(parts)


def render_chat(messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """ChatML text: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, list content flattened with no
    separator (media become `<|image|>` / `<|video|>`), then `<|im_start|>assistant\\n` if asked."""
    text = "".join(f"{C.IM_START}{m['role']}\n{_flatten(m.get('content'))}{C.IM_END}\n" for m in messages)
    return text + (f"{C.IM_START}assistant\n" if add_generation_prompt else "")


def video_prompt(timestamps: list[float]) -> str:
    """`<|video|>` expansion: vision_start + per frame `<|time_start|>{t:.1f} seconds<|time_end|><|image_pad|>`
    + vision_end."""
    frames = "".join(f"{C.TIME_START}{t:.1f} seconds{C.TIME_END}{C.IMAGE_PAD}" for t in timestamps)
    return f"{C.VISION_START}{frames}{C.VISION_END}"
