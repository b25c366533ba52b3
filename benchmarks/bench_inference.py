"""Benchmark: the inference engine on a mid-size random MOSS-VL, side by side with a decoder-only Qwen3-VL (not a test).

Everything is measured in one process, on random weights (the numbers are about compute, not answers):

1. Video length: time to first token (TTFT) and decode tokens/s for 1, 8, 32, 128 frames, for MOSS-VL (engine:
   vision tokens are cross-attention memory) and for a Qwen3-VL of matched size (transformers' classes, HF
   ``generate()``: vision tokens are concatenated into the text stream), plus KV-cache size and peak RSS.
2. Multi-turn: latency of a follow-up turn on a 32-frame conversation, with session reuse (continuation
   prefill on the cached KV) and without (re-encode and re-prefill the whole conversation, as the official API).
3. Batch throughput: generated tokens/s for batches of 1, 4 and 8 image queries.

Frames are pre-extracted random images (video decoding is not timed); both models see the same frames, the same
timestamps and the same question. Peak RSS is the process high-water mark, reset before each run (Linux).

    .venv/bin/python benchmarks/bench_inference.py [--frames 1,8,32,128] [--new-tokens 16] [--frame-size 128]
        [--hidden 1024] [--layers 12] [--threads 1] [--no-baseline] [--quick]

About 45 s with the defaults on one CPU thread; --quick is a few seconds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
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
    token_ids,
)
from transformers import LogitsProcessor, LogitsProcessorList

from mossvl.inference.engine import Engine
from mossvl.inference.session import Session

QUESTION = "What happens in the video? Describe it."


# ----- models -------------------------------------------------------------------------------------------------


def build_qwen3vl(sizes: dict, vocab: int, token_ids: dict):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    config = Qwen3VLConfig(
        vision_config={
            "depth": sizes["vision_depth"],
            "hidden_size": sizes["vision_hidden"],
            "intermediate_size": sizes["vision_hidden"] * 4,
            "num_heads": 4,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 1,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [0, 1, 2],
            "out_hidden_size": sizes["hidden"],
        },
        text_config={
            "vocab_size": vocab,
            "hidden_size": sizes["hidden"],
            "intermediate_size": sizes["intermediate"],
            "num_hidden_layers": sizes["layers"],
            "num_attention_heads": sizes["heads"],
            "num_key_value_heads": sizes["kv_heads"],
            "head_dim": 64,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [12, 10, 10],
                "mrope_interleaved": True,
            },
        },
        **token_ids,
    )
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


# ----- inputs -------------------------------------------------------------------------------------------------


def video_query(frames: list[np.ndarray]) -> dict:
    return {
        "prompt": QUESTION,
        "videos": [frames_video(frames)],
        "media_kwargs": {"max_frames": len(frames), "video_fps": 1.0},
    }


def qwen3vl_inputs(tokenizer, frames: list[np.ndarray], token_ids: dict) -> dict:
    """The same frames, timestamps and question as a decoder-only prompt: each frame's merged tokens in the text."""
    grid = frames[0].shape[0] // 16
    per_frame = (grid // 2) ** 2
    image = "<|vision_start|>" + "<|image_pad|>" * per_frame + "<|vision_end|>"
    body = "".join(f"<{t:.1f} seconds>{image}" for t in range(len(frames)))
    text = f"<|im_start|>user\n{body}{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    pixels = torch.from_numpy(np.stack(frames)).float().div(255).sub(0.5).div(0.5)  # (T, H, W, 3)
    patches = (
        pixels.view(len(frames), grid, 16, grid, 16, 3).permute(0, 1, 3, 5, 2, 4).reshape(-1, 3 * 16 * 16)
    )
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": patches,
        "image_grid_thw": torch.tensor([[1, grid, grid]] * len(frames)),
        "mm_token_type_ids": (ids == token_ids["image_token_id"]).long(),
    }


# ----- measuring ----------------------------------------------------------------------------------------------


def cache_mb(cache) -> float:
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total / 2**20


class StepClock(LogitsProcessor):
    """Records the time of every decode step (HF generate calls logits processors once per step)."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.monotonic())
        return scores


def rates(start: float, steps: list[float]) -> tuple[float, float]:
    """(TTFT seconds, decode tokens/s) from the start time and the time of each token's choice."""
    ttft = steps[0] - start
    decode = (len(steps) - 1) / (steps[-1] - steps[0]) if len(steps) > 1 else float("nan")
    return ttft, decode


def time_engine(engine: Engine, query, new_tokens: int):
    """TTFT, decode tok/s, KV MiB and peak RSS of one engine query (the engine stamps every token's event)."""
    request = engine.prepare(query, {"max_new_tokens": new_tokens})
    request.keep_sequence = True  # to read its KV size afterwards
    reset_peak_rss()
    start = time.monotonic()
    events = list(engine.submit(request).events())
    steps = [event.time for event in events if event.token_ids]
    result = events[-1].result
    sequence = result.sequence
    pool = engine.core.pool
    kv = (len(sequence.tokens) * pool.text_token_bytes + sequence.visible * pool.vision_token_bytes) / 2**20
    engine.close_sequence(sequence)
    return (*rates(start, steps), kv, peak_rss_mb(), len(request.input_ids))


@torch.inference_mode()
def time_qwen3vl(model, inputs: dict, new_tokens: int):
    from transformers import DynamicCache

    clock, cache = StepClock(), DynamicCache(config=model.config)
    reset_peak_rss()
    start = time.monotonic()
    model.generate(
        **inputs,
        past_key_values=cache,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        logits_processor=LogitsProcessorList([clock]),
    )
    return (*rates(start, clock.times), cache_mb(cache), peak_rss_mb(), inputs["input_ids"].shape[1])


# ----- benchmarks ---------------------------------------------------------------------------------------------


def bench_frames(args, engine, qwen, tokenizer, ids) -> None:
    print("\n## 1. Video length: MOSS-VL (cross-attention) vs Qwen3-VL (tokens in the text), same frames")
    print(f"frames {args.frame_size}x{args.frame_size} px, {args.new_tokens} new tokens, greedy, fp32")
    header = (
        "| frames | model | prompt tokens | TTFT s | decode tok/s | KV cache MiB | peak RSS MiB |\n"
        "|---:|---|---:|---:|---:|---:|---:|"
    )
    print(header)
    ratios = []
    for count in args.frames:
        frames = random_frames(count, args.frame_size, seed=count)
        moss = time_engine(engine, video_query(frames), args.new_tokens)
        rows = [("MOSS-VL", moss)]
        if qwen is not None:
            base = time_qwen3vl(qwen, qwen3vl_inputs(tokenizer, frames, token_ids), args.new_tokens)
            rows.append(("Qwen3-VL", base))
            ratios.append((count, base[0] / moss[0], moss[1] / base[1], base[2] / moss[2]))
        for name, (ttft, decode, kv, rss, tokens) in rows:
            print(f"| {count} | {name} | {tokens} | {ttft:.3f} | {decode:.1f} | {kv:.1f} | {rss:.0f} |")
    if ratios:
        print(
            "\n| frames | TTFT speed-up | decode speed-up | KV cache ratio (Qwen3-VL / MOSS-VL) |\n|---:|---:|---:|---:|"
        )
        for count, ttft, decode, kv in ratios:
            print(f"| {count} | {ttft:.2f}x | {decode:.2f}x | {kv:.2f}x |")


def bench_multiturn(args, model, processor) -> None:
    count = min(32, max(args.frames))
    print(f"\n## 2. Follow-up turn on a {count}-frame conversation (turn 1 answers {args.new_tokens} tokens)")
    frames = random_frames(count, args.frame_size, seed=99)
    first, follow = video_query(frames), "And what happens at the end?"
    engine = Engine(model, processor)
    results = {}
    for name in ("session reuse", "re-prefill (official)"):
        session = Session(engine, generate_kwargs={"max_new_tokens": args.new_tokens})
        session.send(first)
        if name != "session reuse":
            session = Session(engine, messages=session.messages, generate_kwargs=session.generate_kwargs)
        handle, _ = session.submit(follow, max_new_tokens=4)
        start = time.monotonic()
        first_token = next(event.time for event in handle.events() if event.token_ids)
        handle.result()
        results[name] = first_token - start
    print("| follow-up | TTFT s |\n|---|---:|")
    for name, ttft in results.items():
        print(f"| {name} | {ttft:.3f} |")
    print(f"speed-up of session reuse: {results['re-prefill (official)'] / results['session reuse']:.1f}x")


def bench_batch(args, engine) -> None:
    print(
        f"\n## 3. Batch throughput: image queries ({args.frame_size}px), {args.batch_tokens} new tokens each"
    )
    print("| batch | wall s | generated tok/s | per-query latency s |\n|---:|---:|---:|---:|")
    base = None
    for size in (1, 4, 8):
        queries = [
            {"prompt": f"Describe image {i}.", "images": [random_frames(1, args.frame_size, seed=i)[0]]}
            for i in range(size)
        ]
        start = time.monotonic()
        results = engine.generate(queries, max_new_tokens=args.batch_tokens)
        wall = time.monotonic() - start
        tokens = sum(len(r.token_ids) for r in results)
        rate = tokens / wall
        base = base or rate
        print(f"| {size} | {wall:.2f} | {rate:.1f} ({rate / base:.1f}x) | {wall:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", default="1,8,32,128", help="comma-separated frame counts")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch-tokens", type=int, default=16)
    parser.add_argument("--frame-size", type=int, default=128, help="frame side in pixels (multiple of 32)")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine 2 OpenMP threads make timings erratic)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the Qwen3-VL comparison")
    parser.add_argument("--quick", action="store_true", help="small model and short videos (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.hidden, args.layers, args.new_tokens, args.batch_tokens = "1,8", 256, 4, 4, 4
    args.frames = [int(f) for f in str(args.frames).split(",")]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    processor = load_processor()
    tokenizer = processor.tokenizer
    ids = token_ids(processor)
    sizes = mid_sizes(args.hidden, args.layers)
    model = build_mossvl(sizes, processor)
    engine = Engine(model, processor)
    qwen = None if args.no_baseline else build_qwen3vl(sizes, len(tokenizer), ids)
    print("# mossvl inference benchmark")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; text hidden {sizes['hidden']}, "
        f"{sizes['layers']} layers (MOSS-VL: 3 of them cross-attention), vision depth {sizes['vision_depth']} "
        f"x {sizes['vision_hidden']}; vocab {len(tokenizer)}"
    )
    print(
        f"params: MOSS-VL {param_millions(model):.1f} M"
        + (f", Qwen3-VL {param_millions(qwen):.1f} M" if qwen else "")
    )
    started = time.monotonic()
    time_engine(engine, video_query(random_frames(1, args.frame_size)), 2)  # warm-up
    bench_frames(args, engine, qwen, tokenizer, ids)
    bench_multiturn(args, model, processor)
    bench_batch(args, engine)
    print(f"\ntotal benchmark time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
