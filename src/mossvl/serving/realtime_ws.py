"""Realtime video over WebSockets, in the same server as the HTTP API: many live streams, one engine.

Two protocols, so that existing clients work unchanged:

* ``WS /v1/video/realtime``: the MOSS-VL realtime event protocol of SGLang-Omni. ``session.created`` →
  ``session.configure`` → ``session.configured`` / ``session.ready``; frames as an ``input.frame`` header, then
  (after ``input.frame.ready``) one binary JPEG/PNG/WebP message, acknowledged with ``input.frame.accepted`` and
  ``input.frame.processed``; ``input.prompt``; answers as ``response.text.delta``, ``response.turn.silence``,
  ``response.turn.interrupted``, ``response.done`` and ``session.usage``. ``seq_no`` is dense over frames and
  prompts from 0. Errors: ``invalid_request`` (the session stays alive), ``frame_too_large``,
  ``input_queue_full``, ``configuration_timeout``, ``session_capacity_exceeded`` (close code 1013).
* ``WS /v1/realtime``: the official Hugging Face service. ``start`` (within 30 s), ``frame`` + binary, ``prompt``,
  ``video`` (replays a file under the allowed media folder, paced), ``stop_video``, ``ping``, ``stop``; answered
  with ``ready``, ``output``, ``frame_ack``, ``prompt_ack``, ``video_started`` / ``video_end``, ``pong``,
  ``stopping``, ``session_end`` and ``error``. Output still running is drained before ``session_end``.

Sessions beyond ``--max-sessions`` are refused; a dropped connection ends and frees its session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from ..errors import MossVLError
from ..inference.engine import Engine
from ..inference.realtime import RealtimeConfig, RealtimeEvent, RealtimeSession, raw_output
from ..processing.video import stream_frames

CAPACITY_CLOSE_CODE = 1013
POLICY_CLOSE_CODE = 1008
CREDIT_POLL_SECONDS = 0.01
_session_ids = itertools.count()


@dataclass
class RealtimeServiceConfig:
    """Limits of the realtime service."""

    max_sessions: int = 4
    max_frame_bytes: int = 20 << 20
    input_queue_size: int = 4
    configure_timeout: float = 180.0
    queue_wait_timeout: float = 30.0
    start_timeout: float = 30.0
    visual_window: float | None = 60.0
    allowed_local_dir: Path | None = None


class _Sessions:
    """Counts live sessions against the capacity."""

    def __init__(self, limit: int):
        self.limit, self.live = limit, 0

    def enter(self) -> bool:
        if self.live >= self.limit:
            return False
        self.live += 1
        return True

    def leave(self) -> None:
        self.live -= 1


def add_realtime_routes(
    app: FastAPI, engine: Engine, config: RealtimeServiceConfig, api_key: str | None = None
) -> None:
    """Mount both realtime WebSocket endpoints on ``app`` (with ``api_key``, the handshake must carry it)."""
    sessions = _Sessions(config.max_sessions)
    app.state.realtime_sessions = sessions

    async def admitted(websocket: WebSocket) -> bool:
        header = websocket.headers.get("authorization", "")
        if api_key is not None and not hmac.compare_digest(header.encode(), f"Bearer {api_key}".encode()):
            await websocket.close(code=POLICY_CLOSE_CODE, reason="missing or invalid API key")
            return False
        await websocket.accept()
        return True

    @app.websocket("/v1/video/realtime")
    async def omni(websocket: WebSocket) -> None:
        if not await admitted(websocket):
            return
        if not sessions.enter():
            await _send(
                websocket, _error("session_capacity_exceeded", f"all {config.max_sessions} sessions are busy")
            )
            await websocket.close(code=CAPACITY_CLOSE_CODE)
            return
        try:
            await _OmniSession(websocket, engine, config).run()
        finally:
            sessions.leave()

    @app.websocket("/v1/realtime")
    async def official(websocket: WebSocket) -> None:
        if not await admitted(websocket):
            return
        if not sessions.enter():
            await _send(websocket, {"type": "error", "message": "A realtime session is already active"})
            await websocket.close(code=CAPACITY_CLOSE_CODE)
            return
        try:
            await _OfficialSession(websocket, engine, config).run()
        finally:
            sessions.leave()


async def _send(websocket: WebSocket, message: dict) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await websocket.send_text(json.dumps(message, ensure_ascii=False))


def _error(code: str, message: str, **extra) -> dict:
    return {"type": "error", "error": {"code": code, "message": message, **extra}}


def _image(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"the frame is not a readable JPEG/PNG/WebP image ({exc})") from exc
    return image


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"'{name}' must be a number, got {value!r}")
    return float(value)


class _OmniSession:
    """One ``/v1/video/realtime`` connection."""

    def __init__(self, websocket: WebSocket, engine: Engine, config: RealtimeServiceConfig):
        self.websocket, self.engine, self.config = websocket, engine, config
        self.session: RealtimeSession | None = None
        self.next_seq = 0
        self.include_usage = False
        self.last_timestamp = float("-inf")

    async def run(self) -> None:
        session_id = f"rt-{next(_session_ids)}"
        await _send(
            self.websocket,
            {
                "type": "session.created",
                "session_id": session_id,
                "configure_timeout_s": self.config.configure_timeout,
                "capabilities": {
                    "input": ["frame", "prompt"],
                    "frame_mime_types": ["image/jpeg", "image/png", "image/webp"],
                },
            },
        )
        try:
            configure = await asyncio.wait_for(self.websocket.receive_text(), self.config.configure_timeout)
        except TimeoutError:
            await _send(self.websocket, _error("configuration_timeout", "no session.configure in time"))
            await self.websocket.close()
            return
        except WebSocketDisconnect:
            return
        try:
            self.session = self._configure(json.loads(configure))
        except (ValueError, MossVLError) as exc:
            await _send(self.websocket, _error("invalid_request", f"bad session.configure: {exc}"))
            await self.websocket.close()
            return
        await _send(
            self.websocket,
            {
                "type": "session.configured",
                "max_frame_bytes": self.config.max_frame_bytes,
                "input_queue_size": self.config.input_queue_size,
            },
        )
        self.session.start()
        relay = asyncio.create_task(self._relay())
        try:
            await self._receive()
        finally:
            await run_in_threadpool(self.session.close, 30.0, False)
            await relay

    def _configure(self, message: dict) -> RealtimeSession:
        if not isinstance(message, dict) or message.get("type") != "session.configure":
            raise ValueError("the first message must be session.configure")
        self.include_usage = bool(message.get("include_usage"))
        config = RealtimeConfig(
            initial_prompt=message.get("prompt"),
            system_prompt=message.get("system_prompt"),
            frame_queue_size=self.config.input_queue_size,
            max_tokens_per_turn=message.get("max_tokens_per_turn", 86400),
            max_new_tokens=message.get("max_new_tokens", 4096),
            visual_window=self.config.visual_window,
        )
        return RealtimeSession(self.engine, config)

    async def _receive(self) -> None:
        while True:
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message.get("type") == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await _send(
                    self.websocket,
                    _error("invalid_request", "a binary frame must follow an input.frame header"),
                )
                continue
            try:
                event = json.loads(message.get("text") or "")
                if not isinstance(event, dict):
                    raise ValueError("an event must be a JSON object")
                kind = event.get("type")
                if kind == "session.abort":
                    return
                if kind == "input.frame":
                    if await self._frame(event):
                        await run_in_threadpool(self.session.close, None, True)  # a final frame closes input
                        return
                elif kind == "input.prompt":
                    self._take_seq(event)
                    self.session.push_prompt(event.get("text") or event.get("prompt"), event["seq_no"])
                else:
                    raise ValueError(f"unsupported event type {kind!r}")
            except _Refused as refused:
                await _send(self.websocket, refused.body)
            except (ValueError, KeyError, TypeError, MossVLError) as exc:
                await _send(self.websocket, _error("invalid_request", str(exc), seq_no=_seq(message)))

    def _check_seq(self, event: dict) -> int:
        seq = event.get("seq_no")
        if seq != self.next_seq:
            raise ValueError(f"seq_no {seq!r} is out of order; expected {self.next_seq}")
        return seq

    def _take_seq(self, event: dict) -> None:
        """Accept an input's seq_no (a refused input does not use one up)."""
        self._check_seq(event)
        self.next_seq += 1

    async def _frame(self, event: dict) -> bool:
        """One frame: header, credit, binary; True when it was marked final."""
        timestamp = _number(event.get("timestamp"), "timestamp")
        if timestamp < self.last_timestamp:
            raise ValueError(f"timestamp {timestamp} is before the previous frame's {self.last_timestamp}")
        # The credit (input.frame.ready) waits until the input queue has room: the producer slows down.
        deadline = time.monotonic() + self.config.queue_wait_timeout
        while self.session.pending_frames >= self.config.input_queue_size:
            if time.monotonic() > deadline:
                message = f"the input queue stayed full for {self.config.queue_wait_timeout:g} s; slow down"
                raise _Refused(_error("input_queue_full", message, seq_no=event.get("seq_no")))
            await asyncio.sleep(CREDIT_POLL_SECONDS)
        seq = self._check_seq(event)
        await _send(self.websocket, {"type": "input.frame.ready", "seq_no": seq})
        message = await self.websocket.receive()
        data = message.get("bytes")
        if data is None:
            raise ValueError("input.frame must be followed by one binary message")
        if len(data) > self.config.max_frame_bytes:
            raise _Refused(
                _error(
                    "frame_too_large",
                    f"frame of {len(data)} bytes exceeds {self.config.max_frame_bytes}",
                    seq_no=seq,
                )
            )
        image = _image(data)
        self._take_seq(event)
        self.last_timestamp = timestamp
        if event.get("prompt"):
            self.session.push_prompt_frame(event["prompt"], image, timestamp, seq)
        else:
            self.session.push_frame(image, timestamp, seq)
        await _send(self.websocket, {"type": "input.frame.accepted", "seq_no": seq})
        return bool(event.get("final"))

    async def _relay(self) -> None:
        async for event in self.session.aevents():
            for message in self._messages(event):
                await _send(self.websocket, message)
        await _send(self.websocket, {"type": "session.done", "usage": self.session.usage})
        with contextlib.suppress(RuntimeError):
            await self.websocket.close()

    def _messages(self, event: RealtimeEvent) -> list[dict]:
        turn = {"turn_id": event.turn}
        if event.kind == "ready":
            return [{"type": "session.ready"}]
        if event.kind == "frame_processed":
            return [{"type": "input.frame.processed", "seq_no": event.seq_no}]
        if event.kind == "text":
            return [{"type": "response.text.delta", "delta": event.text, **turn}]
        if event.kind == "silence":
            return [{"type": "response.turn.silence", **turn}]
        if event.kind == "interrupted":
            return [{"type": "response.turn.interrupted", **turn, "next_turn_id": event.turn + 1}]
        if event.kind == "response_done":
            done = [{"type": "response.done", **turn}]
            if self.include_usage:
                done.append({"type": "session.usage", **self._usage(event.usage)})
            return done
        if event.kind == "error":
            return [
                _error(
                    "invalid_request" if event.seq_no is not None else "response_failed",
                    event.text,
                    seq_no=event.seq_no,
                )
            ]
        return []

    def _usage(self, usage: dict) -> dict:
        limit = self.engine.model.config.text_config.max_position_embeddings
        used = usage["prompt_tokens"] + usage["completion_tokens"]
        return {
            "decoder_tokens": used,
            "encoder_tokens": usage["vision_tokens"],
            "encoder_kv_tokens": usage["vision_tokens"],
            "token_space_used": used,
            "context_limit": limit,
            "context_remaining": max(limit - used, 0),
        }


class _Refused(Exception):
    """An input refused with a specific error body; the session goes on."""

    def __init__(self, body: dict):
        super().__init__(body["error"]["message"])
        self.body = body


def _seq(message: dict):
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return json.loads(message.get("text") or "").get("seq_no")
    return None


class _OfficialSession:
    """One ``/v1/realtime`` connection (the official HF service protocol)."""

    def __init__(self, websocket: WebSocket, engine: Engine, config: RealtimeServiceConfig):
        self.websocket, self.engine, self.config = websocket, engine, config
        self.session: RealtimeSession | None = None
        self.video: asyncio.Task | None = None
        self.stop_video = asyncio.Event()

    async def run(self) -> None:
        try:
            start = json.loads(
                await asyncio.wait_for(self.websocket.receive_text(), self.config.start_timeout)
            )
            if not isinstance(start, dict) or start.get("type") != "start":
                raise ValueError('the first message must be {"type": "start", ...}')
            self.session = RealtimeSession(self.engine, self._config(start))
        except TimeoutError:
            await _send(
                self.websocket,
                {"type": "error", "message": f"no start message within {self.config.start_timeout:g} s"},
            )
            await self.websocket.close()
            return
        except WebSocketDisconnect:
            return
        except (ValueError, TypeError, MossVLError) as exc:
            await _send(self.websocket, {"type": "error", "message": f"bad start message: {exc}"})
            await self.websocket.close()
            return
        self.session.start()
        relay = asyncio.create_task(self._relay())
        drain = False
        try:
            drain = await self._receive()
        finally:
            self.stop_video.set()
            if self.video is not None:
                await self.video
            await run_in_threadpool(self.session.close, 60.0, drain)
            await relay

    def _config(self, start: dict) -> RealtimeConfig:
        sampling = {
            key: start[key] for key in ("temperature", "top_k", "top_p") if start.get(key) is not None
        }
        return RealtimeConfig(
            initial_prompt=start.get("prompt"),
            system_prompt=start.get("system_prompt"),
            frame_queue_size=start.get("frame_queue_size", 256),
            max_tokens_per_turn=start.get("max_tokens_per_second", 86400),
            max_new_tokens=start.get("max_new_tokens", 4096),
            do_sample=bool(start.get("do_sample", False)),
            repetition_penalty=start.get("repetition_penalty", 1.0),
            visual_window=self.config.visual_window,
            **sampling,
        )

    async def _receive(self) -> bool:
        """Handle client messages; True when the client asked to stop (drain the output first)."""
        while True:
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return False
            if message.get("type") == "websocket.disconnect":
                return False
            if message.get("bytes") is not None:
                await _send(
                    self.websocket,
                    {"type": "error", "message": "Binary frame must follow a type=frame metadata message"},
                )
                continue
            try:
                event = json.loads(message.get("text") or "")
                kind = event.get("type") if isinstance(event, dict) else None
                if kind == "stop":
                    await _send(self.websocket, {"type": "stopping"})
                    return True
                await self._handle(kind, event)
            except (ValueError, KeyError, TypeError, MossVLError) as exc:
                await _send(self.websocket, {"type": "error", "message": str(exc)})

    async def _handle(self, kind: str | None, event: dict) -> None:
        if kind == "ping":
            await _send(self.websocket, {"type": "pong"})
        elif kind == "prompt":
            text = event.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ValueError("prompt.text must not be empty")
            self.session.push_prompt(text)
            await _send(self.websocket, {"type": "prompt_ack"})
        elif kind == "frame":
            timestamp = _number(event.get("timestamp"), "timestamp")
            message = await self.websocket.receive()
            data = message.get("bytes")
            if data is None:
                raise ValueError("Binary frame must follow a type=frame metadata message")
            if len(data) > self.config.max_frame_bytes:
                raise ValueError("Frame exceeds max-frame-bytes")
            prompt = event.get("prompt") or event.get("text")
            image = _image(data)
            if prompt:
                dropped = self.session.push_prompt_frame(prompt, image, timestamp)
            else:
                dropped = self.session.push_frame(image, timestamp)
            await _send(
                self.websocket,
                {
                    "type": "frame_ack",
                    "dropped_oldest": dropped,
                    "pending_frames": self.session.pending_frames,
                },
            )
        elif kind == "video":
            self._start_video(event)
        elif kind == "stop_video":
            self.stop_video.set()
            await _send(self.websocket, {"type": "stop_video_ack"})
        else:
            raise ValueError(f"Unsupported message type {kind!r}")

    def _start_video(self, event: dict) -> None:
        root = self.config.allowed_local_dir
        path = Path(str(event.get("path", ""))).resolve()
        if root is None or not path.is_relative_to(root.resolve()) or not path.is_file():
            raise ValueError(
                "video.path must be a file under the server's allowed media folder (--allowed-local-media-path)"
            )
        if self.video is not None and not self.video.done():
            raise ValueError("a video is already playing; send stop_video first")
        self.stop_video = asyncio.Event()
        self.video = asyncio.create_task(
            self._play(
                path,
                _number(event.get("sample_fps", 1.0), "sample_fps"),
                float(event.get("playback_speed", 1.0)),
                event.get("max_frames"),
            )
        )

    async def _play(self, path: Path, fps: float, speed: float, max_frames) -> None:
        """Replay a server-side video into the session, paced to its media clock."""
        await _send(self.websocket, {"type": "video_started", "path": str(path)})
        sent = dropped = 0
        frames = stream_frames(path, fps, max_frames)
        started = time.monotonic()
        try:
            while not self.stop_video.is_set():
                item = await run_in_threadpool(next, frames, None)
                if item is None:
                    break
                frame, seconds = item
                if speed > 0:
                    await asyncio.sleep(max(0.0, started + seconds / speed - time.monotonic()))
                dropped += self.session.push_frame(frame, seconds)
                sent += 1
        except MossVLError as exc:
            await _send(self.websocket, {"type": "error", "message": str(exc)})
        await _send(self.websocket, {"type": "video_end", "frames_sent": sent, "frames_dropped": dropped})

    async def _relay(self) -> None:
        async for event in self.session.aevents():
            if event.kind == "ready":
                await _send(self.websocket, {"type": "ready"})
            elif event.kind == "error":
                await _send(self.websocket, {"type": "error", "message": event.text})
            elif text := raw_output(event):
                await _send(self.websocket, {"type": "output", "text": text})
        await _send(self.websocket, {"type": "session_end"})
        with contextlib.suppress(RuntimeError):
            await self.websocket.close()
