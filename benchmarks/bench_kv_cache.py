"""Benchmark: the int8 KV cache (``EngineConfig.kv_cache_dtype="int8"``) against the model-dtype cache on a long
video (not a test).

One question about a 256-frame video on the random "mid" MOSS-VL in float32 (``benchmarks/common.py``):

1. KV memory of the request: text and vision entries, in bytes, for a float32, a bfloat16 and an int8 cache (the
   pool's own accounting, scales included), for the mid model and for the official 11B decoder sizes.
2. Speed, fp32 cache vs int8 cache: prefill time (submission to first token; the vision features come from the
   media cache, so the vision tower is not timed: what is timed is storing the vision K/V and the text prefill
   that attends to them) and decode tokens/s, repeated alternately; medians and best runs, in wall-clock and in
   CPU time (the machine may be shared: CPU time moves much less with other load; use --threads 1 for it).
3. Logit drift: the largest |int8 − fp32| logit over the prefill and every decode step (the greedy tokens of both
   are compared; the drift is compared while they agree).
4. Peak RSS of one whole request (frames through the vision tower included), each cache in a fresh process.

    .venv/bin/python benchmarks/bench_kv_cache.py [--frames 256] [--frame-size 224] [--new-tokens 64]
        [--repeats 5] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from common import (
    build_mossvl,
    frames_video,
    load_processor,
    mid_sizes,
    param_millions,
    peak_rss_mb,
    random_frames,
    reset_peak_rss,
)

from mossvl.inference.core import EngineConfig
from mossvl.inference.engine import Engine
from mossvl.inference.kv_pool import KVPool
from mossvl.model import MossVLConfig

CACHES = ("model", "int8")


def label(cache: str) -> str:
    return "fp32" if cache == "model" else cache


def setup(args) -> tuple:
    torch.set_num_threads(args.threads)
    processor = load_processor()
    sizes = mid_sizes(256, 4) if args.quick else mid_sizes()
    model = build_mossvl(sizes, processor)
    frames = random_frames(args.frames, args.frame_size, seed=1)
    query = {
        "prompt": "What happens in the video? Describe every change.",
        "videos": [frames_video(frames)],
        "media_kwargs": {"max_frames": args.frames},
        "max_new_tokens": args.new_tokens,
    }
    return model, processor, query


def engine_for_cache(model, processor, cache: str) -> Engine:
    # No prefix cache: every repetition must prefill the whole request again.
    return Engine(model, processor, EngineConfig(kv_cache_dtype=cache, prefix_cache_size=0))


def recorded_logits(engine: Engine) -> list[torch.Tensor]:
    """Every logits tensor the engine's runner returns from now on (the prefill's last, then each decode step)."""
    recorded = []
    forward = engine.core.runner.forward

    def recording(*args, **kwargs):
        logits = forward(*args, **kwargs)
        if logits is not None:
            recorded.append(logits.clone())
        return logits

    engine.core.runner.forward = recording
    return recorded


def timed_run(engine: Engine, query: dict) -> dict:
    """Prefill seconds and decode tokens/s of one request, in wall-clock time and in the process's CPU time (this
    thread only waits, so that is the engine's compute, and other load on the machine changes it much less)."""
    request = engine.prepare(query)
    wall, cpu = time.monotonic(), time.process_time()
    stamps = []
    for event in engine.submit(request).events():
        if event.token_ids or event.result is not None:
            stamps.append((time.monotonic(), time.process_time()))
        if event.result is not None:
            event.result.raise_for_error()
            tokens = event.result.token_ids
    (first_wall, first_cpu), (end_wall, end_cpu) = stamps[0], stamps[-1]
    return {
        "prefill": first_wall - wall,
        "decode": (len(tokens) - 1) / (end_wall - first_wall),
        "prefill_cpu": first_cpu - cpu,
        "decode_cpu": (len(tokens) - 1) / (end_cpu - first_cpu),
        "tokens": tokens,
    }


def bench_memory(model, processor, query: dict) -> None:
    print("\n## 1. KV memory of the request")
    request = Engine(model, processor).prepare(query)
    text, vision = len(request.input_ids) + query["max_new_tokens"], request.vision_tokens
    print(f"{text} text entries (prompt + {query['max_new_tokens']} new tokens), {vision} vision entries\n")
    print(
        "| decoder | KV cache | text MiB | vision MiB | total MiB | vs fp32 |\n|---|---|---:|---:|---:|---:|"
    )
    for name, text_config in (
        ("mid", model.config.text_config),
        ("official 11B", MossVLConfig().text_config),
    ):
        baseline = None
        for label, dtype, cache in (
            ("fp32", torch.float32, "model"),
            ("bf16", torch.bfloat16, "model"),
            ("int8", torch.float32, "int8"),
        ):
            pool = KVPool(text_config, dtype, "cpu", cache)
            text_mb = text * pool.text_token_bytes / 2**20
            vision_mb = vision * pool.vision_token_bytes / 2**20
            baseline = baseline or text_mb + vision_mb
            print(
                f"| {name} | {label} | {text_mb:.1f} | {vision_mb:.1f} | {text_mb + vision_mb:.1f} | "
                f"{(text_mb + vision_mb) / baseline:.3f} |"
            )


def bench_speed_and_drift(args, model, processor, query: dict) -> None:
    print(f"\n## 2. Speed ({args.repeats} alternating runs each) and 3. logit drift")
    engines = {cache: engine_for_cache(model, processor, cache) for cache in CACHES}
    for engine in engines.values():  # warm up, and fill each engine's media cache with the vision features
        engine.generate([{**query, "max_new_tokens": 2}])
    logits = {cache: recorded_logits(engine) for cache, engine in engines.items()}
    runs = {cache: [] for cache in CACHES}
    for _ in range(args.repeats):
        for cache, engine in engines.items():
            runs[cache].append(timed_run(engine, query))
    tokens = {cache: runs[cache][0]["tokens"] for cache in CACHES}
    # Greedy runs repeat exactly; the first run's logits (one per token) are compared.
    logits = {cache: recorded[: len(tokens[cache])] for cache, recorded in logits.items()}
    print(
        "| KV cache | clock | prefill s median (best) | decode tok/s median (best) | all prefill s | "
        "all decode tok/s |\n|---|---|---:|---:|---|---|"
    )
    for clock, prefill, decode in (("wall", "prefill", "decode"), ("CPU", "prefill_cpu", "decode_cpu")):
        for cache in CACHES:
            times, rates = [r[prefill] for r in runs[cache]], [r[decode] for r in runs[cache]]
            print(
                f"| {label(cache)} | {clock} | {statistics.median(times):.2f} ({min(times):.2f}) | "
                f"{statistics.median(rates):.2f} ({max(rates):.2f}) | {', '.join(f'{t:.2f}' for t in times)} | "
                f"{', '.join(f'{r:.1f}' for r in rates)} |"
            )
    for clock, prefill, decode in (("wall", "prefill", "decode"), ("CPU", "prefill_cpu", "decode_cpu")):
        time_ratio, rate_ratio = (
            statistics.median(r[key] for r in runs["int8"]) / statistics.median(r[key] for r in runs["model"])
            for key in (prefill, decode)
        )
        print(
            f"int8 / fp32 ({clock} medians): prefill time {time_ratio:.2f}x, decode tok/s {rate_ratio:.2f}x"
        )
    pairs = list(zip(tokens["model"], tokens["int8"], strict=True))
    agree = next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))
    # Step i's logits were computed on the same tokens when the first i tokens agree.
    steps = min(agree + 1, len(pairs))
    drift = max(
        float((a - b).abs().max())
        for a, b in zip(logits["model"][:steps], logits["int8"][:steps], strict=True)
    )
    scale = max(float(a.abs().max()) for a in logits["model"][:steps])
    print(
        f"greedy tokens equal for {agree} of {len(tokens['model'])} steps; max |logit drift| over those steps "
        f"{drift:.4f} (logits up to {scale:.2f} in magnitude)"
    )


def child_rss(args) -> None:
    """One whole request with one cache in this (fresh) process; prints its peak RSS as JSON."""
    model, processor, query = setup(args)
    engine = engine_for_cache(model, processor, args.child_rss)
    request = engine.prepare(query)
    before = peak_rss_mb()
    reset_peak_rss()
    engine.submit(request).result().raise_for_error()
    peak = peak_rss_mb()
    engine.shutdown()  # the engine thread must be out of torch before the interpreter tears down
    print(json.dumps({"before": before, "peak": peak}))


def bench_rss(args) -> None:
    print("\n## 4. Peak RSS of one whole request (vision tower included), each cache in a fresh process")
    print("| KV cache | RSS before MiB | peak RSS MiB | growth MiB |\n|---|---:|---:|---:|")
    growth = {}
    for cache in CACHES:
        command = [sys.executable, __file__, "--child-rss", cache, *sys.argv[1:]]
        reading = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        growth[cache] = reading["peak"] - reading["before"]
        print(f"| {label(cache)} | {reading['before']:.0f} | {reading['peak']:.0f} | {growth[cache]:.0f} |")
    print(f"\nRSS growth int8 / fp32: {growth['int8'] / growth['model']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--frame-size", type=int, default=224)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small model, 32 frames, 2 runs (smoke run)")
    parser.add_argument("--child-rss", choices=CACHES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.frames, args.frame_size, args.new_tokens, args.repeats = 32, 128, 16, 2
    if args.child_rss:
        child_rss(args)
        return
    model, processor, query = setup(args)
    print("# mossvl int8 KV cache benchmark")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; mid MOSS-VL {param_millions(model):.1f} M "
        f"params, fp32 weights; {args.frames} frames of {args.frame_size}px, {args.new_tokens} new tokens, greedy"
    )
    started = time.monotonic()
    bench_memory(model, processor, query)
    bench_speed_and_drift(args, model, processor, query)
    bench_rss(args)
    print(f"\ntotal benchmark time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
