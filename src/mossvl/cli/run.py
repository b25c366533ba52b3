"""`mossvl run --input queries.json|jsonl`: answer a file of queries and write the results as JSON.

Compatible with the reference `run_inference.py`: both query styles (`messages`, or `prompt` + `images` +
`videos`, plus training-style `conversations`), media paths relative to the input file, image / video media
defaults merged per query, and the same output layout (`<input_stem>_results.json` by default). A failing query
is recorded in its result (`error`) and the others still run; the exit status is 1 when any query failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..constants import IMAGE_MEDIA_DEFAULTS, VIDEO_MEDIA_DEFAULTS
from ..errors import MossVLError, QueryError
from . import common

MODES = ("offline", "image", "video", "batch")
DEFAULT_TIMEOUT_SECONDS = 300.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input", required=True, help="a JSON list of queries or a JSONL file (one per line)"
    )
    parser.add_argument("--output", default=None, help="results file (default: <input_stem>_results.json)")
    parser.add_argument(
        "--mode",
        default="offline",
        choices=MODES,
        help="legacy alias kept for compatibility; all modes are the same",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="queries in flight (decoded together) at once (default 8)"
    )
    parser.add_argument(
        "--timeout-seconds",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help="per-query limit; a query that runs longer is cancelled and recorded as an error",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    common.add_model_arguments(parser)
    common.add_generation_arguments(parser)
    common.add_media_arguments(parser)


def _prepare(engine, query: dict, base_dir: Path, args: argparse.Namespace):
    """A request for one query and the media settings it uses: official media defaults (image / video ones by
    media present) < CLI flags < the query's own; CLI generation flags < the query's own."""
    conversation = engine.inputs.conversation(query, base_dir)
    media = {
        **(IMAGE_MEDIA_DEFAULTS if conversation.images else {}),
        **(VIDEO_MEDIA_DEFAULTS if conversation.videos else {}),
        **common.media_kwargs_from_args(args),
    }
    request = engine.prepare(conversation, common.generate_kwargs_from_args(args), media)
    return request, conversation, {**media, **conversation.media_kwargs}


def _result_record(index: int, query: dict, prepared, result, elapsed: float, events: int) -> dict:
    request, conversation, media = prepared or (None, None, None)
    settings = request.settings if request is not None else None
    return {
        "index": index,
        "prompt": query.get("prompt"),
        "messages": conversation.messages if conversation else query.get("messages"),
        "images": conversation.images if conversation else query.get("images", []),
        "videos": conversation.videos if conversation else query.get("videos", []),
        "media_kwargs": media if media is not None else query.get("media_kwargs", {}),
        "generate_kwargs": _settings_dict(settings) if settings else query.get("generate_kwargs", {}),
        "text": result.text,
        "finish_reason": result.finish_reason,
        "error": result.error,
        "elapsed_seconds": round(elapsed, 3),
        "event_count": events,
    }


def _settings_dict(settings) -> dict:
    out = {
        "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "top_k": settings.top_k,
        "top_p": settings.top_p,
        "repetition_penalty": settings.repetition_penalty,
        "do_sample": settings.do_sample,
    }
    if settings.stop:
        out["stop"] = list(settings.stop)
    if settings.seed is not None:
        out["seed"] = settings.seed
    return out


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..inference.core import EngineConfig
    from ..inference.engine import Engine
    from ..inference.queries import load_query_file
    from ..inference.request import error_result

    input_path = Path(args.input)
    queries = load_query_file(input_path)
    if args.batch_size < 1:
        raise QueryError(f"--batch-size must be >= 1, got {args.batch_size}")
    output_path = (
        Path(args.output) if args.output else input_path.with_name(f"{input_path.stem}_results.json")
    )
    model, processor = common.load_from_args(args)
    engine = Engine(model, processor, EngineConfig(max_batch_size=args.batch_size))

    started = time.monotonic()
    records: list[dict | None] = [None] * len(queries)
    progress = tqdm(total=len(queries), desc="mossvl run", unit="query", disable=args.quiet, file=sys.stderr)
    # At most --batch-size queries are prepared (media decoded) and in flight at once; the rest wait their turn.
    upcoming = iter(range(len(queries)))
    flight: dict[int, tuple] = {}
    while True:
        while len(flight) < args.batch_size and (index := next(upcoming, None)) is not None:
            try:
                prepared = _prepare(engine, queries[index], input_path.parent, args)
            except MossVLError as exc:
                records[index] = _result_record(index, queries[index], None, error_result(exc), 0.0, 0)
                progress.update(1)
                continue
            flight[index] = (prepared, engine.submit(prepared[0]), time.monotonic(), [0])
        if not flight:
            break
        for index, (prepared, handle, submitted, events) in list(flight.items()):
            while (event := handle.poll(0.0)) is not None:
                events[0] += bool(event.delta)
            if not handle.done:
                if time.monotonic() - submitted > args.timeout_seconds:
                    handle.cancel()
                continue
            result = handle.result()
            if result.finish_reason == "cancelled" and result.error is None:
                result.error = f"timed out after {args.timeout_seconds:g} s"
            elapsed = time.monotonic() - submitted
            records[index] = _result_record(index, queries[index], prepared, result, elapsed, events[0])
            del flight[index]
            progress.update(1)
        time.sleep(0.01)
    progress.close()

    failed = sum(1 for record in records if record["error"] is not None)
    report = {
        "mode": "offline_generate",
        "mode_alias": args.mode,
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "input": str(input_path),
        "results": records,
        "elapsed_seconds": round(time.monotonic() - started, 3),
    }
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_text(json.dumps(report, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    print(
        f"mossvl run: {len(records) - failed}/{len(records)} queries answered -> {output_path}",
        file=sys.stderr,
    )
    return 1 if failed else 0
