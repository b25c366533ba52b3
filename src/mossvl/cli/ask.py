"""`mossvl ask MEDIA... "question"`: answer one question about images and videos, streaming to the terminal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..constants import IMAGE_MEDIA_DEFAULTS, IMAGE_PLACEHOLDER, VIDEO_MEDIA_DEFAULTS, VIDEO_PLACEHOLDER
from ..errors import MediaError, QueryError
from . import common

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_EXTENSIONS = {
    ".mp4",
    ".mov",
    ".avi",
    ".mkv",
    ".webm",
    ".m4v",
    ".flv",
    ".wmv",
    ".mpeg",
    ".mpg",
    ".ts",
    ".3gp",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [options] [MEDIA ...] QUESTION"
    parser.add_argument(
        "items",
        nargs="+",
        metavar="MEDIA/QUESTION",
        help="image/video files or URLs (kind from the extension), then the question",
    )
    parser.add_argument("--system-prompt", default=None, help="optional system message")
    parser.add_argument("--no-stream", action="store_true", help="print the answer only when it is complete")
    common.add_model_arguments(parser)
    common.add_generation_arguments(parser)
    common.add_media_arguments(parser)


def media_kind(source: str) -> str:
    """'image' or 'video' from a file name or URL extension; QueryError when it cannot tell."""
    suffix = Path(source.split("?", 1)[0]).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    raise QueryError(
        f"cannot tell whether {source!r} is an image or a video from its extension; use one of "
        f"{sorted(IMAGE_EXTENSIONS)} or {sorted(VIDEO_EXTENSIONS)}"
    )


def build_query(items: list[str], system_prompt: str | None = None, media_kwargs: dict | None = None) -> dict:
    """A prompt-style query from `MEDIA... QUESTION` (media first, in the order given)."""
    *media, question = items
    if not question.strip():
        raise QueryError("the question is empty")
    kinds = [media_kind(source) for source in media]
    for source, kind in zip(media, kinds, strict=True):
        if not source.startswith(("http://", "https://")) and not Path(source).is_file():
            raise MediaError(f"{kind} file not found: {source}")
    images = [source for source, kind in zip(media, kinds, strict=True) if kind == "image"]
    videos = [source for source, kind in zip(media, kinds, strict=True) if kind == "video"]
    placeholders = {"image": IMAGE_PLACEHOLDER, "video": VIDEO_PLACEHOLDER}
    content = "".join(placeholders[kind] for kind in kinds) + question
    defaults = {**(IMAGE_MEDIA_DEFAULTS if images else {}), **(VIDEO_MEDIA_DEFAULTS if videos else {})}
    query = {
        "messages": [{"role": "user", "content": content}],
        "images": images,
        "videos": videos,
        "media_kwargs": {**defaults, **(media_kwargs or {})},
    }
    if system_prompt:
        query["system_prompt"] = system_prompt
    return query


def run(args: argparse.Namespace) -> int:
    from ..inference.engine import engine_for

    query = build_query(args.items, args.system_prompt, common.media_kwargs_from_args(args))
    model, processor = common.load_from_args(args)
    handle = engine_for(model, processor).submit(query, common.generate_kwargs_from_args(args))
    for event in handle.events():
        if event.delta and not args.no_stream:
            sys.stdout.write(event.delta)
            sys.stdout.flush()
        if event.result is not None:
            event.result.raise_for_error()
            if args.no_stream:
                sys.stdout.write(event.result.text)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0
