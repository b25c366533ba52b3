"""Video processor: index a file with PyAV, sample frames at video_fps, decode only those, resize, patchify.

Timestamps are the sampled frames' presentation times relative to the first frame (segment inputs use the
requested times). Decoding seeks to the keyframe before each group of wanted frames, skips non-reference frames
it does not need, and spreads GOP groups over `num_extract_threads` decoder threads.

Files are checked against the processor's ``InputLimits`` before decoding: the header's frame size, duration and
frame count before the index is read, the index as it grows. A file that ends early or holds damaged packets is
used as far as it goes with a ``MediaWarning`` that says how much was read (or refused, see
``InputLimits.allow_truncated_videos``); whatever the demuxer or decoder raises becomes a MediaError.
"""

import bisect
import math
import numbers
import os
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
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
from mossvl.errors import ConfigError, MediaError, MediaWarning, MossVLError, QueryError
from mossvl.processing.image import VisualPatches, describe, hwc_to_tensor, load_image_array, size_dict
from mossvl.processing.limits import InputLimits, check_media_settings, check_planned_pixels
from mossvl.processing.media_plan import PlannedMedia, array_digest, file_digest, settings_key
from mossvl.processing.sources import HTTP_PREFIXES, DownloadedFile, local_media_file
from mossvl.processing.transforms import check_patch_config, patchify, resize_uint8, smart_resize_video

# Sources PyAV opens itself (a live stream cannot be downloaded first); its open and read waits are bounded.
STREAM_PREFIXES = ("rtsp://", "data:")
# A file whose frames end this much before its header's duration (and at least two frame intervals) is truncated.
TRUNCATION_TOLERANCE = 0.05
_AV_TIME_BASE = 1_000_000


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
    download: DownloadedFile | None = None  # keeps a downloaded file on disk as long as the index lives

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


@dataclass
class _Damage:
    """Packets of one decoding pass that were damaged (unreadable or undecodable) and skipped."""

    skipped: int = 0


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


@contextmanager
def _video_errors(path: str, action: str = "read") -> Iterator[None]:
    """Whatever PyAV raises on a hostile file becomes a MediaError naming the video."""
    try:
        yield
    except MossVLError:
        raise
    except Exception as err:  # noqa: BLE001 - any demuxer or decoder failure is this video's alone
        raise MediaError(f"cannot {action} video {path}: {type(err).__name__}: {err}") from err


def _open(path: str, limits: InputLimits) -> av.container.InputContainer:
    # A URL opened by PyAV itself (a stream) gets the fetch timeout for opening and for each read.
    is_url = path.startswith((*HTTP_PREFIXES, *STREAM_PREFIXES))
    timeout = (limits.fetch_timeout, limits.fetch_timeout) if is_url else None
    with _video_errors(path, "open"):
        return av.open(path, timeout=timeout)


def _local_source(path: str, limits: InputLimits) -> tuple[str, DownloadedFile | None]:
    """A path PyAV can open: a checked local file, a stream URL, or an http(s) URL downloaded under the limits."""
    if path.startswith(HTTP_PREFIXES):
        download = DownloadedFile(path, limits, "video")
        return download.path, download
    if path.startswith(STREAM_PREFIXES):
        return path, None
    return local_media_file(path.removeprefix("file://"), "video"), None


def _declared(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> tuple[int, float]:
    """(frames, seconds) the header promises for the stream; 0 where it does not say. The container's duration
    stands in for the stream's only when the video is the container's one stream."""
    seconds = 0.0
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration and len(container.streams) == 1:
        seconds = container.duration / _AV_TIME_BASE
    return max(stream.frames or 0, 0), seconds


def _check_header(
    path: str, width: int, height: int, frames: int, seconds: float, limits: InputLimits
) -> None:
    """Refuse, before any packet is read, a video whose header promises more than the limits allow."""
    if width <= 0 or height <= 0:
        raise MediaError(f"video {path} declares an empty frame size {width}x{height}")
    if width * height > limits.max_video_frame_pixels:
        raise MediaError(
            f"video {path} has {width}x{height} frames; the limit is {limits.max_video_frame_pixels} pixels per "
            "frame (InputLimits.max_video_frame_pixels), checked before decoding"
        )
    if seconds > limits.max_video_seconds:
        raise MediaError(
            f"video {path} lasts {seconds:.0f} s; the limit is {limits.max_video_seconds:g} s "
            "(InputLimits.max_video_seconds), checked before decoding"
        )
    if frames > limits.max_video_frames:
        raise MediaError(
            f"video {path} has {frames} frames; the limit is {limits.max_video_frames} "
            "(InputLimits.max_video_frames), checked before decoding"
        )


def _read_index(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    path: str,
    limits: InputLimits,
) -> tuple[list[tuple[int | None, bool]], int, int, str | None]:
    """Demux the stream: ((pts, is_keyframe) of each usable packet, packets seen, damaged packets skipped, why
    reading stopped early or None). At most ``max_video_frames`` packets are read, and a stream URL (which may
    never end) is read for at most ``fetch_deadline`` seconds."""
    packets, seen, damaged, stopped = [], 0, 0, None
    deadline = time.monotonic() + limits.fetch_deadline if path.startswith(STREAM_PREFIXES) else math.inf
    try:
        for packet in container.demux(stream):
            if not packet.size:
                continue  # the demuxer's end-of-stream marker
            if time.monotonic() > deadline:
                raise MediaError(
                    f"video {path}: its frames did not end within {limits.fetch_deadline:g} s "
                    "(InputLimits.fetch_deadline); a live stream cannot be sampled as a whole video"
                )
            seen += 1
            if seen > limits.max_video_frames:
                raise MediaError(
                    f"video {path} has more than {limits.max_video_frames} frames "
                    "(InputLimits.max_video_frames); it was refused before decoding"
                )
            if packet.is_corrupt:
                damaged += 1
            elif not packet.is_discard:
                packets.append((packet.pts, packet.is_keyframe))
    except av.FFmpegError as err:
        if not packets:
            raise MediaError(f"cannot read video {path}: {err}") from err
        stopped = f"{type(err).__name__}: {err}"
    return packets, seen, damaged, stopped


def probe_video(path: str | Path, limits: InputLimits | None = None) -> VideoIndex:
    """Index the first video stream of a file: frame pts in presentation order, keyframes, fps, size.

    An http(s) URL is downloaded first. Checked against ``limits`` (defaults when None): the header's frame size,
    duration and frame count before any packet is read, then the index. A file that ends before its header says,
    or holds damaged packets, is indexed as far as it goes with a MediaWarning (or refused, see
    ``InputLimits.allow_truncated_videos``).
    """
    limits = limits or InputLimits()
    path, download = _local_source(str(path), limits)
    with _open(path, limits) as container, _video_errors(path):
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise MediaError(f"{path} has no video stream (streams found: {', '.join(kinds)})")
        stream = container.streams.video[0]
        header_fps = stream.guessed_rate or stream.average_rate or Fraction(1)
        height, width = stream.codec_context.height, stream.codec_context.width
        declared_frames, declared_seconds = _declared(container, stream)
        _check_header(path, width, height, declared_frames, declared_seconds, limits)
        packets, seen, damaged, stopped = _read_index(container, stream, path, limits)
        time_base = stream.time_base
    if not packets:
        raise MediaError(f"{path} has a video stream with no readable frames (truncated before its index?)")
    with _video_errors(path):
        index = _index(path, packets, time_base, Fraction(header_fps), height, width)
    index.download = download
    if index.duration > limits.max_video_seconds:
        raise MediaError(
            f"video {path} lasts {index.duration:.0f} s; the limit is {limits.max_video_seconds:g} s "
            "(InputLimits.max_video_seconds)"
        )
    start = float(index.stream_pts[0] * time_base) if index.seekable else 0.0
    _check_whole(index, start, declared_frames, declared_seconds, seen, damaged, stopped, limits)
    return index


def _index(
    path: str,
    packets: list[tuple[int | None, bool]],
    time_base: Fraction | None,
    header_fps: Fraction,
    height: int,
    width: int,
) -> VideoIndex:
    if any(pts is None for pts, _ in packets) or time_base is None or header_fps <= 0:
        # No timestamps: assume constant rate, decode front to back.
        fps = header_fps if header_fps > 0 else Fraction(1)
        stream_pts = list(range(len(packets)))
        times = [float(i / fps) for i in stream_pts]
        return VideoIndex(path, stream_pts, [0], times, fps, height, width, seekable=False)
    packets.sort()
    stream_pts = [pts for pts, _ in packets]
    keyframes = [pts for pts, key in packets if key]
    if not keyframes or keyframes[0] != stream_pts[0]:
        keyframes.insert(0, stream_pts[0])
    first = stream_pts[0]
    times = [float((pts - first) * time_base) for pts in stream_pts]
    span = (stream_pts[-1] - first) * time_base
    fps = Fraction(len(stream_pts) - 1) / span if span > 0 else header_fps
    return VideoIndex(path, stream_pts, keyframes, times, fps, height, width, seekable=True)


def _check_whole(
    index: VideoIndex,
    start: float,
    declared_frames: int,
    declared_seconds: float,
    seen: int,
    damaged: int,
    stopped: str | None,
    limits: InputLimits,
) -> None:
    """Say (MediaWarning) or refuse (MediaError) when the index holds less than the file's header promised.

    Containers disagree on whether their duration counts from 0 or from the first frame (``start`` seconds), so
    the read part is short only when it falls short both ways."""
    problems = []
    if declared_frames and seen < declared_frames:
        problems.append(f"read {seen} of the {declared_frames} frames its header declares")
    slack = max(TRUNCATION_TOLERANCE * declared_seconds, 2 / float(index.average_fps))
    if declared_seconds and start + index.duration < declared_seconds - slack:
        problems.append(f"read {index.duration:.2f} s of the {declared_seconds:.2f} s its header declares")
    if damaged:
        problems.append(f"skipped {damaged} damaged packet(s)")
    if stopped:
        problems.append(f"reading stopped early at an error ({stopped})")
    if not problems:
        return
    summary = f"video {index.path} is truncated or damaged: {'; '.join(problems)}"
    if not limits.allow_truncated_videos:
        raise MediaError(f"{summary}; refused (InputLimits.allow_truncated_videos is False)")
    warnings.warn(
        f"{summary}; using the {index.num_frames} frames ({index.duration:.2f} s) that were read",
        MediaWarning,
        stacklevel=3,
    )


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


def _packets(container: av.container.InputContainer, stream: Any, damage: _Damage) -> Iterator[av.Packet]:
    """The stream's packets from the current position, without the damaged ones (the index left them out and said
    so); a demuxer that gives up (a truncated file) ends the packets instead of the decoding."""
    try:
        for packet in container.demux(stream):
            if not packet.is_corrupt:
                yield packet
    except av.FFmpegError:
        damage.skipped += 1


def _decode_packet(ctx: av.codec.context.CodecContext, packet: av.Packet, damage: _Damage) -> list:
    try:
        return ctx.decode(packet)
    except av.FFmpegError:  # an undecodable packet: skip it, the frames after it may still decode
        damage.skipped += 1
        return []


def _decode_groups(
    index: VideoIndex,
    groups: list[tuple[int, list[int]]],
    slot_of: dict[int, int],
    size: tuple[int, int],
    out: torch.Tensor,
    codec_threads: int,
    limits: InputLimits,
) -> int:
    """Decode the wanted pts of each (keyframe, [pts...]) group into `out[slot]`, resized to `size`; returns the
    number of damaged packets skipped."""
    damage = _Damage()
    with _open(index.path, limits) as container, _video_errors(index.path, "decode"):
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
                _decode_until_done(container, stream, wanted, slot_of, size, out, limits, damage)
                if not wanted:
                    break
            if wanted:
                raise MediaError(
                    f"{index.path}: could not decode the frames at stream pts {sorted(wanted)} "
                    f"({damage.skipped} damaged packets skipped)"
                )
    return damage.skipped


def _decode_until_done(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    wanted: set[int],
    slot_of: dict[int, int],
    size: tuple[int, int],
    out: torch.Tensor,
    limits: InputLimits,
    damage: _Damage,
) -> None:
    """Demux and decode from the current position until every wanted pts is stored (or has been passed)."""
    ctx = stream.codec_context
    try:
        for packet in _packets(container, stream, damage):
            # Frames nobody references and nobody asked for need not be decoded at all.
            ctx.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in wanted else "NONREF"
            for frame in _decode_packet(ctx, packet, damage):
                if frame.pts in wanted:
                    wanted.discard(frame.pts)
                    _store(frame, slot_of[frame.pts], size, out, limits)
                elif frame.pts is not None and wanted and frame.pts > max(wanted):
                    return
            if not wanted:
                return
    finally:
        ctx.skip_frame = "DEFAULT"


def _store(
    frame: av.VideoFrame, slot: int, size: tuple[int, int], out: torch.Tensor, limits: InputLimits
) -> None:
    if frame.width * frame.height > limits.max_video_frame_pixels:  # the stream changed size after its header
        raise MediaError(
            f"a frame of {frame.width}x{frame.height} exceeds the limit of {limits.max_video_frame_pixels} pixels "
            "(InputLimits.max_video_frame_pixels)"
        )
    rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8
    out[slot] = resize_uint8(hwc_to_tensor(rgb)[None], size)[0]


def _decode_sequential(
    index: VideoIndex, positions: list[int], size: tuple[int, int], out: torch.Tensor, limits: InputLimits
) -> int:
    slot_of = {pos: slot for slot, pos in enumerate(positions)}
    damage = _Damage()
    with _open(index.path, limits) as container, _video_errors(index.path, "decode"):
        stream = container.streams.video[0]
        position = 0
        for packet in _packets(container, stream, damage):
            for frame in _decode_packet(stream.codec_context, packet, damage):
                if position in slot_of:
                    _store(frame, slot_of[position], size, out, limits)
                if position >= positions[-1]:
                    return damage.skipped
                position += 1
    raise MediaError(
        f"{index.path}: decoding ended before frame #{positions[-1]} ({damage.skipped} damaged packets skipped)"
    )


def decode_frames(
    index: VideoIndex,
    frame_indices: list[int],
    size: tuple[int, int],
    num_threads: int = 1,
    limits: InputLimits | None = None,
) -> torch.Tensor:
    """Decode only the given frames (presentation order indices) → uint8 (T, 3, h, w) resized to `size`.

    Damaged packets are skipped (a MediaWarning counts them); a wanted frame that cannot be decoded raises
    MediaError.
    """
    limits = limits or InputLimits()
    positions = sorted(set(frame_indices))
    out = torch.empty(len(positions), 3, *size, dtype=torch.uint8)
    if not index.seekable:
        damaged = _decode_sequential(index, positions, size, out, limits)
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
        decode = partial(
            _decode_groups,
            index,
            slot_of=slot_of,
            size=size,
            out=out,
            codec_threads=codec_threads,
            limits=limits,
        )
        if workers == 1:
            damaged = decode(jobs[0])
        else:
            with ThreadPoolExecutor(workers) as pool:
                damaged = sum(pool.map(decode, jobs))
    if damaged:
        warnings.warn(
            f"video {index.path}: {damaged} damaged packet(s) could not be decoded and were skipped; frames "
            "near them may show decoding errors",
            MediaWarning,
            stacklevel=2,
        )
    if positions == list(frame_indices):
        return out
    slot = {pos: s for s, pos in enumerate(positions)}
    return out[[slot[i] for i in frame_indices]]


def _timestamps(video: dict, count: int, name: str) -> list[float]:
    """Seconds of each pre-extracted frame, from ``timestamps`` or ``fps``: finite, non-negative, non-decreasing."""
    if "timestamps" in video:
        stamps = video["timestamps"]
        if not isinstance(stamps, list | tuple | np.ndarray | torch.Tensor) or not all(
            isinstance(t, numbers.Real) and not isinstance(t, bool) and math.isfinite(t) for t in stamps
        ):
            raise QueryError(f"video {name}: 'timestamps' must be a list of finite numbers (seconds)")
        stamps = [float(t) for t in stamps]
    elif "fps" in video:
        fps = video["fps"]
        if not isinstance(fps, numbers.Real) or isinstance(fps, bool) or not (math.isfinite(fps) and fps > 0):
            raise QueryError(f"video {name}: 'fps' must be a finite number > 0, got {fps!r}")
        stamps = [i / float(fps) for i in range(count)]
    else:
        raise QueryError(f"video {name}: pre-extracted frames need 'timestamps' (seconds) or 'fps'")
    if len(stamps) != count:
        raise QueryError(f"video {name}: {count} frames but {len(stamps)} timestamps")
    if any(b < a for a, b in zip(stamps, stamps[1:], strict=False)) or stamps[0] < 0:
        raise QueryError(f"video {name}: timestamps must be non-negative and non-decreasing, got {stamps}")
    return stamps


def _frames_unit(video: dict, name: str, limits: InputLimits) -> _Unit:
    frames = video["frames"]
    if isinstance(frames, np.ndarray | torch.Tensor) and frames.ndim == 4:
        frames = list(frames)
    if not isinstance(frames, list | tuple) or not frames:
        raise QueryError(f"video {name}: 'frames' must be a non-empty list of images")
    if len(frames) > limits.max_frames:
        raise QueryError(
            f"video {name}: {len(frames)} pre-extracted frames; the limit is {limits.max_frames} "
            "(InputLimits.max_frames)"
        )
    stamps = _timestamps(video, len(frames), name)
    arrays = [load_image_array(f, limits) for f in frames]
    if len({a.shape for a in arrays}) != 1:
        raise MediaError(
            f"video {name}: all frames must have the same size, got {sorted({a.shape for a in arrays})}"
        )
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
        limits: InputLimits | None = None,
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
        self.limits = limits or InputLimits()

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
                units.append(_frames_unit(video, name, self.limits))
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
                    probes[path] = probe_video(path, self.limits)
                except MediaError as err:
                    raise type(err)(f"video #{i}: {err}") from err
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
        for ``load()``. One item per media unit (a video with k segments gives k units). Settings, files and the
        planned pixels are checked against ``self.limits`` before anything is decoded."""
        settings = check_media_settings(
            {
                "min_pixels": self.size["shortest_edge"] if min_pixels is None else min_pixels,
                "max_pixels": self.size["longest_edge"] if max_pixels is None else max_pixels,
                "video_max_pixels": self.video_max_pixels if video_max_pixels is None else video_max_pixels,
                "video_fps": self.video_fps if video_fps is None else video_fps,
                "min_frames": self.min_frames if min_frames is None else min_frames,
                "max_frames": self.max_frames if max_frames is None else max_frames,
                "num_extract_threads": self.num_extract_threads
                if num_extract_threads is None
                else num_extract_threads,
            },
            self.limits,
        )
        min_pixels, max_pixels = settings["min_pixels"], settings["max_pixels"]
        budget, fps = settings["video_max_pixels"], settings["video_fps"]
        min_frames, max_frames = settings["min_frames"], settings["max_frames"]
        threads = settings["num_extract_threads"]

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
        sizes = [
            smart_resize_video(
                t,
                h,
                w,
                self.patch_size * self.merge_size,
                min_pixels,
                max_pixels,
                max_pixels if budget is None else int(budget * volume / sum(volumes)),
                name=f"video {unit.name}",
            )
            for unit, (t, h, w), volume in zip(units, shapes, volumes, strict=True)
        ]
        total_frames = sum(t for t, _, _ in shapes)
        if total_frames > self.limits.max_frames:
            raise MediaError(
                f"the videos of this call give {total_frames} frames; the limit is {self.limits.max_frames} "
                "(InputLimits.max_frames): send fewer videos or segments"
            )
        # Each decoder thread holds one full-size RGB frame besides the resized ones.
        largest_frame = max(
            (h * w for u, (_, h, w) in zip(units, shapes, strict=True) if u.frames is None), default=0
        )
        check_planned_pixels(
            sum(t * size[0] * size[1] for (t, _, _), size in zip(shapes, sizes, strict=True)),
            threads * largest_frame,
            self.limits,
            "the videos of this call",
        )
        out = []
        for unit, (t, _, _), size in zip(units, shapes, sizes, strict=True):
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
            frames = decode_frames(unit.index, unit.frame_indices, size, threads, self.limits)
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


def stream_frames(
    path: str | Path, sample_fps: float, max_frames: int | None = None, limits: InputLimits | None = None
) -> Iterator[tuple[np.ndarray, float]]:
    """Decode a video front to back and yield ``(rgb uint8 array (H, W, 3), seconds)`` about ``sample_fps`` times
    per second of video (a live stream's frames), at most ``max_frames`` of them. A URL is read as a stream (its
    waits bounded by ``limits.fetch_timeout``); frames larger than ``limits.max_video_frame_pixels`` are refused."""
    if not (isinstance(sample_fps, numbers.Real) and math.isfinite(sample_fps) and sample_fps > 0):
        raise QueryError(f"sample_fps must be a finite number > 0, got {sample_fps!r}")
    limits = limits or InputLimits()
    path = str(path)
    if not path.startswith((*HTTP_PREFIXES, *STREAM_PREFIXES)):
        path = local_media_file(path.removeprefix("file://"), "video")
    next_time, sent = 0.0, 0
    with _open(path, limits) as container, _video_errors(path, "decode"):
        if not container.streams.video:
            raise MediaError(f"{path} has no video stream")
        stream = container.streams.video[0]
        _check_header(path, stream.codec_context.width, stream.codec_context.height, 0, 0.0, limits)
        first = None
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            first = frame.time if first is None else first
            seconds = frame.time - first
            if seconds + 1e-6 < next_time:
                continue
            if frame.width * frame.height > limits.max_video_frame_pixels:
                raise MediaError(
                    f"video {path}: a frame of {frame.width}x{frame.height} exceeds the limit of "
                    f"{limits.max_video_frame_pixels} pixels (InputLimits.max_video_frame_pixels)"
                )
            yield frame.to_ndarray(format="rgb24"), seconds
            sent += 1
            while next_time <= seconds + 1e-6:  # on a fixed 1 / sample_fps grid, so the rate does not drift
                next_time += 1.0 / sample_fps
            if max_frames is not None and sent >= max_frames:
                return
