"""Train the shipped demo model from scratch on the CPU: tokenizer, synthetic data, random init, `mossvl finetune`,
bf16 export to ``src/mossvl/assets/demo_model/`` and `mossvl eval` on the held-out test split.

Run ``make demo-model`` (or ``python scripts/make_demo_model.py``). Every step is seeded; the default settings take
about 25 minutes on two CPU cores, data generation included. Work files go to ``build/demo_model/`` (dataset, initial checkpoint, trained
fp32 checkpoint, evaluation); the shipped folder and ``docs/demo_model_eval.{md,png}`` are overwritten at the end.

Choices that differ from the official checkpoints, all for a few-million-parameter model trained in minutes:

* the shape is the official one scaled down: a ViT with DeepStack taps and one patch merger, a decoder whose layers
  1, 4 and 7 of 8 are gated cross-attention layers, XRoPE with interleaved t/h/w sections (rope_theta 1e4 because
  sequences are short), the tiny byte-level BPE tokenizer of ``mossvl.data.tokenizer``;
* the cross-layer gates start at ``--gate-init`` (0.5) instead of 0, so that vision reaches the text from the first
  step (with gates at 0 only the gates themselves get a gradient at first, which wastes the short budget);
* ``rotate_cross_query_in_decode`` is true: the model only ever saw rotated cross-attention queries (training
  semantics); the official checkpoints' HF quirk of un-rotated decode queries would garble its multi-token answers;
* every part trains (``--tune_vision True``); records are written in length-bucketed batches, shuffled per epoch,
  and read in order (``--train_sampling_strategy sequential``) so that batches carry little padding;
* training prompts put the media placeholders right before the question with no separator, exactly as
  ``mossvl ask`` and ``batch_chat`` render a ``prompt`` query.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / "build" / "demo_model"
SHIP_DIR = ROOT / "src" / "mossvl" / "assets" / "demo_model"
DOCS_DIR = ROOT / "docs"

# Images are 64 or 96 px, video frames 64 px; larger user media is shrunk to at most 128x128 = 16 vision tokens.
MAX_PIXELS = 128 * 128
GATE_PARAMETERS = ("cross_attn_attn_gate", "cross_attn_mlp_gate")
# Relative sampling weights in the training file. The vision tower learns shapes and positions from scratch and
# needs many images for it; image samples are short (one frame, ~25 tokens), so they are cheap to repeat. Colour,
# event and temporal questions are learned quickly and need few examples; relative position is learned last.
TASK_WEIGHTS = {
    "color": 0.3,
    "shape": 2.5,
    "count": 2.5,
    "position": 5.0,
    "event": 0.4,
    "order": 2.0,
    "direction": 1.75,
    "temporal": 1.5,
}


def demo_config(tokenizer):
    """The demo MossVLConfig (special-token ids looked up in `tokenizer`)."""
    from mossvl import constants as C
    from mossvl.model import MossVLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in C.SPECIAL_TOKENS}
    hidden = 128
    return MossVLConfig(
        vision_config={
            "depth": 4,
            "hidden_size": 96,
            "intermediate_size": 256,
            "num_heads": 4,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 1,
            "num_position_embeddings": 64,  # an 8x8 learned grid, interpolated per image
            "deepstack_visual_indexes": [0, 1, 2],
            "out_hidden_size": hidden,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 384,
            "num_hidden_layers": 8,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "cross_attention_layers": [1, 4, 7],
            "max_position_embeddings": 8192,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [6, 5, 5],
                "mrope_interleaved": True,
            },
            "pad_token_id": ids[C.ENDOFTEXT],
        },
        image_token_id=ids[C.IMAGE_PAD],
        video_token_id=ids[C.VIDEO_PAD],
        vision_start_token_id=ids[C.VISION_START],
        vision_end_token_id=ids[C.VISION_END],
        vision_seq_pad_multiple=1,
        # The model learns with the cross-attention query rotated at every position (training semantics); the
        # official checkpoints' generate() leaves it un-rotated in decode steps, which this model never saw.
        rotate_cross_query_in_decode=True,
        eos_token_id=ids[C.IM_END],
        pad_token_id=ids[C.ENDOFTEXT],
    )


def build_initial_checkpoint(out_dir: Path, tokenizer_dir: Path, seed: int, gate_init: float) -> int:
    """Random-init checkpoint + processor in `out_dir`; returns the parameter count."""
    import torch
    from transformers import AutoTokenizer

    from mossvl.model import MossVLForConditionalGeneration
    from mossvl.processing.image import MossVLImageProcessor
    from mossvl.processing.processor import MossVLProcessor
    from mossvl.processing.video import MossVLVideoProcessor

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    torch.manual_seed(seed)
    model = MossVLForConditionalGeneration(demo_config(tokenizer))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(GATE_PARAMETERS):
                parameter.fill_(gate_init)
    model.generation_config.max_new_tokens = 16
    model.save_pretrained(str(out_dir))
    processor = MossVLProcessor(
        MossVLImageProcessor(max_pixels=MAX_PIXELS),
        MossVLVideoProcessor(max_pixels=MAX_PIXELS, num_extract_threads=1),
        tokenizer,
    )
    processor.save_pretrained(str(out_dir))
    return sum(p.numel() for p in model.parameters())


def frame_count(question: dict) -> int:
    """Frames the processor samples from a question's video (0 for an image question)."""
    from mossvl.data.synthetic import sampled_frames

    if not question["videos"]:
        return 0
    fps = Fraction(question["fps"])
    return len(sampled_frames(round(question["duration"] * fps), fps)[0])


def training_record(question: dict) -> dict:
    """A prompt/response record whose prompt is rendered as an inference `prompt` query renders it."""
    placeholders = "<|image|>" * len(question["images"]) + "<|video|>" * len(question["videos"])
    return {
        "prompt": placeholders + question["question"],
        "response": question["answer"],
        "images": question["images"],
        "videos": question["videos"],
    }


def write_training_file(questions_path: Path, out_path: Path, batch_size: int, epochs: int, seed: int) -> int:
    """Write `epochs` passes over the weighted training questions in length-bucketed, shuffled batches.

    Per epoch: draw each record round(weight) times (fractions by chance), shuffle, cut into windows of 64 batches,
    sort each window by (frames, prompt length), cut into batches and shuffle the batches. Returns the record count.
    """
    questions = [json.loads(line) for line in questions_path.read_text(encoding="utf-8").splitlines() if line]
    keys = [(frame_count(q), len(q["question"])) for q in questions]
    weights = np.array([TASK_WEIGHTS[q["task"]] for q in questions])
    rng = np.random.default_rng(seed)
    order: list[int] = []
    for _ in range(epochs):
        copies = np.floor(weights).astype(int) + (rng.random(len(weights)) < weights % 1)
        epoch = rng.permutation(np.repeat(np.arange(len(questions)), copies))
        epoch = epoch[: len(epoch) // batch_size * batch_size]
        batches = []
        window = 64 * batch_size
        for start in range(0, len(epoch), window):
            chunk = sorted(epoch[start : start + window].tolist(), key=lambda i: keys[i])
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        for index in rng.permutation(len(batches)):
            order += batches[index]
    with open(out_path, "w", encoding="utf-8") as f:
        for index in order:
            f.write(json.dumps(training_record(questions[index])) + "\n")
    return len(order)


def run(command: list[str], threads: int | None = None) -> None:
    """Run `command`; `threads` pins its torch (OpenMP) threads, since float sums in another order change what
    training learns."""
    print("$ " + " ".join(command), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    subprocess.run(command, check=True, env=env)  # inherits HF_HUB_OFFLINE=1, which main() sets


def mossvl_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mossvl.cli.main", *args]


def export(trained_dir: Path, ship_dir: Path) -> None:
    """Save the trained model with bf16 weights, its processor and tokenizer into `ship_dir` (replaced)."""
    import torch

    from mossvl.model import MossVLForConditionalGeneration
    from mossvl.processing.processor import MossVLProcessor

    model = MossVLForConditionalGeneration.from_pretrained(str(trained_dir), dtype=torch.float32)
    processor = MossVLProcessor.from_pretrained(str(trained_dir))
    if ship_dir.exists():
        shutil.rmtree(ship_dir)
    model.to(torch.bfloat16).save_pretrained(str(ship_dir))
    processor.save_pretrained(str(ship_dir))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR)
    parser.add_argument("--ship-dir", type=Path, default=SHIP_DIR, help="where the final model goes")
    parser.add_argument("--docs-dir", type=Path, default=DOCS_DIR, help="where the eval table and plot go")
    parser.add_argument("--train", type=int, default=20000, help="training samples to generate")
    parser.add_argument("--test", type=int, default=400, help="held-out test samples")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--gate-init", type=float, default=0.5, help="initial value of the cross-layer gates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (trial runs)")
    parser.add_argument("--skip-train", action="store_true", help="reuse the trained checkpoint in work-dir")
    parser.add_argument(
        "--no-ship", action="store_true", help="evaluate the trained checkpoint, ship nothing"
    )
    return parser.parse_args(argv)


def prepare_data(
    data_dir: Path,
    n_train: int,
    n_test: int,
    seed: int,
    generate: Callable[..., dict] | None = None,
    manifest_name: str = "dataset.json",
    **options: object,
) -> None:
    """Generate the data unless `data_dir` already holds this exact set: the synthetic dataset, or what `generate`
    (called like ``generate_dataset``, plus keyword `options`) writes, with its manifest `manifest_name`."""
    if generate is None:
        from mossvl.data.synthetic import generate_dataset as generate

    manifest = data_dir / manifest_name
    wanted = {"seed": seed, "train": n_train, "test": n_test, **options}
    have = json.loads(manifest.read_text()) if manifest.exists() else None
    if have is not None and have.get("demo") == wanted:
        return
    shutil.rmtree(data_dir, ignore_errors=True)
    generate(data_dir, n_train, 0, n_test, seed=seed, **options)
    have = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**have, "demo": wanted}, indent=2) + "\n")


def train(args: argparse.Namespace, data_dir: Path, init_dir: Path, trained_dir: Path) -> dict:
    """Tokenizer, initial checkpoint, training file and `mossvl finetune`; returns a summary of the run."""
    from mossvl.data.tokenizer import build_demo_tokenizer

    started = time.time()
    prepare_data(data_dir, args.train, args.test, args.seed)
    shutil.rmtree(init_dir, ignore_errors=True)
    build_demo_tokenizer(init_dir, seed=args.seed)
    params = build_initial_checkpoint(init_dir, init_dir, args.seed, args.gate_init)
    print(f"initial checkpoint: {params:,} parameters in {init_dir}")
    train_file = args.work_dir / "train_records.jsonl"
    records = write_training_file(
        data_dir / "train_questions.jsonl", train_file, args.batch_size, args.epochs, args.seed
    )
    steps = records // args.batch_size if args.max_steps < 0 else args.max_steps
    print(f"{records} training records ({steps} steps) in {train_file}")
    shutil.rmtree(trained_dir, ignore_errors=True)
    # fmt: off
    run(mossvl_command(
        "finetune",
        "--model_name_or_path", str(init_dir), "--data_path", str(train_file), "--data_dir", str(data_dir),
        "--output_dir", str(trained_dir), "--dtype", "float32", "--use_cpu", "True",
        "--tune_vision", "True", "--tune_language", "True", "--tune_lm_head", "True",
        "--per_device_train_batch_size", str(args.batch_size), "--num_train_epochs", "1",
        "--max_steps", str(args.max_steps), "--train_sampling_strategy", "sequential",
        "--learning_rate", str(args.lr), "--lr_scheduler_type", "cosine", "--warmup_steps", str(args.warmup_steps),
        "--weight_decay", "0.01", "--adam_beta2", "0.98", "--max_grad_norm", "1.0",
        "--logging_steps", "25", "--save_strategy", "no", "--report_to", "none",
        "--dataloader_num_workers", "0", "--seed", str(args.seed), "--max_length", "512",
    ))
    # fmt: on
    summary = {
        "parameters": params,
        "training_samples": args.train,
        "training_records": records,
        "steps": steps,
        "batch_size": args.batch_size,
        "minutes": round((time.time() - started) / 60, 1),
    }
    (args.work_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"data and training took {summary['minutes']} min")
    return summary


def write_docs(docs_dir: Path, eval_dir: Path, summary: dict | None, weights_mib: float, n_test: int) -> None:
    """docs/demo_model_eval.md (how it was made, the accuracy table) and docs/demo_model_eval.png."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(eval_dir / "eval.png", docs_dir / "demo_model_eval.png")
    made = ""
    if summary is not None:
        made = (
            f"{summary['parameters'] / 1e6:.1f}M parameters ({weights_mib:.1f} MiB of bf16 safetensors), trained "
            f"from scratch with `mossvl finetune` on {summary['training_samples']} synthetic samples "
            f"({summary['steps']} steps of {summary['batch_size']}) in {summary['minutes']} min on 2 CPU cores "
            "(data generation included). "
        )
    (docs_dir / "demo_model_eval.md").write_text(
        "# Demo model evaluation\n\n"
        f"{made}`mossvl eval` on the held-out synthetic test split ({n_test} questions never seen in training); "
        "temporal answers count as correct within ±0.5 s, chance is the accuracy of a uniform guess. "
        "Regenerate everything with `make demo-model`.\n\n"
        + (eval_dir / "results.md").read_text(encoding="utf-8")
        + "\n![accuracy per task](demo_model_eval.png)\n",
        encoding="utf-8",
    )


def main(argv: list[str] | None = None) -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"
    args = parse_args(argv)
    started = time.time()
    work = args.work_dir
    data_dir, init_dir, trained_dir = work / "data", work / "init", work / "trained"
    summary_file = work / "train_summary.json"
    if args.skip_train:
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    else:
        summary = train(args, data_dir, init_dir, trained_dir)
    model_dir = trained_dir if args.no_ship else args.ship_dir
    if not args.no_ship:
        export(trained_dir, args.ship_dir)
    weights_mib = (model_dir / "model.safetensors").stat().st_size / 2**20
    print(f"model: {model_dir} ({weights_mib:.1f} MiB of weights)")
    eval_dir = work / "eval"
    # fmt: off
    run(mossvl_command(
        "eval", "--model", str(model_dir), "--questions", str(data_dir / "test_questions.jsonl"),
        "--output", str(eval_dir), "--max-new-tokens", "8", "--batch-size", "16",
    ))
    # fmt: on
    if not args.no_ship:
        write_docs(args.docs_dir, eval_dir, summary, weights_mib, args.test)
    print(f"all done after {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
