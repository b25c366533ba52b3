"""The engine's plain data types: a prepared request (token ids, media, settings) and what comes out of it.

Front ends turn queries into ``PreparedRequest`` objects (``inputs.InputProcessor``) and read ``StreamEvent`` /
``Result`` objects back; the engine core sees nothing else.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import MossVLError
from .sampling import GenerationSettings

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_CANCELLED = "cancelled"
FINISH_ERROR = "error"

_ids = itertools.count()


def new_request_id() -> str:
    return f"req-{next(_ids)}"


class GenerationError(MossVLError):
    """A request failed inside the engine (the message names the original error)."""


@dataclass
class MediaInput:
    """One image or video unit of a request: its grid and either its cached vision features or its pixels.

    ``features`` (frames · tokens per frame, hidden): merged vision tokens from the media cache; ``pixels``
    (N, C·p·p): pixel rows to encode when the cache missed. ``key`` names it in the media cache;
    ``timestamps`` the seconds of each frame when known (a sequence's visual window uses them).
    """

    grid_thw: tuple[int, int, int]
    key: str
    features: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    timestamps: list[float] | None = None

    @property
    def num_frames(self) -> int:
        return self.grid_thw[0]


@dataclass
class PreparedRequest:
    """A request ready for the engine core.

    ``input_ids``: the tokens to feed (for a continuation, only the new ones); ``media``: the media whose
    ``<|image_pad|>`` tokens are among them, in text order. ``sequence``: continue that sequence's KV instead of
    starting a new one; ``keep_sequence``: keep the KV after the answer (sessions, realtime).
    ``max_tokens_per_second`` paces the answer (realtime streams) instead of generating as fast as possible. ``vision_tokens``: vision-memory entries the media add (tokens + one separator per
    frame).
    """

    input_ids: list[int]
    media: list[MediaInput]
    settings: GenerationSettings
    input_text: str = ""
    messages: list[dict] = field(default_factory=list)
    request_id: str = field(default_factory=new_request_id)
    sequence: Any = None
    keep_sequence: bool = False
    max_tokens_per_second: float | None = None
    vision_tokens: int = 0
    arrival_time: float = field(default_factory=time.monotonic)


@dataclass
class Result:
    """Outcome of one request. ``finish_reason``: stop (EOS, stop token or stop string), length, cancelled, error.

    ``prompt_tokens`` counts the text tokens fed for this request (``cached_tokens`` of them were copied from an
    earlier request that started the same way), ``vision_tokens`` the vision-memory entries its media added (they
    never enter the text stream). Times are ``time.monotonic()`` seconds.
    """

    request_id: str = ""
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = FINISH_STOP
    error: str | None = None
    input_text: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    vision_tokens: int = 0
    arrival_time: float = 0.0
    first_token_time: float | None = None
    finish_time: float | None = None
    sequence: Any = field(default=None, repr=False, compare=False)
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    def raise_for_error(self) -> None:
        """Raise the request's error: the original mossvl exception, else a GenerationError with its message."""
        if self.error is None:
            return
        if isinstance(self.exception, MossVLError):
            raise self.exception
        raise GenerationError(self.error) from self.exception


def error_result(exc: BaseException, request_id: str = "", input_text: str = "") -> Result:
    """The Result of a request that failed with ``exc``; foreign exception types keep their name in the message."""
    message = str(exc) if isinstance(exc, MossVLError) else f"{type(exc).__name__}: {exc}"
    now = time.monotonic()
    return Result(
        request_id=request_id,
        finish_reason=FINISH_ERROR,
        error=message,
        input_text=input_text,
        arrival_time=now,
        finish_time=now,
        exception=exc,
    )


@dataclass
class StreamEvent:
    """A text delta of a request; the request's last event carries its ``result``. ``token_ids`` are the tokens
    the delta comes from (a delta may be empty while a multi-byte character is incomplete); ``time`` is when the
    engine produced it (``time.monotonic()``)."""

    delta: str
    token_ids: list[int] = field(default_factory=list)
    result: Result | None = None
    time: float = field(default_factory=time.monotonic)
