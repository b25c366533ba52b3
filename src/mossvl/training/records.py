"""Training records: a lazy byte-offset index of a JSON list or JSONL file, and reading one record.

Records are normalised into conversations by ``mossvl.processing.conversation.conversation_from_record``, the
normaliser that inference queries go through too.
"""

from __future__ import annotations

import json
import mmap
import os
import re
from pathlib import Path

import numpy as np

from ..errors import QueryError

# Strings and the structural characters of a JSON text; strings are matched whole so brackets inside them are skipped.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},]', re.DOTALL)


def index_records(path: str | os.PathLike) -> np.ndarray:
    """Byte spans (N, 2) of the records of a JSON list or JSONL file, found without parsing the records.

    The format is told by the first non-blank byte: ``[`` is a JSON list, anything else is JSONL.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise QueryError(f"data file {path} is empty")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start = 0
        while start < len(data) and data[start : start + 1].isspace():
            start += 1
        is_list = data[start : start + 1] == b"["
        spans = _index_json_list(data, start, path) if is_list else _index_jsonl(data)
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2)


def _index_jsonl(data: mmap.mmap) -> list[tuple[int, int]]:
    spans, start = [], 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        if data[start:end].strip():
            spans.append((start, end))
        start = end + 1
    return spans


def _index_json_list(data: mmap.mmap, start: int, path: Path) -> list[tuple[int, int]]:
    spans, depth, element_start = [], 0, start + 1
    for match in _JSON_TOKEN.finditer(data, start):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
        elif token in (b"]", b"}"):
            depth -= 1
            if depth == 0:
                if data[element_start : match.start()].strip():
                    spans.append((element_start, match.start()))
                return spans
        elif token == b"," and depth == 1:
            spans.append((element_start, match.start()))
            element_start = match.end()
    raise QueryError(f"data file {path}: the JSON list is not closed (truncated file?)")


def read_record(path: str | os.PathLike, span: tuple[int, int], index: int) -> dict:
    """Parse the record at byte ``span`` of ``path``; ``index`` only names it in errors."""
    with open(path, "rb") as f:
        f.seek(int(span[0]))
        raw = f.read(int(span[1]) - int(span[0]))
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QueryError(f"record {index}: invalid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise QueryError(f"record {index}: expected a JSON object, got {type(record).__name__}")
    return record
