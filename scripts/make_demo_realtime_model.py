"""Train the shipped realtime demo model on the CPU: synthetic streams, `mossvl finetune` from the shipped demo model
on realtime SFT records, bf16 export to ``src/mossvl/assets/demo_realtime_model/`` and `mossvl eval --streams` on
the held-out test split.

Run ``make demo-realtime-model`` (or ``python scripts/make_demo_realtime_model.py``). Every step is seeded; the
default settings take about half an hour on two CPU cores, data generation included (28.7 min for the shipped
weights; more when the machine is busy), and train with one thread, so that a run gives the same weights every
time on a machine. Work files go to
``build/demo_realtime_model/`` (streams, trained fp32 checkpoint, evaluation); the shipped folder and
``docs/demo_realtime_model_eval.{md,png}`` are overwritten at the end.

The records are the realtime SFT format of ``mossvl finetune``: per prompt a user turn, then an assistant turn that
holds one ``<|video|>`` per frame (a ``[time]`` segment of the clip) followed by ``<|silence|>`` or the reply. The
system prompt is the one ``mossvl realtime`` sends, so the model works with the command's defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import make_demo_model as demo_model  # the sibling script: run, mossvl_command, export, prepare_data

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / "build" / "demo_realtime_model"
BASE_DIR = ROOT / "src" / "mossvl" / "assets" / "demo_model"
SHIP_DIR = ROOT / "src" / "mossvl" / "assets" / "demo_realtime_model"
DOCS_DIR = ROOT / "docs"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR)
    parser.add_argument("--base-model", type=Path, default=BASE_DIR, help="the model to fine-tune")
    parser.add_argument("--ship-dir", type=Path, default=SHIP_DIR, help="where the final model goes")
    parser.add_argument("--docs-dir", type=Path, default=DOCS_DIR, help="where the eval table and plot go")
    parser.add_argument("--train", type=int, default=8000, help="training streams to generate")
    parser.add_argument("--test", type=int, default=300, help="held-out test streams")
    parser.add_argument(
        "--decoy-share",
        type=float,
        default=0.9,
        help="share of training streams in which shapes the prompt does not ask about have their events too",
    )
    parser.add_argument(
        "--frame-pixels",
        type=int,
        default=64 * 64,
        help="pixels each 64x64 frame is upscaled to (at least) before the ViT: 128*128 gives each 16x16 area of "
        "the frame its own vision token (and 1.75x the training time)",
    )
    parser.add_argument(
        "--narrate-share",
        type=float,
        default=0.3,
        help="share of training streams whose prompt asks for every change, so that the model learns to say "
        "which shape changed (and to see a shape start moving)",
    )
    parser.add_argument(
        "--decision-weight",
        type=float,
        default=1.0,
        help="loss weight of the choice after each frame between silence and a reply (finetune's "
        "--decision_loss_weight)",
    )
    parser.add_argument(
        "--reply-weight",
        type=float,
        default=3.0,
        help="extra loss weight of the choices that open a reply rather than <|silence|> (finetune's "
        "--reply_start_loss_weight)",
    )
    parser.add_argument(
        "--tune-vision",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train the vision tower too (default; --no-tune-vision freezes it)",
    )
    parser.add_argument(
        "--stream-frames",
        nargs=2,
        type=int,
        default=[8, 14],
        metavar=("LEAST", "MOST"),
        help="frames per training clip (default 8 14, as the held-out clips): shorter clips make cheaper steps, but "
        "the model then misses events on later frames than it was trained on",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["appear", "vanish", "recolor", "move", "cross", "move"],
        help="the order in which tasks take turns in the training streams; a task named twice gets twice the "
        "streams (default: every task once, 'move' twice)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-steps",
        type=int,
        default=2800,
        help="optimizer steps (2800 of 8: 2.8 passes over 8000 streams)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the training run (default 1: a run then gives the same weights every time on a "
        "machine; 2 threads are ~10%% faster and land elsewhere in the spread of seeds)",
    )
    parser.add_argument("--skip-train", action="store_true", help="reuse the trained checkpoint in work-dir")
    parser.add_argument(
        "--no-ship", action="store_true", help="evaluate the trained checkpoint, ship nothing"
    )
    return parser.parse_args(argv)


def prepare_data(data_dir: Path, n_train: int, n_test: int, seed: int, **aids: object) -> None:
    """Generate the streams unless `data_dir` already holds this exact set; `aids`: the options of
    `generate_streams` for the training split (``decoy_share``, ``narrate_share``, ``aid_frames``, ``aid_tasks``)."""
    from mossvl.data.synthetic_streams import generate_streams

    demo_model.prepare_data(data_dir, n_train, n_test, seed, generate_streams, "streams.json", **aids)


def base_with_frame_pixels(base_model: Path, folder: Path, frame_pixels: int) -> Path:
    """A copy of `base_model` in `folder` whose image and video processors upscale frames to `frame_pixels`.

    The processors' minimum pixel count is what decides the resolution, so training (video segments) and a
    realtime session of the shipped model (single frames) both see the same upscaled frames."""
    from mossvl.processing.processor import MossVLProcessor

    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(base_model, folder)
    processor = MossVLProcessor.from_pretrained(str(folder))
    for frames in (processor.image_processor, processor.video_processor):
        frames.size = {**frames.size, "shortest_edge": frame_pixels}
    processor.save_pretrained(str(folder))
    return folder


def train(args: argparse.Namespace, data_dir: Path, trained_dir: Path) -> dict:
    started = time.time()
    prepare_data(
        data_dir,
        args.train,
        args.test,
        args.seed,
        decoy_share=args.decoy_share,
        narrate_share=args.narrate_share,
        aid_frames=list(args.stream_frames),
        aid_tasks=list(args.tasks),
    )
    shutil.rmtree(trained_dir, ignore_errors=True)
    base = base_with_frame_pixels(args.base_model, args.work_dir / "base", args.frame_pixels)
    # fmt: off
    demo_model.run(demo_model.mossvl_command(
        "finetune",
        "--model_name_or_path", str(base), "--data_path", str(data_dir / "train.jsonl"),
        "--output_dir", str(trained_dir), "--dtype", "float32", "--use_cpu", "True",
        "--tune_vision", str(args.tune_vision), "--tune_language", "True", "--tune_lm_head", "True",
        "--per_device_train_batch_size", str(args.batch_size), "--max_steps", str(args.max_steps),
        "--learning_rate", str(args.lr), "--lr_scheduler_type", "cosine", "--warmup_steps", str(args.warmup_steps),
        "--weight_decay", "0.01", "--adam_beta2", "0.98", "--max_grad_norm", "1.0",
        "--logging_steps", "25", "--save_strategy", "no", "--report_to", "none",
        "--dataloader_num_workers", "0", "--cache_samples", "True", "--seed", str(args.seed),
        "--max_length", "512", "--decision_loss_weight", str(args.decision_weight),
        "--reply_start_loss_weight", str(args.reply_weight),
    ), threads=args.threads)
    # fmt: on
    summary = {
        "base_model": args.base_model.name,
        "training_streams": args.train,
        "decoy_share": args.decoy_share,
        "narrate_share": args.narrate_share,
        "stream_frames": list(args.stream_frames),
        "tasks": list(args.tasks),
        "frame_pixels": args.frame_pixels,
        "decision_weight": args.decision_weight,
        "reply_weight": args.reply_weight,
        "tune_vision": args.tune_vision,
        "steps": args.max_steps,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "minutes": round((time.time() - started) / 60, 1),
    }
    (args.work_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"data and training took {summary['minutes']} min")
    return summary


def write_docs(docs_dir: Path, eval_dir: Path, summary: dict | None, weights_mib: float, n_test: int) -> None:
    """docs/demo_realtime_model_eval.md (how it was made, the detection table) and its plot."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(eval_dir / "eval.png", docs_dir / "demo_realtime_model_eval.png")
    made = ""
    if summary is not None:
        shares = [
            f"{summary.get(key, 0.0):.0%} {what}"
            for key, what in (("decoy_share", "with a decoy"), ("narrate_share", "asking for every change"))
            if summary.get(key)
        ]
        aids = f" ({' and '.join(shares)})" if shares else ""
        threads = summary.get("threads", 2)
        made = (
            f"Fine-tuned from the shipped demo model ({weights_mib:.1f} MiB of bf16 safetensors) with `mossvl "
            f"finetune` on {summary['training_streams']} synthetic realtime streams{aids}, {summary['steps']} "
            f"steps of {summary['batch_size']} with {threads} training thread{'' if threads == 1 else 's'}, in "
            f"{summary['minutes']} min on a 2-core CPU (data generation included). "
        )
    (docs_dir / "demo_realtime_model_eval.md").write_text(
        "# Realtime demo model evaluation\n\n"
        f"{made}`mossvl eval --streams` on the held-out test split ({n_test} streams never seen in training), each "
        "played frame by frame through a realtime session. A reply detects an event when it comes on the event's "
        "first visible frame or up to two frames later; delay is counted from that frame. False alarms: the share "
        "of event-free streams in which the model said anything. Chance speaks after each frame with the "
        "probability that a frame carries an event. Regenerate everything with `make demo-realtime-model`.\n\n"
        + (eval_dir / "results.md").read_text(encoding="utf-8")
        + "\n![detection per task and response delay](demo_realtime_model_eval.png)\n",
        encoding="utf-8",
    )


def main(argv: list[str] | None = None) -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"
    args = parse_args(argv)
    started = time.time()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    data_dir, trained_dir = work / "data", work / "trained"
    summary_file = work / "train_summary.json"
    if args.skip_train:
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    else:
        summary = train(args, data_dir, trained_dir)
    model_dir = trained_dir if args.no_ship else args.ship_dir
    if not args.no_ship:
        demo_model.export(trained_dir, args.ship_dir)
    weights_mib = (model_dir / "model.safetensors").stat().st_size / 2**20
    print(f"model: {model_dir} ({weights_mib:.1f} MiB of weights)")
    eval_dir = work / "eval"
    demo_model.run(demo_model.mossvl_command(
        "eval", "--streams", str(data_dir / "test_streams.jsonl"), "--model", str(model_dir),
        "--output", str(eval_dir),
    ))  # fmt: skip
    if not args.no_ship:
        write_docs(args.docs_dir, eval_dir, summary, weights_mib, args.test)
    print(f"all done after {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
