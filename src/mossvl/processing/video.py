"""Video processor: index a file with PyAV, sample frames at video_fps, decode only those, resize, patchify.

Timestamps are the sampled frames' presentation times relative to the first frame (segment inputs use the
requested times). Decoding seeks to the keyframe before each group of wanted frames, skips non-reference frames
it does not need, and spreads GOP groups over `num_extract_threads` decoder threads.
"""

import bisect
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from transformers.image_processing_base import BatchFeature
from transformers.processing_utils import VideosKwargs
from transformers.video_processing_utils import VideoProcessorMixin

from mossvl import constants as C
from mossvl.errors import ConfigError, MediaError, QueryError
from mossvl.processing.image import VisualPatches, describe, hwc_to_tensor, load_image_array, size_dict
from mossvl.processing.media_plan import PlannedMedia, array_digest, file_digest, settings_key
from mossvl.processing.transforms import check_patch_config, patchify, resize_uint8, smart_resize_video


@dataclass
class VideoIndex:
    """Where every frame of a file's first video stream is, found by demuxing (no decoding)."""

    path: str
    stream_pts: list[int]  # presentation order; one per frame
    keyframe_pts: list[int]  # sorted; decoding can start at any of these
    times: list[float]  # seconds since the first frame, one per frame
    average_fps: Fraction
    height: int
    width: int
    seekable: bool

    @property
    def num_frames(self) -> int:
        return len(self.stream_pts)

    @property
    def duration(self) -> float:
        """Last frame time + one average frame interval (time from the first frame's start to the end)."""
        return float(Fraction(self.times[-1]) + 1 / self.average_fps)


@dataclass
class _Unit:
    """One media unit of a call: a whole file, one segment of a file, or pre-extracted frames."""

    name: str
    index: VideoIndex | None = None
    segment: tuple[float, float | None] | None = None
    frames: list[np.ndarray] | None = None
    timestamps: list[float] | None = None
    frame_indices: list[int] | None = None

    @property
    def duration(self) -> float:
        if self.segment is not None:
            start, end = self.segment
            return 0.0 if end is None else end - start
        return self.index.duration


def parse_segments(segments: Any, name: str) -> list[tuple[float, float | None]]:
    """Validate `segments` ([[start, end], ...] or [[time], ...], seconds) → [(start, end | None)]."""
    if not isinstance(segments, list | tuple) or not segments:
        raise QueryError(f"video {name}: 'segments' must be a non-empty list of [start, end] or [time]")
    parsed = []
    for seg in segments:
        if (
            not isinstance(seg, list | tuple)
            or len(seg) not in (1, 2)
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in seg)
        ):
            raise QueryError(f"video {name}: segment {seg!r} must be [start, end] or [time] in seconds")
        if seg[0] < 0:
            raise QueryError(f"video {name}: segment {list(seg)} starts at a negative time")
        if len(seg) == 2 and seg[1] <= seg[0]:
            raise QueryError(f"video {name}: segment {list(seg)} ends before it starts (decreasing or empty)")
        parsed.append((float(seg[0]), float(seg[1]) if len(seg) == 2 else None))
    return parsed


def split_segments(video: dict[str, Any], segments: list[tuple[float, float | None]]) -> list[dict[str, Any]]:
    """A video dict and its parsed segments → one one-segment dict per segment (a media unit each)."""
    return [{**video, "segments": [[start] if end is None else [start, end]]} for start, end in segments]


def _open(path: str) -> av.container.InputContainer:
    try:
        return av.open(path)
    except av.FFmpegError as err:
        raise MediaError(f"cannot open video {path}: {err}") from err


def _check_path(path: str) -> str:
    if path.startswith(("http://", "https://", "rtsp://")):
        return path
    path = path.removeprefix("file://")
    if not os.path.isfile(path):
        raise MediaError(f"video file not found: {path}")
    if os.path.getsize(path) == 0:
        raise MediaError(f"video file is empty (0 bytes): {path}")
    return path


def probe_video(path: str | Path) -> VideoIndex:
    """Index the first video stream of a file: frame pts in presentation order, keyframes, fps, size."""
    path = _check_path(str(path))
    with _open(path) as container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise MediaError(f"{path} has no video stream (streams found: {', '.join(kinds)})")
        stream = container.streams.video[0]
        header_fps = stream.guessed_rate or stream.average_rate or Fraction(1)
        height, width = stream.codec_context.height, stream.codec_context.width
        try:
            packets = [
                (p.pts, p.is_keyframe)
                for p in container.demux(stream)
                if p.size and not p.is_discard and not p.is_corrupt
            ]
        except av.FFmpegError as err:
            raise MediaError(f"cannot read video {path}: {err}") from err
        time_base = stream.time_base
    if not packets:
        raise MediaError(f"{path} has a video stream with no frames")
    if any(pts is None for pts, _ in packets) or time_base is None:
        # No timestamps: assume constant rate, decode front to back.
        stream_pts = list(range(len(packets)))
        times = [float(i / Fraction(header_fps)) for i in stream_pts]
        return VideoIndex(path, stream_pts, [0], times, Fraction(header_fps), height, width, seekable=False)
    packets.sort()
    stream_pts = [pts for pts, _ in packets]
    keyframes = [pts for pts, key in packets if key]
    if not keyframes or keyframes[0] != stream_pts[0]:
        keyframes.insert(0, stream_pts[0])
    first = stream_pts[0]
    times = [float((pts - first) * time_base) for pts in stream_pts]
    span = (stream_pts[-1] - first) * time_base
    fps = Fraction(len(stream_pts) - 1) / span if span > 0 else Fraction(header_fps)
    return VideoIndex(path, stream_pts, keyframes, times, fps, height, width, seekable=True)


def sample_frame_indices(
    num_frames: int, duration: float, fps: float, min_frames: int, max_frames: int
) -> list[int]:
    """Frames to keep: n = ceil(duration·fps − 1e-6) clamped to [min_frames, max_frames] and ≤ num_frames,
    spread as unique(int32(linspace(0, num_frames − 1, n)))."""
    n = math.ceil(duration * fps - 1e-6)
    n = max(1, min(max(n, min_frames), max_frames, num_frames))
    return np.unique(np.linspace(0, num_frames - 1, n).astype(np.int32)).tolist()


def segment_times(
    start: float, end: float | None, fps: float, min_frames: int, max_frames: int
) -> list[float]:
    """Sample times of a segment: linspace(start, end, n, endpoint=False), n = ceil((end − start)·fps)."""
    if end is None:
        return [start]
    n = max(1, min(max(math.ceil((end - start) * fps), min_frames), max_frames))
    return np.linspace(start, end, n, endpoint=False).tolist()


def split_frame_budget(durations: list[float], max_frames: int) -> list[int]:
    """Per-video frame caps from a total `max_frames`: one frame each, the rest in proportion to duration
    (largest-remainder rounding)."""
    if len(durations) <= 1:
        return [max_frames] * len(durations)
    rest = max(max_frames - len(durations), 0)
    total = sum(durations)
    shares = [rest * d / total if total > 0 else rest / len(durations) for d in durations]
    caps = [math.floor(s) for s in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: caps[i] - shares[i])
    for i in by_remainder[: rest - sum(caps)]:
        caps[i] += 1
    return [1 + c for c in caps]


def _decode_groups(
    index: VideoIndex,
    groups: list[tuple[int, list[int]]],
    slot_of: dict[int, int],
    size: tuple[int, int],
    out: torch.Tensor,
    codec_threads: int,
) -> None:
    """Decode the wanted pts of each (keyframe, [pts...]) group into `out[slot]`, resized to `size`."""
    with _open(index.path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if codec_threads > 1:
            stream.thread_type = "AUTO"
            ctx.thread_count = codec_threads
        for keyframe, wanted_pts in groups:
            wanted = set(wanted_pts)
            for attempt_keyframe in (keyframe, index.stream_pts[0]):
                # A demuxer may land after the requested keyframe; then retry from the start of the file.
                container.seek(attempt_keyframe, stream=stream, backward=True)
                _decode_until_done(container, stream, ctx, wanted, slot_of, size, out)
                if not wanted:
                    break
            if wanted:
                raise MediaError(f"{index.path}: could not decode the frames at stream pts {sorted(wanted)}")


def _decode_until_done(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    ctx: av.codec.context.CodecContext,
    wanted: set[int],
    slot_of: dict[int, int],
    size: tuple[int, int],
    out: torch.Tensor,
) -> None:
    """Demux and decode from the current position until every wanted pts is stored (or has been passed)."""
    try:
        for packet in container.demux(stream):
            # Frames nobody references and nobody asked for need not be decoded at all.
            ctx.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in wanted else "NONREF"
            for frame in ctx.decode(packet):
                if frame.pts in wanted:
                    wanted.discard(frame.pts)
                    _store(frame, slot_of[frame.pts], size, out)
                elif frame.pts is not None and wanted and frame.pts > max(wanted):
                    return
            if not wanted:
                return
    except av.FFmpegError as err:
        raise MediaError(f"cannot decode video {container.name}: {err}") from err
    finally:
        ctx.skip_frame = "DEFAULT"


def _store(frame: av.VideoFrame, slot: int, size: tuple[int, int], out: torch.Tensor) -> None:
    rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8
    out[slot] = resize_uint8(hwc_to_tensor(rgb)[None], size)[0]


def _decode_sequential(
    index: VideoIndex, positions: list[int], size: tuple[int, int], out: torch.Tensor
) -> None:
    slot_of = {pos: slot for slot, pos in enumerate(positions)}
    with _open(index.path) as container:
        try:
            for i, frame in enumerate(container.decode(video=0)):
                if i in slot_of:
                    _store(frame, slot_of[i], size, out)
                if i >= positions[-1]:
                    return
        except av.FFmpegError as err:
            raise MediaError(f"cannot decode video {index.path}: {err}") from err
    raise MediaError(f"{index.path}: decoding ended before frame #{positions[-1]}")


def decode_frames(
    index: VideoIndex, frame_indices: list[int], size: tuple[int, int], num_threads: int = 1
) -> torch.Tensor:
    """Decode only the given frames (presentation order indices) → uint8 (T, 3, h, w) resized to `size`."""
    positions = sorted(set(frame_indices))
    out = torch.empty(len(positions), 3, *size, dtype=torch.uint8)
    if not index.seekable:
        _decode_sequential(index, positions, size, out)
    else:
        pts = [index.stream_pts[i] for i in positions]
        slot_of = {p: slot for slot, p in enumerate(pts)}
        by_keyframe: dict[int, list[int]] = {}
        for p in pts:
            by_keyframe.setdefault(
                index.keyframe_pts[bisect.bisect_right(index.keyframe_pts, p) - 1], []
            ).append(p)
        groups = list(by_keyframe.items())
        workers = max(1, min(num_threads, len(groups)))
        chunks = [list(c) for c in np.array_split(np.arange(len(groups)), workers)]
        codec_threads = max(1, num_threads // workers)
        jobs = [[groups[i] for i in chunk] for chunk in chunks]
        if workers == 1:
            _decode_groups(index, jobs[0], slot_of, size, out, codec_threads)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(
                    pool.map(lambda job: _decode_groups(index, job, slot_of, size, out, codec_threads), jobs)
                )
    if positions == list(frame_indices):
        return out
    slot = {pos: s for s, pos in enumerate(positions)}
    return out[[slot[i] for i in frame_indices]]


def _frames_unit(video: dict, name: str) -> _Unit:
    frames = video["frames"]
    if isinstance(frames, np.ndarray | torch.Tensor) and frames.ndim == 4:
        frames = list(frames)
    if not isinstance(frames, list | tuple) or not frames:
        raise QueryError(f"video {name}: 'frames' must be a non-empty list of images")
    arrays = [load_image_array(f) for f in frames]
    if len({a.shape for a in arrays}) != 1:
        raise MediaError(
            f"video {name}: all frames must have the same size, got {sorted({a.shape for a in arrays})}"
        )
    if "timestamps" in video:
        stamps = [float(t) for t in video["timestamps"]]
    elif "fps" in video:
        stamps = [i / float(video["fps"]) for i in range(len(arrays))]
    else:
        raise QueryError(f"video {name}: pre-extracted frames need 'timestamps' (seconds) or 'fps'")
    if len(stamps) != len(arrays):
        raise QueryError(f"video {name}: {len(arrays)} frames but {len(stamps)} timestamps")
    if any(b < a for a, b in zip(stamps, stamps[1:], strict=False)) or stamps[0] < 0:
        raise QueryError(f"video {name}: timestamps must be non-negative and non-decreasing, got {stamps}")
    return _Unit(name, frames=arrays, timestamps=stamps, frame_indices=list(range(len(arrays))))


class MossVLVideoKwargs(VideosKwargs, total=False):
    video_max_pixels: int
    video_fps: float
    min_frames: int
    max_frames: int
    num_extract_threads: int
    patch_size: int
    merge_size: int
    temporal_patch_size: int


class MossVLVideoProcessor(VideoProcessorMixin):
    """Videos → pixel rows + grid + timestamps. Saves/loads as video_preprocessor_config.json (official keys).

    `size` holds pixel counts per frame (shortest_edge = min, longest_edge = max); `video_max_pixels` is a
    volume budget (frames × h × w) shared by all videos of one call; `max_frames` is a frame budget shared by
    all videos of one call (one frame each, the rest by duration).
    """

    valid_kwargs = MossVLVideoKwargs
    model_input_names = ["pixel_values", "grid_thw"]

    def __init__(
        self,
        size: dict[str, int] | None = None,
        video_max_pixels: int | None = C.VIDEO_MAX_PIXELS,
        patch_size: int = C.PATCH_SIZE,
        temporal_patch_size: int = C.TEMPORAL_PATCH_SIZE,
        merge_size: int = C.MERGE_SIZE,
        video_fps: float = C.VIDEO_FPS,
        min_frames: int = C.MIN_FRAMES,
        max_frames: int = C.MAX_FRAMES,
        num_extract_threads: int = C.NUM_EXTRACT_THREADS,
        image_mean: list[float] | tuple[float, ...] = C.IMAGE_MEAN,
        image_std: list[float] | tuple[float, ...] = C.IMAGE_STD,
        **kwargs: Any,
    ) -> None:
        for key in ("video_processor_type", "processor_class", "interpolation"):
            kwargs.pop(key, None)
        size = size_dict(size, kwargs.pop("min_pixels", None), kwargs.pop("max_pixels", None))
        super().__init__(**kwargs)
        check_patch_config(patch_size, temporal_patch_size, merge_size)
        if video_fps <= 0 or min_frames < 1 or max_frames < min_frames or num_extract_threads < 1:
            raise ConfigError(
                f"need video_fps > 0, 1 <= min_frames <= max_frames and num_extract_threads >= 1; got "
                f"{video_fps}, {min_frames}, {max_frames}, {num_extract_threads}"
            )
        self.size = size
        self.video_max_pixels = video_max_pixels
        self.patch_size = patch_size
        self.temporal_patch_size = temporal_patch_size
        self.merge_size = merge_size
        self.video_fps = video_fps
        self.min_frames = min_frames
        self.max_frames = max_frames
        self.num_extract_threads = num_extract_threads
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": dict(self.size),
            "video_max_pixels": self.video_max_pixels,
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "video_fps": self.video_fps,
            "min_frames": self.min_frames,
            "max_frames": self.max_frames,
            "num_extract_threads": self.num_extract_threads,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "video_processor_type": type(self).__name__,
            "processor_class": "MossVLProcessor",
        }

    def _units(self, videos: list[Any]) -> list[_Unit]:
        """One unit per whole video, per segment of a segmented video, or per set of pre-extracted frames."""
        probes: dict[str, VideoIndex] = {}
        units = []
        for i, video in enumerate(videos):
            name = (
                f"#{i} ({describe(video.get('video_path', 'frames') if isinstance(video, dict) else video)})"
            )
            if isinstance(video, dict) and "frames" in video:
                units.append(_frames_unit(video, name))
                continue
            if isinstance(video, dict):
                if "video_path" not in video:
                    raise QueryError(f"video {name}: a video dict needs 'video_path' (or 'frames')")
                path = str(video["video_path"])
                segments = (
                    parse_segments(video["segments"], name) if video.get("segments") is not None else [None]
                )
            elif isinstance(video, str | Path):
                path, segments = str(video), [None]
            else:
                raise QueryError(
                    f"video {name}: unsupported video input; use a path, a dict or pre-extracted frames"
                )
            if path not in probes:
                try:
                    probes[path] = probe_video(path)
                except MediaError as err:
                    raise MediaError(f"video #{i}: {err}") from err
            index = probes[path]
            for segment in segments:
                if segment is not None:
                    start, end = segment
                    if start >= index.duration:
                        raise MediaError(
                            f"video {name}: segment starts at {start}s, after the end of the video "
                            f"({index.duration:.3f}s)"
                        )
                    segment = (start, None if end is None else min(end, index.duration))
                units.append(_Unit(name, index=index, segment=segment))
        return units

    def plan(
        self,
        videos: list[Any],
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        video_max_pixels: int | None = None,
        video_fps: float | None = None,
        min_frames: int | None = None,
        max_frames: int | None = None,
        num_extract_threads: int | None = None,
    ) -> list[PlannedMedia]:
        """Index, sample and size all videos of one call (they share the frame and pixel budgets); decoding waits
        for ``load()``. One item per media unit (a video with k segments gives k units)."""
        min_pixels = self.size["shortest_edge"] if min_pixels is None else min_pixels
        max_pixels = self.size["longest_edge"] if max_pixels is None else max_pixels
        budget = self.video_max_pixels if video_max_pixels is None else video_max_pixels
        fps = self.video_fps if video_fps is None else video_fps
        min_frames = self.min_frames if min_frames is None else min_frames
        max_frames = self.max_frames if max_frames is None else max_frames
        threads = self.num_extract_threads if num_extract_threads is None else num_extract_threads

        units = self._units(videos)
        sampled = [u for u in units if u.frames is None]
        caps = split_frame_budget([u.duration for u in sampled], max_frames)
        for unit, cap in zip(sampled, caps, strict=True):
            if budget is not None:
                cap = min(cap, max(1, budget // max(min_pixels, 1)))
            if unit.segment is None:
                index = unit.index
                unit.frame_indices = sample_frame_indices(
                    index.num_frames, index.duration, fps, min_frames, cap
                )
                unit.timestamps = [index.times[i] for i in unit.frame_indices]
            else:
                unit.timestamps = segment_times(*unit.segment, fps, min_frames, cap)
                last = unit.index.num_frames - 1
                unit.frame_indices = [
                    min(max(bisect.bisect_right(unit.index.times, t + 1e-9) - 1, 0), last)
                    for t in unit.timestamps
                ]

        shapes = [
            (len(u.frame_indices), *(u.frames[0].shape[:2] if u.frames else (u.index.height, u.index.width)))
            for u in units
        ]
        volumes = [t * h * w for t, h, w in shapes]
        out = []
        for unit, (t, h, w), volume in zip(units, shapes, volumes, strict=True):
            allocated = max_pixels if budget is None else int(budget * volume / sum(volumes))
            size = smart_resize_video(
                t,
                h,
                w,
                self.patch_size * self.merge_size,
                min_pixels,
                max_pixels,
                allocated,
                name=f"video {unit.name}",
            )
            if unit.frames is not None:
                content = settings_key(*(array_digest(frame) for frame in unit.frames))
            elif os.path.isfile(unit.index.path):
                content = file_digest(unit.index.path)
            else:
                content = f"url:{unit.index.path}"
            out.append(
                PlannedMedia(
                    kind="video",
                    grid_thw=(t, size[0] // self.patch_size, size[1] // self.patch_size),
                    key=settings_key(
                        "video", content, unit.frame_indices, size, self.image_mean, self.image_std
                    ),
                    load=partial(self._pixels, unit, size, threads),
                    timestamps=unit.timestamps,
                    frame_indices=unit.frame_indices,
                )
            )
        return out

    def _pixels(self, unit: _Unit, size: tuple[int, int], threads: int) -> torch.Tensor:
        if unit.frames is not None:
            frames = resize_uint8(hwc_to_tensor(np.stack(unit.frames)), size)
        else:
            frames = decode_frames(unit.index, unit.frame_indices, size, threads)
        rows, _ = patchify(frames, self.patch_size, self.merge_size, self.image_mean, self.image_std)
        return rows

    def process(self, videos: list[Any], **kwargs: Any) -> list[VisualPatches]:
        """Process all videos of one call; one VisualPatches (rows, grid, timestamps, frame indices) per unit."""
        return [
            VisualPatches(item.load(), item.grid_thw, item.timestamps, item.frame_indices)
            for item in self.plan(videos, **kwargs)
        ]

    def preprocess(self, videos: Any, return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        if not isinstance(videos, list | tuple):
            videos = [videos]
        patches = self.process(list(videos), **kwargs)
        return BatchFeature(
            {
                "pixel_values": torch.cat([p.pixel_values for p in patches]),
                "grid_thw": torch.tensor([p.grid_thw for p in patches], dtype=torch.long),
            }
        )

    def __call__(self, videos: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(videos, **kwargs)


def stream_frames(path: str | Path, sample_fps: float, max_frames: int | None = None):
    """Decode a video front to back and yield ``(rgb uint8 array (H, W, 3), seconds)`` about ``sample_fps`` times
    per second of video (a live stream's frames), at most ``max_frames`` of them."""
    if sample_fps <= 0:
        raise QueryError(f"sample_fps must be > 0, got {sample_fps}")
    path = _check_path(str(path))
    next_time, sent = 0.0, 0
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path} has no video stream")
        stream = container.streams.video[0]
        first = None
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                first = frame.time if first is None else first
                seconds = frame.time - first
                if seconds + 1e-6 < next_time:
                    continue
                yield frame.to_ndarray(format="rgb24"), seconds
                sent += 1
                while (
                    next_time <= seconds + 1e-6
                ):  # on a fixed 1 / sample_fps grid, so the rate does not drift
                    next_time += 1.0 / sample_fps
                if max_frames is not None and sent >= max_frames:
                    return
        except av.FFmpegError as err:
            raise MediaError(f"cannot decode video {path}: {err}") from err
