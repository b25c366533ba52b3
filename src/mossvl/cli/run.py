"""`mossvl run --input queries.json|jsonl`: answer a file of queries and write the results as JSON.

Compatible with the reference `run_inference.py`: both query styles (`messages`, or `prompt` + `images` +
`videos`, plus training-style `conversations`), media paths relative to the input file, image / video media
defaults merged per query, and the same output layout (`<input_stem>_results.json` by default). A failing query
is recorded in its result (`error`) and the others still run; the exit status is 1 when any query failed.

With `--ray` the queries (also `.parquet`) are answered by Ray workers (`mossvl.integrations.ray`) and written as
JSON lines (`<input_stem>_results.jsonl` by default). Media settings are then those of `mossvl.chat`: the
checkpoint's processor config, the media flags, each query's own (without the reference script's media defaults).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..constants import IMAGE_MEDIA_DEFAULTS, VIDEO_MEDIA_DEFAULTS
from ..errors import ConfigError, MossVLError, QueryError
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
    common.add_kv_cache_argument(parser)
    common.add_model_arguments(parser)
    common.add_generation_arguments(parser)
    common.add_media_arguments(parser)
    group = parser.add_argument_group("Ray (needs: pip install 'mossvl[ray]')")
    group.add_argument(
        "--ray",
        action="store_true",
        help="answer on Ray workers and write JSON lines (input: .jsonl, .json or .parquet)",
    )
    group.add_argument(
        "--num-workers", type=int, default=None, help="Ray workers, each loading the model once (default 1)"
    )
    group.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to use (auto: the one `ray start` runs here; HOST:6379); default: a new local Ray",
    )
    group.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per Ray worker (default 1)")
    group.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per Ray worker (default 0)")


RAY_FLAGS = ("num_workers", "ray_address", "cpus_per_worker", "gpus_per_worker")


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

    if args.ray:
        return run_on_ray(args)
    given = [f"--{name.replace('_', '-')}" for name in RAY_FLAGS if getattr(args, name) is not None]
    if given:
        raise QueryError(f"{', '.join(given)} only apply with --ray")
    input_path = Path(args.input)
    if input_path.suffix.lower() == ".parquet":
        raise QueryError("Parquet query files need --ray")
    queries = load_query_file(input_path)
    if args.batch_size < 1:
        raise QueryError(f"--batch-size must be >= 1, got {args.batch_size}")
    output_path = (
        Path(args.output) if args.output else input_path.with_name(f"{input_path.stem}_results.json")
    )
    model, processor = common.load_from_args(args)
    engine_config = EngineConfig(
        max_batch_size=args.batch_size, kv_cache_dtype=common.kv_cache_dtype_from_args(args)
    )
    engine = Engine(model, processor, engine_config)

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
    # A lone surrogate echoed from a query becomes a \udcXX escape, which JSON reads back as the same string.
    output_path.write_text(
        json.dumps(report, ensure_ascii=False, indent=2, default=str),
        encoding="utf-8",
        errors="backslashreplace",
    )
    print(
        f"mossvl run: {len(records) - failed}/{len(records)} queries answered -> {output_path}",
        file=sys.stderr,
    )
    return 1 if failed else 0


def run_on_ray(args: argparse.Namespace) -> int:
    """`mossvl run --ray`: the query file on Ray workers, results as JSON lines; exit status 1 if any query failed."""
    from ..inference.core import EngineConfig

    try:
        from ..integrations.ray import run_ray_batch
    except ImportError as exc:
        raise ConfigError(str(exc)) from None

    input_path = Path(args.input)
    output_path = (
        Path(args.output) if args.output else input_path.with_name(f"{input_path.stem}_results.jsonl")
    )
    workers = 1 if args.num_workers is None else args.num_workers
    summary = run_ray_batch(
        input_path,
        output_path,
        args.checkpoint,
        num_workers=workers,
        address=args.ray_address,
        batch_size=args.batch_size,
        cpus_per_worker=1 if args.cpus_per_worker is None else args.cpus_per_worker,
        gpus_per_worker=0 if args.gpus_per_worker is None else args.gpus_per_worker,
        load_kwargs={
            "dtype": args.dtype,
            "device": args.device,
            "attn_implementation": args.attn_implementation,
            "cross_attention_implementation": args.cross_attention_implementation,
        },
        engine_config=EngineConfig(
            max_batch_size=args.batch_size, kv_cache_dtype=common.kv_cache_dtype_from_args(args)
        ),
        generate_kwargs=common.generate_kwargs_from_args(args),
        media_kwargs=common.media_kwargs_from_args(args),
        timeout_seconds=args.timeout_seconds,
        progress=not args.quiet,
    )
    print(
        f"mossvl run: {summary.total - summary.failed}/{summary.total} queries answered by {workers} Ray "
        f"worker(s) in {summary.elapsed_seconds:.1f} s -> {output_path}",
        file=sys.stderr,
    )
    return 1 if summary.failed else 0
