"""The OpenAI chat-completions wire format: request validation into engine settings, response and chunk bodies,
and the error body ``{"error": {"message", "type", "param", "code"}}``.

Unsupported features are refused with a 400 naming the field instead of being ignored; fields that only
describe the default behaviour (``n: 1``, ``logprobs: false``, zero penalties, ...) are accepted.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

# Fields that may be present and are harmless; any other unknown field is refused.
IGNORED_FIELDS = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "safety_identifier"}
# Fields accepted only at the value that means "off".
DEFAULT_ONLY = {
    "n": 1,
    "logprobs": False,
    "top_logprobs": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "response_format": None,
    "audio": None,
    "modalities": None,
    "prediction": None,
    "reasoning_effort": None,
    "web_search_options": None,
}
SAMPLING_FIELDS = {
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "seed",
    "stop",
    "logit_bias",
}
# OpenAI's range of a logit_bias value.
MAX_LOGIT_BIAS = 100
KNOWN_FIELDS = {"model", "messages", "stream", "stream_options", "media_io_kwargs", "mm_processor_kwargs"}


class APIError(Exception):
    """An error answered to the client: HTTP ``status`` and the OpenAI error body."""

    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


@dataclass
class ChatRequest:
    """A validated chat-completions request."""

    model: str
    messages: list[dict]
    stream: bool
    include_usage: bool
    generate_kwargs: dict
    media_io_kwargs: dict = field(default_factory=dict)
    mm_processor_kwargs: dict = field(default_factory=dict)


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a request body; raises APIError(400) naming the offending field."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for name, value in body.items():
        if name in KNOWN_FIELDS or name in SAMPLING_FIELDS or name in IGNORED_FIELDS:
            continue
        if name in DEFAULT_ONLY:
            if value not in (DEFAULT_ONLY[name], None) and not (
                value == [] and name in ("tools", "functions")
            ):
                raise bad_request(f"'{name}'={value!r} is not supported by this server", param=name)
            continue
        raise bad_request(f"unknown or unsupported field '{name}'", param=name)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' must be a non-empty string", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", param="messages")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", param="stream_options")
    extras = {}
    for name in ("media_io_kwargs", "mm_processor_kwargs"):
        value = body.get(name) or {}
        if not isinstance(value, dict):
            raise bad_request(f"'{name}' must be an object", param=name)
        extras[name] = value
    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        generate_kwargs=_generate_kwargs(body),
        **extras,
    )


def _generate_kwargs(body: dict) -> dict:
    """Engine generate kwargs from the OpenAI sampling fields (values are checked by the engine)."""
    kwargs: dict[str, Any] = {}
    length = body.get("max_completion_tokens", body.get("max_tokens"))
    if length is not None:
        kwargs["max_new_tokens"] = length
    temperature = body.get("temperature")
    if temperature is not None:
        kwargs["temperature"] = temperature
        kwargs["do_sample"] = isinstance(temperature, int | float) and temperature > 0
    for name in ("top_p", "top_k", "repetition_penalty", "seed"):
        if body.get(name) is not None:
            kwargs[name] = body[name]
    stop = body.get("stop")
    if stop is not None:
        kwargs["stop"] = [stop] if isinstance(stop, str) else stop
    if body.get("logit_bias"):
        kwargs["sequence_bias"] = _sequence_bias(body["logit_bias"])
    return kwargs


def _sequence_bias(logit_bias: Any) -> list:
    """The engine's ``sequence_bias`` of OpenAI's ``logit_bias`` ({"token id": bias in [-100, 100]})."""
    problem = bad_request(
        f"'logit_bias'={logit_bias!r:.100} is invalid: expected an object mapping token ids to numbers in "
        f"[-{MAX_LOGIT_BIAS}, {MAX_LOGIT_BIAS}]",
        param="logit_bias",
    )
    if not isinstance(logit_bias, dict):
        raise problem
    pairs = []
    for token, bias in logit_bias.items():
        if not str(token).isdigit() or isinstance(bias, bool) or not isinstance(bias, int | float):
            raise problem
        if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
            raise problem
        pairs.append([[int(token)], float(bias)])
    return pairs


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(result) -> dict:
    """Token usage; vision tokens live in the cross-attention memory, not the prompt, so they are counted apart."""
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "vision_tokens": result.vision_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }


def finish_reason(result) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def completion_body(request_id: str, model: str, result) -> dict:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": None,
                "finish_reason": finish_reason(result),
            }
        ],
        "usage": usage(result),
    }


def chunk_body(request_id: str, model: str, created: int, delta: dict, reason: str | None = None) -> dict:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
    }


def usage_chunk_body(request_id: str, model: str, created: int, result) -> dict:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(result),
    }
