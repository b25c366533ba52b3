"""Video processing speed: sampled-frame decoding (seek + skip) vs decoding every frame, per sampled frame.

Generates (once, cached in the system temp dir) 60 s 640×360 30 fps H.264 clips with PyAV, one with x264's
default GOP (250 frames) and one with a 2 s GOP, then times `MossVLVideoProcessor.process` (index, decode,
resize, patchify) at 1 and 4 fps with 1 and 4 extraction threads. The baseline, timed in the same run, decodes
every frame front to back with the same number of codec threads and converts/resizes/patchifies only the
sampled ones, giving identical pixel values.

    .venv/bin/python benchmarks/bench_video_processing.py [--repeats 3]
"""

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from mossvl.processing.image import hwc_to_tensor
from mossvl.processing.transforms import patchify, resize_uint8
from mossvl.processing.video import MossVLVideoProcessor

WIDTH, HEIGHT, FPS, SECONDS = 640, 360, 30, 60


def make_clip(path: Path, gop: int | None) -> Path:
    if path.exists():
        return path
    tmp = path.with_suffix(".part.mp4")
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "veryfast", **({"g": str(gop)} if gop else {})}
        for i in range(SECONDS * FPS):
            img = np.stack([(xx + 3 * i) % 256, (yy + i) % 256, ((xx + yy) // 2 + 5 * i) % 256], -1).astype(
                np.uint8
            )
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.rename(path)
    return path


def baseline(path: Path, frame_indices: list[int], size: tuple[int, int], threads: int) -> torch.Tensor:
    """Decode every frame in order; convert, resize and patchify the sampled ones."""
    wanted = set(frame_indices)
    kept = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if threads > 1:
            stream.thread_type, stream.codec_context.thread_count = "AUTO", threads
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                kept.append(resize_uint8(hwc_to_tensor(frame.to_ndarray(format="rgb24"))[None], size)[0])
    return patchify(torch.stack(kept), 16, 2, (0.5,) * 3, (0.5,) * 3)[0]


def best_of(repeats: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # decoding threads are the variable under test
    cache = Path(tempfile.gettempdir()) / "mossvl_bench"
    cache.mkdir(exist_ok=True)
    clips = {
        "gop250": make_clip(cache / "clip60_gop250.mp4", None),
        "gop60": make_clip(cache / "clip60_gop60.mp4", 60),
    }

    print(
        f"{'clip':<8} {'fps':>4} {'threads':>7} {'frames':>6} {'ours ms/frame':>14} {'baseline ms/frame':>18} {'speedup':>8}"
    )
    for name, path in clips.items():
        for fps in (1.0, 4.0):
            for threads in (1, 4):
                proc = MossVLVideoProcessor(video_fps=fps, num_extract_threads=threads)
                ours_s, out = best_of(args.repeats, lambda: proc.process([str(path)])[0])  # noqa: B023
                size = (out.grid_thw[1] * 16, out.grid_thw[2] * 16)
                base_s, rows = best_of(args.repeats, lambda: baseline(path, out.frame_indices, size, threads))  # noqa: B023
                assert torch.equal(rows, out.pixel_values), "baseline and sampled decoding disagree"
                n = len(out.frame_indices)
                print(
                    f"{name:<8} {fps:>4.0f} {threads:>7} {n:>6} {ours_s * 1e3 / n:>14.2f} {base_s * 1e3 / n:>18.2f} "
                    f"{base_s / ours_s:>7.2f}x"
                )


if __name__ == "__main__":
    main()
