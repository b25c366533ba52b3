"""The one generation engine behind every front end (Python API, official methods, CLI, server).

One prefill per batch (vision encoded once, its K/V kept in the cache), then an own decode loop over
``model.forward`` with the cache. Every row carries its own media, media kwargs and generation settings (greedy,
temperature, top-k, top-p, repetition penalty, stop strings, max_new_tokens, seed) and finishes on its own:
rows are encoded one by one with the processor and left-padded into a batch, finished rows are dropped from the
cache. Text is streamed in UTF-8-safe deltas. A query that cannot be prepared, or that fails inside the model,
gets an error result while the other rows still run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..constants import IM_END, VISION_CHUNKED_LENGTH
from ..errors import MossVLError, QueryError
from .detokenize import TextStream
from .prompts import Prompt, build_prompt
from .sampling import GenerationSettings, RowSampler, select_next_tokens

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_CANCELLED = "cancelled"
FINISH_ERROR = "error"


@dataclass
class Request:
    """A query ready for the engine: its prompt (messages, rendered text, media) and its decoding settings."""

    prompt: Prompt
    settings: GenerationSettings
    cancel: Callable[[], bool] | None = None


@dataclass
class Result:
    """Outcome of one query. ``finish_reason``: stop (EOS or stop string), length, cancelled or error."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = FINISH_STOP
    error: str | None = None
    input_text: str = ""
    prompt_tokens: int = 0
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def raise_for_error(self) -> None:
        """Raise the query's error: the original mossvl exception, else a MossVLError with its message."""
        if self.error is None:
            return
        if isinstance(self.exception, MossVLError):
            raise self.exception
        raise GenerationError(self.error) from self.exception


@dataclass
class StreamEvent:
    """A text delta of row ``index``; ``result`` is set on the row's last event."""

    index: int
    delta: str
    result: Result | None = None


@dataclass
class Encoded:
    """Model inputs of one row or a collated batch (the processor's tensors, left-padded)."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    pixel_values: torch.Tensor | None = None  # (N, C·P·P)
    grid_thw: torch.Tensor | None = None  # (M, 3)
    media_nums_per_sample: list[int] = field(default_factory=list)

    def model_inputs(self, device: torch.device) -> dict[str, Any]:
        inputs = {"input_ids": self.input_ids.to(device), "attention_mask": self.attention_mask.to(device)}
        if self.pixel_values is not None:
            inputs["pixel_values"] = self.pixel_values.to(device)
            inputs["grid_thw"] = self.grid_thw.to(device)
            inputs["media_nums_per_sample"] = list(self.media_nums_per_sample)
        return inputs


def collate(rows: Sequence[Encoded], pad_token_id: int) -> Encoded:
    """Left-pad single-row encodings into one batch; media tensors are concatenated in row order."""
    length = max(row.input_ids.shape[1] for row in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, row in enumerate(rows):
        n = row.input_ids.shape[1]
        input_ids[b, length - n :] = row.input_ids[0]
        attention_mask[b, length - n :] = row.attention_mask[0]
    with_media = [row for row in rows if row.pixel_values is not None]
    if not with_media:
        return Encoded(input_ids, attention_mask)
    return Encoded(
        input_ids,
        attention_mask,
        torch.cat([row.pixel_values for row in with_media]),
        torch.cat([row.grid_thw for row in with_media]),
        [sum(row.media_nums_per_sample) for row in rows],
    )


@dataclass
class _Row:
    """Decode state of one batch row."""

    index: int
    request: Request
    sampler: RowSampler
    stream: TextStream
    history: torch.Tensor  # (1, T) prompt ids, extended only when the sampler reads it
    result: Result
    generated: list[int] = field(default_factory=list)
    done: bool = False


@dataclass
class RunState:
    """What a generation leaves behind for sessions: the cache and, per row, the ids not yet fed to it."""

    cache: Any = None
    attention_mask: torch.Tensor | None = None  # (B, T) mask of everything in the cache
    pending: list[list[int]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)  # caller's index of each cache row

    def select(self, index: int) -> RunState:
        """The state of the row answering the caller's ``index`` alone (a batch-1 cache sharing no storage
        bookkeeping with this one)."""
        row = self.indices.index(index)
        cache = copy.copy(self.cache)
        cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        cache.batch_select_indices(torch.tensor([row], device=self.attention_mask.device))
        return RunState(cache, self.attention_mask[row : row + 1], [self.pending[row]], [0])


class Engine:
    """Batched, streaming generation over a MOSS-VL model and its processor."""

    def __init__(self, model, processor, vision_chunked_length: int = VISION_CHUNKED_LENGTH):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.vision_chunked_length = vision_chunked_length
        self.eos_token_ids = _eos_token_ids(model, self.tokenizer)
        self.pad_token_id = _pad_token_id(model, self.tokenizer)
        self.im_end_id = self.tokenizer.convert_tokens_to_ids(IM_END)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ----- requests and encoding ----------------------------------------------------------------------------------

    def request(
        self,
        query: Any,
        generate_kwargs: dict | None = None,
        media_kwargs: dict | None = None,
        base_dir: str | None = None,
    ) -> Request:
        """A Request from a query (str, messages list or query dict); ``generate_kwargs`` / ``media_kwargs`` are
        defaults under the query's own; relative media paths resolve against ``base_dir``. Raises QueryError for
        malformed input."""
        if isinstance(query, Request):
            return query
        return self.request_for(build_prompt(query, media_kwargs, base_dir), generate_kwargs)

    @staticmethod
    def request_for(prompt: Prompt, generate_kwargs: dict | None = None) -> Request:
        """A Request for a built prompt: ``generate_kwargs`` are defaults under the prompt's own."""
        generate_kwargs = dict(generate_kwargs or {})
        chunk = generate_kwargs.pop("vision_chunked_length", None)
        if prompt.vision_chunked_length is None:
            prompt.vision_chunked_length = chunk
        settings = GenerationSettings.from_kwargs(generate_kwargs)
        return Request(prompt, GenerationSettings.from_kwargs(prompt.generate_kwargs, base=settings))

    def encode(self, prompt: Prompt) -> Encoded:
        """Processor tensors of one prompt (the processor adds the blank image of a text-only prompt)."""
        out = self.processor(
            text=[prompt.text],
            images=prompt.images or None,
            videos=prompt.videos or None,
            return_tensors="pt",
            **prompt.media_kwargs,
        )
        return _encoded_from_processor(out)

    def encode_continuation(self, prefix_ids: Sequence[int], prompt: Prompt) -> Encoded:
        """Tensors of a continuation chunk: ``prefix_ids`` then ``prompt.text`` with only the chunk's own media.

        Without media the chunk is plain tokens (no blank image: the cache already has a vision memory).
        """
        if prompt.images or prompt.videos:
            chunk = self.encode(prompt)
        else:
            ids = self.tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
            chunk = Encoded(torch.tensor([ids], dtype=torch.long), torch.ones(1, len(ids), dtype=torch.long))
        prefix = torch.tensor([list(prefix_ids)], dtype=torch.long)
        chunk.input_ids = torch.cat([prefix, chunk.input_ids], dim=1)
        chunk.attention_mask = torch.cat([torch.ones_like(prefix), chunk.attention_mask], dim=1)
        return chunk

    # ----- public generation --------------------------------------------------------------------------------------

    def generate(
        self, queries: Iterable[Any], cancel: Callable[[], bool] | None = None, **generate_kwargs
    ) -> list[Result]:
        """Results of a batch of queries, in order. Per-query failures become error results."""
        return collect(self.stream(queries, cancel=cancel, **generate_kwargs))

    def stream(
        self, queries: Iterable[Any], cancel: Callable[[], bool] | None = None, **generate_kwargs
    ) -> Iterator[StreamEvent]:
        """Stream text deltas of a batch of queries; every row ends with one event carrying its Result."""
        requests: list[Request | None] = []
        for index, query in enumerate(queries):
            try:
                requests.append(self.request(query, generate_kwargs))
            except MossVLError as exc:
                requests.append(None)
                yield StreamEvent(index, "", _error_result(exc))
        yield from self.stream_requests(requests, cancel)

    def stream_requests(
        self, requests: Sequence[Request | None], cancel: Callable[[], bool] | None = None
    ) -> Iterator[StreamEvent]:
        """Stream prepared requests (None entries are skipped: their index is already answered)."""
        encoded, rows = [], []
        for index, request in enumerate(requests):
            if request is None:
                continue
            try:
                encoded.append(self.encode(request.prompt))
                rows.append(index)
            except MossVLError as exc:
                yield StreamEvent(index, "", _error_result(exc, request))
        if not rows:
            return
        batch = collate(encoded, self.pad_token_id)
        try:
            yield from self.run([requests[i] for i in rows], batch, indices=rows, cancel=cancel)
        except _PrefillError as exc:
            if len(rows) == 1:
                yield StreamEvent(rows[0], "", _error_result(exc.__cause__, requests[rows[0]]))
                return
            # The batch failed as a whole: retry row by row so that only the culprit fails.
            for index, single in zip(rows, encoded, strict=True):
                try:
                    yield from self.run([requests[index]], single, indices=[index], cancel=cancel)
                except _PrefillError as single_exc:
                    yield StreamEvent(index, "", _error_result(single_exc.__cause__, requests[index]))

    # ----- the decode loop ----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def run(
        self,
        requests: Sequence[Request],
        batch: Encoded,
        indices: Sequence[int] | None = None,
        cancel: Callable[[], bool] | None = None,
        cache: Any = None,
        past_attention_mask: torch.Tensor | None = None,
        keep: RunState | None = None,
    ) -> Iterator[StreamEvent]:
        """Prefill ``batch`` (on top of ``cache`` when given) and decode every row until it finishes.

        With ``keep``, finished rows stay in the cache (fed padding) and ``keep`` receives the cache, its mask and
        each row's last sampled ids that were never fed, so that a session can continue the conversation.
        Raises _PrefillError when the prefill forward fails (the caller decides how to isolate the culprit).
        """
        device = self.device
        indices = list(indices) if indices is not None else list(range(len(requests)))
        # A memory knob: the strictest request of the batch wins.
        chunk = min(r.prompt.vision_chunked_length or self.vision_chunked_length for r in requests)
        inputs = batch.model_inputs(device)
        if past_attention_mask is not None:
            inputs["attention_mask"] = torch.cat(
                [past_attention_mask.to(device), inputs["attention_mask"]], dim=1
            )
        attention_mask = inputs["attention_mask"]
        rows = [
            self._new_row(i, r, batch.input_ids[b], batch.attention_mask[b])
            for b, (i, r) in enumerate(zip(indices, requests, strict=True))
        ]

        if cache is None:
            from ..model import MossVLCache

            cache = MossVLCache(self.model.config)
        try:
            out = self.model(
                **inputs,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
                vision_chunked_length=chunk,
            )
        except (MossVLError, RuntimeError, ValueError, IndexError) as exc:
            raise _PrefillError(str(exc)) from exc
        logits = out.logits[:, -1, :].float()

        alive = list(range(len(rows)))  # row of each batch position in the cache
        for row in rows:
            if row.request.settings.max_new_tokens == 0:
                yield from self._finish(row, FINISH_LENGTH)
        while not all(rows[b].done for b in alive):
            live = [p for p, b in enumerate(alive) if not rows[b].done]  # batch positions still decoding
            samplers = [rows[alive[p]].sampler for p in live]
            histories = [
                rows[alive[p]].history if rows[alive[p]].sampler.needs_history else None for p in live
            ]
            tokens = select_next_tokens(samplers, histories, logits[live])
            stop_all = cancel is not None and cancel()
            for p, token in zip(live, tokens, strict=True):
                yield from self._step(rows[alive[p]], token, stop_all)
            if all(rows[b].done for b in alive):
                break
            if keep is None and any(rows[b].done for b in alive):
                # Drop finished rows from the cache; with ``keep`` they stay (fed masked padding) for sessions.
                survivors = torch.tensor([p for p, b in enumerate(alive) if not rows[b].done], device=device)
                cache.batch_select_indices(survivors)
                attention_mask = attention_mask[survivors]
                alive = [alive[p] for p in survivors.tolist()]
            step_ids = [[self.pad_token_id if rows[b].done else rows[b].generated[-1]] for b in alive]
            step_mask = [[0 if rows[b].done else 1] for b in alive]
            attention_mask = torch.cat([attention_mask, attention_mask.new_tensor(step_mask)], dim=1)
            out = self.model(
                input_ids=torch.tensor(step_ids, device=device),
                attention_mask=attention_mask,
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1, :].float()
        if keep is not None:
            keep.cache = cache
            keep.attention_mask = attention_mask
            keep.pending = [self._pending_ids(row) for row in rows]
            keep.indices = [row.index for row in rows]

    def _new_row(self, index: int, request: Request, input_ids: torch.Tensor, mask: torch.Tensor) -> _Row:
        prompt_ids = input_ids[mask.bool()]
        result = Result(input_text=request.prompt.input_text, prompt_tokens=int(prompt_ids.numel()))
        return _Row(
            index=index,
            request=request,
            sampler=RowSampler(request.settings, self.device),
            stream=TextStream(self.tokenizer, request.settings.stop),
            history=prompt_ids[None].to(self.device),
            result=result,
        )

    def _step(self, row: _Row, token: int, stop_all: bool) -> Iterator[StreamEvent]:
        row.generated.append(token)
        if row.sampler.needs_history:
            row.history = torch.cat([row.history, row.history.new_tensor([[token]])], dim=1)
        if token in self.eos_token_ids:
            yield from self._finish(row, FINISH_STOP)
            return
        delta = row.stream.push(token)
        if delta:
            yield StreamEvent(row.index, delta)
        if row.stream.stopped:
            yield from self._finish(row, FINISH_STOP)
        elif len(row.generated) >= row.request.settings.max_new_tokens:
            yield from self._finish(row, FINISH_LENGTH)
        elif stop_all or (row.request.cancel is not None and row.request.cancel()):
            yield from self._finish(row, FINISH_CANCELLED)

    def _finish(self, row: _Row, reason: str) -> Iterator[StreamEvent]:
        delta = row.stream.finish()
        row.done = True
        row.result.text = row.stream.text
        row.result.token_ids = list(row.generated)
        row.result.finish_reason = reason
        yield StreamEvent(row.index, delta, row.result)

    def _pending_ids(self, row: _Row) -> list[int]:
        """Ids that close the row's answer in the conversation but were never fed: the last sampled token
        (an EOS becomes ``<|im_end|>``) and ``<|im_end|>`` when the answer did not end with it."""
        if not row.generated:
            return [self.im_end_id]
        last = row.generated[-1]
        if last in self.eos_token_ids:
            return [self.im_end_id]
        return [last, self.im_end_id]


def collect(events: Iterable[StreamEvent]) -> list[Result]:
    """The Results of a stream of events, ordered by row index."""
    results = {event.index: event.result for event in events if event.result is not None}
    return [results[i] for i in sorted(results)]


class GenerationError(MossVLError):
    """A query failed inside the model (the message names the original error)."""


class _PrefillError(MossVLError):
    """The prefill forward of a batch raised; ``__cause__`` is the original exception."""


def _error_result(exc: BaseException | None, request: Request | None = None) -> Result:
    message = str(exc) if exc is not None else "unknown error"
    if exc is not None and not isinstance(exc, MossVLError):
        message = f"{type(exc).__name__}: {message}"
    input_text = request.prompt.input_text if request is not None else ""
    return Result(finish_reason=FINISH_ERROR, error=message, input_text=input_text, exception=exc)


def _encoded_from_processor(out) -> Encoded:
    pixel_values = out.get("pixel_values")
    media = out.get("media_nums_per_sample")
    return Encoded(
        input_ids=out["input_ids"],
        attention_mask=out["attention_mask"],
        pixel_values=pixel_values,
        grid_thw=out.get("grid_thw") if pixel_values is not None else None,
        media_nums_per_sample=[int(n) for n in media]
        if media is not None and pixel_values is not None
        else [],
    )


def _eos_token_ids(model, tokenizer) -> set[int]:
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.convert_tokens_to_ids(IM_END)
    ids = {eos} if isinstance(eos, int) else set(eos)
    if not ids:
        raise QueryError("the model has no EOS token id (generation_config.eos_token_id)")
    return ids


def _pad_token_id(model, tokenizer) -> int:
    for value in (
        getattr(getattr(model, "generation_config", None), "pad_token_id", None),
        getattr(model.config, "pad_token_id", None),
        tokenizer.pad_token_id,
    ):
        if value is not None:
            return int(value)
    return 0
