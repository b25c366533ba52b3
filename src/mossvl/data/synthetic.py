"""Seeded synthetic shape images and videos with question/answer pairs: the training and evaluation data of the demo model.

Images (PNG) show coloured circles, squares and triangles on a light background; videos (H.264 MP4, yuv420p) show
such shapes appearing, moving and vanishing at known frames, at integer and non-integer frame rates.

Tasks and their canonical answers:

* ``color`` (one shape: "red"), ``shape`` ("circle"), ``count`` (1-4 shapes: "3"), ``position`` (where shape A is
  relative to shape B: "left" / "right" / "above" / "below").
* ``event`` (what happens to a shape: "appears" / "moves" / "vanishes"), ``order`` (which of two shapes appears first:
  "red circle"; the record lists both as ``choices``), ``direction`` ("left" / "right" / "up" / "down"), ``temporal``
  (when a shape appears or vanishes: "2.3 seconds", with the float in ``answer_seconds``).

Time rule. The processor samples a video at ``video_fps`` = 1.0 with the frame indices and timestamps of
:func:`sampled_frames` (spec §9.2) and prints ``{t:.1f} seconds`` before each frame. Every event is placed exactly on a
frame that the processor samples, so the model sees the state change between two consecutive sampled frames. The
ground truth of a ``temporal`` question is the first sampled timestamp at which the event is visible (the shape is
present, or gone), written exactly as the processor prints it; it is also the true time of the event. None of the
frame rates used here puts a timestamp on a rounding tie of the one-decimal print.

Each sample draws from its own generator seeded by (seed, split, index), so splits never share a seed and a sample
does not depend on how many others are generated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..constants import MAX_FRAMES, MIN_FRAMES, VIDEO_FPS

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
}
SHAPES = ("circle", "square", "triangle")
IMAGE_TASKS = ("color", "shape", "count", "position")
VIDEO_TASKS = ("event", "order", "direction", "temporal")
TASKS = IMAGE_TASKS + VIDEO_TASKS
SPLITS = ("train", "val", "test")
# 29.97 fps is NTSC's exact 30000/1001.
VIDEO_FRAME_RATES = (Fraction(5), Fraction(15, 2), Fraction(10), Fraction(25, 2), Fraction(30000, 1001))
VIDEO_SECONDS = (4, 5, 6, 7, 8)
VIDEO_SIZE = 64
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "samples"

_TEMPLATES = {
    "color": ("What color is the shape?", "Which color is the object in the image?"),
    "shape": ("What shape is shown in the image?", "Is the object a circle, a square or a triangle?"),
    "count": ("How many shapes are in the image?", "Count the shapes in the picture."),
    "position": (
        "Where is the {a} relative to the {b}?",
        "Is the {a} left of, right of, above or below the {b}?",
    ),
    "event": ("What happens to the {a} in the video?", "Does the {a} appear, move or vanish?"),
    "order": ("Which appears first, the {a} or the {b}?", "Which shape shows up first: the {a} or the {b}?"),
    "direction": (
        "Which way does the {a} move?",
        "In which direction does the {a} move: left, right, up or down?",
    ),
    "temporal": ("When does the {a} {verb}?", "At what time does the {a} {verb}?"),
}


def sampled_frames(
    num_frames: int,
    fps: Fraction | float,
    video_fps: float = VIDEO_FPS,
    min_frames: int = MIN_FRAMES,
    max_frames: int = MAX_FRAMES,
) -> tuple[list[int], list[float]]:
    """Indices and timestamps (seconds) of the frames the processor samples from a clip of `num_frames` at `fps`.

    duration = num_frames / fps; n = ceil(duration * video_fps - 1e-6) clamped to [min_frames, min(max_frames,
    num_frames)]; indices = unique(int(linspace(0, num_frames - 1, n))); timestamp = index / fps.
    """
    count = math.ceil(num_frames / float(fps) * video_fps - 1e-6)
    count = max(min_frames, min(count, max_frames, num_frames))
    indices = np.unique(np.linspace(0, num_frames - 1, count).astype(np.int32)).tolist()
    return indices, [index / float(fps) for index in indices]


def format_seconds(seconds: float) -> str:
    """The answer text of a temporal question, in the processor's one-decimal timestamp format."""
    return f"{seconds:.1f} seconds"


# ---------------------------------------------------------------------------------------------------------------------
# Scenes and rendering
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One shape on a canvas; (x, y) is its top-left corner in pixels."""

    color: str
    shape: str
    size: int
    x: int
    y: int

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class ImageScene:
    width: int
    height: int
    background: int
    shapes: tuple[Shape, ...]


@dataclass(frozen=True)
class Track:
    """A shape over time: visible on frames [appear, vanish), moving linearly from `start` to `end` (top-left corners)
    between frames `move_start` and `move_end`, still before and after."""

    color: str
    shape: str
    size: int
    start: tuple[int, int]
    end: tuple[int, int] | None = None
    move_start: int = 0
    move_end: int = 0
    appear: int = 0
    vanish: int | None = None

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    def at(self, frame: int) -> Shape | None:
        """The shape as drawn on `frame`, or None when it is not visible."""
        if frame < self.appear or (self.vanish is not None and frame >= self.vanish):
            return None
        x, y = self.start
        if self.end is not None and frame > self.move_start:
            progress = min(1.0, (frame - self.move_start) / max(1, self.move_end - self.move_start))
            x = round(x + (self.end[0] - x) * progress)
            y = round(y + (self.end[1] - y) * progress)
        return Shape(self.color, self.shape, self.size, x, y)


@dataclass(frozen=True)
class VideoScene:
    width: int
    height: int
    background: int
    fps: Fraction
    num_frames: int
    tracks: tuple[Track, ...]

    @property
    def duration(self) -> float:
        return self.num_frames / float(self.fps)

    def frame(self, index: int) -> ImageScene:
        shapes = tuple(s for s in (track.at(index) for track in self.tracks) if s is not None)
        return ImageScene(self.width, self.height, self.background, shapes)


@lru_cache(maxsize=256)
def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean (size, size) mask of a shape filling its box; triangles point up."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    centre = size / 2
    if shape == "circle":
        return (xx - centre) ** 2 + (yy - centre) ** 2 <= centre**2
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":
        return np.abs(xx - centre) <= yy / 2
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(scene: ImageScene) -> np.ndarray:
    """RGB pixels (H, W, 3) uint8 of a scene."""
    canvas = np.full((scene.height, scene.width, 3), scene.background, dtype=np.uint8)
    return draw_shapes(canvas, scene.shapes)


def draw_shapes(canvas: np.ndarray, shapes: Sequence[Shape]) -> np.ndarray:
    """Draw `shapes` onto RGB `canvas` in order (in place) and return it."""
    for s in shapes:
        canvas[s.y : s.y + s.size, s.x : s.x + s.size][shape_mask(s.shape, s.size)] = COLORS[s.color]
    return canvas


def write_image(scene: ImageScene, path: str | os.PathLike) -> None:
    Image.fromarray(render(scene)).save(path, format="PNG")


def write_video(scene: VideoScene, path: str | os.PathLike) -> None:
    """Encode the scene as H.264 yuv420p MP4 at its exact (possibly fractional) frame rate, one frame per pts tick."""
    frames = (render(scene.frame(index)) for index in range(scene.num_frames))
    write_frames(frames, scene.fps, scene.width, scene.height, path)


def write_frames(
    frames: Iterable[np.ndarray], fps: Fraction | int, width: int, height: int, path: str | os.PathLike
) -> None:
    """Encode RGB frames (H, W, 3) uint8 as H.264 yuv420p MP4 at `fps`, one frame per pts tick."""
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # One encoder thread keeps the output byte-for-byte reproducible and leaves the cores to the caller.
        stream.codec_context.thread_count = 1
        stream.options = {"preset": "ultrafast", "crf": "18"}
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


# ---------------------------------------------------------------------------------------------------------------------
# Tasks: each builder draws a scene and a question from `rng`
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One generated question with its scene; `answer_seconds` only for temporal questions."""

    task: str
    question: str
    answer: str
    scene: ImageScene | VideoScene
    choices: list[str] | None = None
    answer_seconds: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def is_video(self) -> bool:
        return isinstance(self.scene, VideoScene)


def pick(rng: np.random.Generator, options: Sequence):
    """One of `options`, drawn uniformly."""
    return options[int(rng.integers(len(options)))]


def _background(rng: np.random.Generator) -> int:
    return int(rng.integers(215, 246))


def _question(rng: np.random.Generator, task: str, **names: str) -> str:
    return pick(rng, _TEMPLATES[task]).format(**names)


def _two_colors(rng: np.random.Generator) -> tuple[str, str]:
    first, second = rng.choice(len(COLORS), size=2, replace=False)
    colors = list(COLORS)
    return colors[int(first)], colors[int(second)]


def _separate(boxes: list[tuple[int, int, int]], x: int, y: int, size: int, gap: int = 4) -> bool:
    return all(
        x >= bx + bs + gap or bx >= x + size + gap or y >= by + bs + gap or by >= y + size + gap
        for bx, by, bs in boxes
    )


def place_boxes(rng: np.random.Generator, sizes: list[int], width: int, height: int) -> list[tuple[int, int]]:
    """Top-left corners for boxes of `sizes` that keep a gap between each other (rejection sampling)."""
    while True:
        boxes: list[tuple[int, int, int]] = []
        for size in sizes:
            for _ in range(100):
                x, y = int(rng.integers(2, width - size - 1)), int(rng.integers(2, height - size - 1))
                if _separate(boxes, x, y, size):
                    boxes.append((x, y, size))
                    break
            else:
                break
        if len(boxes) == len(sizes):
            return [(x, y) for x, y, _ in boxes]


def _single_shape_image(rng: np.random.Generator) -> ImageScene:
    size = int(rng.integers(20, 33))
    x, y = int(rng.integers(2, 64 - size - 1)), int(rng.integers(2, 64 - size - 1))
    shape = Shape(pick(rng, list(COLORS)), pick(rng, SHAPES), size, x, y)
    return ImageScene(64, 64, _background(rng), (shape,))


def make_color(rng: np.random.Generator) -> Sample:
    scene = _single_shape_image(rng)
    return Sample("color", _question(rng, "color"), scene.shapes[0].color, scene)


def make_shape(rng: np.random.Generator) -> Sample:
    scene = _single_shape_image(rng)
    return Sample("shape", _question(rng, "shape"), scene.shapes[0].shape, scene)


def make_count(rng: np.random.Generator) -> Sample:
    count = int(rng.integers(1, 5))
    sizes = [int(rng.integers(14, 21)) for _ in range(count)]
    corners = place_boxes(rng, sizes, 96, 96)
    shapes = tuple(
        Shape(pick(rng, list(COLORS)), pick(rng, SHAPES), size, x, y)
        for size, (x, y) in zip(sizes, corners, strict=True)
    )
    return Sample("count", _question(rng, "count"), str(count), ImageScene(96, 96, _background(rng), shapes))


_RELATIONS = {"left": (0, -1), "right": (0, 1), "above": (1, -1), "below": (1, 1)}


def make_position(rng: np.random.Generator) -> Sample:
    relation = pick(rng, list(_RELATIONS))
    axis, sign = _RELATIONS[relation]
    sizes = [int(rng.integers(16, 23)) for _ in range(2)]
    # Along the asked axis the shapes sit in opposite thirds; across it they stay within 12 px, so one relation wins.
    near, far = int(rng.integers(4, 18)), int(rng.integers(56, 96 - max(sizes) - 3))
    main = (near, far) if sign < 0 else (far, near)
    base = int(rng.integers(10, 96 - max(sizes) - 10))
    cross = (base, int(np.clip(base + rng.integers(-6, 7), 2, 96 - max(sizes) - 2)))
    colors, kinds = _two_colors(rng), (pick(rng, SHAPES), pick(rng, SHAPES))
    shapes = []
    for i in range(2):
        x, y = (cross[i], main[i]) if axis == 1 else (main[i], cross[i])
        shapes.append(Shape(colors[i], kinds[i], sizes[i], x, y))
    question = _question(rng, "position", a=shapes[0].name, b=shapes[1].name)
    return Sample("position", question, relation, ImageScene(96, 96, _background(rng), tuple(shapes)))


def _clip(rng: np.random.Generator) -> tuple[Fraction, int, list[int], list[float]]:
    fps = pick(rng, VIDEO_FRAME_RATES)
    num_frames = round(pick(rng, VIDEO_SECONDS) * fps)
    indices, times = sampled_frames(num_frames, fps)
    return fps, num_frames, indices, times


def _video(rng: np.random.Generator, fps: Fraction, num_frames: int, tracks: list[Track]) -> VideoScene:
    return VideoScene(VIDEO_SIZE, VIDEO_SIZE, _background(rng), fps, num_frames, tuple(tracks))


def _random_track(
    rng: np.random.Generator, color: str | None = None, corner: tuple[int, int] | None = None
) -> Track:
    size = int(rng.integers(14, 19))
    if corner is None:
        corner = (int(rng.integers(2, VIDEO_SIZE - size - 1)), int(rng.integers(2, VIDEO_SIZE - size - 1)))
    return Track(color or pick(rng, list(COLORS)), pick(rng, SHAPES), size, corner)


def make_event(rng: np.random.Generator) -> Sample:
    fps, num_frames, indices, _ = _clip(rng)
    event = pick(rng, ("appears", "moves", "vanishes"))
    track = _random_track(rng)
    if event == "appears":
        track = replace(track, appear=indices[int(rng.integers(1, len(indices)))])
    elif event == "vanishes":
        track = replace(track, vanish=indices[int(rng.integers(1, len(indices)))])
    else:
        first = int(rng.integers(0, len(indices) - 1))
        last = int(rng.integers(first + 1, len(indices)))
        track = _moving(rng, track, pick(rng, list(_DIRECTIONS)), indices[first], indices[last])
    question = _question(rng, "event", a=track.name)
    return Sample("event", question, event, _video(rng, fps, num_frames, [track]))


def make_order(rng: np.random.Generator) -> Sample:
    fps, num_frames, indices, _ = _clip(rng)
    first, second = sorted(rng.choice(len(indices), size=2, replace=False).tolist())
    size = 18
    corners = place_boxes(rng, [size, size], VIDEO_SIZE, VIDEO_SIZE)
    colors = _two_colors(rng)
    tracks = [_random_track(rng, colors[i], corners[i]) for i in range(2)]
    tracks = [replace(t, appear=indices[k]) for t, k in zip(tracks, (first, second), strict=True)]
    choices = [t.name for t in tracks]
    if rng.random() < 0.5:
        choices.reverse()
    question = _question(rng, "order", a=choices[0], b=choices[1])
    return Sample("order", question, tracks[0].name, _video(rng, fps, num_frames, tracks), choices=choices)


_DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _moving(rng: np.random.Generator, track: Track, direction: str, move_start: int, move_end: int) -> Track:
    """`track` moved 24-36 px in `direction` between the two frames, its start chosen so it stays on the canvas."""
    dx, dy = _DIRECTIONS[direction]
    distance = int(rng.integers(24, 37))
    low, high = 2, VIDEO_SIZE - track.size - 2 - distance
    along = int(rng.integers(low, high + 1))
    begin = along if dx + dy > 0 else along + distance
    x, y = track.start
    start = (begin, y) if dx else (x, begin)
    end = (start[0] + dx * distance, start[1] + dy * distance)
    return replace(track, start=start, end=end, move_start=move_start, move_end=move_end)


def make_direction(rng: np.random.Generator) -> Sample:
    fps, num_frames, _, _ = _clip(rng)
    direction = pick(rng, list(_DIRECTIONS))
    track = _moving(rng, _random_track(rng), direction, 0, num_frames - 1)
    question = _question(rng, "direction", a=track.name)
    return Sample("direction", question, direction, _video(rng, fps, num_frames, [track]))


def make_temporal(rng: np.random.Generator) -> Sample:
    fps, num_frames, indices, times = _clip(rng)
    verb = pick(rng, ("appear", "vanish"))
    k = int(rng.integers(1, len(indices)))
    track = _random_track(rng)
    track = replace(track, appear=indices[k]) if verb == "appear" else replace(track, vanish=indices[k])
    seconds = float(f"{times[k]:.1f}")
    question = _question(rng, "temporal", a=track.name, verb=verb)
    scene = _video(rng, fps, num_frames, [track])
    return Sample(
        "temporal", question, format_seconds(seconds), scene, answer_seconds=seconds, extra={"event": verb}
    )


TASK_BUILDERS: dict[str, Callable[[np.random.Generator], Sample]] = {
    "color": make_color,
    "shape": make_shape,
    "count": make_count,
    "position": make_position,
    "event": make_event,
    "order": make_order,
    "direction": make_direction,
    "temporal": make_temporal,
}


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample `index` of `split`; (seed, split, index) streams never overlap."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def make_sample(seed: int, split: str, index: int, tasks: Sequence[str] = TASKS) -> Sample:
    """Sample `index` of `split`; tasks take turns so every split is balanced."""
    return TASK_BUILDERS[tasks[index % len(tasks)]](sample_rng(seed, split, index))


# ---------------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------------


def write_media(sample: Sample, path: str | os.PathLike) -> None:
    if sample.is_video:
        write_video(sample.scene, path)
    else:
        write_image(sample.scene, path)


def sample_records(sample: Sample, media: str, sample_id: str) -> tuple[dict, dict]:
    """The (training record, question record) of a sample whose media file is at the relative path `media`."""
    images, videos = ([], [media]) if sample.is_video else ([media], [])
    training = {"prompt": sample.question, "response": sample.answer, "images": images, "videos": videos}
    question = {
        "id": sample_id,
        "task": sample.task,
        "question": sample.question,
        "images": images,
        "videos": videos,
    }
    question["answer"] = sample.answer
    if sample.choices is not None:
        question["choices"] = sample.choices
    if sample.answer_seconds is not None:
        question["answer_seconds"] = sample.answer_seconds
    if sample.is_video:
        question["duration"] = round(sample.scene.duration, 4)
        question["fps"] = str(sample.scene.fps)
    return training, {**question, **sample.extra}


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def generate_dataset(
    out_dir: str | os.PathLike,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    tasks: Sequence[str] = TASKS,
    progress: bool = True,
) -> dict:
    """Generate all splits into `out_dir` and return the manifest (also written to ``dataset.json``).

    Layout: ``media/<split>/<split>-NNNNNN.{png,mp4}``; ``<split>.jsonl`` in the fine-tuning prompt/response format;
    ``<split>_questions.jsonl`` as an evaluation question set. Paths inside are relative to `out_dir`.
    """
    unknown = [task for task in tasks if task not in TASK_BUILDERS]
    if unknown or not tasks:
        raise ValueError(f"unknown tasks {unknown}; choose from {list(TASKS)}")
    out_dir = Path(out_dir)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    manifest = {"generator": "mossvl.data.synthetic", "seed": seed, "tasks": list(tasks), "splits": {}}
    with tqdm(total=sum(counts.values()), desc="synthetic", unit="sample", disable=not progress) as bar:
        for split, count in counts.items():
            media_dir = out_dir / "media" / split
            media_dir.mkdir(parents=True, exist_ok=True)
            training, questions = [], []
            for index in range(count):
                sample = make_sample(seed, split, index, tasks)
                sample_id = f"{split}-{index:06d}"
                name = f"{sample_id}.mp4" if sample.is_video else f"{sample_id}.png"
                write_media(sample, media_dir / name)
                records = sample_records(sample, f"media/{split}/{name}", sample_id)
                training.append(records[0])
                questions.append(records[1])
                bar.update()
            _write_jsonl(out_dir / f"{split}.jsonl", training)
            _write_jsonl(out_dir / f"{split}_questions.jsonl", questions)
            per_task = {task: sum(q["task"] == task for q in questions) for task in tasks}
            manifest["splits"][split] = {
                "samples": count,
                "training": f"{split}.jsonl",
                "questions": f"{split}_questions.jsonl",
                "tasks": per_task,
            }
    (out_dir / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


# ---------------------------------------------------------------------------------------------------------------------
# The README samples
# ---------------------------------------------------------------------------------------------------------------------


def readme_samples() -> list[tuple[str, Sample]]:
    """The fixed media of the README's main command: (file name, sample), built by hand within the training ranges.

    They ask what the shipped demo model answers reliably (colour, counting, when and what happens in a clip) and were
    checked against it; relative position, which it gets right only half of the time, is left to the evaluation.
    """
    single = ImageScene(64, 64, 232, (Shape("green", "triangle", 26, 18, 16),))
    color = Sample("color", _TEMPLATES["color"][0], "green", single)
    shapes = (
        Shape("red", "circle", 18, 10, 12),
        Shape("blue", "square", 16, 62, 20),
        Shape("green", "triangle", 20, 36, 64),
    )
    count = Sample("count", _TEMPLATES["count"][0], "3", ImageScene(96, 96, 235, shapes))
    fps, num_frames = Fraction(15, 2), 45
    indices, times = sampled_frames(num_frames, fps)
    track = Track("blue", "circle", 16, (24, 22), appear=indices[2])
    clip = VideoScene(VIDEO_SIZE, VIDEO_SIZE, 232, fps, num_frames, (track,))
    seconds = float(f"{times[2]:.1f}")
    temporal = Sample(
        "temporal",
        _TEMPLATES["temporal"][0].format(a=track.name, verb="appear"),
        format_seconds(seconds),
        clip,
        answer_seconds=seconds,
    )
    event = Sample("event", _TEMPLATES["event"][0].format(a=track.name), "appears", clip)
    return [("shape.png", color), ("shapes.png", count), ("clip.mp4", temporal), ("clip.mp4", event)]


def write_readme_samples(out_dir: str | os.PathLike = SAMPLES_DIR) -> Path:
    """Write the README's sample media and their question set ``questions.json``; returns the question file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    questions, written = [], set()
    for name, sample in readme_samples():
        if name not in written:
            write_media(sample, out_dir / name)
            written.add(name)
        questions.append(sample_records(sample, name, f"sample-{sample.task}")[1])
    path = out_dir / "questions.json"
    path.write_text(json.dumps(questions, indent=2) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mossvl.data.synthetic", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, help="output folder of the dataset")
    parser.add_argument("--train", type=int, default=2000, help="training samples (default 2000)")
    parser.add_argument("--val", type=int, default=200, help="validation samples (default 200)")
    parser.add_argument("--test", type=int, default=400, help="test samples (default 400)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="tasks to generate (default all)"
    )
    parser.add_argument(
        "--readme-samples",
        nargs="?",
        const=SAMPLES_DIR,
        type=Path,
        metavar="DIR",
        help=f"write the README sample media instead (default folder {SAMPLES_DIR})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.readme_samples is not None:
        print(write_readme_samples(args.readme_samples))
        return 0
    if args.out is None:
        parser.error("--out is required (or use --readme-samples)")
    manifest = generate_dataset(
        args.out, args.train, args.val, args.test, args.seed, args.tasks, not args.quiet
    )
    print(json.dumps(manifest["splits"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
