"""The simple Python API: ``load`` a checkpoint, ``chat`` (optionally streaming, optionally in a session) and
``batch_chat``. All of them run on the model's shared engine (``engine_for``)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from ..checkpoint import resolve_folder
from ..constants import ERROR_PREFIX
from ..errors import CheckpointError, ConfigError, QueryError
from ..quantization import adapt_quantized_model, check_quantized_checkpoint
from .engine import engine_for
from .session import Session

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def demo_model_dir() -> Path:
    """Folder of the small demo model shipped with the package."""
    return Path(__file__).resolve().parent.parent / "assets" / "demo_model"


def demo_realtime_model_dir() -> Path:
    """Folder of the small realtime demo model shipped with the package (fine-tuned from the demo model)."""
    return Path(__file__).resolve().parent.parent / "assets" / "demo_realtime_model"


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device; ``"auto"`` is CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: {exc}") from exc


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | str:
    """The weight dtype to load: None picks float32 on the CPU (bf16 matmuls run slower than fp32 on CPUs without
    AMX, 1.6–2.2× here) and the checkpoint's own dtype ("auto", bf16 for the official ones) on a GPU."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else "auto"
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
        return _DTYPES[dtype]
    return dtype


def load(
    path: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "auto",
    attn_implementation: str | None = None,
    cross_attention_implementation: str | None = None,
    **hub_kwargs: Any,
):
    """Load ``(model, processor)`` from a checkpoint folder or hub id (None: the shipped demo model), in eval mode.

    ``dtype`` None: float32 on the CPU, the checkpoint's dtype on a GPU (see ``resolve_dtype``); ``device``
    "auto": CUDA when available; ``cross_attention_implementation`` ("sdpa" / "eager") sets the cross layers' kernel.
    ``hub_kwargs`` (``revision``, ``cache_dir``, ``token``, ...) apply to hub ids.
    """
    from ..model import MossVLForConditionalGeneration
    from ..processing.processor import MossVLProcessor

    if path is None:
        if not demo_model_dir().is_dir():
            raise CheckpointError(
                f"checkpoint folder {str(demo_model_dir())!r} does not exist (the demo model is not shipped in "
                "this build; pass a checkpoint folder)"
            )
        path = demo_model_dir()
    folder = Path(resolve_folder(path, **hub_kwargs))
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"checkpoint folder {str(folder)!r} has no config.json")
    device = resolve_device(device)
    check_quantized_checkpoint(folder, device)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, device)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if cross_attention_implementation is not None:
        kwargs["cross_attention_implementation"] = cross_attention_implementation
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
    model = adapt_quantized_model(model, device)
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
    query is the next turn of that conversation and reuses its KV. Errors raise a MossVLError.
    """
    if session is not None:
        if stream:
            return session.stream(messages_or_query, **generate_kwargs)
        result = session.send(messages_or_query, **generate_kwargs)
        result.raise_for_error()
        return result.text
    engine = engine_for(model, processor)
    if stream:
        return engine.stream(messages_or_query, **generate_kwargs)
    return engine.chat(messages_or_query, **generate_kwargs)


def new_session(model, processor, **generate_kwargs: Any) -> Session:
    """A conversation for :func:`chat` (``session=``) whose turns reuse one KV cache."""
    return Session(engine_for(model, processor), generate_kwargs=generate_kwargs)


def batch_chat(
    model,
    processor,
    queries: Sequence[Any],
    errors: str = "raise",
    **generate_kwargs: Any,
) -> list[str]:
    """Answers to many queries, generated together (each query keeps its own media and kwargs).

    Every query is answered or fails alone, whatever its error. ``errors="raise"`` then raises the first failing
    query's error (naming its index); ``errors="return"`` puts ``"[ERROR] <message>"`` in that query's slot
    instead.
    """
    if errors not in ("raise", "return"):
        raise QueryError(f"errors must be 'raise' or 'return', got {errors!r}")
    if isinstance(queries, str | dict) or not isinstance(queries, Sequence):
        raise QueryError(f"queries must be a list of queries, got {type(queries).__name__}")
    answers = []
    for index, result in enumerate(engine_for(model, processor).generate(list(queries), **generate_kwargs)):
        if result.error is None:
            answers.append(result.text)
        elif errors == "raise":
            raise QueryError(f"query #{index}: {result.error}") from result.exception
        else:
            answers.append(ERROR_PREFIX + result.error)
    return answers
