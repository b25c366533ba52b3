"""The hostile-input corpus shared by the reliability tests (their fixtures are in conftest.py): generated media
(bombs, truncated and lying videos), a loopback web server's behaviours (stall, trickle, flood), the corpus cases,
the good queries that sit beside them, the limits and bounds every case is held to, and peak-memory measurement.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from mossvl.errors import MediaError, QueryError
from mossvl.processing.limits import InputLimits

# Tight remote-fetch limits so that stall and trickle cases finish in about a second.
TEST_LIMITS = InputLimits(fetch_timeout=0.5, fetch_deadline=1.0, max_media_bytes=4 << 20)
GENERATE = {"max_new_tokens": 3}
SECONDS_PER_CASE = 10.0  # a hostile case (and its neighbours) must be answered within this
PEAK_BYTES_PER_CASE = 300 << 20  # and must not raise the process's peak memory by more than this


# ----- peak memory --------------------------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """The process's peak resident memory (VmHWM) since it was last reset."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset VmHWM to the current resident size (Linux clear_refs) and return it."""
    Path("/proc/self/clear_refs").write_text("5")
    return peak_rss_bytes()


@dataclass
class Measured:
    value: Any
    seconds: float
    peak_growth: int  # bytes the peak resident memory rose above the memory in use when it started


def measure(function: Callable[[], Any]) -> Measured:
    start_rss = reset_peak_rss()
    start = time.monotonic()
    value = function()
    return Measured(value, time.monotonic() - start, peak_rss_bytes() - start_rss)


# ----- generated media ----------------------------------------------------------------------------------------


def zeros_png(path: Path, width: int, height: int) -> Path:
    """A valid grayscale PNG of zeros, compressed row block by row block (no full image is ever in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, rows = zlib.compressobj(1), b"\0" * ((width + 1) * 500)
    body = [compressor.compress(rows) for _ in range(height // 500)]
    body += [compressor.compress(b"\0" * ((width + 1) * (height % 500))), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b"")
    )
    return path


def noise_clip(
    path: Path, frames: int, container_format: str | None = None, fast_start: bool = False
) -> Path:
    """An H.264 clip of `frames` noise frames at 10 fps, 64x48 (noise: the data, not the index, fills the file);
    ``fast_start`` puts the MP4 index before the data."""
    options = {"movflags": "faststart"} if fast_start else {}
    rng = np.random.default_rng(1)
    with av.open(str(path), "w", format=container_format, options=options) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(frames):
            pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def lying_raw_video(path: Path, width: int, height: int, seconds: list[float]) -> Path:
    """A Matroska 'rawvideo' file whose header declares `width` x `height` frames but whose packets are 64 bytes:
    a header that lies, cheap to write."""
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("rawvideo", rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, "gray"
        stream.time_base = Fraction(1, 1000)
        for second in seconds:
            packet = av.Packet(b"\0" * 64)
            packet.stream, packet.pts, packet.dts = stream, round(second * 1000), round(second * 1000)
            packet.time_base = Fraction(1, 1000)
            container.mux(packet)
    return path


def cut_file(source: Path, path: Path, fraction: float) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@dataclass
class Media:
    """Paths of the generated media and URLs of the loopback server."""

    root: Path
    good_image: str
    good_video: str
    paths: dict[str, str]
    urls: dict[str, str]


# ----- the loopback web server ----------------------------------------------------------------------------------


def serve_connection(connection: socket.socket, stop: threading.Event, files: dict[str, bytes]) -> None:
    """Answer one connection by the behaviour its path names; every behaviour ends when the client hangs up."""
    with connection:
        request = connection.recv(65536).decode("latin-1")
        path = request.split(" ", 2)[1] if request.count(" ") >= 2 else "/"
        try:
            if path in files:  # a well-behaved server
                body = files[path]
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            elif path == "/stall":  # accept, never answer
                connection.recv(1)
            elif path == "/stall_body":  # headers and a little of the body, then silence
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"\0" * 100)
                connection.recv(1)
            elif path == "/trickle":  # a byte at a time, never done
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                while not stop.wait(0.2):
                    connection.sendall(b"\0")
            elif path == "/oversized":  # declares 10 GB
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n")
                connection.recv(1)
            elif path == "/flood":  # no length, endless bytes
                connection.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                while not stop.is_set():
                    connection.sendall(b"\0" * 65536)
        except OSError:
            pass  # the client gave up, as it should


@dataclass
class Web:
    """``url`` of the server; ``files`` maps a path (``/name``) to the bytes it serves."""

    url: str
    files: dict[str, bytes]


# ----- the corpus ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One hostile query: ``build(media)`` makes it; ``error`` is the error type it must get and ``message`` a
    regular expression its message must match. ``error`` None: it must be answered, with a MediaWarning matching
    ``message``. ``json``: a JSON file or HTTP request can carry it."""

    name: str
    build: Callable[[Media], Any]
    error: type | None
    message: str
    json: bool = True


def _image(name: str) -> Callable[[Media], dict]:
    return lambda m: {"prompt": "Describe.", "images": [m.paths[name]]}


def _video(name: str) -> Callable[[Media], dict]:
    return lambda m: {"prompt": "Describe.", "videos": [m.paths[name]]}


def _url(name: str, kind: str) -> Callable[[Media], dict]:
    return lambda m: {"prompt": "Describe.", kind: [m.urls[name]]}


def _settings(**settings: Any) -> Callable[[Media], dict]:
    return lambda m: {"prompt": "Describe.", "images": [m.good_image], **settings}


def _video_settings(**settings: Any) -> Callable[[Media], dict]:
    return lambda m: {"prompt": "Describe.", "videos": [m.good_video], **settings}


CASES = [
    # Images: bombs, damage, paths that are not files, remote sources that never finish.
    Case("png_decompression_bomb", _image("bomb"), MediaError, r"max_image_pixels.*before decoding"),
    Case("png_over_pixel_limit", _image("big"), MediaError, r"10000x9000 .*max_image_pixels"),
    Case("png_truncated", _image("png_cut"), MediaError, r"cannot read image"),
    Case("png_random_bytes", _image("random_png"), MediaError, r"cannot read image"),
    Case("image_is_a_directory", _image("folder_png"), MediaError, r"is a directory"),
    Case("image_is_a_fifo", _image("fifo_png"), MediaError, r"is a FIFO"),
    Case("image_is_a_device", lambda m: {"prompt": "x", "images": ["/dev/zero"]}, MediaError, "device"),
    Case("image_symlink_loop", _image("loop_png"), MediaError, r"symlink loop"),
    Case("image_dangling_symlink", _image("dangling_png"), MediaError, r"symlink to a missing target"),
    Case("image_path_with_nul", lambda m: {"prompt": "x", "images": ["a\0b.png"]}, MediaError, "NUL"),
    Case(
        "image_float_nan",
        lambda m: {"prompt": "x", "images": [np.full((32, 32, 3), np.nan, np.float32)]},
        MediaError,
        "finite floats",
        json=False,
    ),
    Case(
        "image_bfloat16_tensor",
        lambda m: {"prompt": "x", "images": [torch.zeros(3, 32, 32, dtype=torch.bfloat16)]},
        MediaError,
        "cannot read image",
        json=False,
    ),
    Case("image_url_stalls", _url("stall", "images"), MediaError, r"no answer within 0.5 s"),
    Case("image_url_stalls_mid_body", _url("stall_body", "images"), MediaError, r"no answer within 0.5 s"),
    Case("image_url_trickles", _url("trickle", "images"), MediaError, r"longer than 1 s"),
    Case("image_url_declares_10_gb", _url("oversized", "images"), MediaError, r"larger than 4194304 bytes"),
    Case("image_url_floods", _url("flood", "images"), MediaError, r"larger than 4194304 bytes"),
    # Videos: lying headers, damage, paths that are not files, remote sources that never finish.
    Case("video_header_16000x16000", _video("huge_frames"), MediaError, r"max_video_frame_pixels"),
    Case("video_lasting_5_hours", _video("five_hours"), MediaError, r"max_video_seconds"),
    Case("video_index_lost", _video("index_lost"), MediaError, r"cannot open video"),
    Case("video_random_bytes", _video("random_mp4"), MediaError, r"cannot open video"),
    Case("video_is_a_directory", _video("folder_mp4"), MediaError, r"is a directory"),
    Case("video_is_a_fifo", _video("fifo_mp4"), MediaError, r"is a FIFO"),
    Case("video_url_stalls", _url("stall", "videos"), MediaError, r"no answer within 0.5 s"),
    Case("video_url_floods", _url("flood", "videos"), MediaError, r"larger than 4194304 bytes"),
    Case(
        "video_5000_segments",
        lambda m: {"prompt": "x", "videos": [{"video_path": m.good_video, "segments": [[0.0]] * 5000}]},
        MediaError,
        r"5000 frames.*InputLimits.max_frames",
    ),
    Case(
        "frames_with_nan_timestamps",
        lambda m: {
            "prompt": "x",
            "videos": [{"frames": [np.zeros((32, 32, 3), np.uint8)], "timestamps": [np.nan]}],
        },
        QueryError,
        r"'timestamps' must be a list of finite numbers",
        json=False,
    ),
    # Honest media: truncated files are answered, and the warning says how much was read.
    Case("video_fast_start_cut_at_50", _video("faststart_50"), None, r"read \d+ of the 100 frames"),
    Case("video_fast_start_cut_at_90", _video("faststart_90"), None, r"read \d+ of the 100 frames"),
    Case("video_mkv_cut_at_50", _video("mkv_50"), None, r"read \d\.\d+ s of the 10\.00 s"),
    # Media settings.
    Case("max_pixels_zero", _settings(max_pixels=0), QueryError, r"max_pixels=0 is invalid"),
    Case(
        "min_pixels_1e12", _settings(min_pixels=1e12), QueryError, r"min_pixels=1000000000000\.0 is invalid"
    ),
    Case("min_pixels_2e8", _settings(min_pixels=200_000_000), QueryError, r"min_pixels=200000000 is invalid"),
    Case("video_fps_nan", _video_settings(video_fps=float("nan")), QueryError, r"video_fps=nan is invalid"),
    Case("video_fps_zero", _video_settings(video_fps=0), QueryError, r"video_fps=0 is invalid"),
    Case("max_frames_negative", _video_settings(max_frames=-1), QueryError, r"max_frames=-1 is invalid"),
    Case(
        "extract_threads_absurd",
        _video_settings(num_extract_threads=10**9),
        QueryError,
        r"num_extract_threads=1000000000 is invalid.*\[1, 32\]",
    ),
    # Generation settings.
    Case("temperature_nan", _settings(temperature=float("nan")), QueryError, r"temperature=nan is invalid"),
    Case(
        "temperature_tiny", _settings(temperature=1e-308, do_sample=True), QueryError, r"temperature=1e-308"
    ),
    Case("seed_beyond_64_bits", _settings(seed=2**80, do_sample=True), QueryError, r"seed=\d+ is invalid"),
    Case("top_p_zero", _settings(top_p=0), QueryError, r"top_p=0 is invalid"),
    Case(
        "max_new_tokens_negative", _settings(max_new_tokens=-5), QueryError, r"max_new_tokens=-5 is invalid"
    ),
    # Prompts and query structure.
    Case(
        "prompt_lone_surrogate", lambda m: {"prompt": "caf\udce9?"}, QueryError, r"not valid UTF-8.*U\+DCE9"
    ),
    Case("prompt_200k_characters", lambda m: {"prompt": "ab " * 66_667}, QueryError, r"max_prompt_tokens"),
    Case("prompt_2m_characters", lambda m: {"prompt": "a" * 2_000_000}, QueryError, r"max_prompt_chars"),
    Case(
        "prompt_raw_vision_token", lambda m: {"prompt": "<|image_pad|>"}, QueryError, r"contains <\|image_pad"
    ),
    # A queue worker and the batch helper read a bare value differently; each names it.
    Case("query_is_a_number", lambda m: 42, QueryError, r"query must be|must be a dict|'prompt' must be"),
    Case(
        "media_kwargs_not_a_dict", lambda m: {"prompt": "x", "media_kwargs": [1]}, QueryError, "must be dicts"
    ),
    Case("unknown_media_setting", _settings(media_kwargs={"pixels": 5}), QueryError, r"unknown media kwarg"),
]
GOOD_QUERIES = [
    lambda m: {"prompt": "What is in the image?", "images": [m.good_image]},
    lambda m: {"prompt": "Say something."},
]
