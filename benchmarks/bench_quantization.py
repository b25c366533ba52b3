"""Benchmark: weight quantization on the CPU, every variant against fp32 in one process (not a test).

Two models: a mid-size random MOSS-VL built here (text hidden 1024, 12 layers with cross-attention at 2, 6, 10,
8 heads / 4 KV heads of 128, MLP 3072, vocab 151936; ViT depth 8, hidden 256) and the shipped demo model.
Each is written once as a 16-bit checkpoint and quantized with ``mossvl quantize``'s code; the variants are

* ``fp32`` (the baseline of every ratio) and ``bf16``: the 16-bit checkpoint loaded in that dtype;
* ``int8-dynamic``: the official scope in int8 (the rest fp32), and the same with the rest in bf16;
* ``int8-dynamic official+lm_head`` and ``decoder+lm_head`` (also the cross-attention layers): wider scopes;
* ``fp8 → int8 at load``: the FP8-dynamic checkpoint as ``adapt_quantized_model`` runs it on a CPU;
* ``fp8 emulated`` (transformers + compressed-tensors as they load it: dense weights, FP8 activation
  quantize-dequantize at every call) and ``fp8 dequantized at load`` (``CompressedTensorsConfig(dequantize=True)``).

Measured per variant: checkpoint size, load time, the peak RSS that loading it and one generation add to the
process (the Linux high-water mark, reset before each load), prefill time (time to the first token) and decode
tokens/s of greedy ``generate()`` with a fixed number of new tokens (best of ``--reps`` runs, since other work on a
shared machine only ever slows a run down). Every timed run of a variant is paired with a run of the fp32 model
right before it, and a speed-up is the median of the pairs' ratios. Accuracy: the largest logit difference to fp32 on the seven golden cases (tests/fixtures/golden) and how
many of their greedy generations equal fp32's, and the demo model's evaluation table on the held-out synthetic
test split (400 questions, generated here by ``mossvl.data.synthetic`` exactly as ``make demo-model`` does).

    .venv/bin/python benchmarks/bench_quantization.py [--threads 1] [--reps 5] [--new-tokens 32] [--frames 16]
        [--eval-limit N] [--parts mid,demo,golden,eval] [--json results.json]

About 8 minutes with the defaults on one thread of this project's CPU machines (the two speed parts 5–6 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from safetensors.torch import load_file  # noqa: E402
from transformers import LogitsProcessor, LogitsProcessorList  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import mossvl  # noqa: E402
from mossvl.data.synthetic import generate_dataset  # noqa: E402
from mossvl.evaluation import evaluate, load_questions  # noqa: E402
from mossvl.inference.api import demo_model_dir  # noqa: E402
from mossvl.model import MossVLConfig, MossVLForConditionalGeneration  # noqa: E402
from mossvl.processing.processor import MossVLProcessor  # noqa: E402
from mossvl.quantization import adapt_quantized_model, quantize_checkpoint, register_quantizers  # noqa: E402
from mossvl.quantization.checkpoint import tensor_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = ROOT / "tests" / "fixtures" / "golden"
QUESTION = "What happens in the video? Describe it."
PARTS = ("mid", "demo", "golden", "eval")
GOLDEN_INPUTS = ("input_ids", "attention_mask", "grid_thw", "media_nums_per_sample", "cross_attention_mask")


@dataclass
class Variant:
    """How to get one variant: which checkpoint (a method of ``mossvl quantize``, None for the 16-bit one), the
    dtype of its unquantized tensors, and how it is loaded (plain, ``adapt`` on the CPU, or ``dequantize``)."""

    name: str
    method: str | None = None
    scope: str = "official"
    dtype: torch.dtype = torch.float32
    load: str = "plain"
    results: dict = field(default_factory=dict)


def variants() -> list[Variant]:
    return [
        Variant("fp32"),
        Variant("bf16", dtype=torch.bfloat16),
        Variant("int8-dynamic", "int8-dynamic"),
        Variant("int8-dynamic, rest bf16", "int8-dynamic", dtype=torch.bfloat16),
        Variant("int8-dynamic official+lm_head", "int8-dynamic", scope="official+lm_head"),
        Variant("int8-dynamic decoder+lm_head", "int8-dynamic", scope="decoder+lm_head"),
        Variant("fp8 → int8 at load", "fp8-dynamic", load="adapt"),
        Variant("fp8 emulated (compressed-tensors)", "fp8-dynamic"),
        Variant("fp8 dequantized at load", "fp8-dynamic", load="dequantize"),
    ]


# ----- checkpoints --------------------------------------------------------------------------------------------


def build_mid_checkpoint(folder: Path, processor: MossVLProcessor) -> None:
    """The mid-size random model (bf16 safetensors) with the demo processor, whose token ids it uses."""
    tokenizer = processor.tokenizer
    ids = {
        key: tokenizer.convert_tokens_to_ids(token)
        for key, token in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }
    config = MossVLConfig(
        vision_config={
            "depth": 8,
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_heads": 4,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [1, 3, 5],
            "out_hidden_size": 1024,
        },
        text_config={
            "vocab_size": 151936,
            "hidden_size": 1024,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 128,
            "cross_attention_layers": [2, 6, 10],
        },
        vision_seq_pad_multiple=1,
        **ids,
    )
    torch.manual_seed(0)
    model = MossVLForConditionalGeneration(config)
    with torch.no_grad():
        # Open gates, so that the cross layers do real work.
        for layer in config.text_config.cross_attention_layers:
            block = model.model.language_model.layers[layer]
            block.cross_attn_attn_gate.fill_(0.5)
            block.cross_attn_mlp_gate.fill_(0.5)
    model.generation_config.eos_token_id = None
    model.to(torch.bfloat16).save_pretrained(folder)
    processor.save_pretrained(folder)


def make_checkpoints(source: Path, work: Path, todo: list[Variant]) -> dict[tuple, Path]:
    """The folder of every (method, scope) the variants need; (None, ...) is the 16-bit source itself."""
    folders: dict[tuple, Path] = {}
    for variant in todo:
        key = (variant.method, variant.scope)
        if key in folders:
            continue
        if variant.method is None:
            folders[key] = source
            continue
        folder = work / f"{source.name}-{variant.method}-{variant.scope.replace('+', '-')}"
        if not folder.exists():  # the speed and accuracy parts share the demo model's checkpoints
            quantize_checkpoint(source, folder, variant.method, scope=variant.scope)
        folders[key] = folder
    return folders


def load_variant(variant: Variant, folder: Path) -> MossVLForConditionalGeneration:
    kwargs = {"dtype": variant.dtype}
    if variant.load == "dequantize":
        from transformers import CompressedTensorsConfig

        kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    model = MossVLForConditionalGeneration.from_pretrained(folder, **kwargs).eval()
    if variant.load == "adapt":
        adapt_quantized_model(model, "cpu")
    return model


# ----- measuring ----------------------------------------------------------------------------------------------


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def rss_mib(field_name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class StepClock(LogitsProcessor):
    """Records when each token is chosen (generate calls logits processors once per step)."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


@torch.inference_mode()
def time_generate(model, inputs: dict, new_tokens: int) -> tuple[float, float]:
    """(prefill seconds = time to the first token, decode tokens/s) of one greedy generation of new_tokens."""
    clock = StepClock()
    start = time.perf_counter()
    model.generate(
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        logits_processor=LogitsProcessorList([clock]),
    )
    steps = clock.times
    return steps[0] - start, (len(steps) - 1) / (steps[-1] - steps[0])


def speed_inputs(processor: MossVLProcessor, frames: int) -> dict:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(frames)]
    query = {
        "prompt": QUESTION,
        "videos": [{"frames": images, "fps": 1.0}],
        "media_kwargs": {"max_frames": frames, "video_fps": 1.0},
    }
    return dict(processor.prepare(query))


def load_measured(variant: Variant, folder: Path, inputs: dict):
    """Load a variant and run one short generation; returns the model, the load time and the peak RSS that the
    load and the first generation added to the process."""
    gc.collect()
    before = rss_mib("VmRSS")
    reset_peak_rss()
    started = time.perf_counter()
    model = load_variant(variant, folder)
    loaded = time.perf_counter() - started
    time_generate(model, inputs, 2)  # also the first forward of lazy paths
    return model, loaded, rss_mib("VmHWM") - before


def bench_speed(title: str, source: Path, work: Path, args) -> list[Variant]:
    """Each variant's generations alternate with the fp32 baseline's, so that a ratio compares runs made side by
    side (other work on a shared machine shifts both); a ratio is the median over the pairs."""
    todo = variants()
    folders = make_checkpoints(source, work, todo)
    inputs = speed_inputs(MossVLProcessor.from_pretrained(source), args.frames)
    baseline, base_load, base_rss = load_measured(todo[0], source, inputs)
    for variant in todo:
        folder = folders[(variant.method, variant.scope)]
        if variant is todo[0]:
            model, loaded, peak = baseline, base_load, base_rss
        else:
            model, loaded, peak = load_measured(variant, folder, inputs)
        pairs = [
            (time_generate(baseline, inputs, args.new_tokens), time_generate(model, inputs, args.new_tokens))
            for _ in range(args.reps)
        ]
        runs = [run for _, run in pairs]
        variant.results = {
            "checkpoint_mib": sum(tensor_bytes(folder).values()) / 2**20,
            "load_s": loaded,
            "peak_rss_mib": peak,
            "prefill_s": min(run[0] for run in runs),
            "decode_tok_s": max(run[1] for run in runs),
            "prefill_speedup": float(np.median([base[0] / run[0] for base, run in pairs])),
            "decode_speedup": float(np.median([run[1] / base[1] for base, run in pairs])),
        }
        del model
    print_speed(title, todo, inputs["input_ids"].shape[1], args)
    return todo


def print_speed(title: str, todo: list[Variant], prompt_tokens: int, args) -> None:
    print(
        f"\n## {title}: {prompt_tokens} prompt tokens ({args.frames} video frames of 128×128), "
        f"{args.new_tokens} new tokens, greedy; times: best of {args.reps}; speed-ups: median of {args.reps} "
        "runs paired with an fp32 run"
    )
    print(
        "| variant | checkpoint MiB | load s | peak RSS MiB | prefill s | decode tok/s "
        "| prefill speed-up | decode speed-up |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for v in todo:
        r = v.results
        print(
            f"| {v.name} | {r['checkpoint_mib']:.1f} | {r['load_s']:.2f} | {r['peak_rss_mib']:.0f} | "
            f"{r['prefill_s']:.3f} | {r['decode_tok_s']:.1f} | {r['prefill_speedup']:.2f}x | "
            f"{r['decode_speedup']:.2f}x |"
        )


# ----- accuracy -----------------------------------------------------------------------------------------------


def golden_inputs() -> list[dict]:
    """Processor outputs of every golden case (pixel values rebuilt from the stored levels)."""
    cases = json.loads((GOLDEN_DIR / "cases.json").read_text())["cases"]
    inputs = []
    for case in cases:
        expected = load_file(GOLDEN_DIR / case["expected_file"])
        pixels = (expected["pixel_levels"].to(torch.float32) - 127.5) / 127.5
        pixels[expected["pixel_blank_rows"]] = 0.0
        inputs.append({"pixel_values": pixels, **{key: expected[key] for key in GOLDEN_INPUTS}})
    return inputs


@torch.inference_mode()
def golden_outputs(model, cases: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(prompt logits in float32 with padding rows zeroed, 8 greedy tokens) of each golden case."""
    outputs = []
    for inputs in cases:
        logits = model(**inputs, use_cache=False).logits.float()
        logits = logits * inputs["attention_mask"][..., None]
        tokens = model.generate(**inputs, max_new_tokens=8, do_sample=False)[
            :, inputs["input_ids"].shape[1] :
        ]
        outputs.append((logits, tokens))
    return outputs


def bench_golden(work: Path) -> list[Variant]:
    todo = variants()
    folders = make_checkpoints(GOLDEN_DIR, work, todo)
    cases = golden_inputs()
    reference = None
    for variant in todo:
        outputs = golden_outputs(load_variant(variant, folders[(variant.method, variant.scope)]), cases)
        reference = reference or outputs
        drifts = [(ours[0] - ref[0]).abs().max().item() for ours, ref in zip(outputs, reference, strict=True)]
        same = sum(torch.equal(ours[1], ref[1]) for ours, ref in zip(outputs, reference, strict=True))
        variant.results = {
            "max_logit_drift": max(drifts),
            "mean_case_drift": float(np.mean(drifts)),
            "same": same,
        }
    print("\n## Golden cases (tests/fixtures/golden): prompt logits vs fp32, 8 greedy tokens")
    print("| variant | max logit drift | mean of per-case max | greedy tokens = fp32 |\n|---|---:|---:|---:|")
    for v in todo:
        r = v.results
        print(
            f"| {v.name} | {r['max_logit_drift']:.3g} | {r['mean_case_drift']:.3g} | {r['same']}/{len(cases)} |"
        )
    return todo


def bench_demo_eval(work: Path, args) -> list[Variant]:
    data = work / "demo_test_data"
    generate_dataset(data, 0, 0, 400, seed=0, progress=False)  # the seed and test split of make demo-model
    questions = load_questions(data / "test_questions.jsonl", check_media=True)[: args.eval_limit]
    todo = variants()
    folders = make_checkpoints(demo_model_dir(), work, todo)
    processor = MossVLProcessor.from_pretrained(demo_model_dir())
    for variant in todo:
        model = load_variant(variant, folders[(variant.method, variant.scope)])

        def answer(batch, model=model):
            queries = [question.to_query() for question in batch]
            return mossvl.batch_chat(model, processor, queries, max_new_tokens=8, do_sample=False)

        report = evaluate(questions, answer, batch_size=16, progress=False)
        variant.results = {"tasks": {t.task: t.accuracy for t in report.tasks}, "all": report.accuracy}
    base = todo[0].results
    tasks = list(base["tasks"])
    print(
        f"\n## Demo model evaluation: held-out synthetic test split, {len(questions)} questions; accuracy %"
    )
    print("| variant | " + " | ".join(tasks) + " | all | worst task vs fp32 (points) |")
    print("|---|" + "---:|" * (len(tasks) + 2))
    for v in todo:
        r = v.results
        worst = min(100 * (r["tasks"][t] - base["tasks"][t]) for t in tasks)
        cells = " | ".join(f"{100 * r['tasks'][t]:.1f}" for t in tasks)
        print(f"| {v.name} | {cells} | {100 * r['all']:.1f} | {worst:+.1f} |")
    return todo


# ----- main ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine 2 OpenMP threads make timings erratic)",
    )
    parser.add_argument("--reps", type=int, default=5, help="timed generations per variant (best is kept)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--frames", type=int, default=16, help="video frames in the timed prompt")
    parser.add_argument(
        "--eval-limit", type=int, default=None, help="evaluate only the first N demo questions"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this file")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated parts to run (default all: {','.join(PARTS)})",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    register_quantizers()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module="compressed_tensors")
    # from_pretrained(quantization_config=CompressedTensorsConfig(dequantize=True)) says it merges the two configs.
    warnings.filterwarnings("ignore", message="You passed `quantization_config`")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), quantized engine "
        f"{torch.backends.quantized.engine}"
    )
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {list(PARTS)}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_quant_") as tmp:
        work = Path(tmp)
        if "mid" in parts:
            mid = work / "mid"
            build_mid_checkpoint(mid, MossVLProcessor.from_pretrained(demo_model_dir()))
            results["mid"] = bench_speed("Mid-size random model", mid, work, args)
        if "demo" in parts:
            results["demo"] = bench_speed("Demo model", demo_model_dir(), work, args)
        if "golden" in parts:
            results["golden"] = bench_golden(work)
        if "eval" in parts:
            results["demo_eval"] = bench_demo_eval(work, args)
    if args.json is not None:
        dump = {part: {v.name: v.results for v in todo} for part, todo in results.items()}
        args.json.write_text(json.dumps(dump, indent=2) + "\n")


if __name__ == "__main__":
    main()
