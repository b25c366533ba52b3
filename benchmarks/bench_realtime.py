"""Benchmark: realtime sessions at 1 fps, alone and side by side on one engine (not a test).

For the shipped demo model and the random "mid" model (``benchmarks/common.py``), 1, 2 and 4 concurrent sessions
each stream ``--frames`` frames at ``--fps`` (paced in real time) and then ask one prompt. Printed per model and
session count: frame-extend latency (frame pushed → its K/V stored, p50 / p95), prompt TTFT (prompt pushed → first
text) and generated tokens per second per session while answering.

    .venv/bin/python benchmarks/bench_realtime.py [--frames 8] [--fps 1] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import torch
from common import build_mossvl, load_processor, mid_sizes, percentile, random_frames

import mossvl
from mossvl.inference.engine import Engine
from mossvl.inference.realtime import RealtimeConfig, RealtimeSession


def one_session(engine: Engine, frames: list[np.ndarray], fps: float, max_new: int, out: dict) -> None:
    session = RealtimeSession(engine, RealtimeConfig(initial_prompt="What happens?", max_new_tokens=max_new))
    session.start()
    pushed, extend, answering, tokens = {}, [], 0.0, 0
    answer_start = None
    start = time.monotonic()

    def drain(until_kind: str | None = None, timeout: float = 0.0) -> None:
        nonlocal answer_start, answering, tokens
        deadline = time.monotonic() + timeout
        while True:
            event = session.poll_event(max(0.0, deadline - time.monotonic()))
            if event is None:
                return
            now = event.time
            if event.kind == "frame_processed":
                extend.append(now - pushed[event.seq_no])
            elif event.kind == "round_start":
                answer_start = now
            elif event.kind == "text":
                tokens += 1
            elif event.kind == "response_done" and answer_start is not None:
                answering += now - answer_start
                answer_start = None
            if until_kind is not None and event.kind == until_kind:
                return

    for index, frame in enumerate(frames):
        time.sleep(max(0.0, start + index / fps - time.monotonic()))
        pushed[index] = time.monotonic()
        session.push_frame(frame, index / fps, seq_no=index)
        drain()
    drain("response_done", timeout=120)
    asked = time.monotonic()
    session.push_prompt("Describe what you saw.")
    first_text = None
    while first_text is None:
        event = session.poll_event(120)
        if event is None:
            break
        if event.kind == "text":
            first_text = event.time
    session.close(120)
    out.update(
        extend=extend, ttft=(first_text or float("nan")) - asked, tps=tokens / answering if answering else 0.0
    )


def bench(name: str, engine: Engine, args) -> None:
    print(f"\n## {name}")
    print(
        "| sessions | frame extend p50 ms | frame extend p95 ms | prompt TTFT ms | tokens/s per session |\n"
        "|---:|---:|---:|---:|---:|"
    )
    for count in (1, 2, 4):
        outs = [{} for _ in range(count)]
        threads = [
            threading.Thread(
                target=one_session,
                args=(
                    engine,
                    random_frames(args.frames, args.frame_size, seed=i),
                    args.fps,
                    args.max_new_tokens,
                    outs[i],
                ),
            )
            for i in range(count)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        extend = [value for out in outs for value in out["extend"]]
        ttft = float(np.mean([out["ttft"] for out in outs]))
        tps = float(np.mean([out["tps"] for out in outs]))
        print(
            f"| {count} | {percentile(extend, 50) * 1000:.0f} | {percentile(extend, 95) * 1000:.0f} | "
            f"{ttft * 1000:.0f} | {tps:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--frame-size", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="3 frames at 4 fps, small mid model")
    args = parser.parse_args()
    hidden, layers = 1024, 12
    if args.quick:
        args.frames, args.fps, hidden, layers = 3, 4.0, 256, 4
    torch.set_num_threads(args.threads)
    print("# mossvl realtime benchmark")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.frames} frames of "
        f"{args.frame_size}px at {args.fps:g} fps per session, answers up to {args.max_new_tokens} tokens, fp32"
    )
    model, processor = mossvl.load(dtype="float32", device="cpu")
    bench("demo model (4.8M)", Engine(model, processor), args)
    processor = load_processor()
    mid = build_mossvl(mid_sizes(hidden, layers), processor)
    bench(
        f"mid model (hidden {hidden}, {layers} layers, 3 cross; random weights)", Engine(mid, processor), args
    )


if __name__ == "__main__":
    main()
