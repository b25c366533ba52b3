"""Fixtures for processing tests: tiny videos written with PyAV, and the helpers that write, draw and decode them
(plain functions, handed to tests through fixtures of the same name)."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest


def _frame_pattern(i: int, height: int, width: int) -> np.ndarray:
    """A frame whose content identifies its index: a gradient shifted by i."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack(
        [(xx * 4 + i * 9) % 256, (yy * 4 + i * 5) % 256, np.full_like(xx, (i * 37) % 256)], -1
    ).astype(np.uint8)


def _write_clip(
    path: Path,
    num_frames: int,
    *,
    size: tuple[int, int] = (48, 64),
    fps: int | Fraction = 10,
    pts_ms: list[int] | None = None,
    gop: int = 6,
) -> Path:
    """H.264 clip (B-frames on, keyframe every `gop`), constant `fps` or explicit millisecond pts (VFR)."""
    height, width = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "bf": "2", "sc_threshold": "0"}
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(_frame_pattern(i, height, width), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _decode_all(path: Path) -> tuple[list[np.ndarray], list[float]]:
    """Every frame (RGB) and its time relative to the first frame, by plain sequential decoding."""
    frames, pts = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            pts.append(Fraction(0) if frame.pts is None else frame.pts * frame.time_base)
    return frames, [float(p - pts[0]) for p in pts]


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Small clips: cfr (47 frames @ 10 fps), vfr (mkv, first pts 0.5 s), offset (mp4, first pts 0.5 s)."""
    root = tmp_path_factory.mktemp("clips")
    vfr_pts = [
        500 + t for t in np.cumsum([0, 40, 40, 150, 40, 300, 40, 40, 90, 40, 40, 500, 40, 40]).tolist()
    ]
    return {
        "cfr": _write_clip(root / "cfr.mp4", 47, fps=10),
        "vfr": _write_clip(root / "vfr.mkv", len(vfr_pts), fps=25, pts_ms=vfr_pts),
        "offset": _write_clip(
            root / "offset.mp4", 30, fps=6, pts_ms=[500 + round(i * 1000 / 6) for i in range(30)]
        ),
        "wide": _write_clip(root / "wide.mp4", 12, size=(40, 90), fps=Fraction(5, 2), gop=4),
    }


@pytest.fixture
def frame_pattern():
    return _frame_pattern


@pytest.fixture
def write_clip():
    return _write_clip


@pytest.fixture
def decode_all():
    return _decode_all
