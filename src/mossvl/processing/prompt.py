"""Prompt text: the chat template (the checkpoint's, or the package default), media placeholders and their expansion.

A conversation is rendered by the chat template into text that holds ``<|image|>`` / ``<|video|>`` placeholders;
the processor then expands each image to one ``<|image_pad|>`` and each video to its timestamped frames. The
package default template (``assets/chat_template.jinja``) is plain ChatML with no default system prompt; a
checkpoint's own ``chat_template.jinja`` replaces it everywhere (inference, sessions, offline methods, training).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from transformers.utils.chat_template_utils import render_jinja_template

from mossvl import constants as C
from mossvl.errors import ConfigError

PLACEHOLDER_RE = re.compile(re.escape(C.IMAGE_PLACEHOLDER) + "|" + re.escape(C.VIDEO_PLACEHOLDER))
DEFAULT_CHAT_TEMPLATE_FILE = Path(__file__).resolve().parent.parent / "assets" / "chat_template.jinja"
_MARK = "\x00mossvl-content\x00"


@cache
def default_chat_template() -> str:
    """The package's MOSS-VL chat template (ChatML; list content flattened, media as placeholders)."""
    return DEFAULT_CHAT_TEMPLATE_FILE.read_text(encoding="utf-8")


def render_chat(template: str, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """Text of ``messages`` under ``template``. Media sources are hidden from the template: it only sees each
    item's type, which is all a MOSS-VL template needs to write its placeholder."""
    plain = [
        {
            **message,
            "content": message["content"]
            if isinstance(message["content"], str)
            else [item if item["type"] == "text" else {"type": item["type"]} for item in message["content"]],
        }
        for message in messages
    ]
    try:
        rendered, _ = render_jinja_template(
            [plain], chat_template=template, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # noqa: BLE001 - jinja raises many types; all mean a broken template
        raise ConfigError(f"the chat template failed to render: {type(exc).__name__}: {exc}") from exc
    return rendered[0]


def assistant_spans(template: str, messages: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in ``render_chat(template, messages, False)``: each turn's content
    and the end-of-turn text the template writes after it (e.g. ``<|im_end|>``), without trailing whitespace.

    Found by rendering growing prefixes of the conversation, so any template works whose rendering of a
    conversation starts with the rendering of its first turns.
    """
    full = render_chat(template, messages, add_generation_prompt=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_chat(template, messages[:index], add_generation_prompt=True)
        through = render_chat(template, messages[: index + 1], add_generation_prompt=False).rstrip()
        if not (full.startswith(through) and through.startswith(before)):
            raise ConfigError(
                "the chat template does not render a conversation as the continuation of its first turns, so "
                f"assistant turn {index} cannot be located for training labels"
            )
        spans.append((len(before), len(through)))
    return spans


def continuation_text(
    template: str, messages: list[dict[str, Any]], new_messages: list[dict[str, Any]]
) -> str:
    """What the template writes after the content of the final (assistant) message of ``messages`` when
    ``new_messages`` follow: that message's end-of-turn text, the new messages, the generation prompt. A cached
    conversation continues with exactly this text."""
    final = messages[-1]
    before = render_chat(template, messages, add_generation_prompt=False)
    full = render_chat(template, messages + new_messages)
    marked = render_chat(
        template, [*messages[:-1], {**final, "content": [{"type": "text", "text": _MARK}]}], False
    )
    if not full.startswith(before) or _MARK not in marked:
        raise ConfigError(
            "the chat template does not render a conversation as a continuation of its first turns"
        )
    return marked.split(_MARK, 1)[1] + full[len(before) :]


def video_prompt(timestamps: list[float]) -> str:
    """`<|video|>` expansion: vision_start + per frame `<|time_start|>{t:.1f} seconds<|time_end|><|image_pad|>`
    + vision_end."""
    frames = "".join(f"{C.TIME_START}{t:.1f} seconds{C.TIME_END}{C.IMAGE_PAD}" for t in timestamps)
    return f"{C.VISION_START}{frames}{C.VISION_END}"


def realtime_frame_prompt(timestamp: float) -> str:
    """One streamed frame: its own vision region with its timestamp, ``<|image_pad|>`` standing for the frame."""
    return f"{C.VISION_START}{C.TIME_START}{timestamp:.1f} seconds{C.TIME_END}{C.IMAGE_PAD}{C.VISION_END}"
