"""Realtime video: a live stream of frames and prompts answered while it streams, on the shared engine.

The conversation is ``[system] user(initial prompt) assistant:`` followed, inside the assistant turn, by every frame
as its own vision region ``<|vision_start|><|time_start|>{t} seconds<|time_end|><|image_pad|><|vision_end|>``, each
followed by what the model says about it: ``<|silence|>`` when nothing is worth saying, else text. A frame's K/V
are appended to the session's kept sequence once (nothing earlier is re-read or re-encoded), and many sessions
share the engine's decode steps.

Per input the model generates until it emits ``<|silence|>`` (kept in the conversation), ``<|vision_start|>`` (it
waits for the next frame), an end-of-turn token (the next frame opens a new assistant turn) or
``max_new_tokens``; it is paced to ``max_tokens_per_turn`` tokens per second. A prompt closes the current turn
(``<|im_end|>`` then a user turn and a new assistant turn, written by the chat template), interrupting an answer in
progress at its next token; the KV is kept. Frames that arrive while the model speaks wait in a bounded queue that
drops its oldest frame when full; a prompt and frames arriving together are fed prompt first, then
``<|silence|>``, then the frames in timestamp order. Timestamps must not decrease. With ``visual_window`` seconds
only the frames of the last seconds stay in the vision memory (all text stays), so a session can run for hours.

The official API is kept: ``model.create_realtime_session(processor, ...)`` → ``RealtimeSession`` with ``start``,
``push_frame``, ``push_prompt``, ``push_prompt_frame``, ``poll_output``, ``active``, ``pending_frames``,
``close``; and the queue worker ``model.online_generate(processor, input_queue, output_queue, ...)``. Raw output
carries control tokens: ``<|round_start|>`` before an answer's text, ``<|round_end|>`` after it, ``<|silence|>``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from .. import constants as C
from ..errors import MossVLError, QueryError
from ..processing.limits import InputLimits, check_prompt_chars
from ..processing.prompt import continuation_text, realtime_frame_prompt
from .engine import Engine, engine_for
from .event_channel import EventChannel
from .request import FINISH_CANCELLED, PreparedRequest, Result
from .sampling import MAX_SEQUENCE_BIAS

DEFAULT_MAX_TOKENS_PER_TURN = 86400  # the official default: a tokens-per-second pace that never binds
DEFAULT_MAX_NEW_TOKENS = 4096
DEFAULT_FRAME_QUEUE = 256


@dataclass
class RealtimeConfig:
    """A realtime session's settings (official names). ``max_tokens_per_turn`` is a pace in tokens per second;
    ``max_new_tokens`` an allowance per input; ``visual_window`` keeps the frames of the last that many seconds.

    ``silence_bias`` (ours) is added to the logit of ``<|silence|>``: below 0 the model speaks more readily, above 0
    it waits for surer evidence. None keeps the checkpoint's ``sequence_bias`` (generation_config.json), if any."""

    initial_prompt: str | None = None
    system_prompt: str | None = None
    frame_queue_size: int = DEFAULT_FRAME_QUEUE
    max_tokens_per_turn: float = DEFAULT_MAX_TOKENS_PER_TURN
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    visual_window: float | None = None
    silence_bias: float | None = None

    def check(self) -> None:
        if not isinstance(self.frame_queue_size, int) or self.frame_queue_size < 1:
            raise QueryError(f"frame_queue_size={self.frame_queue_size!r} is invalid: expected an int >= 1")
        if not isinstance(self.max_tokens_per_turn, int | float) or not self.max_tokens_per_turn > 0:
            raise QueryError(
                f"max_tokens_per_turn={self.max_tokens_per_turn!r} is invalid: expected a number > 0"
            )
        if self.visual_window is not None and not self.visual_window > 0:
            raise QueryError(f"visual_window={self.visual_window!r} is invalid: expected seconds > 0")
        if self.silence_bias is not None and not (
            isinstance(self.silence_bias, int | float)
            and not isinstance(self.silence_bias, bool)
            and abs(self.silence_bias) <= MAX_SEQUENCE_BIAS
        ):
            raise QueryError(
                f"silence_bias={self.silence_bias!r} is invalid: expected a number in "
                f"[-{MAX_SEQUENCE_BIAS:g}, {MAX_SEQUENCE_BIAS:g}]"
            )


@dataclass
class RealtimeEvent:
    """What a session reports. ``kind``: ready, frame_processed, text, silence, response_done, interrupted, error,
    closed. ``turn`` numbers the model's responses; ``usage`` rides on response_done and closed events; ``time``
    is when it happened (``time.monotonic()``)."""

    kind: str
    text: str = ""
    turn: int = 0
    seq_no: int | None = None
    usage: dict = field(default_factory=dict)
    time: float = field(default_factory=time.monotonic)


@dataclass
class _Input:
    frame: Any = None
    timestamp: float | None = None
    prompt: str | None = None
    seq_no: int | None = None


class RealtimeSession:
    """One live stream on an engine. Thread-safe: push from any thread, read events or raw output from another."""

    def __init__(self, engine: Engine, config: RealtimeConfig | None = None):
        self.engine = engine
        self.config = config or RealtimeConfig()
        self.config.check()
        tokenizer = engine.tokenizer
        self._ids = {
            name: tokenizer.convert_tokens_to_ids(name) for name in (C.SILENCE, C.VISION_START, C.IM_END)
        }
        settings = engine.inputs.settings(
            {
                "max_new_tokens": self.config.max_new_tokens,
                "do_sample": self.config.do_sample,
                "temperature": self.config.temperature,
                "top_k": self.config.top_k,
                "top_p": self.config.top_p,
                "repetition_penalty": self.config.repetition_penalty,
                "seed": self.config.seed,
            }
        )
        if self.config.silence_bias is not None:
            silence_bias = (((self._ids[C.SILENCE],), float(self.config.silence_bias)),)
            settings = replace(settings, sequence_bias=silence_bias)
        self._settings = replace(
            settings,
            stop_token_ids=(self._ids[C.SILENCE], self._ids[C.VISION_START]),
            skip_special_tokens=False,  # the raw realtime output shows control tokens
        )
        self._lock = threading.Condition()
        self._frames: deque[_Input] = deque()
        self._prompts: deque[_Input] = deque()
        self._events: EventChannel[RealtimeEvent] = EventChannel()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._sequence = None
        self._pending: list[int] = []
        self._last_timestamp = float("-inf")
        self._turn = 0
        self._handle = None
        self._answering = False
        self._opening: list[dict] = []
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "vision_tokens": 0, "frames": 0}
        # Every token fed to the sequence, in order, and where each answer's tokens start in it.
        self.fed_tokens: list[int] = []
        self.answers: list[tuple[int, list[int]]] = []

    # ----- official API ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Prefill the system prompt and the initial prompt; inputs may be pushed before or after."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="mossvl-realtime", daemon=True)
        self._thread.start()

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending_frames(self) -> int:
        with self._lock:
            return len(self._frames)

    def push_frame(
        self, image: Any, timestamp: float, seq_no: int | None = None, drop_oldest: bool = True
    ) -> bool:
        """Queue a frame (a path, PIL image or array) shown at ``timestamp`` seconds; True when the oldest waiting
        frame was dropped to make room (with ``drop_oldest=False`` a full queue makes the call wait instead).
        Raises QueryError for a timestamp before the previous one."""
        if not drop_oldest:
            with self._lock:
                while len(self._frames) >= self.config.frame_queue_size and not self._closing:
                    self._lock.wait()
        return self._push(_Input(frame=image, timestamp=float(timestamp), seq_no=seq_no))

    def push_prompt(self, text: str, seq_no: int | None = None) -> None:
        """Ask something now: closes the current turn (interrupting an answer in progress)."""
        self._push(_Input(prompt=_prompt_text(text, self.engine.processor.limits), seq_no=seq_no))

    def push_prompt_frame(self, prompt: str, image: Any, timestamp: float, seq_no: int | None = None) -> bool:
        """A prompt aligned with a frame: both are fed in the same step (prompt, ``<|silence|>``, frame)."""
        text = _prompt_text(prompt, self.engine.processor.limits)
        with self._lock:
            dropped = self._push(_Input(frame=image, timestamp=float(timestamp), seq_no=seq_no), notify=False)
            self._prompts.append(_Input(prompt=text, seq_no=seq_no))
            self._interrupt()
            self._lock.notify_all()
        return dropped

    def poll_output(self, timeout: float | None = None) -> str | None:
        """The next raw output chunk (text or a control token), or None when nothing comes within ``timeout``."""
        while True:
            event = self.poll_event(timeout)
            if event is None:
                return None
            text = raw_output(event)
            if text:
                return text

    async def aevents(self) -> AsyncIterator[RealtimeEvent]:
        """The typed events for an asyncio consumer (one consumer per session), up to ``closed``."""
        async for event in self._events.stream(lambda event: event.kind == "closed"):
            yield event

    def _emit(self, event: RealtimeEvent) -> None:
        self._events.put(event)

    def poll_event(self, timeout: float | None = None) -> RealtimeEvent | None:
        """The next typed event, or None after ``timeout`` seconds."""
        return self._events.get(timeout)

    def close(self, timeout: float | None = None, drain: bool = False) -> None:
        """End the session: at once (the answer in progress is cancelled, waiting inputs dropped), or with
        ``drain`` after every input pushed so far was answered. The KV is freed; a ``closed`` event ends the
        stream."""
        with self._lock:
            self._closing = True
            if not drain:
                self._frames.clear()
                self._prompts.clear()
                if self._handle is not None:
                    self._handle.cancel()
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # ----- inputs ------------------------------------------------------------------------------------------------

    def _push(self, item: _Input, notify: bool = True) -> bool:
        with self._lock:
            if self._closing:
                raise QueryError("the realtime session is closed")
            dropped = False
            if item.frame is not None:
                if item.timestamp < self._last_timestamp:
                    raise QueryError(
                        f"frame timestamp {item.timestamp} s is before the previous frame's {self._last_timestamp} s; "
                        "timestamps must not decrease"
                    )
                self._last_timestamp = item.timestamp
                if len(self._frames) >= self.config.frame_queue_size:
                    self._frames.popleft()
                    dropped = True
                self._frames.append(item)
            else:
                self._prompts.append(item)
                self._interrupt()
            if notify:
                self._lock.notify_all()
            return dropped

    def _interrupt(self) -> None:
        """A prompt barges in: end the answer in progress at its next token (never a prefill in progress)."""
        if self._handle is not None and self._answering:
            self._handle.cancel()

    # ----- the session thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._prefill_opening()
            while True:
                with self._lock:
                    while not (self._frames or self._prompts or self._closing):
                        self._lock.wait()
                    if not (self._frames or self._prompts):
                        break  # closing, and nothing left to answer
                    prompts, frames = list(self._prompts), list(self._frames)
                    self._prompts.clear()
                    self._frames.clear()
                    self._lock.notify_all()  # producers waiting for room
                try:
                    self._feed(prompts, frames)
                except MossVLError as exc:  # a bad frame or prompt: report it, the stream goes on
                    self._emit(RealtimeEvent("error", text=str(exc), turn=self._turn))
        except Exception as exc:  # noqa: BLE001 - report, never leave the reader waiting
            self._emit(RealtimeEvent("error", text=f"{type(exc).__name__}: {exc}"))
        finally:
            self.engine.close_sequence(self._sequence)
            self._emit(RealtimeEvent("closed", usage=dict(self.usage)))

    def _prefill_opening(self) -> None:
        messages = []
        if self.config.system_prompt:
            messages.append(
                {"role": "system", "content": [{"type": "text", "text": self.config.system_prompt}]}
            )
        messages.append(
            {"role": "user", "content": [{"type": "text", "text": self.config.initial_prompt or ""}]}
        )
        self._opening = messages
        text = self.engine.processor.render(messages)
        request = PreparedRequest(
            self._tokens(text), [], replace(self._settings, max_new_tokens=0), input_text=text
        )
        self._submit(request, answer=False)
        self._emit(RealtimeEvent("ready"))

    def _feed(self, prompts: list[_Input], frames: list[_Input]) -> None:
        """Feed one drain of inputs (prompts first, then frames by time) and let the model answer."""
        ids = list(self._pending)
        for item in prompts:
            ids += self._tokens(
                self._continuation([{"role": "user", "content": [{"type": "text", "text": item.prompt}]}])
            )
        if prompts and frames:
            ids.append(self._ids[C.SILENCE])  # the trained opener of an assistant turn that frames follow
        media, kept = [], []
        merge = self.engine.inputs.merge_size
        frames = sorted(frames, key=lambda item: item.timestamp)
        if self.config.visual_window is not None and frames:
            # Frames already outside the window when they arrive would be evicted at once: skip them.
            oldest = frames[-1].timestamp - self.config.visual_window
            frames = [item for item in frames if item.timestamp >= oldest]
        for item in frames:
            try:
                planned = self.engine.processor.image_processor.plan([item.frame])[0]
            except MossVLError as exc:  # an unreadable frame is reported and skipped; the others go on
                self._emit(RealtimeEvent("error", text=str(exc), turn=self._turn, seq_no=item.seq_no))
                continue
            media.append(self.engine.inputs.media_input(planned))
            media[-1].timestamps = [item.timestamp]
            kept.append(item)
            ids += self._tokens(realtime_frame_prompt(item.timestamp))
        frames = kept
        if len(ids) == len(self._pending) and not prompts and not frames:
            return  # nothing usable arrived
        request = PreparedRequest(
            ids, media, self._settings, max_tokens_per_second=self.config.max_tokens_per_turn
        )
        request.vision_tokens = sum(t * (h * w // merge**2 + 1) for t, h, w in (m.grid_thw for m in media))
        self._pending = []

        def processed() -> None:
            for item in frames:
                self._emit(RealtimeEvent("frame_processed", seq_no=item.seq_no, turn=self._turn))

        result = self._submit(request, answer=True, on_prefilled=processed)
        self.usage["frames"] += len(frames)
        self._after_answer(result)

    def _continuation(self, new_messages: list[dict]) -> str:
        """Template text closing the assistant turn in progress, then ``new_messages`` and a new assistant turn."""
        history = [*self._opening, {"role": "assistant", "content": []}]
        return continuation_text(self.engine.processor.chat_template, history, new_messages)

    def _tokens(self, text: str) -> list[int]:
        return self.engine.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _submit(self, request: PreparedRequest, answer: bool, on_prefilled=None) -> Result:
        """Run one request on the session's sequence, streaming its text as events; raises its error."""
        request.sequence = self._sequence
        request.keep_sequence = True
        with self._lock:
            self._answering = False
            self._handle = self.engine.submit(request)
        turn, started, prefilled = self._turn, False, False
        for event in self._handle.events():
            if not prefilled:
                prefilled = True
                if on_prefilled is not None:
                    on_prefilled()
            if event.token_ids:
                with self._lock:
                    self._answering = True
                    if self._prompts:  # a prompt came during the prefill: barge in now
                        self._handle.cancel()
            if answer and event.delta:
                if not started:
                    self._emit(RealtimeEvent("round_start", turn=turn))
                    started = True
                self._emit(RealtimeEvent("text", text=event.delta, turn=turn))
        result = event.result
        with self._lock:
            self._handle, self._answering = None, False
        if result.error is not None:
            raise MossVLError(result.error)
        if self._sequence is None:
            self._sequence = result.sequence
            self._sequence.visual_window = self.config.visual_window
        self.fed_tokens += request.input_ids
        for key in ("prompt_tokens", "completion_tokens", "vision_tokens"):
            self.usage[key] += getattr(result, key)
        if started:
            self._emit(RealtimeEvent("round_end", turn=turn))
        return result

    def _after_answer(self, result: Result) -> None:
        """Record what the model said and what must be fed before the next input."""
        tokens = result.token_ids
        self.answers.append((len(self.fed_tokens), list(tokens)))
        self.fed_tokens += tokens[:-1]  # the last sampled token is never fed as such
        last = tokens[-1] if tokens else None
        turn = self._turn
        if result.finish_reason == FINISH_CANCELLED:
            self._emit(RealtimeEvent("interrupted", turn=turn))
            self._pending = [last] if last is not None else []
        elif last == self._ids[C.SILENCE]:
            self._emit(RealtimeEvent("silence", text=C.SILENCE, turn=turn))
            self._pending = [last]
        elif last == self._ids[C.VISION_START]:
            self._pending = []  # the model asks for the next frame, whose region starts with this token
        elif last in self.engine.eos_token_ids:
            self._pending = self._tokens(self._continuation([]))  # its turn ended: the next input opens one
        else:  # the allowance ran out mid-answer
            self._pending = [last] if last is not None else []
        self._emit(RealtimeEvent("response_done", turn=turn, usage=dict(self.usage)))
        self._turn += 1


def _prompt_text(text: Any, limits: InputLimits) -> str:
    if not isinstance(text, str) or not text.strip():
        raise QueryError("a prompt must be a non-empty string")
    check_prompt_chars(text, limits)
    return text


def raw_output(event: RealtimeEvent) -> str:
    """The official raw output of an event."""
    return {
        "text": event.text,
        "silence": C.SILENCE,
        "round_start": C.ROUND_START,
        "round_end": C.ROUND_END,
        "interrupted": C.EOT_ID,
        "error": C.ERROR_PREFIX + event.text if event.kind == "error" else "",
    }.get(event.kind, "")


def create_realtime_session(
    model,
    processor,
    initial_prompt: str | None = None,
    system_prompt: str | None = None,
    frame_queue_size: int = DEFAULT_FRAME_QUEUE,
    max_tokens_per_turn: float = DEFAULT_MAX_TOKENS_PER_TURN,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    visual_window: float | None = None,
    silence_bias: float | None = None,
) -> RealtimeSession:
    """A realtime session on the model's shared engine (official signature; ``visual_window`` and
    ``silence_bias`` are ours, see RealtimeConfig)."""
    config = RealtimeConfig(
        initial_prompt=initial_prompt,
        system_prompt=system_prompt,
        frame_queue_size=frame_queue_size,
        max_tokens_per_turn=max_tokens_per_turn,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        visual_window=visual_window,
        silence_bias=silence_bias,
    )
    return RealtimeSession(engine_for(model, processor), config)


def online_generate(
    model,
    processor,
    input_queue: queue.Queue,
    output_queue: queue.Queue,
    frame_queue_size: int = DEFAULT_FRAME_QUEUE,
    max_tokens_per_turn: float = DEFAULT_MAX_TOKENS_PER_TURN,
    **generate_kwargs: Any,
) -> None:
    """The official realtime queue worker. The first message configures the session (``initial_prompt``,
    ``system_prompt``, ``frame_queue_size``, ``max_tokens_per_turn``); then ``{"frame", "timestamp"[, "prompt",
    "drop_oldest"]}``, ``{"prompt"}`` and ``{"stop_online_generate": True}``. Raw output chunks (control tokens
    included) go to ``output_queue``; a bad message sends an ``[ERROR] `` chunk and the worker goes on."""
    config = input_queue.get()
    if not isinstance(config, dict):
        raise QueryError(
            f"the first online_generate message must be a config dict, got {type(config).__name__}"
        )
    session = create_realtime_session(
        model,
        processor,
        initial_prompt=config.get("initial_prompt"),
        system_prompt=config.get("system_prompt"),
        frame_queue_size=config.get("frame_queue_size", frame_queue_size),
        max_tokens_per_turn=config.get("max_tokens_per_turn", max_tokens_per_turn),
        **generate_kwargs,
    )
    session.start()
    relay = threading.Thread(target=_relay, args=(session, output_queue), daemon=True)
    relay.start()
    while True:
        message = input_queue.get()
        if isinstance(message, dict) and message.get("stop_online_generate"):
            break
        try:
            if not isinstance(message, dict):
                raise QueryError(f"an online_generate message must be a dict, got {type(message).__name__}")
            if message.get("frame") is not None:
                if message.get("prompt"):
                    session.push_prompt_frame(message["prompt"], message["frame"], message["timestamp"])
                else:
                    session.push_frame(
                        message["frame"], message["timestamp"], drop_oldest=message.get("drop_oldest", True)
                    )
            elif message.get("prompt"):
                session.push_prompt(message["prompt"])
            else:
                raise QueryError(
                    f"an online_generate message needs 'frame' or 'prompt', got keys {sorted(message)}"
                )
        except (MossVLError, KeyError, TypeError, ValueError) as exc:
            output_queue.put(f"{C.ERROR_PREFIX}{type(exc).__name__}: {exc}")
    session.close(drain=True)
    relay.join()


def _relay(session: RealtimeSession, output_queue: queue.Queue) -> None:
    while (event := session.poll_event()) is not None and event.kind != "closed":
        text = raw_output(event)
        if text:
            output_queue.put(text)
