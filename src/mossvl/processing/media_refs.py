"""Media references of queries and training records: paths resolved against a base folder, video references
validated and split into media units, and the rule that pairs `<|video|>` placeholders with those units.

A video reference is a path / URL or ``{"video_path": ..., "segments": [[start, end] | [time], ...]}``; a video
with k segments is k media units. Errors name the offending field (``field 'videos[0]' ...``); callers say where
that field is.
"""

from pathlib import Path
from typing import Any

from mossvl.errors import QueryError
from mossvl.processing.video import parse_segments, split_segments

# Sources that are not local files: they are fetched or decoded by the loaders, never joined to a folder.
URL_PREFIXES = ("http://", "https://", "rtsp://", "data:")


def is_url(source: Any) -> bool:
    return isinstance(source, str) and source.startswith(URL_PREFIXES)


def resolve_media_path(source: Any, base_dir: str | Path | None) -> Any:
    """A relative media path joined to `base_dir` (``file://`` dropped, ``~`` expanded), as a string.

    URLs, data: URIs, in-memory media (PIL images, arrays) and every source when `base_dir` is None come back
    unchanged.
    """
    if base_dir is None or not isinstance(source, str | Path) or is_url(str(source)):
        return source
    path = Path(str(source).removeprefix("file://")).expanduser()
    return str(path if path.is_absolute() else Path(base_dir) / path)


def media_path(value: Any, base_dir: str | Path | None, field: str) -> Any:
    """`resolve_media_path` of a value that must be a path or URL (a non-empty string or a Path)."""
    if not isinstance(value, str | Path) or not str(value):
        raise QueryError(f"field '{field}' must be a non-empty path string, got {value!r:.100}")
    return resolve_media_path(value, base_dir)


def video_units(video: Any, base_dir: str | Path | None, field: str) -> list[Any]:
    """A video reference → its media units with the path resolved: a path is one unit; a dict is one dict per
    segment (segments validated here), or itself when it has none (``"segments": null`` counts as none)."""
    if isinstance(video, str | Path):
        return [media_path(video, base_dir, field)]
    if not isinstance(video, dict):
        raise QueryError(
            f"field '{field}': unsupported video source of type {type(video).__name__}; "
            "use a path, a URL or a {video_path, segments} dict"
        )
    if "video_path" not in video:
        raise QueryError(f"field '{field}' is a dict without 'video_path' (keys: {sorted(video)})")
    whole = {key: value for key, value in video.items() if key != "segments"}
    whole["video_path"] = media_path(video["video_path"], base_dir, f"{field}.video_path")
    if video.get("segments") is None:
        return [whole]
    try:
        segments = parse_segments(video["segments"], str(whole["video_path"]))
    except QueryError as exc:
        raise QueryError(f"field '{field}.segments': {exc}") from exc
    return split_segments(whole, segments)


def units_per_placeholder(num_placeholders: int, units_per_video: list[int]) -> list[int] | None:
    """How many media units each `<|video|>` placeholder stands for, in order, or None when the counts fit no rule.

    One placeholder per unit (segments counted one each), or, the reference rule, one placeholder per raw video
    that repeats once per segment of it.
    """
    if num_placeholders == sum(units_per_video):
        return [1] * num_placeholders
    if num_placeholders == len(units_per_video):
        return list(units_per_video)
    return None
