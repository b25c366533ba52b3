"""Benchmark: how close the 'mid' MOSS-VL runs to this CPU's limits, per component (a roofline; not a test).

Everything is measured in one process, so every fraction is against limits measured under the same load:

1. Machine limits, measured before and after the model runs (the better of the two is kept): the fp32 matmul peak
   (bf16 and int8 where the CPU has them) of plain ``torch.matmul`` / ``torch._int_mm`` on 2048x2048 matrices,
   and the memory bandwidth of a 512 MiB tensor copy (bytes read + bytes written, as STREAM counts a copy) and of a
   512 MiB sum (bytes read).
2. The 'mid' model of ``benchmarks/common.py`` (``ROOFLINE_MID``: text hidden 1024, 12 layers with cross-attention
   at [2, 6, 10], 8 / 4 heads of 128, MLP 3072, vocabulary 151,936; ViT depth 8 x 256; 128x128 frames), fp32,
   SDPA, random weights:
   * ViT: the vision tower on 64 frames;
   * prefill: a 64-frame video and a question through the engine, vision features cached (so: the cross layers'
     vision K/V, the prompt through the decoder, the LM head and the first token's choice);
   * decode: the engine's steps after the first token, and the same steps through ``model.forward`` with a
     ``MossVLCache`` (what ``generate()`` runs);
   * int8: the engine's decode steps after ``Int8DynamicLinear`` replaced the linears of
     ``mossvl quantize --method int8-dynamic`` (its official scope, then ``--scope decoder+lm_head``).
   Per component, module hooks give the time; FLOPs and bytes are counted from the shapes (weights and attended
   K/V read once, activations not counted); the roofline time is max(FLOPs / matmul peak, bytes / copy bandwidth)
   and the fraction printed is roofline time / measured time. The Python and dispatch overhead of a decode step is
   measured as the step of a model with the same layers but width 64 and a 1,024-token vocabulary (arithmetic
   negligible).
3. Start-up: ``python -X importtime -c 'import mossvl'``, and the wall time of ``mossvl ask`` on a bundled image
   (the demo model) next to that of importing torch and ``transformers.modeling_utils``, which it needs.

Timings are best-of (other work on a shared machine only ever slows a run down): ViT and prefill the best of
``--reps`` runs, a decode step the fastest of all steps (its median is printed too). The load average is printed
at the start and the end.

    .venv/bin/python benchmarks/bench_roofline.py [--threads 2] [--reps 3] [--frames 64] [--steps 24] [--quick]
        [--no-startup]

About 3 minutes with the defaults on two shared cores; --quick (16 frames, 8 steps, 1 rep) about one.
"""

from __future__ import annotations  # noqa: I001 (mossvl comes before torch, see below)

# mossvl before torch: importing it sets OMP_WAIT_POLICY, which torch's OpenMP reads only when torch loads it.
import mossvl

import argparse
import gc
import os
import re
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import ROOFLINE_MID, build_mossvl, frames_video, load_processor, random_frames
from torch import nn

from mossvl.inference.core import EngineConfig
from mossvl.inference.engine import Engine
from mossvl.model import MossVLCache
from mossvl.quantization import Int8DynamicLinear
from mossvl.quantization.scope import dense_targets, layer_scope

QUESTION = "What happens in the video? Describe it."
FP32 = 4
SAMPLE_IMAGE = Path(mossvl.__file__).resolve().parent / "assets" / "samples" / "shape.png"


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def best_time(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ----- machine limits -----------------------------------------------------------------------------------------


@dataclass
class Limits:
    fp32_flops: float = 0.0
    copy_bandwidth: float = 0.0
    read_bandwidth: float = 0.0
    other_flops: dict[str, float] = field(default_factory=dict)

    def measure(self, reps: int) -> None:
        """Measure again, keeping the best of this and every earlier measurement."""
        size = 2048
        flops = 2 * size**3
        a, b = torch.randn(size, size), torch.randn(size, size)
        self.fp32_flops = max(self.fp32_flops, flops / best_time(lambda: torch.matmul(a, b), reps))
        a16, b16 = a.bfloat16(), b.bfloat16()
        a8 = torch.randint(-127, 128, (size, size), dtype=torch.int8)
        b8 = torch.randint(-127, 128, (size, size), dtype=torch.int8)
        others = {"bf16 matmul": lambda: torch.matmul(a16, b16)}
        if hasattr(torch, "_int_mm"):
            others["int8 _int_mm"] = lambda: torch._int_mm(a8, b8)
        for name, fn in others.items():
            try:
                rate = flops / best_time(fn, reps)
            except RuntimeError:  # no such kernel for this CPU or torch build
                continue
            self.other_flops[name] = max(self.other_flops.get(name, 0.0), rate)
        source = torch.randn(1 << 27)  # 512 MiB: far beyond any cache
        target = torch.empty_like(source)
        nbytes = source.numel() * FP32
        copy = 2 * nbytes / best_time(lambda: target.copy_(source), reps)
        self.copy_bandwidth = max(self.copy_bandwidth, copy)
        self.read_bandwidth = max(self.read_bandwidth, nbytes / best_time(source.sum, reps))


# ----- per-module timers --------------------------------------------------------------------------------------


class Timers:
    """Forward hooks that record (category, start, end) of every call of the watched modules (any thread)."""

    def __init__(self):
        self.records: list[tuple[str, float, float]] = []
        self._starts: dict[int, float] = {}
        self._handles = []

    def watch(self, module: nn.Module, category: str) -> None:
        key = id(module)

        def before(*_):
            self._starts[key] = time.monotonic()

        def after(*_):
            self.records.append((category, self._starts.pop(key), time.monotonic()))

        self._handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def totals(self, start: float = float("-inf"), end: float = float("inf")) -> dict[str, float]:
        """Seconds per category of the calls that started in [start, end)."""
        out: dict[str, float] = defaultdict(float)
        for category, first, last in self.records:
            if start <= first < end:
                out[category] += last - first
        return out

    def clear(self) -> None:
        self.records.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def watch_model(timers: Timers, model) -> None:
    visual = model.model.visual
    for block in visual.blocks:
        timers.watch(block.attn, "ViT attention")
        timers.watch(block.mlp, "ViT MLP")
        timers.watch(block, "ViT blocks")
    timers.watch(visual.merger, "ViT merger")
    for layer in model.model.language_model.layers:
        timers.watch(layer, "decoder layers")
        timers.watch(layer.mlp, "MLP")
        if hasattr(layer, "self_attn"):
            timers.watch(layer.self_attn, "self-attention")
        else:
            timers.watch(layer.cross_attn, "cross-attention")
            # The vision memory's K/V projections run outside the layer's forward (once per stored frame).
            for module in (layer.cross_attn.k_proj, layer.cross_attn.v_proj, layer.cross_attn.k_norm):
                timers.watch(module, "cross-attention vision K/V")
    timers.watch(model.lm_head, "lm_head")


# ----- FLOPs and bytes ----------------------------------------------------------------------------------------


@dataclass
class Work:
    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(self.flops + other.flops, self.bytes + other.bytes)

    def times(self, count: float) -> Work:
        return Work(self.flops * count, self.bytes * count)

    def roofline(self, limits: Limits) -> float:
        """Seconds this work needs at best on this machine."""
        return max(self.flops / limits.fp32_flops, self.bytes / limits.copy_bandwidth)


def linear(tokens: int, fan_in: int, fan_out: int) -> Work:
    return Work(2.0 * tokens * fan_in * fan_out, float(fan_in * fan_out * FP32))


def vit_work(frames: int, patches: int, config) -> dict[str, Work]:
    d, inner, depth = config.hidden_size, config.intermediate_size, config.depth
    n = frames * patches
    attention = linear(n, d, 3 * d) + linear(n, d, d) + Work(4.0 * frames * patches * patches * d)
    merged = config.spatial_merge_size**2
    width = (1 + len(config.deepstack_visual_indexes)) * d * merged
    return {
        "ViT attention": attention.times(depth),
        "ViT MLP": (linear(n, d, inner) + linear(n, inner, d)).times(depth),
        "ViT merger": linear(n // merged, width, width) + linear(n // merged, width, config.out_hidden_size),
    }


def decoder_work(text, tokens: int, attended: float, visible: float, vision: int) -> dict[str, Work]:
    """Work of one decoder forward over ``tokens`` new tokens of one row: ``attended`` query-key pairs per
    self-attention layer, ``visible`` query-vision pairs per cross layer, ``vision`` new vision entries whose K/V
    the cross layers project. K/V bytes are those of the attended entries, read once."""
    d, heads, kv_heads, hd = (
        text.hidden_size,
        text.num_attention_heads,
        text.num_key_value_heads,
        text.head_dim,
    )
    cross = len(text.cross_attention_layers)
    layers = text.num_hidden_layers - cross
    q_o = linear(tokens, d, heads * hd) + linear(tokens, heads * hd, d)
    entry = 2 * kv_heads * hd * FP32
    self_attention = q_o + linear(tokens, d, 2 * kv_heads * hd) + Work(4.0 * heads * hd * attended, 0.0)
    self_attention = self_attention + Work(0.0, entry * attended / tokens)
    cross_attention = q_o + Work(4.0 * heads * hd * visible, entry * visible / tokens)
    work = {
        "self-attention": self_attention.times(layers),
        "cross-attention": cross_attention.times(cross),
        "MLP": linear(tokens, d, text.intermediate_size).times(3 * (layers + cross)),
        "lm_head": linear(1, d, text.vocab_size),
    }
    if vision:
        work["cross-attention vision K/V"] = linear(vision, d, 2 * kv_heads * hd).times(cross)
    return work


# ----- the runs -----------------------------------------------------------------------------------------------


@dataclass
class Phase:
    """One measured phase: its best time, the per-category times and page faults of that run, its work."""

    name: str
    seconds: float
    parts: dict[str, float]
    work: dict[str, Work]
    faults: int = 0
    median: float | None = None


def video_query(frames: int, new_tokens: int) -> dict:
    return {
        "prompt": QUESTION,
        "videos": [frames_video(random_frames(frames, 128, seed=frames))],
        "media_kwargs": {"max_frames": frames, "video_fps": 1.0},
        "max_new_tokens": new_tokens,
    }


def run_vit(model, engine: Engine, query: dict, timers: Timers, reps: int) -> Phase:
    media = engine.prepare(query).media[0]
    frames, height, width = media.grid_thw
    grid = torch.tensor([media.grid_thw])
    visual = model.model.visual
    best, parts, faults = float("inf"), {}, 0
    with torch.inference_mode():
        visual(media.pixels, grid)
        for _ in range(reps):
            timers.clear()
            before, start = page_faults(), time.perf_counter()
            visual(media.pixels, grid)
            seconds = time.perf_counter() - start
            if seconds < best:
                best, parts, faults = seconds, timers.totals(), page_faults() - before
    split = {
        "ViT attention": parts.get("ViT attention", 0.0),
        "ViT MLP": parts.get("ViT MLP", 0.0),
        "ViT merger": parts.get("ViT merger", 0.0),
        "ViT norms, residuals": parts.get("ViT blocks", 0.0)
        - parts.get("ViT attention", 0.0)
        - parts.get("ViT MLP", 0.0),
    }
    return Phase("ViT", best, split, vit_work(frames, height * width, model.config.vision_config), faults)


def decoder_split(parts: dict[str, float]) -> dict[str, float]:
    attention = parts.get("self-attention", 0.0) + parts.get("cross-attention", 0.0)
    return {
        "self-attention": parts.get("self-attention", 0.0),
        "cross-attention": parts.get("cross-attention", 0.0),
        "cross-attention vision K/V": parts.get("cross-attention vision K/V", 0.0),
        "MLP": parts.get("MLP", 0.0),
        "norms, residuals": parts.get("decoder layers", 0.0) - attention - parts.get("MLP", 0.0),
        "lm_head": parts.get("lm_head", 0.0),
    }


def token_times(engine: Engine, query: dict) -> tuple[float, list[float], int, object]:
    """(start, time of every token, page faults of the request, the request) of one engine request."""
    request = engine.prepare(query)
    before, start = page_faults(), time.monotonic()
    stamps = [event.time for event in engine.submit(request).events() if event.token_ids]
    return start, stamps, page_faults() - before, request


def run_engine(engine: Engine, query: dict, timers: Timers, reps: int) -> tuple[Phase, Phase]:
    """Prefill (vision features cached) and decode steps of one request through the engine."""
    engine.chat(query)  # warm-up; also fills the media cache
    prefill, step = (float("inf"), {}, 0), (float("inf"), {})
    all_steps = []
    for _ in range(reps):
        timers.clear()
        start, stamps, faults, request = token_times(engine, query)
        if stamps[0] - start < prefill[0]:
            prefill = (stamps[0] - start, timers.totals(start, stamps[0]), faults)
        for first, last in zip(stamps, stamps[1:], strict=False):
            all_steps.append(last - first)
            if last - first < step[0]:
                step = (last - first, timers.totals(first, last))
    text = engine.model.config.text_config
    prompt = len(request.input_ids)
    frames, height, width = request.media[0].grid_thw
    per_frame = height * width // engine.model.config.vision_config.spatial_merge_size**2 + 1
    pads = [i for i, token in enumerate(request.input_ids) if token == engine.model.config.image_token_id]
    visible = sum(per_frame * sum(1 for p in pads if p <= i) for i in range(prompt))
    context = prompt + query["max_new_tokens"] / 2
    return (
        Phase(
            "prefill",
            prefill[0],
            decoder_split(prefill[1]),
            decoder_work(text, prompt, prompt * (prompt + 1) / 2, visible, frames * per_frame),
            prefill[2],
        ),
        Phase(
            "decode step",
            step[0],
            decoder_split(step[1]),
            decoder_work(text, 1, context, frames * per_frame, 0),
            median=sorted(all_steps)[len(all_steps) // 2],
        ),
    )


def engine_steps(engine: Engine, query: dict, reps: int) -> tuple[float, float]:
    """(fastest, median) decode step of the engine over ``reps`` requests (tokens' event times)."""
    engine.chat(query)
    steps = []
    for _ in range(reps):
        _, stamps, _, _ = token_times(engine, query)
        steps += [last - first for first, last in zip(stamps, stamps[1:], strict=False)]
    steps.sort()
    return steps[0], steps[len(steps) // 2]


@torch.inference_mode()
def forward_steps(model, processor, query: dict, steps: int, reps: int) -> tuple[float, float]:
    """(fastest, median) decode step of ``model.forward`` with a ``MossVLCache``, as ``generate()`` runs it."""
    inputs = processor.prepare([query])
    times = []
    for _ in range(reps):
        cache = MossVLCache(model.config)
        logits = model(**inputs, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        mask = inputs["attention_mask"]
        for _ in range(steps):
            start = time.perf_counter()
            token = logits.argmax(-1)
            mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
            logits = model(input_ids=token[:, None], attention_mask=mask, cache=cache).logits[:, -1]
            times.append(time.perf_counter() - start)
    times.sort()
    return times[0], times[len(times) // 2]


def quantize_int8(model, extent: str) -> None:
    """Replace the linears ``mossvl quantize --method int8-dynamic --scope extent`` quantizes by
    ``Int8DynamicLinear`` (in place)."""
    for name in dense_targets(layer_scope(model.config.text_config), extent):
        module = model.get_submodule(name)
        if isinstance(module, nn.Linear):
            layer = Int8DynamicLinear.from_linear(module)
            layer.pack()
            model.set_submodule(name, layer)
    gc.collect()


def decode_weight_bytes(model) -> float:
    """Bytes of weights one decode step reads: the decoder's linears (int8 + scales, or fp32) and the LM head."""
    total = 0.0
    for module in [*model.model.language_model.layers.modules(), model.lm_head]:
        if isinstance(module, nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
        elif isinstance(module, Int8DynamicLinear):
            total += module.in_features * module.out_features + module.out_features * FP32
    return total


def overhead_steps(processor, query: dict, reps: int) -> tuple[float, float]:
    """Decode step of an engine whose model has the mid layers but width 64 and a 1,024-token vocabulary: what a
    step costs beyond the arithmetic (Python, dispatch, scheduling)."""
    tiny = dict(ROOFLINE_MID, hidden=64, heads=2, kv_heads=1, head_dim=32, mrope_section=[6, 5, 5])
    tiny.update(intermediate=128, vocab=1024, vision_hidden=32, vision_heads=2)
    model = build_mossvl(tiny, processor)
    return engine_steps(
        Engine(model, processor, EngineConfig(max_batch_size=1, prefix_cache_size=0)), query, reps
    )


# ----- start-up -----------------------------------------------------------------------------------------------


def wall(command: list[str], reps: int) -> float:
    """Best wall time of a command (after one run that warms the file cache)."""
    return best_time(lambda: subprocess.run(command, check=True, capture_output=True), reps)


def import_mossvl_seconds(reps: int) -> float:
    """Best cumulative time of ``import mossvl`` by ``python -X importtime``."""
    best = float("inf")
    for _ in range(reps):
        report = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import mossvl"],
            check=True,
            capture_output=True,
            text=True,
        ).stderr
        cumulative = re.search(r"\|\s*(\d+) \| mossvl$", report, re.MULTILINE)
        best = min(best, int(cumulative.group(1)) / 1e6)
    return best


def print_startup(reps: int) -> None:
    print("\n## Start-up")
    ask = [sys.executable, "-m", "mossvl", "ask", str(SAMPLE_IMAGE), "What shape is this?"]
    floor = wall([sys.executable, "-c", "import torch, transformers.modeling_utils"], reps)
    print("| what | seconds (best of runs) |\n|---|---:|")
    print(f"| `python -X importtime -c 'import mossvl'`, cumulative | {import_mossvl_seconds(reps):.3f} |")
    print(
        f"| `python -c 'import mossvl'`, wall | {wall([sys.executable, '-c', 'import mossvl'], reps):.3f} |"
    )
    print(f"| `mossvl --help`, wall | {wall([sys.executable, '-m', 'mossvl', '--help'], reps):.3f} |")
    print(
        f"| `python -c 'import torch, transformers.modeling_utils'`, wall (what `ask` needs) | {floor:.3f} |"
    )
    print(
        f"| `mossvl ask {SAMPLE_IMAGE.name} 'What shape is this?'` (demo model), wall | {wall(ask, reps):.3f} |"
    )


# ----- printing -----------------------------------------------------------------------------------------------


def print_phase(phase: Phase, limits: Limits) -> None:
    total = Work()
    for work in phase.work.values():
        total = total + work
    median = f", median {phase.median * 1000:.1f} ms" if phase.median is not None else ""
    faults = f", {phase.faults} minor page faults" if phase.faults else ""
    print(f"\n### {phase.name}: {phase.seconds * 1000:.1f} ms{median}{faults}")
    print("| component | ms | GFLOP | MB | GFLOP/s | GB/s | roofline ms | fraction of roofline |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    timed = 0.0
    for name, seconds in phase.parts.items():
        timed += seconds
        work = phase.work.get(name)
        if work is None or seconds <= 0:
            print(f"| {name} | {seconds * 1000:.1f} | | | | | | |")
            continue
        print(
            f"| {name} | {seconds * 1000:.1f} | {work.flops / 1e9:.2f} | {work.bytes / 1e6:.0f} | "
            f"{work.flops / seconds / 1e9:.1f} | {work.bytes / seconds / 1e9:.1f} | "
            f"{work.roofline(limits) * 1000:.1f} | {work.roofline(limits) / seconds:.0%} |"
        )
    rest = phase.seconds - timed
    print(f"| everything else (sampling, scheduling, Python, ...) | {rest * 1000:.1f} | | | | | | |")
    print(
        f"| **total** | {phase.seconds * 1000:.1f} | {total.flops / 1e9:.2f} | {total.bytes / 1e6:.0f} | "
        f"{total.flops / phase.seconds / 1e9:.1f} | {total.bytes / phase.seconds / 1e9:.1f} | "
        f"{total.roofline(limits) * 1000:.1f} | {total.roofline(limits) / phase.seconds:.0%} |"
    )


def print_limits(limits: Limits) -> None:
    print("\n## Machine limits (best of the measurements before and after the model runs)")
    print(f"- fp32 matmul peak (torch.matmul 2048^3): {limits.fp32_flops / 1e9:.1f} GFLOP/s")
    for name, value in limits.other_flops.items():
        print(f"- {name} peak (2048^3): {value / 1e9:.1f} GOP/s")
    print(f"- memory bandwidth, 512 MiB copy (read + write): {limits.copy_bandwidth / 1e9:.1f} GB/s")
    print(f"- memory bandwidth, 512 MiB sum (read): {limits.read_bandwidth / 1e9:.1f} GB/s")


def print_targets(vit: Phase, prefill: Phase, decode: Phase, decode_rows, overhead, limits: Limits) -> None:
    print("\n## Targets")
    print("| phase | measured | target | met |\n|---|---|---|---|")
    for phase in (vit, prefill):
        rate = sum(work.flops for work in phase.work.values()) / phase.seconds
        share = rate / limits.fp32_flops
        print(
            f"| {phase.name} | {rate / 1e9:.1f} GFLOP/s = {share:.0%} of the matmul peak | >= 50% | "
            f"{'yes' if share >= 0.5 else 'no'} |"
        )
    _, _, fp32_bytes = decode_rows[0]
    bound = fp32_bytes / limits.copy_bandwidth
    share = bound / decode.seconds
    print(
        f"| decode (engine) | {decode.seconds * 1000:.1f} ms/token; {fp32_bytes / 1e6:.0f} MB of weights / copy "
        f"bandwidth = {bound * 1000:.1f} ms: {share:.0%} of the bandwidth bound (read bandwidth: "
        f"{fp32_bytes / limits.read_bandwidth / decode.seconds:.0%}) | >= 60% | {'yes' if share >= 0.6 else 'no'} |"
    )
    share = overhead[0] / decode.seconds
    print(
        f"| Python and dispatch overhead per decode step | {overhead[0] * 1000:.2f} ms (median "
        f"{overhead[1] * 1000:.2f}) = {share:.1%} of a step | <= 5% | {'yes' if share <= 0.05 else 'no'} |"
    )
    gain = decode.seconds / decode_rows[-1][1][0]
    print(
        f"| int8 decode (decoder+lm_head) | {gain:.2f}x the fp32 tokens/s | >= 2x | {'yes' if gain >= 2 else 'no'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--steps", type=int, default=24, help="decode steps per measured request")
    parser.add_argument("--quick", action="store_true", help="16 frames, 8 steps, one rep (smoke run)")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up measurements")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.steps, args.reps = 16, 8, 1
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    print("# mossvl roofline benchmark")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY')}, load average at start {load_average()}"
    )
    limits = Limits()
    limits.measure(args.reps + 2)

    processor = load_processor()
    model = build_mossvl(ROOFLINE_MID, processor)
    timers = Timers()
    watch_model(timers, model)
    # No prefix cache: every request prefills its whole prompt (the media cache keeps the ViT out of the prefill).
    engine = Engine(
        model,
        processor,
        EngineConfig(max_batch_size=1, prefill_chunk_frames=args.frames, prefix_cache_size=0),
    )
    query = video_query(args.frames, args.steps + 1)
    vit = run_vit(model, engine, query, timers, args.reps)
    prefill, decode = run_engine(engine, query, timers, args.reps)
    timers.remove()
    overhead = overhead_steps(processor, query, args.reps)
    forward = forward_steps(model, processor, query, args.steps, args.reps)
    decode_rows = [("fp32", (decode.seconds, decode.median), decode_weight_bytes(model))]
    for extent in ("official", "decoder+lm_head"):
        quantize_int8(model, extent)
        steps = engine_steps(engine, query, args.reps)
        decode_rows.append((f"int8-dynamic, scope {extent}", steps, decode_weight_bytes(model)))
    del engine, model
    gc.collect()
    limits.measure(args.reps + 2)

    print_limits(limits)
    params = ROOFLINE_MID
    print(
        f"\n## 'mid' MOSS-VL, fp32, sdpa: hidden {params['hidden']}, {params['layers']} layers (cross "
        f"{params['cross_layers']}), vocabulary {params['vocab']}, ViT depth {params['vision_depth']} x "
        f"{params['vision_hidden']}; {args.frames} frames of 128x128, {args.steps} decode steps per request"
    )
    for phase in (vit, prefill, decode):
        print_phase(phase, limits)
    print_targets(vit, prefill, decode, decode_rows, overhead, limits)

    print("\n## Decode steps")
    print(
        "| weights | path | ms/token (fastest / median) | tokens/s | weight MB/token | fraction of the bandwidth bound |"
    )
    print("|---|---|---:|---:|---:|---:|")
    rows = [(name, "engine", steps, nbytes) for name, steps, nbytes in decode_rows]
    rows.insert(1, ("fp32", "model.forward + MossVLCache (generate)", forward, decode_rows[0][2]))
    for name, path, (fastest, median), nbytes in rows:
        print(
            f"| {name} | {path} | {fastest * 1000:.1f} / {median * 1000:.1f} | {1 / fastest:.2f} | "
            f"{nbytes / 1e6:.0f} | {nbytes / limits.copy_bandwidth / fastest:.0%} |"
        )
    if not args.no_startup:
        print_startup(args.reps)
    print(f"\nload average at the end {load_average()}; total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
