"""Seeded synthetic live streams: the training and evaluation data of the realtime demo model.

A stream is a 64x64 clip at 1 or 2 fps that a realtime session receives one frame at a time. A prompt asks to be
told when something happens; the target is ``<|silence|>`` after every frame except the first frame on which the
event is visible, which gets one short sentence saying what happened and when ("Red circle appeared at 3.5
seconds."). Every reply opens with the colour of the shape it is about: the choice between silence and a reply
is then one output token per colour, which can weigh the colour asked for against the colour seen. Tasks:

* ``appear``: "Tell me when a red shape appears." (shapes of other colours may appear too);
* ``vanish``: "Tell me when the blue square disappears." (other shapes may vanish too);
* ``recolor``: "Tell me when the green circle changes colour.";
* ``move``: "Say when anything moves." (shapes stand still, then one starts moving);
* ``cross``: "Tell me when the green triangle crosses the line." (a vertical line splits the frame).

Some streams never show the event (silence throughout) and some change the prompt mid-stream (barge-in): the new
prompt arrives together with a frame, and from then on only the new prompt's event is answered, including an
event of the old prompt that happens later. Events fall on frames 1 .. n-2, so every stream opens and ends with a
silent frame and an answer is never the last thing before a prompt or the end of a turn.

A share of the streams (``decoy_share``; none by default, so held-out splits keep the natural mix) carry decoys:
shapes that the prompt does not ask about have the same kind of event on other inner frames (shapes of other
colours appear, vanish, change colour or cross the line; a barge-in stream also gets the old prompt's event after
the switch), so that staying silent has to be learned as "not what was asked" rather than "nothing happened yet".
There are one or two decoys beside the target's event and two or three when the target has none, so that the
number of events tells nothing; where the prompt names a kind of shape, the decoys are of that kind, so that only
the colour tells them apart. Without decoys, about half the streams still show another shape's event, at any
frame.

A share of the streams (``narrate_share``; none by default) ask for every change instead ("Tell me whenever
anything changes."): each frame that shows one gets a sentence per change, read off the frames ("Red circle
turned green at 2.0 seconds."). Task replies can mostly copy the asked colour and shape from the prompt; these make
the model say which shape changed, from what it sees, and they are what teaches it to see a shape start moving.

Each stream is written as an MP4 (one frame per 1/fps seconds) and two records: a realtime training record in
the ``conversations`` format, whose assistant turns interleave one ``<|video|>`` per frame with ``<|silence|>`` or
the reply and whose video is one ``[time]`` segment per frame, and an evaluation record (``mossvl eval``) with the
prompts, the frames they arrive with, and the events to be answered.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..constants import REALTIME_SYSTEM_PROMPT, SILENCE, VIDEO_PLACEHOLDER
from .synthetic import (
    COLORS,
    SAMPLES_DIR,
    SHAPES,
    SPLITS,
    Shape,
    draw_shapes,
    pick,
    place_boxes,
    write_frames,
)

STREAM_TASKS = ("appear", "vanish", "recolor", "move", "cross")
STREAM_FPS = (1, 2)
MIN_STREAM_FRAMES, MAX_STREAM_FRAMES = 8, 14
FRAME_SIZE = 64
LINE_X = 31  # the 2-pixel line of the ``cross`` task covers columns 31 and 32
LINE_COLOR = (70, 70, 70)
# Shares of the streams that never show the event, and that change the prompt mid-stream (``move`` never does:
# "anything moves" has no second target to switch to).
NO_EVENT_SHARE = 0.25
BARGE_IN_SHARE = 0.2

_PROMPTS = {
    "appear": ("Tell me when a {color} shape appears.", "Let me know when something {color} shows up."),
    "vanish": ("Tell me when the {name} disappears.", "Let me know when the {name} is gone."),
    "recolor": (
        "Tell me when the {name} changes colour.",
        "Let me know when the {name} turns another colour.",
    ),
    "move": ("Say when anything moves.", "Tell me when something starts moving."),
    "cross": ("Tell me when the {name} crosses the line.", "Let me know when the {name} passes the line."),
}
# Task replies and narration say a change in the same words.
_REPLIES = {
    "appear": "{name} appeared at {time} seconds.",
    "vanish": "{name} vanished at {time} seconds.",
    "recolor": "{name} turned {color} at {time} seconds.",
    "move": "{name} started moving at {time} seconds.",
    "cross": "{name} crossed the line at {time} seconds.",
}
_NARRATE_PROMPTS = ("Tell me whenever anything changes.", "Describe every change as it happens.")


def reply_time(seconds: float) -> str:
    """A time as replies say it: the one-decimal form of the frame timestamps the model reads."""
    return f"{seconds:.1f}"


@dataclass(frozen=True)
class StreamScene:
    """Frame-by-frame shapes of a clip at ``fps`` frames per second, on a plain background (plus the line)."""

    background: int
    fps: int
    frames: tuple[tuple[Shape, ...], ...]
    line: bool = False

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def timestamps(self) -> list[float]:
        return [index / self.fps for index in range(self.num_frames)]

    def render(self, index: int) -> np.ndarray:
        """RGB pixels (H, W, 3) uint8 of frame `index`; shapes are drawn over the line."""
        pixels = np.full((FRAME_SIZE, FRAME_SIZE, 3), self.background, dtype=np.uint8)
        if self.line:
            pixels[:, LINE_X : LINE_X + 2] = LINE_COLOR
        return draw_shapes(pixels, self.frames[index])


@dataclass(frozen=True)
class Watch:
    """What one prompt asks, and the reply its event gets (with a ``{time}`` field)."""

    prompt: str
    reply: str


@dataclass
class Stream:
    """One stream: the clip, the prompts with the frame each arrives with (the first is sent before any frame),
    and the reply due after each frame that gets one (every other frame gets ``<|silence|>``)."""

    task: str
    kind: str  # "event", "no_event" or "barge_in"
    scene: StreamScene
    prompts: list[tuple[int, str]]
    replies: dict[int, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# Scenes: each builder draws the frames of a scene in which target i has its event on frame events[i] (None: never)
# ---------------------------------------------------------------------------------------------------------------------

Frames = list[list[Shape]]


def _colors(rng: np.random.Generator, count: int) -> list[str]:
    return [list(COLORS)[int(i)] for i in rng.choice(len(COLORS), size=count, replace=False)]


def _kinds(rng: np.random.Generator, count: int) -> list[str]:
    return [SHAPES[int(i)] for i in rng.choice(len(SHAPES), size=count, replace=False)]


def _placed(rng: np.random.Generator, colors: list[str], kinds: list[str]) -> list[Shape]:
    """Non-overlapping shapes of the given colours and kinds."""
    sizes = [int(rng.integers(14, 19)) for _ in colors]
    corners = place_boxes(rng, sizes, FRAME_SIZE, FRAME_SIZE)
    return [Shape(c, k, size, x, y) for c, k, size, (x, y) in zip(colors, kinds, sizes, corners, strict=True)]


def _show(frames: Frames, shape: Shape, start: int = 0, stop: int | None = None) -> None:
    for index in range(start, len(frames) if stop is None else stop):
        frames[index].append(shape)


def _reply(task: str, **names: str) -> str:
    """The reply to `task`'s event, opening with the shape's colour (``{time}`` left to fill)."""
    reply = _REPLIES[task].format(time="{time}", **names)
    return reply[0].upper() + reply[1:]


def _watch(rng: np.random.Generator, task: str, **names: str) -> Watch:
    return Watch(pick(rng, _PROMPTS[task]).format(**names), _reply(task, **names))


def _decoy_frame(rng: np.random.Generator, frames: Frames, taken: list[int | None]) -> int:
    """The frame of a decoy's event: an inner frame that no event in `taken` has (it is added there), as likely
    before a target's event as after it, so that the order of events tells nothing about which one was asked
    for."""
    frame = int(pick(rng, [index for index in range(1, len(frames) - 1) if index not in taken]))
    taken.append(frame)
    return frame


def _decoy_count(rng: np.random.Generator, events: list[int | None]) -> int:
    """One or two decoys beside a target's event, two or three when no target has one: the number of events
    tells nothing."""
    return int(rng.integers(1, 3)) + (1 if all(e is None for e in events) else 0)


def build_appear(
    rng: np.random.Generator, frames: Frames, events: list[int | None], decoy: bool = False
) -> list[Watch]:
    extra = min(_decoy_count(rng, events), len(COLORS) - len(events)) if decoy else int(rng.integers(0, 2))
    colors = _colors(rng, len(events) + extra)
    shapes = _placed(rng, colors, [pick(rng, SHAPES) for _ in colors])
    watches = []
    taken = list(events)
    for shape, event in zip(shapes, events, strict=False):
        watches.append(_watch(rng, "appear", color=shape.color, name=shape.name))
        if event is not None:
            _show(frames, shape, event)
    for shape in shapes[len(events) :]:  # a shape of another colour, there from the start or appearing later
        start = _decoy_frame(rng, frames, taken) if decoy else int(rng.integers(0, len(frames)))
        _show(frames, shape, start)
    return watches


def build_vanish(
    rng: np.random.Generator, frames: Frames, events: list[int | None], decoy: bool = False
) -> list[Watch]:
    extra = min(_decoy_count(rng, events), len(COLORS) - len(events)) if decoy else int(rng.integers(0, 2))
    colors = _colors(rng, len(events) + extra)
    kind = pick(rng, SHAPES)
    kinds = [pick(rng, SHAPES) for _ in events]
    if decoy:  # the decoys share the first target's kind, so that only the colour tells them apart
        kinds = [kind, *kinds[1:]] + [kind] * extra
    else:
        kinds += [pick(rng, SHAPES) for _ in range(extra)]
    shapes = _placed(rng, colors, kinds)
    watches = []
    taken = list(events)
    for shape, event in zip(shapes, events, strict=False):
        watches.append(_watch(rng, "vanish", name=shape.name))
        _show(frames, shape, 0, event)
    for shape in shapes[len(events) :]:  # another shape, which stays or vanishes at any frame
        if decoy:
            _show(frames, shape, 0, _decoy_frame(rng, frames, taken))
        else:
            _show(frames, shape, 0, int(rng.integers(1, len(frames))) if rng.random() < 0.5 else None)
    return watches


def build_recolor(
    rng: np.random.Generator, frames: Frames, events: list[int | None], decoy: bool = False
) -> list[Watch]:
    extra = min(_decoy_count(rng, events), 3 - len(events)) if decoy else int(rng.integers(0, 2))
    colors = _colors(rng, len(events) + extra)
    kinds = [pick(rng, SHAPES)] * len(colors) if decoy else _kinds(rng, len(colors))
    shapes = _placed(rng, colors, kinds)
    watches = []
    taken = list(events)
    for i, shape in enumerate(shapes):
        new = pick(rng, [c for c in COLORS if c not in colors])
        if i < len(events):
            event = events[i]
            watches.append(_watch(rng, "recolor", name=shape.name, color=new))
        elif decoy:
            event = _decoy_frame(rng, frames, taken)
        else:  # another shape, which may change colour: not the one asked about
            event = int(rng.integers(1, len(frames))) if rng.random() < 0.5 else None
        _show(frames, shape, 0, event)
        if event is not None:
            _show(frames, Shape(new, shape.shape, shape.size, shape.x, shape.y), event)
    return watches


_DIRECTIONS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def build_move(
    rng: np.random.Generator, frames: Frames, events: list[int | None], decoy: bool = False
) -> list[Watch]:
    """Still shapes; one starts moving 6-8 px per frame on frame events[0] and stops at the border. There is no
    decoy: any movement is the event."""
    (event,) = events
    count = int(rng.integers(1, 3))
    shapes = _placed(rng, _colors(rng, count), [pick(rng, SHAPES) for _ in range(count)])
    for shape in shapes[1:]:
        _show(frames, shape)
    mover = shapes[0]
    if event is None:
        _show(frames, mover)
        return [_watch(rng, "move", name=mover.name)]
    room = {
        (-1, 0): mover.x - 1,
        (1, 0): FRAME_SIZE - 1 - mover.x - mover.size,
        (0, -1): mover.y - 1,
        (0, 1): FRAME_SIZE - 1 - mover.y - mover.size,
    }
    (dx, dy) = pick(rng, [d for d in _DIRECTIONS if room[d] >= 12])
    speed = int(rng.integers(6, 9))
    for index, shapes_now in enumerate(frames):
        step = min(room[(dx, dy)], speed * max(0, index - event + 1))
        shapes_now.append(
            Shape(mover.color, mover.shape, mover.size, mover.x + dx * step, mover.y + dy * step)
        )
    return [_watch(rng, "move", name=mover.name)]


def build_cross(
    rng: np.random.Generator, frames: Frames, events: list[int | None], decoy: bool = False
) -> list[Watch]:
    """Shapes in separate rows move horizontally towards the line at 8-10 px per frame; a target's centre is at
    least 4 px short of the line on frame event-1 and at least 4 px past it on frame event. A target without an
    event stops 6-12 px short of the line or does not move; a decoy (the other row) crosses it."""
    count = 2 if len(events) == 2 or decoy else 1 + int(rng.integers(0, 2))  # two rows at most
    colors = _colors(rng, count)
    rows = [int(rng.integers(2, 15)), int(rng.integers(34, 47))] if count == 2 else [int(rng.integers(2, 47))]
    if rng.random() < 0.5:
        rows.reverse()
    watches = []
    last = len(frames) - 1
    shared_kind = pick(rng, SHAPES)
    taken = list(events)
    for i in range(count):
        size, kind = int(rng.integers(14, 17)), shared_kind if decoy else pick(rng, SHAPES)
        event = events[i] if i < len(events) else _decoy_frame(rng, frames, taken) if decoy else None
        side = -1 if rng.random() < 0.5 else 1  # starts left (-1) or right (+1) of the line
        middle = LINE_X + 1.0  # between the line's two columns
        speed = int(rng.integers(8, 11))
        if event is not None:
            short = int(rng.integers(4, speed - 3))
            centres = [middle + side * (short + speed * (event - 1 - j)) for j in range(len(frames))]
        else:
            gap = int(rng.integers(6, 13))
            centres = [middle + side * (gap + speed * (last - j)) for j in range(len(frames))]
            if rng.random() < 0.5:
                centres = [middle + side * gap] * len(frames)
        lowest, highest = 1 + size / 2, FRAME_SIZE - 1 - size / 2
        for shapes_now, centre in zip(frames, centres, strict=True):
            x = round(min(max(centre, lowest), highest) - size / 2)
            shapes_now.append(Shape(colors[i], kind, size, x, rows[i]))
        if i < len(events):
            watches.append(_watch(rng, "cross", name=f"{colors[i]} {kind}"))
    return watches


STREAM_BUILDERS: dict[str, Callable[[np.random.Generator, Frames, list[int | None], bool], list[Watch]]] = {
    "appear": build_appear,
    "vanish": build_vanish,
    "recolor": build_recolor,
    "move": build_move,
    "cross": build_cross,
}


# ---------------------------------------------------------------------------------------------------------------------
# Narration: every change of a scene, read off its frames
# ---------------------------------------------------------------------------------------------------------------------


def _same_place(a: Shape, b: Shape) -> bool:
    return (a.shape, a.size, a.x, a.y) == (b.shape, b.size, b.x, b.y)


def _change(kind: str, shape: Shape, **names: str) -> str:
    return _reply(kind, name=shape.name, **names)


def _centre_side(shape: Shape) -> int:
    return -1 if shape.x + shape.size / 2 < LINE_X + 1 else 1


def frame_changes(scene: StreamScene, index: int) -> list[str]:
    """What changed from frame ``index - 1`` to frame `index`, one sentence per change (no ``{time}`` filled).

    A shape is the same shape when it keeps its kind, size and place (it changed colour) or its kind, size and
    colour (it moved). With the line, a move is news when the shape's centre crosses it; without, when the shape
    starts to move (two frames back it stood where it was one frame back)."""
    before, now = scene.frames[index - 1], scene.frames[index]
    gone = [shape for shape in before if shape not in now]
    changes = []
    for shape in (shape for shape in now if shape not in before):
        recolored = [g for g in gone if _same_place(g, shape)]
        moved = [g for g in gone if (g.shape, g.size, g.color) == (shape.shape, shape.size, shape.color)]
        if recolored:
            gone.remove(recolored[0])
            changes.append(_change("recolor", recolored[0], color=shape.color))
        elif moved:
            gone.remove(moved[0])
            if scene.line:
                if _centre_side(moved[0]) != _centre_side(shape):
                    changes.append(_change("cross", shape))
            elif index < 2 or any(_same_place(moved[0], g) for g in scene.frames[index - 2]):
                changes.append(_change("move", shape))
        else:
            changes.append(_change("appear", shape))
    changes += [_change("vanish", shape) for shape in gone]
    return changes


def narrated(rng: np.random.Generator, stream: Stream) -> Stream | None:
    """The stream's clip with a prompt that asks for every change: each frame that shows one gets the sentences of
    `frame_changes`. None when the last frame shows a change (a reply never ends a turn)."""
    scene = stream.scene
    replies = {}
    for index in range(1, scene.num_frames):
        changes = frame_changes(scene, index)
        if changes:
            replies[index] = " ".join(change.format(time=reply_time(index / scene.fps)) for change in changes)
    if scene.num_frames - 1 in replies:
        return None
    return Stream(stream.task, "narrate", scene, [(0, pick(rng, _NARRATE_PROMPTS))], replies)


# ---------------------------------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------------------------------


def stream_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of stream `index` of `split` (streams of the image/video datasets use other seeds)."""
    return np.random.default_rng([seed, 100 + SPLITS.index(split), index])


def make_stream(
    seed: int,
    split: str,
    index: int,
    tasks: Sequence[str] = STREAM_TASKS,
    decoy_share: float = 0.0,
    narrate_share: float = 0.0,
    frames: tuple[int, int] = (MIN_STREAM_FRAMES, MAX_STREAM_FRAMES),
) -> Stream:
    """Stream `index` of `split`; tasks take turns, kinds (event, no event, barge-in) are drawn, a `decoy_share`
    of the streams get decoys and a `narrate_share` of them ask for every change instead (see the module
    docstring). The clip has `frames` (least, most) frames."""
    rng = stream_rng(seed, split, index)
    stream = _task_stream(rng, tasks[index % len(tasks)], decoy_share, frames)
    # Drawn after the scene, so that a share of 0 leaves every stream as it was.
    if narrate_share > 0 and rng.random() < narrate_share:
        return narrated(rng, stream) or stream
    return stream


def _task_stream(rng: np.random.Generator, task: str, decoy_share: float, frames: tuple[int, int]) -> Stream:
    num_frames = int(rng.integers(frames[0], frames[1] + 1))
    fps = int(pick(rng, STREAM_FPS))
    draw = rng.random()
    # Drawn only when asked for, so that a share of 0 leaves every stream as it was.
    decoy = decoy_share > 0 and rng.random() < decoy_share
    if task != "move" and draw < BARGE_IN_SHARE:
        return _barge_in_stream(rng, task, num_frames, fps, decoy)
    kind = "no_event" if draw > 1 - NO_EVENT_SHARE else "event"
    event = None if kind == "no_event" else int(rng.integers(1, num_frames - 1))
    frames: Frames = [[] for _ in range(num_frames)]
    (watch,) = STREAM_BUILDERS[task](rng, frames, [event], decoy)
    stream = Stream(task, kind, _scene(rng, task, fps, frames), [(0, watch.prompt)])
    if event is not None:
        stream.replies[event] = watch.reply.format(time=reply_time(event / fps))
    return stream


def _barge_in_stream(rng: np.random.Generator, task: str, num_frames: int, fps: int, decoy: bool) -> Stream:
    """The prompt changes on frame b (3 .. n-3). The first target's event comes before b-1 (answered), after b
    (ignored: its prompt is no longer in force) or never; the second's on b .. n-2 or never. With a decoy the
    first target's event always comes after b, besides any decoy shape."""
    switch = int(rng.integers(3, num_frames - 2))
    draw = None if decoy else rng.random()
    if draw is not None and draw < 0.5:
        first = int(rng.integers(1, switch - 1))
    elif draw is None or draw < 0.75:
        first = int(rng.integers(switch, num_frames - 1))
    else:
        first = None
    second = int(rng.integers(switch, num_frames - 1)) if rng.random() < 0.75 else None
    frames: Frames = [[] for _ in range(num_frames)]
    old, new = STREAM_BUILDERS[task](rng, frames, [first, second], decoy)
    stream = Stream(task, "barge_in", _scene(rng, task, fps, frames), [(0, old.prompt), (switch, new.prompt)])
    if first is not None and first < switch:
        stream.replies[first] = old.reply.format(time=reply_time(first / fps))
    if second is not None:
        stream.replies[second] = new.reply.format(time=reply_time(second / fps))
    return stream


def _scene(rng: np.random.Generator, task: str, fps: int, frames: Frames) -> StreamScene:
    return StreamScene(
        int(rng.integers(215, 246)), fps, tuple(tuple(f) for f in frames), line=task == "cross"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Records and files
# ---------------------------------------------------------------------------------------------------------------------


def write_stream_video(stream: Stream, path: str | os.PathLike) -> None:
    scene = stream.scene
    frames = (scene.render(index) for index in range(scene.num_frames))
    write_frames(frames, scene.fps, FRAME_SIZE, FRAME_SIZE, path)


def training_record(stream: Stream, media: str, system_prompt: str = REALTIME_SYSTEM_PROMPT) -> dict:
    """The realtime SFT record: system, then per prompt a user turn and an assistant turn with one ``<|video|>``
    per frame, each followed by ``<|silence|>`` or the reply. An assistant turn after a barge-in opens with
    ``<|silence|>``, as a realtime session writes it when a prompt and a frame arrive together."""
    conversations = [{"role": "system", "content": system_prompt}]
    bounds = [start for start, _ in stream.prompts] + [stream.scene.num_frames]
    for i, (start, prompt) in enumerate(stream.prompts):
        turn = SILENCE if i > 0 else ""
        for frame in range(start, bounds[i + 1]):
            turn += VIDEO_PLACEHOLDER + stream.replies.get(frame, SILENCE)
        conversations += [{"role": "user", "content": prompt}, {"role": "assistant", "content": turn}]
    segments = [[t] for t in stream.scene.timestamps]
    return {"conversations": conversations, "videos": [{"video_path": media, "segments": segments}]}


def evaluation_record(
    stream: Stream, media: str, stream_id: str, system_prompt: str = REALTIME_SYSTEM_PROMPT
) -> dict:
    """The ``mossvl eval`` record of a stream: its clip, prompts and the events to be answered."""
    return {
        "id": stream_id,
        "task": stream.task,
        "kind": stream.kind,
        "video": media,
        "fps": stream.scene.fps,
        "num_frames": stream.scene.num_frames,
        "system_prompt": system_prompt,
        "prompts": [{"frame": frame, "text": text} for frame, text in stream.prompts],
        "events": [
            {"frame": frame, "time": frame / stream.scene.fps, "reply": reply}
            for frame, reply in sorted(stream.replies.items())
        ],
    }


def generate_streams(
    out_dir: str | os.PathLike,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    tasks: Sequence[str] = STREAM_TASKS,
    progress: bool = True,
    decoy_share: float = 0.0,
    aid_splits: Sequence[str] = ("train",),
    narrate_share: float = 0.0,
    aid_frames: Sequence[int] = (MIN_STREAM_FRAMES, MAX_STREAM_FRAMES),
    aid_tasks: Sequence[str] | None = None,
) -> dict:
    """Generate all splits into `out_dir` and return the manifest (also written to ``streams.json``). In the
    `aid_splits`, a `decoy_share` of the streams get decoys, a `narrate_share` ask for every change (see
    `make_stream`), clips have `aid_frames` (least, most) frames and the tasks take turns in the order of
    `aid_tasks` (default `tasks`; a task named twice gets twice the streams); the other splits keep the natural
    mix.

    Layout: ``media/<split>/<split>-NNNNNN.mp4``; ``<split>.jsonl`` realtime training records;
    ``<split>_streams.jsonl`` evaluation records. Paths inside are relative to `out_dir`.
    """
    aid_tasks = tuple(tasks if aid_tasks is None else aid_tasks)
    unknown = [task for task in (*tasks, *aid_tasks) if task not in STREAM_BUILDERS]
    if unknown or not tasks or not aid_tasks:
        raise ValueError(f"unknown stream tasks {unknown}; choose from {list(STREAM_TASKS)}")
    least, most = aid_frames
    if not 6 <= least <= most:  # barge-ins and decoys need four inner frames
        raise ValueError(f"aid_frames must be (least, most) with 6 <= least <= most, got {aid_frames}")
    for name, share in (("decoy_share", decoy_share), ("narrate_share", narrate_share)):
        if not 0 <= share <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {share}")
    unknown = [split for split in aid_splits if split not in SPLITS]
    if unknown:
        raise ValueError(f"unknown aid splits {unknown}; choose from {list(SPLITS)}")
    out_dir = Path(out_dir)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    manifest = {
        "generator": "mossvl.data.synthetic_streams",
        "seed": seed,
        "tasks": list(tasks),
        "decoy_share": {split: decoy_share for split in aid_splits},
        "narrate_share": {split: narrate_share for split in aid_splits},
        "frames": {split: list(aid_frames) for split in aid_splits},
        "aid_tasks": {split: list(aid_tasks) for split in aid_splits},
        "splits": {},
    }
    with tqdm(total=sum(counts.values()), desc="streams", unit="stream", disable=not progress) as bar:
        for split, count in counts.items():
            media_dir = out_dir / "media" / split
            media_dir.mkdir(parents=True, exist_ok=True)
            training, evaluation = [], []
            for index in range(count):
                if split in aid_splits:
                    stream = make_stream(
                        seed, split, index, aid_tasks, decoy_share, narrate_share, (least, most)
                    )
                else:
                    stream = make_stream(seed, split, index, tasks)
                stream_id = f"{split}-{index:06d}"
                write_stream_video(stream, media_dir / f"{stream_id}.mp4")
                media = f"media/{split}/{stream_id}.mp4"
                training.append(training_record(stream, media))
                evaluation.append(evaluation_record(stream, media, stream_id))
                bar.update()
            _write_jsonl(out_dir / f"{split}.jsonl", training)
            _write_jsonl(out_dir / f"{split}_streams.jsonl", evaluation)
            manifest["splits"][split] = {
                "streams": count,
                "training": f"{split}.jsonl",
                "evaluation": f"{split}_streams.jsonl",
                "kinds": {
                    k: sum(r["kind"] == k for r in evaluation)
                    for k in ("event", "no_event", "barge_in", "narrate")
                },
            }
    (out_dir / "streams.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------------------------------
# The bundled sample stream
# ---------------------------------------------------------------------------------------------------------------------

SAMPLE_STREAM = "stream.mp4"


def sample_stream() -> Stream:
    """The bundled clip of ``make demo-realtime``: at 2 fps a blue square appears at 1.5 s and a red circle at
    3.5 s; the prompt asks about red shapes, so only the circle calls for a reply."""
    square = Shape("blue", "square", 16, 8, 10)
    circle = Shape("red", "circle", 18, 38, 36)
    frames = [((square,) if index >= 3 else ()) + ((circle,) if index >= 7 else ()) for index in range(12)]
    prompt = _PROMPTS["appear"][0].format(color="red")
    stream = Stream("appear", "event", StreamScene(232, 2, tuple(frames)), [(0, prompt)])
    stream.replies[7] = _reply("appear", name=circle.name).format(time=reply_time(3.5))
    return stream


def write_sample_stream(out_dir: str | os.PathLike = SAMPLES_DIR) -> Path:
    """Write the bundled sample stream and its evaluation record ``stream.json``; returns the record's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stream = sample_stream()
    write_stream_video(stream, out_dir / SAMPLE_STREAM)
    path = out_dir / "stream.json"
    record = evaluation_record(stream, SAMPLE_STREAM, "sample-stream")
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mossvl.data.synthetic_streams", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, help="output folder of the dataset")
    parser.add_argument("--train", type=int, default=4000, help="training streams (default 4000)")
    parser.add_argument("--val", type=int, default=0, help="validation streams (default 0)")
    parser.add_argument("--test", type=int, default=300, help="test streams (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", choices=STREAM_TASKS, default=list(STREAM_TASKS))
    parser.add_argument(
        "--decoy-share", type=float, default=0.0, help="share of streams with a decoy event (default 0)"
    )
    parser.add_argument(
        "--narrate-share",
        type=float,
        default=0.0,
        help="share of streams whose prompt asks for every change (default 0)",
    )
    parser.add_argument(
        "--aid-splits",
        nargs="+",
        choices=SPLITS,
        default=["train"],
        help="the splits that --decoy-share, --narrate-share, --aid-frames and --aid-tasks apply to (default: "
        "train)",
    )
    parser.add_argument(
        "--aid-frames",
        nargs=2,
        type=int,
        default=[MIN_STREAM_FRAMES, MAX_STREAM_FRAMES],
        metavar=("LEAST", "MOST"),
        help=f"frames per clip in the aid splits (default {MIN_STREAM_FRAMES} {MAX_STREAM_FRAMES}; at least 6, "
        "since barge-ins and decoys need four inner frames)",
    )
    parser.add_argument(
        "--aid-tasks",
        nargs="+",
        choices=STREAM_TASKS,
        help="the order in which tasks take turns in the aid splits (default --tasks; name a task twice to "
        "give it twice the streams)",
    )
    parser.add_argument(
        "--sample",
        nargs="?",
        const=SAMPLES_DIR,
        type=Path,
        metavar="DIR",
        help=f"write the bundled sample stream instead (default folder {SAMPLES_DIR})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.sample is not None:
        print(write_sample_stream(args.sample))
        return 0
    if args.out is None:
        parser.error("--out is required (or use --sample)")
    manifest = generate_streams(
        args.out,
        args.train,
        args.val,
        args.test,
        args.seed,
        args.tasks,
        not args.quiet,
        args.decoy_share,
        args.aid_splits,
        args.narrate_share,
        tuple(args.aid_frames),
        args.aid_tasks,
    )
    print(json.dumps(manifest["splits"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
