"""Play a scripted stream through a realtime session in lock-step: every frame, with the prompt that arrives with it,
is answered before the next frame is sent, which is what a session sees when the model keeps up with the stream.
Returns what the model said after each frame; realtime evaluation and tests are built on it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MediaError, MossVLError, QueryError
from ..processing.video import stream_frames
from .engine import Engine
from .realtime import RealtimeConfig, RealtimeSession


@dataclass
class ScriptedStream:
    """Frames ``(image, seconds)`` and the prompts that arrive with them: ``prompts[0]`` is sent before the first
    frame (the session's initial prompt); ``prompts[j]`` for j > 0 arrives together with frame j (a barge-in)."""

    frames: list[tuple[Any, float]]
    prompts: dict[int, str]
    system_prompt: str | None = None

    @classmethod
    def from_video(
        cls, path: str | Path, fps: float, prompts: dict[int, str], system_prompt: str | None = None
    ) -> ScriptedStream:
        """The frames of a clip sampled at ``fps`` (every frame of a clip recorded at that rate)."""
        frames = list(stream_frames(path, fps))
        if not frames:
            raise MediaError(f"video {path} has no frames")
        late = [j for j in prompts if j >= len(frames)]
        if late:
            raise QueryError(
                f"prompts at frames {late} but video {path} has {len(frames)} frames at {fps} fps"
            )
        return cls(frames, dict(prompts), system_prompt)


@dataclass
class FrameReply:
    """What the model said after frame ``frame`` (shown at ``seconds``): ``text``, empty when it stayed silent;
    ``latency`` is the seconds from sending the frame to the end of the reply."""

    frame: int
    seconds: float
    text: str
    latency: float
    events: list[str] = field(default_factory=list)

    @property
    def silent(self) -> bool:
        return not self.text.strip()


@dataclass
class PlayedStream:
    """One FrameReply per frame, and every token the session fed to the model, in order."""

    replies: list[FrameReply]
    fed_tokens: list[int]


def play_stream(
    engine: Engine,
    script: ScriptedStream,
    max_new_tokens: int = 64,
    timeout: float = 120.0,
    silence_bias: float | None = None,
) -> PlayedStream:
    """Run ``script`` through a new greedy realtime session on ``engine`` (``silence_bias``: RealtimeConfig's).

    Raises MossVLError when the session reports an error or a frame gets no reply within ``timeout`` seconds.
    """
    config = RealtimeConfig(
        initial_prompt=script.prompts.get(0),
        system_prompt=script.system_prompt,
        max_new_tokens=max_new_tokens,
        silence_bias=silence_bias,
    )
    session = RealtimeSession(engine, config)
    session.start()
    replies = []
    try:
        for index, (image, seconds) in enumerate(script.frames):
            sent = time.monotonic()
            if index > 0 and index in script.prompts:
                session.push_prompt_frame(script.prompts[index], image, seconds)
            else:
                session.push_frame(image, seconds)
            text, kinds = _reply(session, sent + timeout, index)
            replies.append(FrameReply(index, seconds, text, time.monotonic() - sent, kinds))
    finally:
        session.close()
    return PlayedStream(replies, session.fed_tokens)


def _reply(session: RealtimeSession, deadline: float, index: int) -> tuple[str, list[str]]:
    """The text of the session's next response, up to its ``response_done`` event."""
    text, kinds = [], []
    while True:
        event = session.poll_event(max(0.0, deadline - time.monotonic()))
        if event is None:
            raise MossVLError(f"frame {index}: no reply from the realtime session in time")
        if event.kind == "error":
            raise MossVLError(f"frame {index}: {event.text}")
        if event.kind == "closed":
            raise MossVLError(f"frame {index}: the realtime session closed")
        kinds.append(event.kind)
        if event.kind == "text":
            text.append(event.text)
        elif event.kind == "response_done":
            return "".join(text), kinds
