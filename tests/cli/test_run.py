"""`mossvl run`: query files in both styles, relative paths, per-query errors, reference output layout."""

import json
import shutil

import pytest

from mossvl.cli.main import main
from mossvl.inference.engine import Engine
from mossvl.inference.kv_pool import KVPool


@pytest.fixture
def query_dir(golden_dir, tmp_path):
    for name in ("img_a_64x96.png", "vid_a_47f_10fps_48x64.mp4"):
        shutil.copy(golden_dir / "media" / name, tmp_path / name)
    return tmp_path


QUERIES = [
    {
        "prompt": "Describe the image.",
        "images": ["img_a_64x96.png"],
        "generate_kwargs": {"max_new_tokens": 8},
    },
    {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video", "video": "vid_a_47f_10fps_48x64.mp4"},
                    {"type": "text", "text": "Describe the video."},
                ],
            }
        ],
        "media_kwargs": {"num_extract_threads": 1},
        "generate_kwargs": {"max_new_tokens": 8},
    },
    {"prompt": "Broken.", "images": ["missing.png"]},
    {"conversations": [{"role": "robot", "content": "x"}]},
    {"prompt": "What is the color of the sky?", "generate_kwargs": {"max_new_tokens": 8}},
]


def run_file(golden_dir, path, *extra):
    return main(["run", "--input", str(path), "--checkpoint", str(golden_dir), "--quiet", *extra])


@pytest.mark.parametrize("batch_size", ["1", "3"])
def test_run_jsonl_writes_reference_layout(golden_dir, golden_model, golden_processor, query_dir, batch_size):
    path = query_dir / "queries.jsonl"
    path.write_text("\n".join(json.dumps(q) for q in QUERIES) + "\n")
    assert run_file(golden_dir, path, "--batch-size", batch_size) == 1  # two queries fail
    report = json.loads((query_dir / "queries_results.json").read_text())
    assert {"mode", "mode_alias", "checkpoint", "input", "results", "elapsed_seconds"} <= set(report)
    assert report["mode"] == "offline_generate"
    results = report["results"]
    keys = {
        "index",
        "prompt",
        "messages",
        "images",
        "videos",
        "media_kwargs",
        "generate_kwargs",
        "text",
        "elapsed_seconds",
        "event_count",
        "error",
    }
    assert all(keys <= set(r) for r in results)
    assert [r["index"] for r in results] == list(range(len(QUERIES)))
    assert [r["error"] is None for r in results] == [True, True, False, False, True]
    assert "not found" in results[2]["error"]
    assert results[0]["images"] == [str(query_dir / "img_a_64x96.png")]
    assert results[0]["media_kwargs"]["multi_image_max_pixels"] == 201326592
    assert results[1]["media_kwargs"]["video_fps"] == 1.0
    engine = Engine(golden_model, golden_processor)
    for index in (0, 1, 4):
        request = engine.prepare(
            QUERIES[index], media_kwargs=results[index]["media_kwargs"], base_dir=query_dir
        )
        assert results[index]["text"] == engine.submit(request).result().text
        assert results[index]["event_count"] >= 1


def test_run_json_list_with_output_and_generation_flags(golden_dir, query_dir):
    path = query_dir / "batch.json"
    path.write_text(json.dumps([QUERIES[0], {"prompt": "Hi"}]))
    out = query_dir / "out" / "r.json"
    code = run_file(golden_dir, path, "--output", str(out), "--max-new-tokens", "3", "--mode", "batch")
    assert code == 0
    report = json.loads(out.read_text())
    assert report["mode_alias"] == "batch"
    assert report["results"][0]["generate_kwargs"]["max_new_tokens"] == 8  # the query's own setting wins
    assert report["results"][1]["generate_kwargs"]["max_new_tokens"] == 3


def test_run_kv_cache_dtype_flag_reaches_the_engine(golden_dir, query_dir, monkeypatch):
    chosen = []
    original = KVPool.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        chosen.append(self.quantized)

    monkeypatch.setattr(KVPool, "__init__", recording_init)
    path = query_dir / "one.json"
    path.write_text(json.dumps([QUERIES[0]]))
    outputs = {}
    for flag in ("int8", "model"):
        out = query_dir / f"{flag}.json"
        assert run_file(golden_dir, path, "--output", str(out), "--kv-cache-dtype", flag) == 0
        outputs[flag] = json.loads(out.read_text())["results"][0]["text"]
    assert chosen == [True, False]
    assert outputs["int8"] == outputs["model"]  # the golden case keeps its greedy tokens with an int8 cache


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not valid JSON"), ('{"a": 1}', "list of queries"), ("[1, 2]", "query 0")],
)
def test_run_bad_files_are_one_line_errors(golden_dir, query_dir, capsys, content, message):
    path = query_dir / "bad.json"
    path.write_text(content)
    assert run_file(golden_dir, path) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_run_missing_input_file(golden_dir, tmp_path, capsys):
    assert run_file(golden_dir, tmp_path / "nope.json") == 2
    assert "does not exist" in capsys.readouterr().err
