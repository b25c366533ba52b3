"""Batch inference with Ray Data: a query file → a Ray dataset → one engine per worker → a JSONL results file.

The driver reads the query file (``.jsonl``, ``.json`` or ``.parquet``, both official query formats) into rows of
``index`` and ``query`` (the query as JSON text): queries are small, and their media stay files that the workers
open. ``predict`` maps the rows through ``QueryPredictor`` on a fixed pool of Ray actors. Each actor loads the model
once and owns one ``Engine``; it submits every batch of rows to that engine and collects the results, with two
batches in flight so that the engine's continuous batching refills its running batch from the next one instead of
draining. A query that fails (a line that is not a JSON object, missing media, bad settings, a timeout) becomes a
result row with ``error`` set; no query can fail the job.

Every worker must see a local checkpoint and the media at the same paths (a shared file system, or URLs, on a
cluster). A result equals ``mossvl.chat`` of the same query with the same kwargs.

    from mossvl.integrations.ray import run_ray_batch
    summary = run_ray_batch("queries.jsonl", "results.jsonl", "path/to/checkpoint", num_workers=2)
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    import ray.data
except ImportError as exc:  # the optional extra is missing
    raise ImportError(
        f"mossvl.integrations.ray needs Ray Data ({exc}); install it with: pip install 'mossvl[ray]'"
    ) from exc

from ..errors import CheckpointError, ConfigError, QueryError
from ..inference.core import EngineConfig
from ..inference.handle import RequestHandle
from ..inference.queries import load_query_file
from ..inference.request import Result

QUERY_SUFFIXES = (".jsonl", ".json", ".parquet")
# Ray batches that run at once on one actor: while one is collected, the next one's queries wait in the engine.
CALLS_PER_WORKER = 2
# Longest wait for all workers to start and load their model (a hub download included).
ACTOR_START_TIMEOUT_SECONDS = 1800
# Object store of a local Ray: it only holds query and result rows (media never enter it).
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20

RESULT_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("query", pa.string()),
        ("text", pa.string()),
        ("finish_reason", pa.string()),
        ("error", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("vision_tokens", pa.int64()),
        ("seconds", pa.float64()),
        ("worker", pa.string()),
    ]
)


# ----- reading queries (driver) ------------------------------------------------------------------------------


def read_query_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The queries of a file as rows ``{"index", "query", "error"}``: ``query`` is the query as JSON text, or None
    with ``error`` saying why that line or row is not a query.

    ``.jsonl``: one query per non-blank line. ``.json``: a list of queries (or ``{"queries": [...]}``), read as
    ``mossvl run`` reads it (an entry that is not an object fails the file).
    ``.parquet``: either a string column ``query`` holding JSON queries, or one query per row whose columns are the
    query's fields (``prompt``, ``images``, ``messages``, ...; null fields are left out). A missing or unreadable
    file raises QueryError; a bad line or row is only that query's error.
    """
    path = Path(path)
    if not path.is_file():
        raise QueryError(f"query file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_rows(path)
    if suffix == ".json":
        return [
            _query_row(index, query, f"query {index}") for index, query in enumerate(load_query_file(path))
        ]
    if suffix == ".parquet":
        return _parquet_rows(path)
    raise QueryError(f"{path}: unknown query file type {suffix!r}; use one of {', '.join(QUERY_SUFFIXES)}")


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise QueryError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            rows.append(_json_row(len(rows), line, f"line {number}"))
    return rows


def _parquet_rows(path: Path) -> list[dict[str, Any]]:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise QueryError(f"{path}: not a readable Parquet file ({exc})") from None
    if "query" in table.column_names and pa.types.is_string(table.schema.field("query").type):
        texts = table.column("query").to_pylist()
        return [_json_row(index, text, f"row {index}") for index, text in enumerate(texts)]
    return [
        _query_row(index, _drop_nulls(row), f"row {index}") for index, row in enumerate(table.to_pylist())
    ]


def _json_row(index: int, text: str | None, where: str) -> dict[str, Any]:
    if text is None:
        return _error_row(index, f"{where} is empty")
    try:
        query = json.loads(text)
    except json.JSONDecodeError as exc:
        return _error_row(index, f"{where} is not valid JSON ({exc.msg} at column {exc.colno})")
    return _query_row(index, query, where)


def _query_row(index: int, query: Any, where: str) -> dict[str, Any]:
    if not isinstance(query, dict):
        return _error_row(index, f"{where} is a {type(query).__name__}, expected a JSON object")
    try:
        text = json.dumps(query, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        return _error_row(index, f"{where} cannot be written as JSON ({exc})")
    return {"index": index, "query": text, "error": None}


def _error_row(index: int, error: str) -> dict[str, Any]:
    return {"index": index, "query": None, "error": error}


def _drop_nulls(value: Any) -> Any:
    """A Parquet row without the null fields that Arrow adds to give every row and struct the same columns."""
    if isinstance(value, dict):
        return {key: _drop_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_drop_nulls(item) for item in value]
    return value


def read_queries(path: str | os.PathLike, rows_per_block: int = 8) -> ray.data.Dataset:
    """A Ray dataset of the file's query rows (see ``read_query_rows``), in blocks of ``rows_per_block`` rows, so
    that a pool of workers shares even a short file."""
    return _dataset(read_query_rows(path), rows_per_block)


def _dataset(rows: list[dict[str, Any]], rows_per_block: int) -> ray.data.Dataset:
    return ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / rows_per_block)))


# ----- the predictor (workers) -------------------------------------------------------------------------------


class QueryPredictor:
    """The ``map_batches`` class: loads the model once per Ray worker and answers batches of query rows (Arrow
    tables with ``index``, ``query``, ``error``) with its engine, one result row per query (``RESULT_SCHEMA``).

    ``load_kwargs`` go to ``mossvl.load`` (dtype, device, attn_implementation, ...); ``generate_kwargs`` and
    ``media_kwargs`` are defaults under each query's own; relative media paths resolve against ``base_dir``.
    ``timeout_seconds`` (None: no limit) cancels a query that runs longer, counted from its submission.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        base_dir: str | None = None,
        load_kwargs: dict[str, Any] | None = None,
        engine_config: EngineConfig | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        media_kwargs: dict[str, Any] | None = None,
        timeout_seconds: float | None = None,
    ):
        from ..inference.api import load
        from ..inference.engine import Engine

        model, processor = load(checkpoint, **(load_kwargs or {}))
        self.engine = Engine(model, processor, engine_config, generate_kwargs)
        self.base_dir = base_dir
        self.media_kwargs = media_kwargs
        self.timeout_seconds = timeout_seconds
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        submitted = [(self._submit(row), time.monotonic()) for row in rows]
        records = []
        for row, (handle, start) in zip(rows, submitted, strict=True):
            result = self._collect(handle, start)
            finished = result.finish_time or time.monotonic()
            records.append(
                {
                    "index": row["index"],
                    "query": row["query"],
                    "text": result.text,
                    "finish_reason": result.finish_reason,
                    "error": result.error,
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "vision_tokens": result.vision_tokens,
                    "seconds": round(finished - start, 3),
                    "worker": self.worker,
                }
            )
        return pa.Table.from_pylist(records, schema=RESULT_SCHEMA)

    def _submit(self, row: dict[str, Any]) -> RequestHandle:
        if row["query"] is None:
            return RequestHandle.failed(QueryError(row["error"]))
        try:
            return self.engine.submit(
                json.loads(row["query"]), media_kwargs=self.media_kwargs, base_dir=self.base_dir
            )
        except Exception as exc:  # noqa: BLE001 - e.g. a full queue (max_waiting): it stays this query's error
            return RequestHandle.failed(exc)

    def _collect(self, handle: RequestHandle, start: float) -> Result:
        if self.timeout_seconds is None:
            return handle.result()
        try:
            return handle.result(max(0.0, start + self.timeout_seconds - time.monotonic()))
        except TimeoutError:
            handle.cancel()
        result = handle.result()
        if result.error is None:
            result.error = f"timed out after {self.timeout_seconds:g} s"
        return result


def predict(
    dataset: ray.data.Dataset,
    checkpoint: str | os.PathLike | None = None,
    *,
    base_dir: str | os.PathLike | None = None,
    num_workers: int = 1,
    batch_size: int = 8,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    load_kwargs: dict[str, Any] | None = None,
    engine_config: EngineConfig | None = None,
    generate_kwargs: dict[str, Any] | None = None,
    media_kwargs: dict[str, Any] | None = None,
    timeout_seconds: float | None = None,
) -> ray.data.Dataset:
    """The dataset of query rows (``read_queries``) mapped to result rows (``RESULT_SCHEMA``) by ``num_workers``
    Ray actors running ``QueryPredictor`` (lazy: nothing runs until the result is consumed).

    ``batch_size``: rows per call and the engine's ``max_batch_size`` (unless ``engine_config`` is given).
    ``checkpoint`` None is the shipped demo model; a local folder is passed on as an absolute path. Ray Data gives
    batches to the first worker ready: for a short dataset, set ``DataContext.wait_for_min_actors_s`` (as
    ``run_ray_batch`` does) so that all workers get some.
    """
    _check_sizes(num_workers, batch_size)
    return dataset.map_batches(
        QueryPredictor,
        fn_constructor_kwargs={
            "checkpoint": _absolute_if_local(checkpoint),
            "base_dir": _absolute_if_local(base_dir),
            "load_kwargs": load_kwargs,
            "engine_config": engine_config or EngineConfig(max_batch_size=batch_size),
            "generate_kwargs": generate_kwargs,
            "media_kwargs": media_kwargs,
            "timeout_seconds": timeout_seconds,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker or None,
        **_actor_pool(num_workers),
    )


def _check_sizes(num_workers: int, batch_size: int) -> None:
    if num_workers < 1 or batch_size < 1:
        raise QueryError(f"num_workers and batch_size must be >= 1, got {num_workers} and {batch_size}")


def _actor_pool(size: int) -> dict[str, Any]:
    """``map_batches`` arguments for ``size`` actors that each run ``CALLS_PER_WORKER`` calls at once (the engine
    is thread-safe and the calls mostly wait on it). Ray 2.59 moved that setting onto the strategy and deprecated
    the actor option that older versions take."""
    strategy = ray.data.ActorPoolStrategy
    if "max_concurrent_calls_per_actor" in inspect.signature(strategy).parameters:
        return {
            "compute": strategy(
                size=size, max_concurrent_calls_per_actor=CALLS_PER_WORKER, enable_true_multi_threading=True
            )
        }
    return {
        "compute": strategy(size=size, enable_true_multi_threading=True),
        "max_concurrency": CALLS_PER_WORKER,
    }


def _absolute_if_local(path: str | os.PathLike | None) -> str | None:
    """An existing local path made absolute (a worker's working directory differs); anything else (a hub id, a
    path that only the workers see) unchanged."""
    if path is None:
        return None
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else str(path)


# ----- the whole job (driver) --------------------------------------------------------------------------------


@dataclass
class BatchSummary:
    """What ``run_ray_batch`` did: queries written, how many failed, tokens generated, wall time (Ray start-up,
    model loading and writing included)."""

    output_path: Path
    total: int
    failed: int
    completion_tokens: int
    elapsed_seconds: float

    @property
    def queries_per_second(self) -> float:
        return self.total / self.elapsed_seconds if self.elapsed_seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.elapsed_seconds if self.elapsed_seconds else 0.0


def run_ray_batch(
    queries_path: str | os.PathLike,
    output_path: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    *,
    num_workers: int = 1,
    address: str | None = None,
    batch_size: int = 8,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    load_kwargs: dict[str, Any] | None = None,
    engine_config: EngineConfig | None = None,
    generate_kwargs: dict[str, Any] | None = None,
    media_kwargs: dict[str, Any] | None = None,
    timeout_seconds: float | None = None,
    ray_init_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> BatchSummary:
    """Answer a query file on Ray and write one JSON line per query, in file order, to ``output_path``.

    Ray: the one this process is already connected to; else the cluster at ``address`` (``"auto"``: the one
    ``ray start`` runs on this node; ``"HOST:6379"``); else a new local Ray with ``num_workers × cpus_per_worker`` CPUs (and GPUs), no
    dashboard and a small object store, shut down at the end. ``ray_init_kwargs`` go to ``ray.init`` (e.g.
    ``runtime_env`` to install mossvl on a cluster). Relative media paths resolve against the query file's
    folder. Each line holds ``index``, ``query`` (the query object; null for a line that is not one), ``text``,
    ``finish_reason``, ``error`` (null when it worked), ``prompt_tokens``, ``completion_tokens``,
    ``vision_tokens``, ``seconds`` and ``worker``. The other arguments are those of ``predict``.
    """
    started = time.monotonic()
    queries_path, output_path = Path(queries_path), Path(output_path)
    _check_sizes(num_workers, batch_size)
    if (
        checkpoint is not None
        and Path(checkpoint).is_dir()
        and not (Path(checkpoint) / "config.json").is_file()
    ):
        # Caught here, before every worker fails to load it.
        raise CheckpointError(f"checkpoint folder {str(checkpoint)!r} has no config.json")
    rows = read_query_rows(queries_path)
    records: list[dict[str, Any]] = []
    if rows:
        resources = {"num_cpus": math.ceil(num_workers * cpus_per_worker)}
        if gpus_per_worker:
            resources["num_gpus"] = math.ceil(num_workers * gpus_per_worker)
        with _connected(address, resources, ray_init_kwargs or {}), _data_context(progress):
            results = predict(
                _dataset(rows, batch_size),
                checkpoint,
                base_dir=queries_path.parent,
                num_workers=num_workers,
                batch_size=batch_size,
                cpus_per_worker=cpus_per_worker,
                gpus_per_worker=gpus_per_worker,
                load_kwargs=load_kwargs,
                engine_config=engine_config,
                generate_kwargs=generate_kwargs,
                media_kwargs=media_kwargs,
                timeout_seconds=timeout_seconds,
            )
            records = sorted(results.iter_rows(), key=lambda record: record["index"])
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with output_path.open("w", encoding="utf-8", errors="backslashreplace") as out:
        for record in records:
            query = record["query"]
            line = {**record, "query": json.loads(query) if query is not None else None}
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return BatchSummary(
        output_path=output_path,
        total=len(records),
        failed=sum(record["error"] is not None for record in records),
        completion_tokens=sum(record["completion_tokens"] for record in records),
        elapsed_seconds=time.monotonic() - started,
    )


@contextlib.contextmanager
def _connected(address: str | None, resources: dict[str, int], init_kwargs: dict[str, Any]) -> Iterator[None]:
    """Inside: connected to Ray (see ``run_ray_batch``); a Ray started here is shut down on the way out."""
    if ray.is_initialized():
        yield
        return
    if address is None:
        # "local": a new Ray of its own even when a `ray start` cluster runs on this machine.
        init_kwargs = {
            "address": "local",
            **resources,
            "include_dashboard": False,
            "object_store_memory": LOCAL_OBJECT_STORE_BYTES,
            **init_kwargs,
        }
    else:
        init_kwargs = {"address": address, **init_kwargs}
    try:
        ray.init(**init_kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot start or reach Ray (address {init_kwargs['address']!r}): {exc}") from exc
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _data_context(progress: bool) -> Iterator[None]:
    """Ray Data settings of one run: progress bars on or off, and every worker started (its model loaded) before
    any batch is given out, so that the first worker ready does not take every batch of a short file. A pool
    that cannot start within ``ACTOR_START_TIMEOUT_SECONDS`` (e.g. a cluster without the CPUs or GPUs asked for)
    fails the run instead of waiting forever."""
    context = ray.data.DataContext.get_current()
    before = context.enable_progress_bars, context.wait_for_min_actors_s
    context.enable_progress_bars, context.wait_for_min_actors_s = progress, ACTOR_START_TIMEOUT_SECONDS
    try:
        yield
    finally:
        context.enable_progress_bars, context.wait_for_min_actors_s = before
