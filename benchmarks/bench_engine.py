"""Benchmark: continuous batching vs static batching, prefill stalls, and the media cache (not a test).

All in one process on the random "mid" MOSS-VL (``benchmarks/common.py``):

1. Serving under load. Requests (text prompts and 8–32-frame videos, 8–128 new tokens each) arrive as a Poisson
   process at three rates, and are served two ways on the same model:
   * continuous: the engine; each request is submitted when it arrives and joins the running batch;
   * static (the engine before the engine core, kept here): whatever arrived while the previous batch ran becomes
     the next batch; one left-padded prefill, then decode steps until every request of the batch is done.
   Printed: throughput (generated tokens / wall time), TTFT p50/p95 (arrival to first token) and time per output
   token (TPOT, mean over requests).
2. Prefill stall: while one request decodes, a long video is submitted; the longest gap between two of the
   running request's tokens, for two prefill chunk sizes.
3. Media cache: three questions about one 64-frame MP4 (decoding included), with no caching, with the media cache,
   and with the media cache and prefix sharing; asked one after another and all at once, with frames of 128 and
   384 pixels (the vision tower, which the cache skips, costs more at the larger size).

    .venv/bin/python benchmarks/bench_engine.py [--requests 24] [--threads 2] [--parts load,stall,cache]
        [--cache-frame-sizes 128,384] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import (
    build_mossvl,
    frames_video,
    load_processor,
    mid_sizes,
    param_millions,
    percentile,
    random_frames,
    write_video,
)

from mossvl.inference.core import EngineConfig
from mossvl.inference.engine import Engine
from mossvl.model import MossVLCache


def workload(count: int, frame_size: int, seed: int) -> list[dict]:
    """A mix of text prompts and short videos; answers from a word to a paragraph (8-128 tokens)."""
    rng = np.random.default_rng(seed)
    queries = []
    for i in range(count):
        tokens = int(rng.integers(8, 129))
        settings = {"media_kwargs": {"max_frames": 64}, "max_new_tokens": tokens}
        if i % 3 == 0:
            queries.append({"prompt": f"Question {i}: what is a good name for a cat?", **settings})
        else:
            frames = random_frames(int(rng.integers(8, 33)), frame_size, seed=seed * 1000 + i)
            queries.append(
                {"prompt": "What happens in the video?", "videos": [frames_video(frames)], **settings}
            )
    return queries


def arrivals(count: int, rate: float, seed: int) -> list[float]:
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, count)
    return np.cumsum(gaps).tolist()


def summary(records: list[tuple[float, float, float, int]], start: float) -> dict:
    """Throughput and latencies from (arrival, first token, finish, tokens) of every request."""
    wall = max(finish for _, _, finish, _ in records) - start
    ttft = [first - arrival for arrival, first, _, _ in records]
    tpot = [(finish - first) / (n - 1) for _, first, finish, n in records if n > 1]
    return {
        "throughput": sum(n for *_, n in records) / wall,
        "ttft_p50": percentile(ttft, 50),
        "ttft_p95": percentile(ttft, 95),
        "tpot": float(np.mean(tpot)),
        "wall": wall,
    }


def serve_continuous(engine: Engine, queries: list[dict], times: list[float]) -> dict:
    """Each request is submitted when it arrives and joins the running batch."""
    prepared = [engine.prepare(query) for query in queries]  # media decoding is not what is compared here
    handles = []
    start = time.monotonic()
    for request, at in zip(prepared, times, strict=True):
        time.sleep(max(0.0, start + at - time.monotonic()))
        request.arrival_time = start + at
        handles.append(engine.submit(request))
    results = [handle.result() for handle in handles]
    return summary(
        [(r.arrival_time, r.first_token_time, r.finish_time, r.completion_tokens) for r in results], start
    )


@torch.inference_mode()
def static_batch(model, processor, queries: list[dict]) -> list[tuple[float, float, int]]:
    """The behaviour before the engine core: one left-padded prefill of the whole batch, then decode steps until
    every request is done (finished rows leave the cache). Returns (first token, finish, tokens) per request."""
    inputs = processor.prepare(queries)
    limits = [q["max_new_tokens"] for q in queries]
    cache = MossVLCache(model.config)
    logits = model(**inputs, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    first = time.monotonic()
    mask, alive, done = inputs["attention_mask"], list(range(len(queries))), {}
    produced = [0] * len(queries)
    while alive:
        tokens = logits.argmax(-1)
        for row in alive:
            produced[row] += 1
        finished = [p for p, row in enumerate(alive) if produced[row] >= limits[row]]
        now = time.monotonic()
        for p in finished:
            done[alive[p]] = now
        keep = [p for p in range(len(alive)) if p not in finished]
        if not keep:
            break
        if finished:
            index = torch.tensor(keep)
            cache.batch_select_indices(index)
            mask, tokens = mask[index], tokens[index]
            alive = [alive[p] for p in keep]
        mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
        logits = model(input_ids=tokens[:, None], attention_mask=mask, cache=cache, use_cache=True).logits[
            :, -1
        ]
    return [(first, done[row], limits[row]) for row in range(len(queries))]


def serve_static(model, processor, queries: list[dict], times: list[float], max_batch: int) -> dict:
    """Whatever arrived while the previous batch ran is the next batch (at most ``max_batch``)."""
    start, index, records = time.monotonic(), 0, []
    while index < len(queries):
        time.sleep(max(0.0, start + times[index] - time.monotonic()))
        batch = [i for i in range(index, len(queries)) if start + times[i] <= time.monotonic()][:max_batch]
        for i, (first, finish, n) in zip(
            batch, static_batch(model, processor, [queries[i] for i in batch]), strict=True
        ):
            records.append((start + times[i], first, finish, n))
        index = batch[-1] + 1
    return summary(records, start)


def bench_load(args, model, processor) -> None:
    print(
        "\n## 1. Poisson arrivals: continuous batching (the engine) vs static batching (the previous engine)"
    )
    queries = workload(args.requests, args.frame_size, seed=1)
    print(
        f"{args.requests} requests (1/3 text, 2/3 videos of 8-32 frames of {args.frame_size}px), "
        "8-128 new tokens each, greedy, at most 16 at once"
    )
    print(
        "| rate req/s | scheduler | throughput tok/s | TTFT p50 s | TTFT p95 s | TPOT ms | wall s |\n"
        "|---:|---|---:|---:|---:|---:|---:|"
    )
    rows = []
    for rate in args.rates:
        times = arrivals(len(queries), rate, seed=int(rate * 100))
        static = serve_static(model, processor, queries, times, max_batch=16)
        continuous = serve_continuous(
            Engine(model, processor, EngineConfig(max_batch_size=16)), queries, times
        )
        for name, r in (("static", static), ("continuous", continuous)):
            print(
                f"| {rate:g} | {name} | {r['throughput']:.1f} | {r['ttft_p50']:.2f} | {r['ttft_p95']:.2f} | "
                f"{r['tpot'] * 1000:.0f} | {r['wall']:.1f} |"
            )
        rows.append((rate, static, continuous))
    print(
        "\n| rate req/s | throughput continuous / static | TTFT p95 static / continuous |\n|---:|---:|---:|"
    )
    for rate, static, continuous in rows:
        gain = continuous["throughput"] / static["throughput"]
        print(f"| {rate:g} | {gain:.2f}x | {static['ttft_p95'] / continuous['ttft_p95']:.2f}x |")


def bench_stall(args, model, processor) -> None:
    print(f"\n## 2. Decode stall while a {args.stall_frames}-frame video is prefilled")
    print(
        "| prefill chunk | longest gap between tokens of the running request s | median gap s |\n|---|---:|---:|"
    )
    video = {
        "prompt": "Describe.",
        "videos": [frames_video(random_frames(args.stall_frames, args.frame_size, seed=7))],
        "media_kwargs": {"max_frames": args.stall_frames},
        "max_new_tokens": 2,
    }
    for frames, tokens in ((args.stall_frames, 100_000), (16, 512)):
        engine = Engine(
            model,
            processor,
            EngineConfig(prefill_chunk_frames=frames, prefill_chunk_tokens=tokens, media_cache_bytes=0),
        )
        running = engine.submit({"prompt": "Talk.", "max_new_tokens": 100_000})
        stamps = []
        events = running.events()
        next(events)
        long_prefill = engine.submit(engine.prepare(video))
        while not long_prefill.done:
            stamps.append(next(events).time)
        running.cancel()
        running.result()
        gaps = np.diff(stamps)
        label = "none (one unit)" if tokens == 100_000 else f"{frames} frames / {tokens} tokens"
        print(f"| {label} | {gaps.max():.2f} | {np.median(gaps):.3f} |")


def bench_media_cache(args, model, processor) -> None:
    print(
        f"\n## 3. Three questions about one {args.cache_frames}-frame video (decode + vision tower + answer)"
    )
    print(
        "Asked one after another (follow-ups) and all at once (an eval harness's batch); the speed-up is over no "
        "caching in the same mode and at the same frame size."
    )
    print("| frame px | questions | caching | wall s | speed-up |\n|---:|---|---|---:|---:|")
    questions = ["What happens?", "What moves?", "What colour is it?"]
    # The questions follow the same video, so prefix sharing (a later request copies the KV of an earlier one that
    # starts with the same tokens and media) also skips the vision tower: measured separately, then together.
    settings = (
        ("none", {"media_cache_bytes": 0, "prefix_cache_size": 0}),
        ("media cache", {"media_cache_bytes": 1 << 30, "prefix_cache_size": 0}),
        ("media cache + prefix sharing (the defaults)", {"media_cache_bytes": 1 << 30}),
    )
    for size in args.cache_frame_sizes:
        folder = Path(tempfile.mkdtemp())
        path = write_video(folder / "clip.mp4", random_frames(args.cache_frames, size, seed=3))
        queries = [
            {"prompt": q, "videos": [str(path)], "media_kwargs": {"max_frames": 256}, "max_new_tokens": 8}
            for q in questions
        ]
        for mode in ("one after another", "all at once"):
            baseline = None
            for name, config in settings:
                engine = Engine(model, processor, EngineConfig(**config))
                start = time.monotonic()
                if mode == "all at once":
                    results = engine.generate(queries)
                else:
                    results = [engine.generate([query])[0] for query in queries]
                wall = time.monotonic() - start
                engine.shutdown()
                if not all(result.ok for result in results):
                    raise SystemExit(f"a question failed: {[r.error for r in results if not r.ok]}")
                baseline = baseline or wall
                print(f"| {size} | {mode} | {name} | {wall:.2f} | {baseline / wall:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--rates", default="0.5,1,2", help="arrival rates in requests per second")
    parser.add_argument("--frame-size", type=int, default=128)
    parser.add_argument("--stall-frames", type=int, default=256)
    parser.add_argument("--cache-frames", type=int, default=64)
    parser.add_argument(
        "--cache-frame-sizes", default="128,384", help="frame sizes of the media cache part, in pixels"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small model, few requests (smoke run)")
    parser.add_argument(
        "--parts", default="load,stall,cache", help="comma-separated parts to run (default all)"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    hidden, layers = 1024, 12
    if args.quick:
        args.requests, args.stall_frames, args.cache_frames, hidden, layers = 6, 32, 16, 256, 4
    args.rates = [float(r) for r in str(args.rates).split(",")]
    args.cache_frame_sizes = [int(size) for size in str(args.cache_frame_sizes).split(",")]
    torch.set_num_threads(args.threads)
    processor = load_processor()
    model = build_mossvl(mid_sizes(hidden, layers), processor)
    print("# mossvl engine benchmark")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; mid MOSS-VL {param_millions(model):.1f} M "
        f"params (hidden {hidden}, {layers} layers, 3 cross), fp32"
    )
    started = time.monotonic()
    Engine(model, processor).chat({"prompt": "warm up", "max_new_tokens": 2})
    for name, bench in (("load", bench_load), ("stall", bench_stall), ("cache", bench_media_cache)):
        if name in parts:
            bench(args, model, processor)
    print(f"\ntotal benchmark time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
