"""Where media bytes come from: local paths checked for what they are before anything opens them, and remote
http(s) media fetched under ``InputLimits`` (connect / read timeout, whole-download deadline, byte cap).

This is the one fetch path of images and videos: an image URL is read into memory, a video URL into a temporary
file that lives as long as the ``DownloadedFile`` naming it (the planned media's loader holds it).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import stat
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from mossvl.errors import MediaError, MediaTooLargeError
from mossvl.processing.limits import InputLimits

HTTP_PREFIXES = ("http://", "https://")
_CHUNK = 1 << 16
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def local_file_error(path: str, kind: str = "") -> str | None:
    """Why ``path`` cannot be read as a media file, as a message starting with ``kind`` ("image", "video"), or None
    for a non-empty readable regular file. Nothing is opened: a FIFO or a device could block a reader forever."""
    lead = f"{kind} " if kind else ""
    try:
        info = os.stat(path)
    except ValueError:  # os.stat refuses paths with NUL characters this way
        return f"{lead}path {path!r} contains a NUL character"
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            return f"{lead}file not found: {path} is a symlink to a missing target"
        return f"{lead}file not found: {path}"
    except PermissionError:
        return f"{lead}file {path} is not accessible (permission denied)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{lead}path {path} is a symlink loop"
        return f"{lead}file {path} cannot be read: {exc.strerror or exc}"
    for is_kind, what in _FILE_KINDS:
        if is_kind(info.st_mode):
            return f"{lead}path {path} is {what}, not a regular file"
    if not stat.S_ISREG(info.st_mode):
        return f"{lead}path {path} is not a regular file"
    if info.st_size == 0:
        return f"{lead}file is empty (0 bytes): {path}"
    if not os.access(path, os.R_OK):
        return f"{lead}file {path} is not readable (permission denied)"
    return None


def local_media_file(path: str, kind: str) -> str:
    """``path`` when it is a readable, non-empty regular file, else MediaError saying what it is."""
    problem = local_file_error(path, kind)
    if problem is not None:
        raise MediaError(problem)
    return path


def fetch_bytes(url: str, limits: InputLimits, kind: str) -> bytes:
    """The body of an http(s) URL, read under the limits' timeouts and byte cap (MediaError names the problem)."""
    chunks: list[bytes] = []
    _download(url, limits, kind, chunks.append)
    return b"".join(chunks)


class DownloadedFile:
    """An http(s) URL downloaded (under the limits) to a temporary file; the file is removed when this object is
    garbage collected, or at exit."""

    def __init__(self, url: str, limits: InputLimits, kind: str):
        suffix = PurePosixPath(urlsplit(url).path).suffix[:16]
        handle, self.path = tempfile.mkstemp(prefix=f"mossvl-{kind}-", suffix=suffix)
        self._remove = weakref.finalize(self, _remove_file, self.path)
        try:
            with os.fdopen(handle, "wb") as sink:
                _download(url, limits, kind, sink.write)
        except BaseException:
            self._remove()
            raise


def _remove_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _download(url: str, limits: InputLimits, kind: str, write: Callable[[bytes], object]) -> None:
    """Stream ``url`` into ``write``; MediaError on a bad URL, an HTTP error, silence
    longer than ``fetch_timeout``, a download longer than ``fetch_deadline`` or more than ``max_media_bytes``."""
    if not url.startswith(HTTP_PREFIXES):
        raise MediaError(f"cannot fetch {kind} {url:.200}: only http:// and https:// URLs are fetched")
    deadline = time.monotonic() + limits.fetch_deadline
    where = f"{kind} {url:.200}"
    try:
        response = urllib.request.urlopen(url, timeout=limits.fetch_timeout)
    except urllib.error.HTTPError as exc:
        raise MediaError(f"cannot fetch {where}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise MediaError(f"cannot fetch {where}: {_reason(exc.reason, limits)}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise MediaError(f"cannot fetch {where}: {_reason(exc, limits)}") from None
    size = 0
    with response:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limits.max_media_bytes:
            raise MediaTooLargeError(_too_large(where, int(declared), limits))
        while True:
            if time.monotonic() > deadline:
                raise MediaError(
                    f"cannot fetch {where}: the download took longer than {limits.fetch_deadline:g} s "
                    f"(InputLimits.fetch_deadline) after {size} bytes"
                )
            try:
                chunk = response.read1(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise MediaError(f"cannot fetch {where}: {_reason(exc, limits)} after {size} bytes") from None
            if not chunk:
                return
            size += len(chunk)
            if size > limits.max_media_bytes:
                raise MediaTooLargeError(_too_large(where, size, limits))
            write(chunk)


def _reason(exc: object, limits: InputLimits) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {limits.fetch_timeout:g} s (InputLimits.fetch_timeout)"
    return f"{type(exc).__name__}: {exc}"


def _too_large(where: str, size: int, limits: InputLimits) -> str:
    return (
        f"cannot fetch {where}: it is larger than {limits.max_media_bytes} bytes ({size} bytes seen; "
        "InputLimits.max_media_bytes)"
    )
