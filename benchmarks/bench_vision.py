"""Benchmark: the vision encoder's batched per-frame attention vs per-frame loops (not a test).

Runs a mid-size random vision tower over N frames of S×S pixels four ways, in one process:
  batched  - the shipped path: all frames of a size in one SDPA call per block;
  attn-loop - same model, attention looped frame by frame (one SDPA call per frame, as a packed varlen
              sequence split with cu_seqlens would be);
  item-loop - one model call per frame (chunk_size=1 over single-frame images);
  frame-rows - one model call with one grid row per frame, as realtime streams and training batches give it.
With one grid row per frame, a training step (forward and backward) is also timed against a baseline that builds
the position tables for every row instead of once per frame size.
The same comparison is also made for one block's attention alone, where the frame loop is all that differs.
Runs are interleaved and the best of --repeats is kept, since the machine may be shared; prints milliseconds
and each baseline's ratio to the batched path (>1 = batched is faster).

    .venv/bin/python benchmarks/bench_vision.py [--frames 32] [--size 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from mossvl.model import vision
from mossvl.model.configuration import MossVLVisionConfig
from mossvl.model.vision import MossVLVisionAttention, MossVLVisionModel, apply_rotary, frame_groups


def frame_loop_attention(self, hidden, cos, sin, groups):
    """Baseline: the attention of MossVLVisionAttention with a Python loop over frames."""
    n = hidden.shape[0]
    q, k, v = self.qkv(hidden).view(n, 3, self.num_heads, self.head_dim).unbind(1)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    outputs, start = [], 0
    for length in self.frame_lens:
        end = start + length
        q_f, k_f, v_f = (x[start:end].transpose(0, 1)[None] for x in (q, k, v))  # (1, H, L, D)
        outputs.append(F.scaled_dot_product_attention(q_f, k_f, v_f)[0].transpose(0, 1).reshape(length, -1))
        start = end
    return self.proj(torch.cat(outputs))


@contextmanager
def looped_attention(frame_lens: list[int]):
    original = MossVLVisionAttention.forward
    MossVLVisionAttention.forward = frame_loop_attention
    MossVLVisionAttention.frame_lens = frame_lens
    try:
        yield
    finally:
        MossVLVisionAttention.forward = original
        del MossVLVisionAttention.frame_lens


@contextmanager
def tables_per_row():
    """Baseline: position tables built for every grid row, not once per frame size."""
    original = vision.tile_per_frame
    vision.tile_per_frame = lambda grids, build: torch.cat([build(h, w).repeat(t, 1) for t, h, w in grids])
    try:
        yield
    finally:
        vision.tile_per_frame = original


def best_ms(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each variant over `repeats` interleaved rounds (after one warm-up call each)."""
    best = {}
    for fn in variants.values():
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best.get(name, float("inf")), (time.perf_counter() - start) * 1000)
    return best


def looped(fn, frame_lens: list[int]):
    def run():
        with looped_attention(frame_lens):
            return fn()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels (multiple of 32)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = MossVLVisionConfig(
        depth=6,
        hidden_size=384,
        intermediate_size=1536,
        num_heads=6,
        num_position_embeddings=2304,
        deepstack_visual_indexes=[1, 3],
        out_hidden_size=512,
    )
    model = MossVLVisionModel(config).eval()
    side = args.size // config.patch_size
    video = torch.tensor([[args.frames, side, side]])
    images = video.new_tensor([[1, side, side]]).repeat(args.frames, 1)
    pixels = torch.randn(args.frames * side * side, model.patch_dim)

    frame_lens = [side * side] * args.frames
    attention = model.blocks[0].attn
    hidden = torch.randn(pixels.shape[0], config.hidden_size)
    cos, sin = model._rotary_tables([(args.frames, side, side)], hidden.device)
    groups = frame_groups([(args.frames, side, side)], hidden.device)

    with torch.inference_mode():
        batched_out = model(pixels, video)
        loop_out = looped(lambda: model(pixels, video), frame_lens)()
        assert torch.allclose(batched_out, loop_out, atol=1e-4), "baseline disagrees with the batched path"
        ms = best_ms(
            {
                "batched": lambda: model(pixels, video),
                "attn-loop": looped(lambda: model(pixels, video), frame_lens),
                "item-loop": lambda: model(pixels, images, chunk_size=1),
                "frame-rows": lambda: model(pixels, images),
                "attention batched": lambda: attention(hidden, cos, sin, groups),
                "attention loop": looped(lambda: attention(hidden, cos, sin, groups), frame_lens),
            },
            args.repeats,
        )

    print(
        f"vision tower depth {config.depth}, hidden {config.hidden_size}, {args.frames} frames of "
        f"{args.size}x{args.size} ({side * side} patches each), torch threads {torch.get_num_threads()}, "
        f"best of {args.repeats}"
    )
    print(f"whole tower, batched (one SDPA call per block): {ms['batched']:9.1f} ms")
    print(
        f"whole tower, attn-loop (SDPA per frame):        {ms['attn-loop']:9.1f} ms   "
        f"ratio {ms['attn-loop'] / ms['batched']:.2f}x"
    )
    print(
        f"whole tower, item-loop (model call per frame):  {ms['item-loop']:9.1f} ms   "
        f"ratio {ms['item-loop'] / ms['batched']:.2f}x"
    )
    print(
        f"whole tower, frame-rows (grid row per frame):   {ms['frame-rows']:9.1f} ms   "
        f"ratio {ms['frame-rows'] / ms['batched']:.2f}x"
    )

    def training_step():
        model.zero_grad()
        model(pixels, images).sum().backward()

    def per_row_step():
        with tables_per_row():
            training_step()

    model.train()
    train_ms = best_ms({"per size": training_step, "per row": per_row_step}, args.repeats)
    print(f"training step, frame-rows, tables per size:     {train_ms['per size']:9.1f} ms")
    print(
        f"training step, frame-rows, tables per row:      {train_ms['per row']:9.1f} ms   "
        f"ratio {train_ms['per row'] / train_ms['per size']:.2f}x"
    )
    print(f"one attention layer, batched:                   {ms['attention batched']:9.1f} ms")
    print(
        f"one attention layer, loop over frames:          {ms['attention loop']:9.1f} ms   "
        f"ratio {ms['attention loop'] / ms['attention batched']:.2f}x"
    )


if __name__ == "__main__":
    main()
