"""`mossvl serve`: the OpenAI-compatible HTTP server (FastAPI + uvicorn) for a checkpoint; the demo model by default.

Binds 127.0.0.1:8000 unless told otherwise. Local media files are refused unless ``--allowed-local-media-path``
names the folder they must be in; remote URLs unless ``--allow-remote-media``. SIGINT / SIGTERM stop accepting
requests, let the running ones finish (up to ``--shutdown-grace`` seconds), then cancel the rest.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    group.add_argument("--port", type=int, default=8000)
    group.add_argument(
        "--served-model-name", default=None, help="model id clients send (default: folder name)"
    )
    group.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 endpoints")
    group.add_argument(
        "--max-concurrency", type=int, default=16, help="requests generated together (default 16)"
    )
    group.add_argument("--max-queue", type=int, default=256, help="waiting requests before 503 (default 256)")
    group.add_argument(
        "--kv-cache-mb", type=int, default=None, help="KV memory limit (default: 1/4 RAM or 1/2 GPU)"
    )
    common.add_kv_cache_argument(group)
    group.add_argument(
        "--shutdown-grace", type=float, default=30.0, help="seconds to finish running requests"
    )
    limits = parser.add_argument_group("media limits and safety")
    limits.add_argument(
        "--allowed-local-media-path",
        type=Path,
        default=None,
        help="folder whose files requests may name (file:// or plain paths); default: no local files",
    )
    limits.add_argument("--allow-remote-media", action="store_true", help="fetch http(s) media URLs")
    limits.add_argument(
        "--max-media-bytes", type=int, default=64 << 20, help="per media item (default 64 MiB)"
    )
    limits.add_argument(
        "--max-request-bytes", type=int, default=100 << 20, help="request body (default 100 MiB)"
    )
    limits.add_argument("--max-frames", type=int, default=256, help="video frames per request (default 256)")
    limits.add_argument("--fetch-timeout", type=float, default=20.0, help="remote media fetch timeout (s)")
    realtime = parser.add_argument_group("realtime (WS /v1/video/realtime and /v1/realtime)")
    realtime.add_argument("--max-sessions", type=int, default=4, help="live realtime sessions (default 4)")
    realtime.add_argument("--max-frame-bytes", type=int, default=20 << 20, help="per frame (default 20 MiB)")
    realtime.add_argument(
        "--visual-window",
        type=float,
        default=60.0,
        help="seconds of frames kept in a session's vision memory",
    )
    common.add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..inference.api import demo_model_dir
    from ..inference.core import EngineConfig
    from ..inference.engine import Engine
    from ..serving.app import ServerConfig, create_app
    from ..serving.media import MediaPolicy
    from ..serving.realtime_ws import RealtimeServiceConfig

    if args.allowed_local_media_path is not None and not args.allowed_local_media_path.is_dir():
        raise SystemExit(
            f"mossvl serve: --allowed-local-media-path {args.allowed_local_media_path} is not a folder"
        )
    model, processor = common.load_from_args(args)
    kv_bytes = args.kv_cache_mb << 20 if args.kv_cache_mb else None
    engine_config = EngineConfig(
        max_batch_size=args.max_concurrency,
        max_waiting=args.max_queue,
        kv_cache_bytes=kv_bytes,
        kv_cache_dtype=common.kv_cache_dtype_from_args(args),
    )
    engine = Engine(model, processor, engine_config)
    name = args.served_model_name or Path(args.checkpoint or demo_model_dir()).name
    config = ServerConfig(
        model_name=name,
        api_key=args.api_key,
        max_request_bytes=args.max_request_bytes,
        shutdown_grace_seconds=args.shutdown_grace,
        media=MediaPolicy(
            allowed_local_dir=args.allowed_local_media_path,
            allow_remote=args.allow_remote_media,
            max_media_bytes=args.max_media_bytes,
            fetch_timeout=args.fetch_timeout,
            max_frames=args.max_frames,
        ),
        realtime=RealtimeServiceConfig(
            max_sessions=args.max_sessions,
            max_frame_bytes=args.max_frame_bytes,
            visual_window=args.visual_window,
            allowed_local_dir=args.allowed_local_media_path,
        ),
    )
    print(f"mossvl serve: model '{name}' on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(create_app(engine, config), host=args.host, port=args.port, log_level="info")
    return 0
