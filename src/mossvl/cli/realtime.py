"""`mossvl realtime`: stream a video, a synthetic scene or a camera into a realtime session and print what the model
says, and when (media-clock seconds), as the official realtime CLI does.

Sources: ``video`` (decoded and paced to its media clock; ``--playback-speed`` 2 is twice as fast, 0 no pacing),
``synthetic`` (a red box moving across a 640x360 frame) and ``camera`` (OpenCV, ``pip install mossvl[camera]``).
Control tokens are hidden unless ``--raw-output``; ``--show-silence`` prints ``[silence]``. Without ``--model``
the shipped realtime demo model runs (trained on 64x64 synthetic streams: try ``make demo-realtime``). The HTTP
server (``mossvl serve``) offers the same sessions over WebSockets.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..constants import REALTIME_SYSTEM_PROMPT
from . import common

DEFAULT_PROMPT = "What happens in the video? Describe each change as soon as you can see it; stay silent while nothing happens."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("source")
    source.add_argument("--source", choices=["video", "synthetic", "camera"], default="synthetic")
    source.add_argument("--video", type=Path, default=None, help="video file (--source video)")
    source.add_argument("--camera-index", type=int, default=0)
    source.add_argument("--sample-fps", type=float, default=1.0, help="frames per second sent (default 1)")
    source.add_argument(
        "--playback-speed", type=float, default=1.0, help="1 real time, 2 twice as fast, 0 unpaced"
    )
    source.add_argument("--max-frames", type=int, default=256, help="frames to send (0: no limit)")
    source.add_argument("--synthetic-duration", type=float, default=10.0, help="seconds of synthetic video")
    source.add_argument("--dry-run", action="store_true", help="only run the source (no model)")
    session = parser.add_argument_group("session")
    session.add_argument("--prompt", default=DEFAULT_PROMPT)
    session.add_argument("--system-prompt", default=REALTIME_SYSTEM_PROMPT)
    session.add_argument(
        "--prompt-frame-first", action="store_true", help="send the prompt with the first frame"
    )
    session.add_argument("--max-tokens-per-second", type=float, default=12.0, help="answer pace (default 12)")
    session.add_argument("--max-new-tokens", type=int, default=4096, help="allowance per input")
    session.add_argument("--frame-queue-size", type=int, default=256)
    session.add_argument("--visual-window", type=float, default=None, help="seconds of frames kept in memory")
    session.add_argument(
        "--silence-bias",
        type=float,
        default=None,
        help=common.SILENCE_BIAS_HELP,
    )
    common.add_kv_cache_argument(session)
    session.add_argument(
        "--drain-seconds", type=float, default=15.0, help="wait this long for output at the end"
    )
    session.add_argument(
        "--do-sample", action="store_true", help="sample (temperature 0.7, top-k 20, top-p 0.8)"
    )
    session.add_argument("--temperature", type=float, default=0.7)
    session.add_argument("--top-k", type=int, default=20)
    session.add_argument("--top-p", type=float, default=0.8)
    session.add_argument("--repetition-penalty", type=float, default=1.0)
    display = parser.add_argument_group("display")
    display.add_argument("--raw-output", action="store_true", help="print control tokens too")
    display.add_argument(
        "--show-silence", action="store_true", help="print [silence] when the model is silent"
    )
    common.add_model_arguments(parser)


def synthetic_frames(duration: float, fps: float, width: int = 640, height: int = 360) -> Iterator:
    """A red box moving left to right over a grey frame."""
    count = max(1, int(duration * fps))
    for index in range(count):
        frame = np.full((height, width, 3), 128, dtype=np.uint8)
        x = int((width - 80) * index / max(count - 1, 1))
        frame[140:220, x : x + 80] = (220, 30, 30)
        yield frame, index / fps


def camera_frames(index: int, fps: float) -> Iterator:
    try:
        import cv2
    except ImportError:
        raise SystemExit(
            "mossvl realtime: --source camera needs OpenCV (pip install 'mossvl[camera]')"
        ) from None
    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        raise SystemExit(f"mossvl realtime: camera {index} cannot be opened")
    start = time.monotonic()
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), time.monotonic() - start
            time.sleep(1.0 / fps)
    finally:
        capture.release()


def frames_of(args: argparse.Namespace) -> Iterator:
    from ..processing.video import stream_frames

    limit = args.max_frames or None
    if args.source == "video":
        if args.video is None:
            raise SystemExit("mossvl realtime: --source video needs --video FILE")
        frames = stream_frames(args.video, args.sample_fps, limit)
    elif args.source == "camera":
        frames = camera_frames(args.camera_index, args.sample_fps)
    else:
        frames = synthetic_frames(args.synthetic_duration, args.sample_fps)
    for count, item in enumerate(frames):
        if limit is not None and count >= limit:
            return
        yield item


def paced(frames: Iterator, speed: float) -> Iterator:
    """Frames released on their media clock (``speed`` 0: as fast as they come)."""
    start = time.monotonic()
    for frame, seconds in frames:
        if speed > 0:
            time.sleep(max(0.0, start + seconds / speed - time.monotonic()))
        yield frame, seconds


class Printer:
    """Prints session events as they arrive, each line labelled with the stream time of the frame it answers."""

    def __init__(self, raw: bool, show_silence: bool):
        self.raw, self.show_silence = raw, show_silence
        self.clock = 0.0
        # Stream seconds of the frames pushed under each seq_no: a reply is printed after later frames were pushed,
        # so the clock follows the frames the session has processed, not the ones sent.
        self.frame_times: dict[int, float] = {}

    def show(self, event) -> None:
        from ..inference.realtime import raw_output

        if event.kind == "frame_processed" and event.seq_no in self.frame_times:
            self.clock = self.frame_times[event.seq_no]
            # Frames that the full queue dropped never report: forget them together with this one.
            self.frame_times = {seq: t for seq, t in self.frame_times.items() if seq > event.seq_no}
        if self.raw:
            sys.stdout.write(raw_output(event))
        elif event.kind == "round_start":
            sys.stdout.write(f"\n[{self.clock:6.1f} s] Assistant: ")
        elif event.kind == "text":
            sys.stdout.write(event.text)
        elif event.kind == "silence" and self.show_silence:
            sys.stdout.write(f"\n[{self.clock:6.1f} s] [silence]")
        elif event.kind == "error":
            sys.stdout.write(f"\n[error] {event.text}")
        sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    from ..inference.api import demo_realtime_model_dir
    from ..inference.core import EngineConfig
    from ..inference.engine import Engine
    from ..inference.realtime import RealtimeConfig, RealtimeSession

    frames = paced(frames_of(args), args.playback_speed)
    if args.dry_run:
        count = sum(1 for _ in frames)
        print(f"mossvl realtime: source {args.source} produced {count} frames")
        return 0
    if args.checkpoint is None:
        args.checkpoint = str(demo_realtime_model_dir())
    model, processor = common.load_from_args(args)
    config = RealtimeConfig(
        initial_prompt=None if args.prompt_frame_first else args.prompt,
        system_prompt=args.system_prompt,
        frame_queue_size=args.frame_queue_size,
        max_tokens_per_turn=args.max_tokens_per_second,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        visual_window=args.visual_window,
        silence_bias=args.silence_bias,
    )
    engine = Engine(model, processor, EngineConfig(kv_cache_dtype=common.kv_cache_dtype_from_args(args)))
    session = RealtimeSession(engine, config)
    printer = Printer(args.raw_output, args.show_silence)
    session.start()
    for index, (frame, seconds) in enumerate(frames):
        printer.frame_times[index] = seconds
        if index == 0 and args.prompt_frame_first:
            session.push_prompt_frame(args.prompt, frame, seconds, seq_no=index)
        else:
            session.push_frame(frame, seconds, seq_no=index)
        while (event := session.poll_event(0)) is not None:
            printer.show(event)
    # The source ended: let the session answer what it still holds, printing as it goes.
    closer = threading.Thread(target=session.close, kwargs={"timeout": args.drain_seconds, "drain": True})
    closer.start()
    deadline = time.monotonic() + args.drain_seconds
    while (event := session.poll_event(max(0.0, deadline - time.monotonic()))) is not None:
        if event.kind == "closed":
            break
        printer.show(event)
    closer.join()
    session.close()
    sys.stdout.write("\n")
    return 0
