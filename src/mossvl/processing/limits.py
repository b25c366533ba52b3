"""Resource limits of input processing, in one place: prompt size, media size before decoding, pixels after
resizing, memory, decoder threads and remote fetches; and the checks of per-call media settings against them.

Every limit is checked before the work it bounds (a header is read before pixels are decoded, a size is planned
before it is allocated), and a refusal names the limit and how to change it. The processor holds one
``InputLimits``; change it with ``MossVLProcessor(limits=...)``, ``from_pretrained(path, limits=...)`` or by
assigning ``processor.limits``.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from mossvl import constants as C
from mossvl.errors import ConfigError, MediaError, QueryError

# Bytes a resized pixel costs until the vision encoder takes it: 3 uint8 channels, then 3 float32 ones.
BYTES_PER_PLANNED_PIXEL = 3 + 3 * 4
# Bytes a decoded source pixel costs (RGB uint8).
BYTES_PER_SOURCE_PIXEL = 3


@dataclass(frozen=True)
class InputLimits:
    """Upper bounds on what one processor call may read, decode and allocate (defaults in parentheses).

    Prompts: ``max_prompt_chars`` (1 Mi characters, checked before tokenizing) and ``max_prompt_tokens`` (32768
    tokens of one prompt after placeholder expansion; the engine also checks the model's context).
    Images: ``max_image_pixels`` (89,478,485 = PIL's own bomb-warning size) of a source image, read from its
    header before decoding. Videos, from the container before decoding: ``max_video_frame_pixels`` (8192²),
    ``max_video_seconds`` (4 h) and ``max_video_frames`` (1,000,000 indexed frames); ``allow_truncated_videos``
    (True: a truncated file is used as far as it goes, with a MediaWarning; False: refused).
    Per-call settings: ``max_pixels_per_frame`` (8192² after resizing; bounds min_pixels / max_pixels),
    ``max_total_pixels`` (2 × 201,326,592 resized pixels of all media of one call; bounds the pixel budgets),
    ``max_frames`` (4096 sampled frames), ``max_video_fps`` (120), ``max_extract_threads`` (32) and
    ``max_memory_share`` (0.5: the planned pixels of one call may take at most this share of the memory still
    available). Remote media (http / https): ``max_media_bytes`` (256 MiB downloaded), ``fetch_timeout`` (20 s to
    connect and for each read) and ``fetch_deadline`` (300 s for a whole download).
    """

    max_prompt_chars: int = 1 << 20
    max_prompt_tokens: int = 32768
    max_image_pixels: int = 89_478_485
    max_video_frame_pixels: int = 8192 * 8192
    max_video_seconds: float = 4 * 3600.0
    max_video_frames: int = 1_000_000
    allow_truncated_videos: bool = True
    max_pixels_per_frame: int = 8192 * 8192
    max_total_pixels: int = 2 * C.VIDEO_MAX_PIXELS
    max_frames: int = 4096
    max_video_fps: float = 120.0
    max_extract_threads: int = 32
    max_memory_share: float = 0.5
    max_media_bytes: int = 256 << 20
    fetch_timeout: float = 20.0
    fetch_deadline: float = 300.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "allow_truncated_videos":
                ok, expected = isinstance(value, bool), "a bool"
            elif item.name == "max_memory_share":
                ok, expected = _is_real(value) and 0 < value <= 1, "a number in (0, 1]"
            else:
                ok, expected = _is_real(value) and value > 0, "a positive number"
            if not ok:
                raise ConfigError(f"InputLimits.{item.name}={value!r} is invalid: expected {expected}")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _integer(name: str, value: Any, low: int, high: int, bound: str) -> int:
    if _is_real(value) and float(value).is_integer() and low <= value <= high:
        return int(value)
    raise QueryError(
        f"media setting {name}={value!r} is invalid: expected an integer in [{low}, {high}]{bound}"
    )


def check_media_settings(settings: Mapping[str, Any], limits: InputLimits) -> dict[str, Any]:
    """The media settings of one call (canonical names; None where a budget is off) checked against ``limits``
    and converted to ints / floats; QueryError names the first bad setting and its allowed range."""
    out = dict(settings)
    per_frame = f" (the upper bound is InputLimits.max_pixels_per_frame = {limits.max_pixels_per_frame})"
    total = f" (the upper bound is InputLimits.max_total_pixels = {limits.max_total_pixels})"
    frames = f" (the upper bound is InputLimits.max_frames = {limits.max_frames})"
    if "min_pixels" in out:
        out["min_pixels"] = _integer(
            "min_pixels", out["min_pixels"], 1, limits.max_pixels_per_frame, per_frame
        )
    if "max_pixels" in out:
        low = out.get("min_pixels", 1)
        out["max_pixels"] = _integer(
            "max_pixels", out["max_pixels"], low, limits.max_pixels_per_frame, per_frame
        )
    for name in ("multi_image_max_pixels", "video_max_pixels"):
        if out.get(name) is not None:
            out[name] = _integer(name, out[name], 1, limits.max_total_pixels, total)
    if "video_fps" in out:
        fps = out["video_fps"]
        if not (_is_real(fps) and 0 < fps <= limits.max_video_fps):
            raise QueryError(
                f"media setting video_fps={fps!r} is invalid: expected a number in (0, {limits.max_video_fps:g}] "
                "(the upper bound is InputLimits.max_video_fps)"
            )
        out["video_fps"] = float(fps)
    if "min_frames" in out:
        out["min_frames"] = _integer("min_frames", out["min_frames"], 1, limits.max_frames, frames)
    if "max_frames" in out:
        low = out.get("min_frames", 1)
        out["max_frames"] = _integer("max_frames", out["max_frames"], low, limits.max_frames, frames)
    if "num_extract_threads" in out:
        out["num_extract_threads"] = _integer(
            "num_extract_threads",
            out["num_extract_threads"],
            1,
            limits.max_extract_threads,
            f" (the upper bound is InputLimits.max_extract_threads = {limits.max_extract_threads})",
        )
    return out


def check_prompt_chars(text: str, limits: InputLimits, name: str = "the prompt") -> None:
    """Refuse a prompt over ``max_prompt_chars`` (before any tokenizing) or one that is not valid Unicode text."""
    if len(text) > limits.max_prompt_chars:
        raise QueryError(
            f"{name} has {len(text)} characters; the limit is {limits.max_prompt_chars} "
            "(InputLimits.max_prompt_chars)"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise QueryError(
            f"{name} is not valid UTF-8 text: character U+{ord(bad):04X} at position {exc.start} "
            "(a lone surrogate, e.g. from undecodable bytes); decode the input properly first"
        ) from None


def check_prompt_tokens(num_tokens: int, limits: InputLimits, name: str = "the prompt") -> None:
    if num_tokens > limits.max_prompt_tokens:
        raise QueryError(
            f"{name} has {num_tokens} tokens; the limit is {limits.max_prompt_tokens} "
            "(InputLimits.max_prompt_tokens): shorten it or send fewer frames"
        )


def check_planned_pixels(
    resized_pixels: int, source_pixels: int, limits: InputLimits, what: str = "the media of this call"
) -> None:
    """Refuse a call whose media would exceed ``max_total_pixels`` after resizing, or take more than
    ``max_memory_share`` of the memory still available, before any of it is decoded or allocated."""
    if resized_pixels > limits.max_total_pixels:
        raise MediaError(
            f"{what} would take {resized_pixels} pixels after resizing; the limit is {limits.max_total_pixels} "
            "(InputLimits.max_total_pixels): lower max_pixels / the pixel budgets or send fewer frames"
        )
    needed = resized_pixels * BYTES_PER_PLANNED_PIXEL + source_pixels * BYTES_PER_SOURCE_PIXEL
    available = available_memory()
    if available is not None and needed > limits.max_memory_share * available:
        raise MediaError(
            f"{what} would need {needed / 2**30:.2f} GiB for pixels but only {available / 2**30:.2f} GiB of memory "
            f"is available (InputLimits.max_memory_share = {limits.max_memory_share:g} of it may be used): "
            "lower max_pixels / the pixel budgets or send fewer frames"
        )


def available_memory() -> int | None:
    """Bytes this process may still allocate: the system's MemAvailable, or less under an address-space limit
    (RLIMIT_AS); None where neither is known."""
    candidates = []
    meminfo = _read_kib_fields("/proc/meminfo", ("MemAvailable",))
    if "MemAvailable" in meminfo:
        candidates.append(meminfo["MemAvailable"])
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        limited = soft != resource.RLIM_INFINITY
    except (ImportError, OSError, ValueError):  # no resource module (Windows) or no such limit
        limited = False
    if limited:
        used = _read_kib_fields("/proc/self/status", ("VmSize",)).get("VmSize", 0)
        candidates.append(max(soft - used, 0))
    return min(candidates) if candidates else None


def _read_kib_fields(path: str, names: tuple[str, ...]) -> dict[str, int]:
    """``name: N kB`` lines of a /proc file, in bytes; {} where the file does not exist (not Linux)."""
    if not os.path.exists(path):
        return {}
    out = {}
    with open(path, encoding="ascii", errors="replace") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in names:
                out[name] = int(rest.split()[0]) * 1024
    return out
