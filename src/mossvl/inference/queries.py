"""Query files: read a JSON list / JSONL file of queries (media paths are resolved later, against its folder)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import QueryError


def load_query_file(path: str | Path) -> list[dict]:
    """Queries of a ``.json`` file (a list, or an object with a ``queries`` list) or a ``.jsonl`` file (one per line)."""
    path = Path(path)
    if not path.is_file():
        raise QueryError(f"query file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        queries = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    queries.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise QueryError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QueryError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        queries = data.get("queries") if isinstance(data, dict) else data
        if not isinstance(queries, list):
            raise QueryError(f"{path}: expected a JSON list of queries (or an object with a 'queries' list)")
    for index, query in enumerate(queries):
        if not isinstance(query, dict):
            raise QueryError(f"{path}: query {index} is a {type(query).__name__}, expected an object")
    return queries
