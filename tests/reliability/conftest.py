"""Fixtures of the reliability tests over the corpus in corpus.py: the generated media, the loopback web server,
the golden processor with the corpus limits, and the good queries' answers when they run alone. A test that takes
a ``case`` argument runs once per corpus case.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from corpus import (
    CASES,
    GENERATE,
    GOOD_QUERIES,
    TEST_LIMITS,
    Media,
    Web,
    cut_file,
    lying_raw_video,
    measure,
    noise_clip,
    serve_connection,
    zeros_png,
)


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Tiny models run fastest and steadiest on one thread (the root `single_thread` fixture)."""


@pytest.fixture(scope="session")
def peak():
    """``peak(function)``: its value, seconds and how far it raised the peak resident memory (``Measured``)."""
    return measure


@pytest.fixture(scope="session")
def media(tmp_path_factory, golden_dir, web) -> Media:
    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    good_image = str(golden_dir / "media" / "img_a_64x96.png")
    faststart = noise_clip(root / "whole_faststart.mp4", 100, fast_start=True)
    at_end = noise_clip(root / "whole_index_at_end.mp4", 100)
    mkv = noise_clip(root / "whole.mkv", 100, container_format="matroska")
    (root / "random.png").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (root / "random.mp4").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    os.mkfifo(root / "fifo.png")
    os.mkfifo(root / "fifo.mp4")
    os.symlink(root / "loop_b.png", root / "loop_a.png")
    os.symlink(root / "loop_a.png", root / "loop_b.png")
    os.symlink(root / "nothing_here.png", root / "dangling.png")
    (root / "folder.png").mkdir()
    (root / "folder.mp4").mkdir()
    paths = {
        "bomb": zeros_png(root / "bomb.png", 20000, 20000),
        "big": zeros_png(root / "big.png", 10000, 9000),
        "png_cut": cut_file(Path(good_image), root / "cut.png", 0.5),
        "random_png": root / "random.png",
        "fifo_png": root / "fifo.png",
        "loop_png": root / "loop_a.png",
        "dangling_png": root / "dangling.png",
        "folder_png": root / "folder.png",
        "faststart_50": cut_file(faststart, root / "faststart_50.mp4", 0.5),
        "faststart_90": cut_file(faststart, root / "faststart_90.mp4", 0.9),
        "mkv_50": cut_file(mkv, root / "cut_50.mkv", 0.5),
        "index_lost": cut_file(at_end, root / "index_lost.mp4", 0.5),
        "huge_frames": lying_raw_video(root / "huge_frames.mkv", 16000, 16000, [0, 1, 2]),
        "five_hours": lying_raw_video(root / "five_hours.mkv", 16, 16, [0, 5 * 3600]),
        "random_mp4": root / "random.mp4",
        "fifo_mp4": root / "fifo.mp4",
        "folder_mp4": root / "folder.mp4",
    }
    return Media(
        root,
        good_image,
        str(golden_dir / "media" / "vid_a_47f_10fps_48x64.mp4"),
        {name: str(path) for name, path in paths.items()},
        {name: f"{web.url}/{name}" for name in ("stall", "stall_body", "trickle", "oversized", "flood")},
    )


@pytest.fixture(scope="session")
def web(golden_dir):
    files = {"/clip.mp4": (golden_dir / "media" / "vid_a_47f_10fps_48x64.mp4").read_bytes()}
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve_connection, args=(connection, stop, files), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield Web(f"http://127.0.0.1:{listener.getsockname()[1]}", files)
    stop.set()
    thread.join(5)
    listener.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", CASES, ids=[case.name for case in CASES])


# ----- model, processor, engine ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def limited_processor(golden_dir):
    """The golden processor with TEST_LIMITS (its own object: the shared golden processor stays untouched)."""
    from mossvl.processing.processor import MossVLProcessor

    return MossVLProcessor.from_pretrained(golden_dir, limits=TEST_LIMITS)


@pytest.fixture(scope="session")
def good_answers(golden_model, limited_processor, media) -> list[str]:
    """What the good queries are answered when they run alone."""
    import mossvl

    return [mossvl.chat(golden_model, limited_processor, q(media), **GENERATE) for q in GOOD_QUERIES]
