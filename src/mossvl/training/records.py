"""Training records: lazy byte-offset index of a JSON/JSONL file, and normalisation of one record to a conversation.

Two record formats are accepted (reference-features §3):

* prompt/response: ``prompt``, ``response``, optional ``images``, ``videos``, ``system_prompt``. One placeholder per
  image, per plain video and per video segment is prepended to the prompt (images first), unless the prompt already
  places them itself.
* conversations: ``conversations`` or ``messages`` = ``[{role, content}]`` (``{from, value}`` also accepted) with
  explicit ``<|image|>`` / ``<|video|>`` placeholders and top-level ``images`` / ``videos``.

A video is a path or ``{"video_path": ..., "segments": [[start, end], ...]}``; each segment is one media unit.
"""

from __future__ import annotations

import json
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from ..errors import QueryError
from ..processing.media_refs import is_url, media_path, units_per_placeholder, video_units

ROLE_ALIASES = {
    "human": "user",
    "gpt": "assistant",
    "user": "user",
    "assistant": "assistant",
    "system": "system",
}
# Strings and the structural characters of a JSON text; strings are matched whole so brackets inside them are skipped.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},]', re.DOTALL)


@dataclass
class Conversation:
    """One normalised record: ChatML turns with placeholders, and its media in placeholder order."""

    messages: list[dict[str, str]]
    images: list[str]
    videos: list[str | dict]


def index_records(path: str | os.PathLike) -> np.ndarray:
    """Byte spans (N, 2) of the records of a JSON list or JSONL file, found without parsing the records.

    The format is told by the first non-blank byte: ``[`` is a JSON list, anything else is JSONL.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise QueryError(f"data file {path} is empty")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start = 0
        while start < len(data) and data[start : start + 1].isspace():
            start += 1
        is_list = data[start : start + 1] == b"["
        spans = _index_json_list(data, start, path) if is_list else _index_jsonl(data)
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2)


def _index_jsonl(data: mmap.mmap) -> list[tuple[int, int]]:
    spans, start = [], 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        if data[start:end].strip():
            spans.append((start, end))
        start = end + 1
    return spans


def _index_json_list(data: mmap.mmap, start: int, path: Path) -> list[tuple[int, int]]:
    spans, depth, element_start = [], 0, start + 1
    for match in _JSON_TOKEN.finditer(data, start):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
        elif token in (b"]", b"}"):
            depth -= 1
            if depth == 0:
                if data[element_start : match.start()].strip():
                    spans.append((element_start, match.start()))
                return spans
        elif token == b"," and depth == 1:
            spans.append((element_start, match.start()))
            element_start = match.end()
    raise QueryError(f"data file {path}: the JSON list is not closed (truncated file?)")


def read_record(path: str | os.PathLike, span: tuple[int, int], index: int) -> dict:
    """Parse the record at byte ``span`` of ``path``; ``index`` only names it in errors."""
    with open(path, "rb") as f:
        f.seek(int(span[0]))
        raw = f.read(int(span[1]) - int(span[0]))
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QueryError(f"record {index}: invalid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise QueryError(f"record {index}: expected a JSON object, got {type(record).__name__}")
    return record


def normalize_record(record: dict, index: int, base_dir: str | os.PathLike) -> Conversation:
    """Turn one record of either format into a Conversation with absolute media paths, or raise QueryError
    naming the record (``record {index}: ...``) and the field."""
    try:
        return _normalize(record, Path(base_dir))
    except QueryError as exc:
        raise QueryError(f"record {index}: {exc}") from exc


def _normalize(record: dict, base_dir: Path) -> Conversation:
    images = [
        _existing(media_path(item, base_dir, f"images[{i}]"), f"images[{i}]")
        for i, item in enumerate(_list(record, "images"))
    ]
    # A segmented video is one unit per segment; `units[i]` lists the units of raw video i.
    units = [_video(item, base_dir, f"videos[{i}]") for i, item in enumerate(_list(record, "videos"))]
    has_turns = [key for key in ("conversations", "messages") if key in record]
    if "prompt" in record and has_turns:
        raise QueryError(f"has both 'prompt' and '{has_turns[0]}'; use one format per record")
    if "prompt" in record:
        messages = _prompt_messages(record, len(images), [len(u) for u in units])
    elif has_turns:
        messages = _turn_messages(record, has_turns[0])
    else:
        raise QueryError("needs 'prompt' + 'response' or 'conversations' / 'messages'")
    messages = _check_placeholders(messages, len(images), [len(u) for u in units])
    return Conversation(messages=messages, images=images, videos=[unit for u in units for unit in u])


def _list(record: dict, field: str) -> list:
    value = record.get(field) or []
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        raise QueryError(f"field '{field}' must be a list, got {type(value).__name__}")
    return value


def _existing(path: str, field: str) -> str:
    if not is_url(path) and not Path(path).is_file():
        raise QueryError(f"field '{field}': file not found: {path}")
    return path


def _video(item: object, base_dir: Path, field: str) -> list[str | dict]:
    """The media units of one video (one per segment), its file checked to exist."""
    units = video_units(item, base_dir, field)
    if isinstance(units[0], dict):
        _existing(units[0]["video_path"], f"{field}.video_path")
    else:
        _existing(units[0], field)
    return units


def _text(value: object, field: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise QueryError(f"field '{field}' must be a non-empty string, got {value!r}")
    return value


def _prompt_messages(record: dict, num_images: int, segments_per_video: list[int]) -> list[dict]:
    prompt = _text(record.get("prompt"), "prompt")
    if "response" not in record:
        raise QueryError("field 'response' is missing")
    response = _text(record["response"], "response")
    if IMAGE_PLACEHOLDER not in prompt and VIDEO_PLACEHOLDER not in prompt:
        units = num_images * [IMAGE_PLACEHOLDER] + sum(segments_per_video) * [VIDEO_PLACEHOLDER]
        prompt = "".join(f"{placeholder}\n" for placeholder in units) + prompt
    messages = []
    if record.get("system_prompt"):
        messages.append({"role": "system", "content": _text(record["system_prompt"], "system_prompt")})
    return [*messages, {"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def _turn_messages(record: dict, field: str) -> list[dict]:
    turns = record[field]
    if not isinstance(turns, list) or not turns:
        raise QueryError(f"field '{field}' must be a non-empty list of turns")
    messages = []
    for i, turn in enumerate(turns):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise QueryError(f"field '{where}' must be an object with 'role' and 'content'")
        role = turn.get("role", turn.get("from"))
        if role not in ROLE_ALIASES:
            raise QueryError(f"field '{where}.role' must be system, user or assistant, got {role!r}")
        role = ROLE_ALIASES[role]
        if role == "system" and i != 0:
            raise QueryError(f"field '{where}': a system turn may only come first")
        content = _text(turn.get("content", turn.get("value")), f"{where}.content", allow_empty=True)
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise QueryError(f"field '{field}' has no assistant turn, so nothing would be learned")
    return messages


def _check_placeholders(messages: list[dict], num_images: int, segments_per_video: list[int]) -> list[dict]:
    """Check placeholder counts against the media; expand one `<|video|>` per segmented video to one per segment."""
    num_image_slots = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    if num_image_slots != num_images:
        raise QueryError(
            f"field 'images' has {num_images} entries but the text has {num_image_slots} "
            f"{IMAGE_PLACEHOLDER} placeholders"
        )
    num_video_slots = sum(m["content"].count(VIDEO_PLACEHOLDER) for m in messages)
    counts = units_per_placeholder(num_video_slots, segments_per_video)
    if counts is None:
        raise QueryError(
            f"field 'videos' has {sum(segments_per_video)} video units "
            f"({len(segments_per_video)} videos, segments counted one each) but the text has {num_video_slots} "
            f"{VIDEO_PLACEHOLDER} placeholders"
        )
    counts = iter(counts)
    expanded = []
    for message in messages:
        pieces = message["content"].split(VIDEO_PLACEHOLDER)
        content = pieces[0] + "".join(VIDEO_PLACEHOLDER * next(counts) + piece for piece in pieces[1:])
        expanded.append({**message, "content": content})
    return expanded
