"""The engine core: continuous batching of prepared requests over one model and one KV pool.

Each ``step()`` runs prefill work units (chunks of frames through the vision tower, chunks of prompt text) worth
at most one full chunk, ``EngineConfig.prefill_chunk_frames`` frames or ``prefill_chunk_tokens`` tokens (a unit of
f frames and t tokens costs f / prefill_chunk_frames + t / prefill_chunk_tokens of it), and at most one vision
unit, then one decode step for every sequence that is generating. Short prompts thus share a step (the HTTP server
benchmark serves 1.35x as many requests at 16 clients as with one unit per step), while realtime sessions' frames,
each a vision unit, still get a decode step between them (several frames per step made their answers stream 3x
slower). A new request joins the running batch as soon as its prefill is done and leaves it when it finishes or is
cancelled; a long prefill never stalls the others for more than one chunk.

Admission: a waiting request gets a pool row when fewer than ``max_batch_size`` sequences are prefilling or
decoding and its KV fits the memory limit (prompt + ``max_new_tokens`` text entries plus its vision memory, for
every live sequence padded to the longest, as the pool stores them); otherwise it waits, after idle kept
sequences were evicted (least recently used first). A request that could never fit alone, or whose positions
exceed the model's context, fails at once. Any failure stays with its request.

Sequences: a request starts a sequence or continues one (``PreparedRequest.sequence``); with ``keep_sequence`` the
KV stays in the pool after the answer, for the next turn (sessions) or the next frames (realtime). A sequence with
a ``visual_window`` keeps only its frames of the last ``visual_window`` seconds in the vision memory (all text).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import torch

from ..errors import MossVLError, QueryError
from ..model import cross_attention_mask as xmask
from ..model.xrope import text_position_ids, vision_position_ids
from ..quantization import packaged_kv_cache_dtype
from .detokenize import TextStream
from .handle import RequestHandle
from .kv_pool import KV_CACHE_DTYPES, KVPool
from .media_cache import MediaCache
from .request import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    PreparedRequest,
    Result,
    StreamEvent,
    error_result,
)
from .runner import ModelRunner
from .sampling import RowSampler, select_next_tokens

# Shorter shared starts are recomputed: copying them would not pay for the bookkeeping.
MIN_SHARED_TOKENS = 8
# Longest nap of an engine whose decoding requests are all ahead of their pace (new requests wait this long).
PACING_SLEEP = 0.02

logger = logging.getLogger(__name__)


class CapacityError(MossVLError):
    """A request that can never fit the engine's KV memory limit or the model's context."""


class SequenceLostError(MossVLError):
    """A continuation of a sequence whose KV is gone (evicted under memory pressure, closed, or failed)."""


@dataclass
class EngineConfig:
    """Scheduling and memory settings of an engine.

    ``max_batch_size``: sequences prefilling or decoding at once. ``kv_cache_bytes``: memory limit of the KV pool
    (None: a quarter of the machine's RAM on CPU, half the free GPU memory on CUDA). ``prefill_chunk_tokens`` /
    ``prefill_chunk_frames``: the prefill work of one step (the largest unit), i.e. the longest a prefill may
    delay the decoding sequences. ``media_cache_bytes``: size of the vision-feature cache (0 disables it).
    ``max_kept_sequences``: idle sequences kept for later turns. ``prefix_cache_size``: finished sequences whose
    KV later requests that start with the same tokens and media reuse (0 disables prefix sharing, also from
    running requests). ``max_waiting``: queued requests beyond this are refused at submission (None: no limit).
    ``kv_cache_dtype``: how the KV pool stores K/V, ``"model"`` (the model dtype) or ``"int8"`` (per-token scales;
    about half of bf16's memory, a quarter of fp32's); None: the checkpoint's choice, int8 if its
    generation_config asks for an 8-bit quantized cache, else the model dtype.
    """

    max_batch_size: int = 16
    kv_cache_bytes: int | None = None
    prefill_chunk_tokens: int = 512
    prefill_chunk_frames: int = 16
    media_cache_bytes: int = 1 << 30
    max_kept_sequences: int = 32
    prefix_cache_size: int = 8
    max_waiting: int | None = None
    kv_cache_dtype: str | None = None

    def check(self) -> None:
        """Raise QueryError naming the first invalid setting."""
        positive = ("max_batch_size", "prefill_chunk_tokens", "prefill_chunk_frames")
        for name in positive + ("media_cache_bytes", "max_kept_sequences", "prefix_cache_size"):
            value = getattr(self, name)
            low = 1 if name in positive else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise QueryError(f"EngineConfig.{name}={value!r} is invalid: expected an int >= {low}")
        for name in ("kv_cache_bytes", "max_waiting"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise QueryError(f"EngineConfig.{name}={value!r} is invalid: expected None or an int >= 1")
        if self.kv_cache_dtype is not None and self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise QueryError(
                f"EngineConfig.kv_cache_dtype={self.kv_cache_dtype!r} is invalid: expected None or one of "
                f"{list(KV_CACHE_DTYPES)}"
            )


def default_kv_cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4


def resolve_kv_cache_dtype(setting: str | None, model) -> str:
    """The KV cache dtype of an engine: the setting, else int8 when the checkpoint's generation_config asks for an
    8-bit quantized cache (the official KV8 packaging), else the model dtype."""
    if setting is not None:
        return setting
    generation = getattr(model, "generation_config", None)
    if packaged_kv_cache_dtype(generation.to_dict() if generation is not None else None) == "int8":
        logger.info(
            "KV cache in int8: the checkpoint's generation_config asks for an 8-bit quantized cache "
            "(EngineConfig.kv_cache_dtype='model' keeps the model dtype)"
        )
        return "int8"
    return "model"


_sequence_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    """A conversation's KV in the pool: its row, the next XRoPE position, where its stored frames end in the
    vision memory (their timestamps and media keys), every token fed so far, and the text entries reserved for it.
    """

    id: str = field(default_factory=lambda: f"seq-{next(_sequence_ids)}")
    row: int | None = None
    next_position: int = 0
    frame_ends: list[int] = field(default_factory=list)
    frame_times: list[float | None] = field(default_factory=list)
    frame_keys: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    shareable: int = 0  # leading tokens whose KV another request may copy
    visual_window: float | None = None
    reserved_text: int = 0
    busy: bool = False
    alive: bool = True

    @property
    def visible(self) -> int:
        """Vision entries the next token sees (all stored frames)."""
        return self.frame_ends[-1] if self.frame_ends else 0


@dataclass(eq=False)
class _Active:
    """A request between admission and its result."""

    request: PreparedRequest
    handle: RequestHandle
    sequence: Sequence
    units: deque
    positions: torch.Tensor  # (3, L) text positions of the new tokens
    prefix: torch.Tensor  # (L,) vision entries each new token may see
    vision_positions: torch.Tensor  # (3, Lv) positions of the new vision memory
    frame_offsets: list[int]  # start of each new frame in the new vision memory, then its end
    first_frames: list[int]  # index of each media's first frame among the new frames
    end_position: int
    max_new_tokens: int
    sampler: RowSampler
    stream: TextStream
    result: Result
    rollback: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    source: Sequence | None = None  # a cached sequence whose first ``skip_tokens`` tokens this request reuses
    skip_tokens: int = 0
    skip_frames: int = 0
    finished: bool = False
    generated: list[int] = field(default_factory=list)
    features: dict[int, list[torch.Tensor]] = field(default_factory=dict)


class EngineCore:
    """Schedules and steps requests; not thread-safe (the Engine drives it from one thread)."""

    def __init__(
        self, model, tokenizer, config: EngineConfig, eos_token_ids: set[int], media_cache: MediaCache
    ):
        config.check()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.eos_token_ids = set(eos_token_ids)
        self.media_cache = media_cache
        self.image_token_id = model.config.image_token_id
        self.max_positions = model.config.text_config.max_position_embeddings
        device = next(model.parameters()).device
        dtype = model.model.language_model.embed_tokens.weight.dtype
        self.kv_cache_dtype = resolve_kv_cache_dtype(config.kv_cache_dtype, model)
        self.pool = KVPool(model.config.text_config, dtype, device, self.kv_cache_dtype)
        self.runner = ModelRunner(model, self.pool)
        self.kv_limit = config.kv_cache_bytes or default_kv_cache_bytes(device)
        self.waiting: deque[tuple[PreparedRequest, RequestHandle]] = deque()
        self.prefilling: deque[_Active] = deque()
        self.decoding: list[_Active] = []  # decoding[i] sits in pool row i
        # Idle sequences, least recently used first: kept for their owner's next turn, or cached for prefixes.
        self.kept: OrderedDict[str, Sequence] = OrderedDict()
        self.cached: OrderedDict[str, Sequence] = OrderedDict()
        self.row_owner: list[Sequence | None] = []
        self.rotate_decode_query = bool(model.config.rotate_cross_query_in_decode)

    # ----- queue ---------------------------------------------------------------------------------------------

    def add(self, request: PreparedRequest, handle: RequestHandle) -> None:
        self.waiting.append((request, handle))

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoding)

    @property
    def num_running(self) -> int:
        return len(self.prefilling) + len(self.decoding)

    def close_sequence(self, sequence: Sequence) -> None:
        """Free a kept sequence's KV (a busy one is freed when its request ends)."""
        sequence.alive = False
        if not sequence.busy:
            self._free(sequence)

    def fail_all(self, exc: BaseException) -> None:
        """End every request with ``exc`` (the engine is shutting down or broke); frees all KV."""
        for active in [*self.prefilling, *self.decoding]:
            active.sequence.alive = False
            self._finish(active, FINISH_ERROR, exc)
        while self.waiting:
            request, handle = self.waiting.popleft()
            handle.push(StreamEvent("", result=_failed(exc, request)))
        for sequence in [*self.kept.values(), *self.cached.values()]:
            self._free(sequence)

    # ----- one step ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> None:
        """Admit what fits, run one chunk's worth of prefill units with at most one vision unit (all of them while
        nothing decodes), then one decode step."""
        self._drop_cancelled()
        self._admit()
        spent, vision_done = 0.0, False
        while self.prefilling:
            unit = self.prefilling[0].units[0]
            cost = self._unit_cost(unit)
            if self.decoding and spent and (spent + cost > 1.0 or (unit[0] == "vision" and vision_done)):
                break
            spent += cost
            vision_done |= unit[0] == "vision"
            self._prefill_unit(self.prefilling[0])
            self._admit()
        if self.decoding:
            now = time.monotonic()
            due = [self._next_due(active) for active in self.decoding]
            if min(due) <= now:
                self._decode_step(due, now)
            elif not self.prefilling and not self.waiting:
                time.sleep(min(min(due) - now, PACING_SLEEP))  # every decoding request is ahead of its pace

    def idle(self) -> None:
        """Shrink the pool to the idle sequences it still holds (all of it is freed when none is left)."""
        live = [s for s in self.row_owner if s is not None]
        rows = self.pool.repack([s.row for s in live])
        for sequence, row in zip(live, rows, strict=True):
            sequence.row = row
        self.row_owner = list(live)

    def _drop_cancelled(self) -> None:
        for active in [a for a in self.prefilling if a.handle.cancelled]:
            self._finish(active, FINISH_CANCELLED)

    # ----- admission -----------------------------------------------------------------------------------------

    def _admit(self) -> None:
        while self.waiting and self.num_running < self.config.max_batch_size:
            request, handle = self.waiting[0]
            if handle.cancelled:
                self.waiting.popleft()
                handle.push(StreamEvent("", result=_unstarted(request, FINISH_CANCELLED)))
                continue
            if self._media_in_prefill(request):
                return
            try:
                active = self._plan(request, handle)
                fits = self._make_room(active)
            except MossVLError as exc:
                self.waiting.popleft()
                handle.push(StreamEvent("", result=_failed(exc, request)))
                continue
            if not fits:
                return
            self.waiting.popleft()
            self._start(active)

    def _media_in_prefill(self, request: PreparedRequest) -> bool:
        """Whether an earlier new request with the same first media item is still prefilling. This one then waits
        for it, to copy its KV (and skip the vision tower) once it decodes: prefill runs first in, first out, so
        waiting delays no work of this request, while starting now would repeat all of it."""
        if request.sequence is not None or not request.media or not self.config.prefix_cache_size:
            return False
        key = request.media[0].key
        return any(
            active.request.sequence is None and active.request.media and active.request.media[0].key == key
            for active in self.prefilling
        )

    def _plan(self, request: PreparedRequest, handle: RequestHandle) -> _Active:
        """Positions, staircase prefixes and work units of a request; raises for one that can never run."""
        sequence = request.sequence if request.sequence is not None else Sequence()
        if not sequence.alive or sequence.busy:
            state = "busy with another request" if sequence.alive else "gone (evicted or closed)"
            raise SequenceLostError(f"sequence {sequence.id} is {state}")
        if not request.input_ids:
            raise QueryError("the request has no tokens to feed")
        new_times = [t for media in request.media for t in (media.timestamps or []) if t is not None]
        if sequence.visual_window is not None and new_times:
            self._evict_window(sequence, max(new_times) - sequence.visual_window)
        ids = torch.tensor([request.input_ids], dtype=torch.long)
        merge = self.runner.merge
        grid = torch.tensor(
            [[h // merge, w // merge] for t, h, w in (m.grid_thw for m in request.media) for _ in range(t)],
            dtype=torch.long,
        ).view(-1, 2)
        mask = torch.ones_like(ids)
        has_media = bool(request.media)
        positions, next_position = text_position_ids(
            ids,
            mask,
            self.image_token_id if has_media else None,
            [grid.amax(dim=1) if has_media else grid[:, 0]],
            torch.tensor([sequence.next_position]),
        )
        sizes = (grid[:, 0] * grid[:, 1] + 1).tolist()
        vision_positions = vision_position_ids(positions, ids, mask, self.image_token_id, [grid], sum(sizes))
        end_position = int(next_position[0])
        room = self.max_positions - end_position
        if room < 0:
            raise CapacityError(
                f"the prompt needs {end_position} positions but the model's context holds {self.max_positions} "
                "(max_position_embeddings): shorten the prompt or send fewer frames"
            )
        frame_offsets = [0, *torch.tensor(sizes, dtype=torch.long).cumsum(0).tolist()]
        first_frames = [0, *itertools.accumulate(m.num_frames for m in request.media)][:-1]
        frame_keys = [f"{m.key}#{f}" for m in request.media for f in range(m.num_frames)]
        source, skip_tokens, skip_frames = None, 0, 0
        if request.sequence is None:
            source, skip_tokens, skip_frames = self._shared_prefix(request.input_ids, frame_keys)
        units: deque = deque()
        chunk = self.config.prefill_chunk_frames
        for index, media in enumerate(request.media):
            start = max(0, skip_frames - first_frames[index])
            for first in range(start, media.num_frames, chunk):
                units.append(("vision", index, first, min(first + chunk, media.num_frames)))
        chunk = self.config.prefill_chunk_tokens
        for first in range(skip_tokens, ids.shape[1], chunk):
            units.append(("text", first, min(first + chunk, ids.shape[1])))
        settings = request.settings
        result = Result(
            request_id=request.request_id,
            input_text=request.input_text,
            prompt_tokens=ids.shape[1],
            vision_tokens=frame_offsets[-1],
            arrival_time=request.arrival_time,
        )
        return _Active(
            request=request,
            handle=handle,
            sequence=sequence,
            units=units,
            positions=positions[:, 0],
            prefix=self._token_prefix(sequence, ids[0], frame_offsets, has_media),
            vision_positions=vision_positions[:, 0],
            frame_offsets=frame_offsets,
            first_frames=first_frames,
            end_position=end_position,
            max_new_tokens=min(settings.max_new_tokens, room),
            sampler=RowSampler(settings, self.pool.device),
            stream=TextStream(self.tokenizer, settings.stop, settings.skip_special_tokens),
            result=result,
            source=source,
            skip_tokens=skip_tokens,
            skip_frames=skip_frames,
        )

    def _shared_prefix(self, ids: list[int], frame_keys: list[str]) -> tuple[Sequence | None, int, int]:
        """The idle or decoding sequence sharing the longest start with a new request: (it, tokens, frames) to copy.

        Tokens match when their ids do and every frame among them comes from the same media with the same
        settings (its key); at least one token is left to compute the request's first logits. A decoding sequence
        lends its prompt, whose KV stays as prefilled while it decodes (unless prefix sharing is off)."""
        best: tuple[Sequence | None, int, int] = (None, 0, 0)
        image = self.image_token_id
        decoding = [active.sequence for active in self.decoding] if self.config.prefix_cache_size else []
        for sequence in [*self.cached.values(), *self.kept.values(), *decoding]:
            limit = min(sequence.shareable, len(ids) - 1)
            length = 0
            while length < limit and sequence.tokens[length] == ids[length]:
                length += 1
            pads = [i for i in range(length) if ids[i] == image]
            same = 0
            while same < len(pads) and sequence.frame_keys[same] == frame_keys[same]:
                same += 1
            if same < len(pads):  # stop before the first frame whose media differs
                length = pads[same]
            frames = same
            if length >= MIN_SHARED_TOKENS and length > best[1]:
                best = (sequence, length, frames)
        return best

    def _token_prefix(
        self, sequence: Sequence, ids: torch.Tensor, frame_offsets: list[int], has_media: bool
    ) -> torch.Tensor:
        """(L,) vision entries each new token may attend to: the stored frames, plus the new frames whose
        ``<|image_pad|>`` is at or before it."""
        ends = torch.tensor([sequence.visible + offset for offset in frame_offsets], dtype=torch.long)
        seen = torch.cumsum(ids == self.image_token_id, 0) if has_media else torch.zeros_like(ids)
        return xmask.visible_prefix(seen[None], ends[None])[0]

    def _make_room(self, active: _Active) -> bool:
        """Reserve pool memory for a request, evicting idle kept sequences if needed; False = wait for room.

        Raises CapacityError for a request that could not fit even alone.
        """
        sequence = active.sequence
        continuing = sequence.row is not None
        text_needed = (self.pool.text_len[sequence.row] if continuing else 0) + active.result.prompt_tokens
        text_needed += active.max_new_tokens
        vision_needed = (
            self.pool.vision_len[sequence.row] if continuing else 0
        ) + active.result.vision_tokens
        if self.pool.bytes_for(1, text_needed, vision_needed) > self.kv_limit:
            raise CapacityError(
                f"the request needs {self.pool.bytes_for(1, text_needed, vision_needed) / 2**20:.1f} MiB of KV "
                f"memory ({text_needed} text and {vision_needed} vision entries) but the engine's limit is "
                f"{self.kv_limit / 2**20:.1f} MiB (EngineConfig.kv_cache_bytes): send fewer frames, a shorter "
                "prompt or a smaller max_new_tokens"
            )
        while True:
            others = [s for s in self.row_owner if s is not None and s is not sequence]
            text = max([text_needed, *(s.reserved_text for s in others)])
            vision = max([vision_needed, *(self.pool.vision_len[s.row] for s in others)])
            if self.pool.bytes_for(len(others) + 1, text, vision) <= self.kv_limit:
                break
            victims = [
                s for s in [*self.cached.values(), *self.kept.values()] if s not in (sequence, active.source)
            ]
            if not victims:
                return False
            self._free(victims[0])
        self.kept.pop(sequence.id, None)
        if not continuing:
            sequence.row = self._free_row()
            self.row_owner[sequence.row] = sequence
        sequence.reserved_text = text_needed
        self.pool.reserve(len(self.row_owner), text, vision, self.kv_limit)
        if not continuing:
            self.pool.clear(sequence.row)
        return True

    def _free_row(self) -> int:
        for row in range(len(self.decoding), len(self.row_owner)):
            if self.row_owner[row] is None:
                return row
        self.row_owner.append(None)
        return len(self.row_owner) - 1

    def _start(self, active: _Active) -> None:
        sequence = active.sequence
        sequence.busy = True
        row = sequence.row
        source = active.source
        if source is not None:
            vision = source.frame_ends[active.skip_frames - 1] if active.skip_frames else 0
            self.pool.copy_prefix(source.row, row, active.skip_tokens, vision)
            sequence.tokens = active.request.input_ids[: active.skip_tokens]
            sequence.frame_ends = source.frame_ends[: active.skip_frames]
            sequence.frame_times = source.frame_times[: active.skip_frames]
            sequence.frame_keys = source.frame_keys[: active.skip_frames]
            for store in (self.cached, self.kept):
                if source.id in store:
                    store.move_to_end(source.id)
            active.result.cached_tokens = active.skip_tokens
        active.rollback = (
            self.pool.text_len[row],
            self.pool.vision_len[row],
            len(sequence.frame_ends),
            len(sequence.tokens),
            sequence.next_position,
        )
        self.prefilling.append(active)

    def _evict_window(self, sequence: Sequence, oldest: float) -> None:
        """Drop the stored frames older than ``oldest`` seconds from the sequence's vision memory."""
        drop = 0
        while drop < len(sequence.frame_times) and (sequence.frame_times[drop] or 0.0) < oldest:
            drop += 1
        if drop == 0 or sequence.row is None:
            return
        tokens = sequence.frame_ends[drop - 1]
        self.pool.drop_vision_prefix(sequence.row, tokens)
        sequence.shareable = 0  # its vision memory no longer starts with its first frames
        sequence.frame_ends = [end - tokens for end in sequence.frame_ends[drop:]]
        sequence.frame_times = sequence.frame_times[drop:]

    # ----- prefill -------------------------------------------------------------------------------------------

    def _unit_cost(self, unit: tuple) -> float:
        """A work unit's share of one step's prefill: 1 for a full chunk of frames or of tokens."""
        if unit[0] == "vision":
            return (unit[3] - unit[2]) / self.config.prefill_chunk_frames
        return (unit[2] - unit[1]) / self.config.prefill_chunk_tokens

    def _prefill_unit(self, active: _Active) -> None:
        """Run the next work unit of the request at the head of the prefill queue."""
        unit = active.units.popleft()
        try:
            if unit[0] == "vision":
                self._vision_unit(active, *unit[1:])
                return
            logits = self._text_unit(active, *unit[1:])
        except Exception as exc:  # noqa: BLE001 - a failing request must never take the engine down
            self._finish(active, FINISH_ERROR, exc)
            return
        if logits is not None:
            self.prefilling.popleft()
            self._prefill_done(active, logits)

    def _vision_unit(self, active: _Active, media_index: int, first: int, last: int) -> None:
        media = active.request.media[media_index]
        _, height, width = media.grid_thw
        per_frame = height * width // self.runner.merge**2
        if media.features is None and first == 0:
            # An earlier request of the same media may have encoded it since this one was prepared.
            media.features = self.media_cache.get(media.key, record_miss=False)
        if media.features is not None:
            features = media.features[first * per_frame : last * per_frame]
        else:
            pixels = media.pixels[first * height * width : last * height * width]
            features = self.runner.encode_frames(pixels, (last - first, height, width))
            active.features.setdefault(media_index, []).append(features)
            if last == media.num_frames:
                self.media_cache.put(media.key, torch.cat(active.features.pop(media_index)))
        frame = active.first_frames[media_index]
        start, end = active.frame_offsets[frame + first], active.frame_offsets[frame + last]
        memory = self.runner.frame_memory(features, last - first)
        self.runner.store_vision(active.sequence.row, memory, active.vision_positions[:, start:end])

    def _text_unit(self, active: _Active, first: int, last: int) -> torch.Tensor | None:
        sequence = active.sequence
        ids = torch.tensor([active.request.input_ids[first:last]], dtype=torch.long)
        final = last == len(active.request.input_ids)
        logits = self.runner.forward(
            slice(sequence.row, sequence.row + 1),
            ids,
            active.positions[:, None, first:last],
            active.prefix[None, first:last],
            rotate_query=True,
            logits=final,
        )
        sequence.tokens += active.request.input_ids[first:last]
        return logits

    def _prefill_done(self, active: _Active, logits: torch.Tensor) -> None:
        sequence = active.sequence
        sequence.next_position = active.end_position
        skip, offsets = active.skip_frames, active.frame_offsets
        base = sequence.visible - offsets[skip]  # where this request's vision memory starts in the row
        sequence.frame_ends += [base + end for end in offsets[skip + 1 :]]
        sequence.frame_times += [
            t for media in active.request.media for t in (media.timestamps or [None] * media.num_frames)
        ][skip:]
        sequence.frame_keys += [f"{m.key}#{f}" for m in active.request.media for f in range(m.num_frames)][
            skip:
        ]
        if active.request.sequence is None:
            sequence.shareable = len(sequence.tokens)
        if active.max_new_tokens == 0:
            self._finish(active, FINISH_LENGTH)
            return
        self._accept(active, self._sample([active], logits)[0])
        if not active.finished:
            self._move_to_decoding(active)

    # ----- decode --------------------------------------------------------------------------------------------

    @staticmethod
    def _next_due(active: _Active) -> float:
        """When a request's next token may be produced (0: now; paced requests wait for their rate)."""
        rate = active.request.max_tokens_per_second
        if not rate or active.result.first_token_time is None:
            return 0.0
        return active.result.first_token_time + len(active.generated) / rate

    def _decode_step(self, due: list[float], now: float) -> None:
        """One token for every decoding request whose turn it is. All rows are computed together; a paced row
        that is not due gets its step undone (its entry is rewritten, identically, when it is)."""
        batch = len(self.decoding)
        tokens = [active.generated[-1] for active in self.decoding]
        try:
            logits = self.runner.decode(
                batch,
                tokens,
                [active.sequence.next_position for active in self.decoding],
                [active.sequence.visible for active in self.decoding],
            )
        except Exception as exc:  # noqa: BLE001 - fail the batch's requests, keep the engine
            for active in list(self.decoding):
                active.sequence.alive = False
                self._finish(active, FINISH_ERROR, exc)
            return
        ready = [index for index in range(batch) if due[index] <= now]
        for index, (active, token) in enumerate(zip(self.decoding, tokens, strict=True)):
            if due[index] <= now:
                active.sequence.tokens.append(token)
                active.sequence.next_position += 1
            else:
                self.pool.text_len[active.sequence.row] -= 1
        actives = [self.decoding[index] for index in ready]
        choices = self._sample(actives, logits[ready])
        for active, token in zip(actives, choices, strict=True):
            self._accept(active, token)

    def _sample(self, actives: list[_Active], logits: torch.Tensor) -> list[int]:
        histories = [
            torch.tensor([a.sequence.tokens], device=self.pool.device) if a.sampler.needs_history else None
            for a in actives
        ]
        return select_next_tokens([a.sampler for a in actives], histories, logits)

    def _accept(self, active: _Active, token: int) -> None:
        """Record a sampled token, stream its text, and finish the request when a stop condition holds."""
        active.generated.append(token)
        if active.result.first_token_time is None:
            active.result.first_token_time = time.monotonic()
        if token in self.eos_token_ids or token in active.request.settings.stop_token_ids:
            self._finish(active, FINISH_STOP)
            return
        delta = active.stream.push(token)
        active.handle.push(StreamEvent(delta, [token]))
        if active.stream.stopped:
            self._finish(active, FINISH_STOP)
        elif len(active.generated) >= active.max_new_tokens:
            self._finish(active, FINISH_LENGTH)
        elif active.handle.cancelled:
            self._finish(active, FINISH_CANCELLED)

    def _move_to_decoding(self, active: _Active) -> None:
        target = len(self.decoding)
        self._swap_rows(active.sequence.row, target)
        self.decoding.append(active)

    def _swap_rows(self, a: int, b: int) -> None:
        if a == b:
            return
        while len(self.row_owner) <= max(a, b):
            self.row_owner.append(None)
        self.pool.swap(a, b)
        self.row_owner[a], self.row_owner[b] = self.row_owner[b], self.row_owner[a]
        for row in (a, b):
            if self.row_owner[row] is not None:
                self.row_owner[row].row = row

    # ----- endings -------------------------------------------------------------------------------------------

    def _finish(self, active: _Active, reason: str, exc: BaseException | None = None) -> None:
        """Close a request: leave the decode rows or the prefill queue, keep or free its sequence, push its Result."""
        sequence = active.sequence
        active.finished = True
        interrupted = False
        if active in self.decoding:
            index = self.decoding.index(active)
            last = len(self.decoding) - 1
            self._swap_rows(index, last)
            self.decoding[index], self.decoding[last] = self.decoding[last], self.decoding[index]
            self.decoding.pop()
        elif active in self.prefilling:
            self.prefilling.remove(active)
            interrupted = True
            self._roll_back(active)
        sequence.busy = False
        # A new sequence whose prompt never completed holds nothing worth keeping.
        fresh_and_empty = interrupted and active.request.sequence is None
        keep = (
            active.request.keep_sequence
            and sequence.alive
            and sequence.row is not None
            and not fresh_and_empty
        )
        if self.rotate_decode_query and not interrupted:
            sequence.shareable = len(sequence.tokens)  # decoded tokens then equal prefilled ones
        if sequence.row is not None:
            sequence.reserved_text = self.pool.text_len[sequence.row]
        if keep:
            self._hold(self.kept, sequence, self.config.max_kept_sequences)
        elif sequence.alive and sequence.shareable and exc is None and not interrupted:
            self._hold(self.cached, sequence, self.config.prefix_cache_size)
            sequence.alive = False  # nobody continues it; it only lends its prefix
        else:
            self._free(sequence)
        result = active.result
        delta = active.stream.finish() if exc is None else ""
        result.text = active.stream.text
        result.token_ids = list(active.generated)
        result.finish_reason = reason
        result.finish_time = time.monotonic()
        result.sequence = sequence if keep else None
        if exc is not None:
            failed = error_result(exc, result.request_id, result.input_text)
            result.error, result.exception = failed.error, failed.exception
        active.handle.push(StreamEvent(delta, result=result))

    def _hold(self, store: OrderedDict, sequence: Sequence, limit: int) -> None:
        """Keep an idle sequence in ``store`` (least recently used first, at most ``limit``)."""
        if limit == 0:
            self._free(sequence)
            return
        store[sequence.id] = sequence
        while len(store) > limit:
            self._free(next(iter(store.values())))

    def _roll_back(self, active: _Active) -> None:
        """Undo a partial prefill of a continuation, so the kept sequence is as before the request."""
        sequence = active.sequence
        if sequence.row is None:
            return
        text_len, vision_len, frames, tokens, position = active.rollback
        self.pool.text_len[sequence.row] = text_len
        self.pool.vision_len[sequence.row] = vision_len
        del sequence.frame_ends[frames:], sequence.frame_times[frames:], sequence.tokens[tokens:]
        sequence.next_position = position

    def _free(self, sequence: Sequence) -> None:
        sequence.alive = False
        self.kept.pop(sequence.id, None)
        self.cached.pop(sequence.id, None)
        if sequence.row is not None:
            self.pool.clear(sequence.row)
            self.row_owner[sequence.row] = None
            sequence.row = None


def _failed(exc: BaseException, request: PreparedRequest) -> Result:
    return error_result(exc, request.request_id, request.input_text)


def _unstarted(request: PreparedRequest, reason: str) -> Result:
    now = time.monotonic()
    return Result(
        request_id=request.request_id,
        input_text=request.input_text,
        finish_reason=reason,
        arrival_time=request.arrival_time,
        finish_time=now,
    )
