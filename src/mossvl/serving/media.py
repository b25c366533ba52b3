"""Media of chat requests: OpenAI content parts → engine messages, under the server's safety policy.

Sources: ``data:`` URIs and raw base64 always; ``file://`` (or plain) paths only inside the folder given with
``--allowed-local-media-path`` (the resolved path must stay inside it: no ``..`` or symlink escape; directories,
FIFOs, devices and symlink loops are refused by name); ``http(s)`` URLs only with ``--allow-remote-media``,
fetched by the processor's one fetch path (``processing.sources``) under the policy's timeout and byte cap. Bytes
that are videos go to a temporary file that lives as long as the request's ``MediaResolver``.

Video settings come from the part itself (``fps``, ``max_frames``, ``num_frames``; SGLang style), then the
request's ``media_io_kwargs`` (vLLM style, e.g. ``{"video": {"num_frames": 16}}``), then its
``mm_processor_kwargs``; a ``segments`` list on the part selects official video segments.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MediaError, MediaTooLargeError
from ..processing.limits import InputLimits
from ..processing.processor import canonical_media_kwargs
from ..processing.sources import fetch_bytes, local_file_error
from .protocol import APIError, bad_request

# Magic bytes of the formats a raw base64 payload may hold.
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM", b"\x1aE\xdf\xa3", b"II*\x00", b"MM\x00*")
_VIDEO_MAGIC_OFFSET = (4, b"ftyp")  # MP4 / MOV


@dataclass
class MediaPolicy:
    """What media a server accepts. Byte and frame caps apply per media item; ``fetch_timeout`` bounds connecting
    and each read of a remote fetch, ``fetch_deadline`` the whole download."""

    allowed_local_dir: Path | None = None
    allow_remote: bool = False
    max_media_bytes: int = 64 << 20
    fetch_timeout: float = 20.0
    fetch_deadline: float = 120.0
    max_frames: int = 256

    def fetch_limits(self) -> InputLimits:
        """The processor limits a remote fetch of this server runs under."""
        return InputLimits(
            max_media_bytes=self.max_media_bytes,
            fetch_timeout=self.fetch_timeout,
            fetch_deadline=self.fetch_deadline,
        )


class MediaResolver:
    """Turns one request's content parts into engine messages; ``close()`` removes its temporary files."""

    def __init__(self, policy: MediaPolicy):
        self.policy = policy
        self._folder = tempfile.TemporaryDirectory(prefix="mossvl-media-")
        self._count = 0
        self.part_settings: dict[str, Any] = {}

    def close(self) -> None:
        self._folder.cleanup()

    # ----- messages ----------------------------------------------------------------------------------------------

    def messages(self, raw: list) -> list[dict]:
        """Engine messages (typed items) from OpenAI ones; APIError(400/413) names the bad part."""
        out = []
        for i, message in enumerate(raw):
            where = f"messages[{i}]"
            if not isinstance(message, dict):
                raise bad_request(f"{where} must be an object", param=where)
            role = {"developer": "system"}.get(message.get("role"), message.get("role"))
            if role not in ("system", "user", "assistant"):
                raise bad_request(
                    f"{where}.role {message.get('role')!r} is not supported", param=f"{where}.role"
                )
            content = message.get("content")
            if isinstance(content, str) or content is None:
                items = [{"type": "text", "text": content or ""}]
            elif isinstance(content, list):
                items = [self._part(part, f"{where}.content[{j}]") for j, part in enumerate(content)]
            else:
                raise bad_request(
                    f"{where}.content must be a string or a list of parts", param=f"{where}.content"
                )
            out.append({"role": role, "content": items})
        return out

    def _part(self, part: Any, where: str) -> dict:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{where}.text must be a string", param=where)
            return {"type": "text", "text": part["text"]}
        if kind not in ("image_url", "video_url"):
            raise bad_request(
                f"{where}: content type {kind!r} is not supported (text, image_url, video_url)", param=where
            )
        spec = part.get(kind)
        spec = {"url": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or not isinstance(spec.get("url"), str) or not spec["url"]:
            raise bad_request(f"{where}.{kind}.url must be a non-empty string", param=f"{where}.{kind}")
        if kind == "image_url":
            return {"type": "image", "image": self.source(spec["url"], "image", where)}
        self._note_settings(spec, where)
        video: Any = self.source(spec["url"], "video", where)
        if spec.get("segments") is not None:
            video = {"video_path": video, "segments": spec["segments"]}
        return {"type": "video", "video": video}

    def _note_settings(self, spec: dict, where: str) -> None:
        settings = {}
        if spec.get("fps") is not None:
            settings["video_fps"] = spec["fps"]
        if spec.get("max_frames") is not None:
            settings["max_frames"] = spec["max_frames"]
        if spec.get("num_frames") is not None:
            settings["min_frames"] = settings["max_frames"] = spec["num_frames"]
        for key, value in settings.items():
            if self.part_settings.setdefault(key, value) != value:
                raise bad_request(f"{where}: video parts of one request must share '{key}'", param=where)

    # ----- sources -----------------------------------------------------------------------------------------------

    def source(self, url: str, kind: str, where: str) -> str:
        """A source the processor reads: a data URI (images), a temporary or allowed local file path."""
        if url.startswith("data:"):
            try:
                header, payload = url.split(",", 1)
                data = base64.b64decode(payload, validate=True) if ";base64" in header else payload.encode()
            except (ValueError, binascii.Error) as exc:
                raise bad_request(f"{where}: malformed data URI ({exc})", param=where) from None
            return self._bytes(data, kind, where)
        if url.startswith(("http://", "https://")):
            if not self.policy.allow_remote:
                raise bad_request(
                    f"{where}: remote media URLs are disabled on this server (start it with --allow-remote-media)",
                    param=where,
                )
            return self._bytes(self._fetch(url, where), kind, where)
        if url.startswith(("file://", "/")) or not _looks_like_base64(url):
            return self._local(url.removeprefix("file://"), where)
        try:
            data = base64.b64decode(url, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise bad_request(f"{where}: malformed base64 media ({exc})", param=where) from None
        return self._bytes(data, kind, where)

    def _bytes(self, data: bytes, kind: str, where: str) -> str:
        self._check_size(len(data), where)
        self._count += 1
        path = os.path.join(self._folder.name, f"{kind}{self._count}")
        Path(path).write_bytes(data)
        return path

    def _local(self, path: str, where: str) -> str:
        root = self.policy.allowed_local_dir
        if root is None:
            raise bad_request(
                f"{where}: local file paths are disabled on this server (start it with --allowed-local-media-path)",
                param=where,
            )
        try:
            resolved = Path(path).resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
            raise bad_request(f"{where}: cannot resolve the media path {path}: {exc}", param=where) from None
        if not resolved.is_relative_to(root.resolve()):
            raise bad_request(f"{where}: {path} is outside the allowed media folder", param=where)
        problem = local_file_error(str(resolved), "media")
        if problem is not None:
            raise bad_request(f"{where}: {problem}", param=where)
        self._check_size(resolved.stat().st_size, where)
        return str(resolved)

    def _fetch(self, url: str, where: str) -> bytes:
        try:
            return fetch_bytes(url, self.policy.fetch_limits(), "media")
        except MediaTooLargeError:
            raise self._too_large(where) from None
        except MediaError as exc:
            raise bad_request(f"{where}: {exc}", param=where) from None

    def _check_size(self, size: int, where: str) -> None:
        if size > self.policy.max_media_bytes:
            raise self._too_large(where)

    def _too_large(self, where: str) -> APIError:
        return APIError(
            413,
            f"{where}: media item larger than the server's limit of {self.policy.max_media_bytes} bytes "
            "(--max-media-bytes)",
            param=where,
            code="media_too_large",
        )

    # ----- settings ----------------------------------------------------------------------------------------------

    def media_kwargs(self, media_io_kwargs: dict, mm_processor_kwargs: dict) -> dict:
        """The request's media settings: parts > media_io_kwargs > mm_processor_kwargs; frames capped."""
        settings = dict(mm_processor_kwargs)
        if "fps" in settings:
            settings["video_fps"] = settings.pop("fps")
        if "num_frames" in settings:
            settings["min_frames"] = settings["max_frames"] = settings.pop("num_frames")
        video_io = media_io_kwargs.get("video") or {}
        if not isinstance(video_io, dict):
            raise bad_request("'media_io_kwargs.video' must be an object", param="media_io_kwargs")
        if video_io.get("num_frames") is not None:
            settings["min_frames"] = settings["max_frames"] = video_io["num_frames"]
        if video_io.get("fps") is not None:
            settings["video_fps"] = video_io["fps"]
        settings.update(self.part_settings)
        try:
            settings = canonical_media_kwargs(settings)
        except ValueError as exc:
            raise bad_request(str(exc), param="mm_processor_kwargs") from None
        cap = self.policy.max_frames
        for key in ("max_frames", "min_frames"):
            value = settings.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value > cap):
                raise bad_request(
                    f"{key}={value!r} exceeds the server's frame limit {cap} (--max-frames)", param=key
                )
        settings.setdefault("max_frames", cap)
        return settings


def _looks_like_base64(text: str) -> bool:
    """True for a string whose first characters are base64 of a known image or video container."""
    head = text[:64]
    try:
        start = base64.b64decode(head[: len(head) // 4 * 4], validate=True)
    except (binascii.Error, ValueError):
        return False
    offset, tag = _VIDEO_MAGIC_OFFSET
    return start.startswith(_MAGIC) or start[offset : offset + len(tag)] == tag
