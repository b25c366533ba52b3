"""The simple Python API: ``load`` a checkpoint, ``chat`` (optionally streaming, optionally in a session) and
``batch_chat``. All three run on the shared engine."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from ..constants import ERROR_PREFIX
from ..errors import CheckpointError, ConfigError, QueryError
from .engine import Engine, collect
from .session import Session

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def demo_model_dir() -> Path:
    """Folder of the small demo model shipped with the package."""
    return Path(__file__).resolve().parent.parent / "assets" / "demo_model"


def load(
    path: str | os.PathLike | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
):
    """Load ``(model, processor)`` from a checkpoint folder (None: the shipped demo model), in eval mode."""
    from ..model import MossVLForConditionalGeneration
    from ..processing.processor import MossVLProcessor

    folder = Path(path) if path is not None else demo_model_dir()
    if not folder.is_dir():
        hint = (
            " (the demo model is not shipped in this build; pass a checkpoint folder)" if path is None else ""
        )
        raise CheckpointError(f"checkpoint folder {str(folder)!r} does not exist{hint}")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"checkpoint folder {str(folder)!r} has no config.json")
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype]
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a tiny per-tensor bar is noise for an interactive command
    try:
        model = MossVLForConditionalGeneration.from_pretrained(str(folder), **kwargs)
    except OSError as exc:
        raise CheckpointError(f"cannot load the model from {str(folder)!r}: {exc}") from exc
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise ConfigError(f"cannot move the model to device {str(device)!r}: {exc}") from exc
    processor = MossVLProcessor.from_pretrained(str(folder))
    return model.eval(), processor


def chat(
    model,
    processor,
    messages_or_query: Any,
    stream: bool = False,
    session: Session | None = None,
    **generate_kwargs: Any,
) -> str | Iterator[str]:
    """Answer one query: a prompt string, a message list, or a query dict (``prompt``/``images``/``videos`` or
    ``messages``, optional ``media_kwargs`` / ``generate_kwargs``). ``generate_kwargs`` here are defaults under
    the query's own.

    With ``stream=True`` returns an iterator of text deltas. With a ``session`` (see :func:`new_session`) the
    query is the next turn of that conversation and reuses its cache. Errors raise a MossVLError.
    """
    if session is not None:
        if stream:
            return session.stream(messages_or_query, **generate_kwargs)
        result = session.send(messages_or_query, **generate_kwargs)
        result.raise_for_error()
        return result.text
    engine = Engine(model, processor)
    request = engine.request(messages_or_query, generate_kwargs)
    if stream:
        return _deltas(engine, request)
    result = collect(engine.stream_requests([request]))[0]
    result.raise_for_error()
    return result.text


def _deltas(engine: Engine, request) -> Iterator[str]:
    for event in engine.stream_requests([request]):
        if event.delta:
            yield event.delta
        if event.result is not None:
            event.result.raise_for_error()


def new_session(model, processor, **generate_kwargs: Any) -> Session:
    """A conversation for :func:`chat` (``session=``) whose turns reuse one KV cache."""
    return Session(model, processor, generate_kwargs=generate_kwargs)


def batch_chat(
    model,
    processor,
    queries: Sequence[Any],
    batch_size: int = 8,
    errors: str = "raise",
    **generate_kwargs: Any,
) -> list[str]:
    """Answers to many queries, computed ``batch_size`` at a time (each query keeps its own media and kwargs).

    ``errors="raise"`` raises the first failing query's error (naming its index); ``errors="return"`` puts
    ``"[ERROR] <message>"`` in that query's slot instead.
    """
    if errors not in ("raise", "return"):
        raise QueryError(f"errors must be 'raise' or 'return', got {errors!r}")
    if batch_size < 1:
        raise QueryError(f"batch_size must be >= 1, got {batch_size}")
    engine = Engine(model, processor)
    answers: list[str] = []
    queries = list(queries)
    for start in range(0, len(queries), batch_size):
        for offset, result in enumerate(
            engine.generate(queries[start : start + batch_size], **generate_kwargs)
        ):
            if result.error is not None:
                if errors == "raise":
                    raise QueryError(f"query #{start + offset}: {result.error}") from result.exception
                answers.append(ERROR_PREFIX + result.error)
            else:
                answers.append(result.text)
    return answers
