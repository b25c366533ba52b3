"""`mossvl eval`: answer a question set with a model and write the accuracy table, predictions and plot; or, with
``--streams``, play realtime streams through sessions and write the detection table (recall, precision, delay,
false alarms) and plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import SILENCE_BIAS_HELP, add_model_arguments, load_from_args


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--questions",
        type=Path,
        default=None,
        help="question set, JSON list or JSONL (default: the bundled sample questions)",
    )
    parser.add_argument(
        "--streams",
        type=Path,
        default=None,
        help="realtime stream set, JSON list or JSONL (mossvl.data.synthetic_streams); default model: the realtime "
        "demo model",
    )
    parser.add_argument(
        "--tolerance-frames",
        type=int,
        default=2,
        help="--streams: a reply up to this many frames after an event detects it (default 2)",
    )
    parser.add_argument(
        "--silence-bias",
        type=float,
        default=None,
        help="--streams: " + SILENCE_BIAS_HELP,
    )
    parser.add_argument(
        "--concurrency", type=_positive_int, default=8, help="--streams: sessions at a time (default 8)"
    )
    parser.add_argument(
        "--output", type=Path, default=Path("outputs/eval"), help="report folder (default outputs/eval)"
    )
    parser.add_argument(
        "--limit", type=_positive_int, default=None, help="evaluate only the first N questions"
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=8, help="questions per generate call (default 8)"
    )
    parser.add_argument(
        "--max-new-tokens", type=_positive_int, default=32, help="answer length limit (default 32)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.streams is not None:
        if args.questions is not None:
            raise SystemExit("mossvl eval: give --questions or --streams, not both")
        return run_streams(args)
    import mossvl
    from mossvl.data.synthetic import SAMPLES_DIR
    from mossvl.evaluation import evaluate, load_questions

    questions = load_questions(args.questions or SAMPLES_DIR / "questions.json", check_media=True)
    if args.limit is not None:
        questions = questions[: args.limit]
    model, processor = mossvl.load(
        args.checkpoint,
        dtype=args.dtype,
        device=args.device,
        attn_implementation=args.attn_implementation,
        cross_attention_implementation=args.cross_attention_implementation,
    )

    def answer(batch: list) -> list[str]:
        queries = [question.to_query() for question in batch]
        return mossvl.batch_chat(
            model, processor, queries, max_new_tokens=args.max_new_tokens, do_sample=False
        )

    report = evaluate(questions, answer, batch_size=args.batch_size, progress=not args.quiet)
    paths = report.write(args.output)
    print(report.to_markdown(), end="")
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0


def run_streams(args: argparse.Namespace) -> int:
    from mossvl.evaluation.streams import evaluate_streams, load_streams, session_player
    from mossvl.inference.api import demo_realtime_model_dir
    from mossvl.inference.engine import engine_for

    if args.tolerance_frames < 0:
        raise SystemExit(f"mossvl eval: --tolerance-frames must be >= 0, got {args.tolerance_frames}")
    cases = load_streams(args.streams)
    if args.limit is not None:
        cases = cases[: args.limit]
    if args.checkpoint is None:
        args.checkpoint = str(demo_realtime_model_dir())
    model, processor = load_from_args(args)
    engine = engine_for(model, processor)
    player = session_player(engine, max_new_tokens=args.max_new_tokens, silence_bias=args.silence_bias)
    report = evaluate_streams(
        cases, player, args.tolerance_frames, concurrency=args.concurrency, progress=not args.quiet
    )
    paths = report.write(args.output)
    print(report.to_markdown(), end="")
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0
