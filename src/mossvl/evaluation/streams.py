"""Realtime evaluation: play held-out streams through realtime sessions and measure when the model speaks.

A stream record (``mossvl.data.synthetic_streams`` writes them) has ``id``, ``task``, ``video`` (a clip recorded at
``fps``; path relative to the file's folder), ``fps``, ``num_frames``, ``prompts`` (``{"frame", "text"}``; the
first at frame 0 is the initial prompt, a later one arrives together with its frame) and ``events``
(``{"frame", "time", "reply"}``: the first frame on which something the prompt in force asks about is visible,
and the expected reply), plus optional ``system_prompt`` and ``kind``.

Scoring, per stream: each non-silent reply is matched to the earliest unmatched event whose frame is at most that
reply's frame and at least ``tolerance`` frames before it; a matched event is detected, with a delay of
(reply frame − event frame) frames, or seconds between their timestamps. Replies that match no event are false
alarms. Recall = detected / events, precision = matched replies / replies, and the false-alarm rate is the share
of event-free streams (no event to answer) in which the model said anything. A detected reply is ``exact`` when its
text is the expected reply, and ``timed`` when the time it states is the event's.

The chance baseline speaks after each frame with the probability that a frame carries an event in the set, and is
scored the same way (averaged over 200 seeded runs).
"""

from __future__ import annotations

import json
import os
import re
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import MediaError, MossVLError, QueryError
from ..inference.engine import Engine
from ..inference.realtime_script import ScriptedStream, play_stream
from .report import percent, write_report_files

DEFAULT_TOLERANCE_FRAMES = 2
CHANCE_RUNS = 200
_SECONDS = re.compile(r"(\d+(?:\.\d+)?)\s*seconds?")


@dataclass(frozen=True)
class StreamEvent:
    frame: int
    time: float
    reply: str


@dataclass(frozen=True)
class StreamCase:
    """One evaluation stream; ``video`` is an absolute path."""

    id: str
    task: str
    kind: str
    video: str
    fps: float
    num_frames: int
    prompts: dict[int, str]
    events: tuple[StreamEvent, ...]
    system_prompt: str | None = None


def load_streams(path: str | os.PathLike, check_media: bool = True) -> list[StreamCase]:
    """Read a JSON file (one record or a list) or a JSONL file of stream records; raises QueryError / MediaError
    naming the bad record."""
    path = Path(path)
    if not path.is_file():
        raise QueryError(f"stream file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
        records = whole if isinstance(whole, list) else [whole]
    except json.JSONDecodeError:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise QueryError(f"stream file {path}: invalid JSON ({exc})") from exc
    if not records:
        raise QueryError(f"stream file {path} holds no records")
    return [_case(record, i, path.parent, check_media) for i, record in enumerate(records)]


def _case(record: object, index: int, base: Path, check_media: bool) -> StreamCase:
    where = f"stream record {index}"
    if not isinstance(record, dict):
        raise QueryError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in ("video", "fps", "num_frames", "prompts", "events") if key not in record]
    if missing:
        raise QueryError(f"{where}: missing fields {missing}")
    try:
        prompts = {int(p["frame"]): str(p["text"]) for p in record["prompts"]}
        events = tuple(
            StreamEvent(int(e["frame"]), float(e["time"]), str(e["reply"]))
            for e in sorted(record["events"], key=lambda e: e["frame"])
        )
        fps, num_frames = float(record["fps"]), int(record["num_frames"])
    except (KeyError, TypeError, ValueError) as exc:
        raise QueryError(f"{where}: malformed prompts, events, fps or num_frames ({exc!r})") from exc
    if 0 not in prompts:
        raise QueryError(f"{where}: the first prompt must arrive at frame 0")
    outside = [f for f in [*prompts, *(e.frame for e in events)] if not 0 <= f < num_frames]
    if outside:
        raise QueryError(f"{where}: frames {outside} are outside the stream's {num_frames} frames")
    video = Path(record["video"])
    video = video if video.is_absolute() else base / video
    if check_media and not video.is_file():
        raise MediaError(f"{where}: video {video} does not exist")
    return StreamCase(
        id=str(record.get("id", index)),
        task=str(record.get("task", "default")),
        kind=str(record.get("kind", "event" if events else "no_event")),
        video=str(video),
        fps=fps,
        num_frames=num_frames,
        prompts=prompts,
        events=events,
        system_prompt=record.get("system_prompt"),
    )


# ----- scoring ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamResult:
    """What the model said after each frame (``""``: silence) and how it scored."""

    id: str
    task: str
    kind: str
    fps: float
    replies: list[str]
    events: int
    detected: int
    delays_frames: list[int]
    false_alarms: list[int]
    exact: int
    timed: int

    @property
    def responses(self) -> int:
        return sum(bool(reply.strip()) for reply in self.replies)


def score_stream(case: StreamCase, replies: Sequence[str], tolerance: int) -> StreamResult:
    """Match the replies of one stream to its events (see the module docstring)."""
    if len(replies) != case.num_frames:
        raise MossVLError(f"stream {case.id}: {len(replies)} replies for {case.num_frames} frames")
    pending = list(case.events)
    delays, alarms, exact, timed = [], [], 0, 0
    for frame, reply in enumerate(replies):
        if not reply.strip():
            continue
        match = next((e for e in pending if e.frame <= frame <= e.frame + tolerance), None)
        if match is None:
            alarms.append(frame)
            continue
        pending.remove(match)
        delays.append(frame - match.frame)
        exact += " ".join(reply.split()) == " ".join(match.reply.split())
        stated = _SECONDS.search(reply)
        timed += stated is not None and abs(float(stated.group(1)) - match.time) < 0.5 / case.fps
    return StreamResult(
        id=case.id,
        task=case.task,
        kind=case.kind,
        fps=case.fps,
        replies=list(replies),
        events=len(case.events),
        detected=len(delays),
        delays_frames=delays,
        false_alarms=alarms,
        exact=exact,
        timed=timed,
    )


@dataclass(frozen=True)
class StreamMetrics:
    """Detection figures of a set of streams (``None`` where there is nothing to divide by)."""

    streams: int
    events: int
    detected: int
    recall: float | None
    responses: int
    precision: float | None
    median_delay_frames: float | None
    median_delay_seconds: float | None
    event_free_streams: int
    false_alarm_rate: float | None
    exact: float | None
    timed: float | None


def metrics(results: Sequence[StreamResult]) -> StreamMetrics:
    events = sum(r.events for r in results)
    detected = sum(r.detected for r in results)
    responses = sum(r.responses for r in results)
    delays = [d for r in results for d in r.delays_frames]
    seconds = [d / r.fps for r in results for d in r.delays_frames]
    quiet = [r for r in results if r.events == 0]
    return StreamMetrics(
        streams=len(results),
        events=events,
        detected=detected,
        recall=detected / events if events else None,
        responses=responses,
        precision=detected / responses if responses else None,
        median_delay_frames=statistics.median(delays) if delays else None,
        median_delay_seconds=statistics.median(seconds) if seconds else None,
        event_free_streams=len(quiet),
        false_alarm_rate=sum(r.responses > 0 for r in quiet) / len(quiet) if quiet else None,
        exact=sum(r.exact for r in results) / detected if detected else None,
        timed=sum(r.timed for r in results) / detected if detected else None,
    )


def chance_metrics(
    cases: Sequence[StreamCase], tolerance: int, runs: int = CHANCE_RUNS, seed: int = 0
) -> dict:
    """Mean recall, precision and false-alarm rate of a responder that speaks after each frame with the probability
    that a frame carries an event, over ``runs`` seeded runs."""
    rate = sum(len(c.events) for c in cases) / max(1, sum(c.num_frames for c in cases))
    rng = np.random.default_rng(seed)
    totals: dict[str, list[float]] = {"recall": [], "precision": [], "false_alarm_rate": []}
    for _ in range(runs):
        results = [
            score_stream(c, ["x" if speak else "" for speak in rng.random(c.num_frames) < rate], tolerance)
            for c in cases
        ]
        figures = metrics(results)
        for key in totals:
            value = getattr(figures, key)
            if value is not None:
                totals[key].append(value)
    return {key: float(np.mean(values)) if values else None for key, values in totals.items()} | {
        "rate": rate
    }


# ----- running and reporting -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamReport:
    results: list[StreamResult]
    tolerance: int
    chance: dict

    @property
    def overall(self) -> StreamMetrics:
        return metrics(self.results)

    def per_task(self) -> dict[str, StreamMetrics]:
        tasks = dict.fromkeys(r.task for r in self.results)
        return {task: metrics([r for r in self.results if r.task == task]) for task in tasks}

    def per_kind(self) -> dict[str, StreamMetrics]:
        kinds = dict.fromkeys(r.kind for r in self.results)
        return {kind: metrics([r for r in self.results if r.kind == kind]) for kind in kinds}

    def to_dict(self) -> dict:
        return {
            "tolerance_frames": self.tolerance,
            "overall": asdict(self.overall),
            "tasks": {task: asdict(m) for task, m in self.per_task().items()},
            "kinds": {kind: asdict(m) for kind, m in self.per_kind().items()},
            "chance": self.chance,
        }

    def to_markdown(self) -> str:
        header = (
            "| streams | n | events | recall | precision | median delay | false alarms | exact reply | right time |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        )
        rows = [("**all**", self.overall)]
        rows += list(self.per_task().items()) + [(f"*{k}*", m) for k, m in self.per_kind().items()]
        lines = [_row(name, m) for name, m in rows]
        chance = (
            f"| chance (speaks after {100 * self.chance['rate']:.1f}% of frames) | | | "
            f"{percent(self.chance['recall'])} | {percent(self.chance['precision'])} | | "
            f"{percent(self.chance['false_alarm_rate'])} | | |"
        )
        return header + "\n".join([*lines, chance]) + "\n"

    def write(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write results.json, results.md, predictions.jsonl and eval.png into `out_dir`; returns their paths."""
        from .plot import plot_stream_report  # matplotlib is slow to import; only writing a report needs it

        return write_report_files(out_dir, self, lambda path: plot_stream_report(self, path))


def _row(name: str, m: StreamMetrics) -> str:
    delay = (
        "–"
        if m.median_delay_frames is None
        else f"{m.median_delay_frames:g} fr ({m.median_delay_seconds:g} s)"
    )
    alarms = "–" if m.false_alarm_rate is None else f"{percent(m.false_alarm_rate)} of {m.event_free_streams}"
    return (
        f"| {name} | {m.streams} | {m.events} | {percent(m.recall)} | {percent(m.precision)} | {delay} | {alarms} "
        f"| {percent(m.exact)} | {percent(m.timed)} |"
    )


PlayFn = Callable[[StreamCase], list[str]]


def evaluate_streams(
    cases: Sequence[StreamCase],
    play: PlayFn,
    tolerance: int = DEFAULT_TOLERANCE_FRAMES,
    concurrency: int = 8,
    progress: bool = True,
) -> StreamReport:
    """Play every stream with ``play`` (one reply per frame), ``concurrency`` streams at a time, and score them."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    with (
        ThreadPoolExecutor(concurrency, thread_name_prefix="mossvl-eval") as pool,
        tqdm(total=len(cases), desc="streams", unit="stream", disable=not progress) as bar,
    ):
        futures = [pool.submit(play, case) for case in cases]
        results = []
        for case, future in zip(cases, futures, strict=True):
            results.append(score_stream(case, future.result(), tolerance))
            bar.update()
    return StreamReport(results, tolerance, chance_metrics(cases, tolerance))


def session_player(engine: Engine, max_new_tokens: int = 64, silence_bias: float | None = None) -> PlayFn:
    """A PlayFn that runs each stream through a lock-step realtime session on ``engine`` (``silence_bias``:
    RealtimeConfig's; None keeps the checkpoint's)."""

    def play(case: StreamCase) -> list[str]:
        script = ScriptedStream.from_video(case.video, case.fps, case.prompts, case.system_prompt)
        if len(script.frames) != case.num_frames:
            raise MediaError(
                f"stream {case.id}: video {case.video} gives {len(script.frames)} frames at {case.fps} fps, "
                f"the record says {case.num_frames}"
            )
        return [
            reply.text
            for reply in play_stream(engine, script, max_new_tokens, silence_bias=silence_bias).replies
        ]

    return play
