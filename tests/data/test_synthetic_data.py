"""Synthetic dataset: processor time rule, task/scene consistency, files, determinism, real MP4s, README samples."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from mossvl.data import synthetic
from mossvl.data.synthetic import (
    COLORS,
    SAMPLES_DIR,
    TASKS,
    Track,
    VideoScene,
    generate_dataset,
    make_sample,
    render,
    sampled_frames,
    write_readme_samples,
    write_video,
)
from mossvl.evaluation import load_questions


@pytest.mark.parametrize(
    ("num_frames", "fps", "indices", "text"),
    [
        (47, 10, [0, 11, 23, 34, 46], "0.0 1.1 2.3 3.4 4.6"),  # golden vid_a
        (30, 6, [0, 7, 14, 21, 29], "0.0 1.2 2.3 3.5 4.8"),  # golden vid_b
        (120, Fraction(30000, 1001), [0, 29, 59, 89, 119], "0.0 1.0 2.0 3.0 4.0"),  # 4.004 s -> 5 frames
        (45, Fraction(15, 2), [0, 8, 17, 26, 35, 44], "0.0 1.1 2.3 3.5 4.7 5.9"),
    ],
)
def test_sampled_frames_follow_the_processor_rule(num_frames, fps, indices, text):
    got_indices, times = sampled_frames(num_frames, fps)
    assert got_indices == indices
    assert " ".join(f"{t:.1f}" for t in times) == text


def _first_sampled(track: Track, scene: VideoScene, visible: bool) -> float:
    """First sampled timestamp at which the track's visibility equals `visible`."""
    indices, times = sampled_frames(scene.num_frames, scene.fps)
    return next(t for i, t in zip(indices, times, strict=True) if (track.at(i) is not None) == visible)


def _centre(shape) -> tuple[float, float]:
    return shape.x + shape.size / 2, shape.y + shape.size / 2


def _check_inside(scene) -> None:
    shapes = (
        scene.shapes
        if hasattr(scene, "shapes")
        else [s for i in range(scene.num_frames) for s in scene.frame(i).shapes]
    )
    for s in shapes:
        assert 0 <= s.x <= scene.width - s.size and 0 <= s.y <= scene.height - s.size


@pytest.mark.parametrize("task", TASKS)
def test_answers_agree_with_the_scene(task):
    for index in range(TASKS.index(task), 48 * len(TASKS), len(TASKS)):
        sample = make_sample(7, "train", index)
        assert sample.task == task
        scene = sample.scene
        _check_inside(scene)
        if task in ("color", "shape"):
            (shape,) = scene.shapes
            assert sample.answer == getattr(shape, task)
            pixel = render(scene)[shape.y + shape.size * 3 // 4, shape.x + shape.size // 2]
            assert tuple(pixel) == COLORS[shape.color]
        elif task == "count":
            assert int(sample.answer) == len(scene.shapes)
            boxes = [(s.x, s.y, s.size) for s in scene.shapes]
            for i, (x, y, size) in enumerate(boxes):
                assert synthetic._separate(boxes[:i], x, y, size)
        elif task == "position":
            (ax, ay), (bx, by) = (_centre(s) for s in scene.shapes)
            expected = {"left": ax < bx, "right": ax > bx, "above": ay < by, "below": ay > by}
            horizontal = abs(ax - bx) > abs(ay - by)
            assert expected[sample.answer] and horizontal == (sample.answer in ("left", "right"))
            assert sample.question.index(scene.shapes[0].name) < sample.question.index(scene.shapes[1].name)
        elif task == "event":
            (track,) = scene.tracks
            indices, _ = sampled_frames(scene.num_frames, scene.fps)
            states = [track.at(i) for i in indices]
            seen = [s is not None for s in states]
            if sample.answer == "appears":
                assert not seen[0] and seen[-1] and seen == sorted(seen)
            elif sample.answer == "vanishes":
                assert seen[0] and not seen[-1] and seen == sorted(seen, reverse=True)
            else:
                assert all(seen) and len({(s.x, s.y) for s in states}) > 1
        elif task == "order":
            first, second = scene.tracks
            assert sample.answer == first.name and sorted(sample.choices) == sorted([first.name, second.name])
            assert _first_sampled(first, scene, True) < _first_sampled(second, scene, True)
        elif task == "direction":
            (track,) = scene.tracks
            start, end = _centre(track.at(0)), _centre(track.at(scene.num_frames - 1))
            dx, dy = end[0] - start[0], end[1] - start[1]
            moved = {"left": dx < -20, "right": dx > 20, "up": dy < -20, "down": dy > 20}
            assert moved[sample.answer] and (dx == 0 or dy == 0)
        else:
            (track,) = scene.tracks
            verb = sample.extra["event"]
            seconds = _first_sampled(track, scene, verb == "appear")
            assert sample.answer_seconds == float(f"{seconds:.1f}") > 0
            assert sample.answer == f"{seconds:.1f} seconds"


def test_generate_dataset_writes_loadable_deterministic_splits(tmp_path):
    manifest = generate_dataset(tmp_path / "a", 16, 8, 8, seed=3, progress=False)
    generate_dataset(tmp_path / "b", 16, 8, 8, seed=3, progress=False)
    root = tmp_path / "a"
    assert manifest["splits"]["train"]["tasks"] == {task: 2 for task in TASKS}
    assert json.loads((root / "dataset.json").read_text()) == manifest
    frame_rates = set()
    for split, count in (("train", 16), ("val", 8), ("test", 8)):
        training = [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]
        assert len(training) == count
        for record in training:
            assert set(record) == {"prompt", "response", "images", "videos"}
            assert len(record["images"]) + len(record["videos"]) == 1
            assert all((root / p).is_file() for p in record["images"] + record["videos"])
        questions = load_questions(root / f"{split}_questions.jsonl", check_media=True)
        assert [q.id for q in questions] == [f"{split}-{i:06d}" for i in range(count)]
        assert [q.answer for q in questions] == [r["response"] for r in training]
        frame_rates |= {Fraction(q.meta["fps"]) for q in questions if q.videos}
    assert any(fps.denominator > 1 for fps in frame_rates)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "b" / path.relative_to(root)).read_bytes(), path
    train0, val0 = (make_sample(3, split, 0) for split in ("train", "val"))
    assert train0.task == val0.task and train0.scene != val0.scene


def test_generate_dataset_rejects_unknown_tasks(tmp_path):
    with pytest.raises(ValueError, match="unknown tasks"):
        generate_dataset(tmp_path, 1, 0, 0, tasks=["colour"], progress=False)


@pytest.mark.parametrize("fps", [Fraction(15, 2), Fraction(25, 2), Fraction(30000, 1001)])
def test_mp4_decodes_to_the_scene_at_its_exact_frame_rate(tmp_path, fps):
    num_frames = round(4 * fps)
    indices, _ = sampled_frames(num_frames, fps)
    track = Track("red", "square", 16, (24, 24), appear=indices[2])
    scene = VideoScene(64, 64, 230, fps, num_frames, (track,))
    path = tmp_path / "clip.mp4"
    write_video(scene, path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == fps
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        frames = list(container.decode(stream))
    assert len(frames) == num_frames
    assert frames[-1].time == pytest.approx((num_frames - 1) / fps, abs=1e-3)
    for k, index in enumerate(indices):
        pixel = frames[index].to_ndarray(format="rgb24")[32, 32].astype(int)
        expected = np.array(COLORS["red"] if k >= 2 else (230, 230, 230))
        assert np.abs(pixel - expected).max() <= 12, (k, pixel)


def test_readme_samples_are_shipped_and_reproducible(tmp_path):
    questions_file = write_readme_samples(tmp_path)
    assert questions_file.read_text() == (SAMPLES_DIR / "questions.json").read_text()
    questions = load_questions(SAMPLES_DIR / "questions.json", check_media=True)
    assert [(q.task, q.answer) for q in questions] == [
        ("color", "green"),
        ("count", "3"),
        ("temporal", "2.3 seconds"),
        ("event", "appears"),
    ]
    for name in ("shape.png", "shapes.png"):
        shipped = np.asarray(Image.open(SAMPLES_DIR / name))
        assert np.array_equal(shipped, np.asarray(Image.open(tmp_path / name)))
    with av.open(str(SAMPLES_DIR / "clip.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 45
    assert sum(p.stat().st_size for p in SAMPLES_DIR.iterdir()) < 16_000


def test_cli_main_writes_a_dataset(tmp_path, capsys):
    assert (
        synthetic.main(["--out", str(tmp_path), "--train", "8", "--val", "0", "--test", "0", "--quiet"]) == 0
    )
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 8
    assert '"train"' in capsys.readouterr().out
