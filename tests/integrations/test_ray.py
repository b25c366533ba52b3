"""Ray Data batch inference: query files (JSONL, JSON, Parquet; both query formats) read into rows, answered by a
pool of 2 local Ray workers with the shipped demo model, each result equal to `mossvl.chat`, bad queries as errors."""

import json
import shutil

import pytest

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from mossvl.cli.main import main  # noqa: E402
from mossvl.data.synthetic import SAMPLES_DIR  # noqa: E402
from mossvl.errors import CheckpointError, QueryError  # noqa: E402
from mossvl.inference.api import chat, load  # noqa: E402
from mossvl.integrations.ray import (  # noqa: E402
    RESULT_SCHEMA,
    QueryPredictor,
    read_query_rows,
    run_ray_batch,
)


@pytest.fixture(scope="module")
def demo():
    return load(device="cpu")


@pytest.fixture
def samples(tmp_path):
    for name in ("shape.png", "shapes.png", "clip.mp4"):
        shutil.copy(SAMPLES_DIR / name, tmp_path / name)
    return tmp_path


def sample_queries(prefix: str = "") -> list[dict]:
    """Both official formats, per-query settings, a video segment, and (last) a query whose image is missing."""

    def path(name: str) -> str:
        return f"{prefix}{name}"

    return [
        {"prompt": "What color is the shape?", "images": [path("shape.png")]},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": path("shapes.png")},
                        {"type": "text", "text": "How many shapes are in the image?"},
                    ],
                }
            ]
        },
        {
            "prompt": "When does the blue circle appear?",
            "videos": [path("clip.mp4")],
            "generate_kwargs": {"max_new_tokens": 8},
        },
        {
            "messages": [{"role": "user", "content": "<|video|>\nWhat happens in the video?"}],
            "videos": [{"video_path": path("clip.mp4"), "segments": [[0.0, 2.0]]}],
            "media_kwargs": {"video_fps": 2.0},
        },
        {"prompt": "What is this?", "images": [path("missing.png")]},
    ]


def write_jsonl(path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_two_local_workers_answer_like_chat_and_keep_errors_per_query(samples, demo):
    queries = sample_queries()
    source = samples / "queries.jsonl"
    write_jsonl(source, [json.dumps(query) for query in queries] + ["", "{not json"])
    output = samples / "out" / "results.jsonl"

    summary = run_ray_batch(source, output, num_workers=2, batch_size=2, progress=False)

    assert not ray.is_initialized()  # the local Ray it started is shut down again
    results = read_jsonl(output)
    assert [result["index"] for result in results] == list(range(6))
    assert len({result["worker"] for result in results}) == 2  # both workers took batches
    assert (summary.total, summary.failed) == (6, 2)
    assert summary.completion_tokens == sum(result["completion_tokens"] for result in results)
    for query, absolute, result in zip(queries[:4], sample_queries(f"{samples}/")[:4], results, strict=False):
        assert result["error"] is None, result
        assert result["query"] == query
        assert result["text"] == chat(*demo, absolute)
        assert result["finish_reason"] in ("stop", "length")
        assert (
            result["completion_tokens"] >= 1 and result["prompt_tokens"] > 0 and result["vision_tokens"] > 0
        )
    assert results[2]["completion_tokens"] <= 8  # the query's own generate_kwargs
    missing, broken = results[4], results[5]
    assert missing["finish_reason"] == "error" and "missing.png" in missing["error"]
    assert broken["query"] is None and "line 7 is not valid JSON" in broken["error"]


def test_cli_ray_reads_parquet_and_writes_jsonl_beside_it(samples, demo, capsys):
    table = pa.table(
        {
            "prompt": ["What color is the shape?", "When does the blue circle appear?", "What is this?"],
            "images": [["shape.png"], None, ["missing.png"]],
            "videos": [None, ["clip.mp4"], None],
        }
    )
    pq.write_table(table, samples / "batch.parquet")
    args = ["run", "--ray", "--num-workers", "2", "--batch-size", "1", "--max-new-tokens", "6", "--quiet"]

    assert main([*args, "--input", str(samples / "batch.parquet")]) == 1  # one query failed

    results = read_jsonl(samples / "batch_results.jsonl")
    assert [result["error"] is None for result in results] == [True, True, False]
    absolute = [
        {"prompt": "What color is the shape?", "images": [str(samples / "shape.png")]},
        {"prompt": "When does the blue circle appear?", "videos": [str(samples / "clip.mp4")]},
    ]
    for query, result in zip(absolute, results, strict=False):
        assert result["text"] == chat(*demo, query, max_new_tokens=6)
    assert results[0]["query"] == {"prompt": "What color is the shape?", "images": ["shape.png"]}
    assert "2/3 queries answered by 2 Ray worker(s)" in capsys.readouterr().err


def test_predictor_answers_a_batch_in_process(samples, demo):
    """The map_batches class without a Ray runtime: one Arrow batch in, result rows in RESULT_SCHEMA out."""
    source = samples / "queries.json"
    source.write_text(json.dumps(sample_queries()), encoding="utf-8")
    batch = pa.Table.from_pylist(read_query_rows(source))

    out = QueryPredictor(base_dir=str(samples), load_kwargs={"device": "cpu"})(batch)

    assert out.schema == RESULT_SCHEMA
    rows = out.to_pylist()
    assert [row["text"] for row in rows[:4]] == [chat(*demo, q) for q in sample_queries(f"{samples}/")[:4]]
    assert [row["error"] is None for row in rows] == [True, True, True, True, False]


def test_predictor_timeout_cancels_and_records_an_error(samples):
    source = samples / "queries.jsonl"
    write_jsonl(source, [json.dumps(sample_queries()[2])])
    batch = pa.Table.from_pylist(read_query_rows(source))

    (row,) = QueryPredictor(base_dir=str(samples), timeout_seconds=0.0)(batch).to_pylist()

    assert row["error"] == "timed out after 0 s"
    assert row["finish_reason"] == "cancelled"


def test_query_rows_of_jsonl_json_and_parquet(tmp_path):
    write_jsonl(tmp_path / "q.jsonl", ['{"prompt": "a"}', "  ", "[1]", "{oops"])
    assert read_query_rows(tmp_path / "q.jsonl") == [
        {"index": 0, "query": '{"prompt": "a"}', "error": None},
        {"index": 1, "query": None, "error": "line 3 is a list, expected a JSON object"},
        {
            "index": 2,
            "query": None,
            "error": "line 4 is not valid JSON (Expecting property name enclosed in "
            "double quotes at column 2)",
        },
    ]
    (tmp_path / "q.json").write_text(json.dumps({"queries": [{"prompt": "b"}, {"prompt": "c"}]}))
    assert [row["query"] for row in read_query_rows(tmp_path / "q.json")] == [
        '{"prompt": "b"}',
        '{"prompt": "c"}',
    ]
    # A `query` column of JSON texts, and one query per row with nested struct columns (nulls dropped again).
    queries = sample_queries()
    pq.write_table(pa.table({"query": [json.dumps(queries[1]), None]}), tmp_path / "texts.parquet")
    rows = read_query_rows(tmp_path / "texts.parquet")
    assert json.loads(rows[0]["query"]) == queries[1] and rows[1]["error"] == "row 1 is empty"
    nested = [
        queries[1],
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "video", "video": "clip.mp4"}, {"type": "text", "text": "?"}],
                }
            ],
            "generate_kwargs": {"max_new_tokens": 4},
        },
    ]
    table = pa.Table.from_batches([pa.RecordBatch.from_struct_array(pa.array(nested))])
    assert table.to_pylist() != nested  # Arrow gives every row and content item the same fields
    pq.write_table(table, tmp_path / "rows.parquet")
    assert [json.loads(row["query"]) for row in read_query_rows(tmp_path / "rows.parquet")] == nested


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [("nope.jsonl", None, "does not exist"), ("q.csv", "prompt\n", "unknown query file type '.csv'")],
)
def test_unreadable_query_files_raise(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(QueryError, match=message):
        read_query_rows(tmp_path / name)


def test_a_checkpoint_folder_without_config_fails_before_ray_starts(samples):
    write_jsonl(samples / "q.jsonl", [json.dumps(sample_queries()[0])])
    with pytest.raises(CheckpointError, match="has no config.json"):
        run_ray_batch(samples / "q.jsonl", samples / "out.jsonl", samples)
    assert not ray.is_initialized() and not (samples / "out.jsonl").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--input", "q.jsonl", "--num-workers", "2"], "--num-workers only apply with --ray"),
        (["--input", "q.parquet"], "Parquet query files need --ray"),
        (["--ray", "--input", "q.jsonl", "--num-workers", "0"], "num_workers and batch_size must be >= 1"),
    ],
)
def test_bad_ray_flags_are_one_line_errors(capsys, extra, message):
    assert main(["run", *extra]) == 2
    assert message in capsys.readouterr().err
