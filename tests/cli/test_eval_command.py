"""`mossvl eval` with the inference API replaced by fakes: arguments, queries sent, report files, error exit."""

from __future__ import annotations

import json

import pytest

import mossvl
from mossvl.cli.main import main
from mossvl.data.synthetic import SAMPLES_DIR

SAMPLE_ANSWERS = {
    "What color is the shape?": "green",
    "How many shapes are in the image?": "3",
    "When does the blue circle appear?": "2.5 seconds",
    "What happens to the blue circle in the video?": "it moves",
}


@pytest.fixture
def fake_api(monkeypatch):
    calls = {"load": [], "batches": []}

    def load(path=None, dtype=None, device="auto", **kwargs):
        calls["load"].append((path, dtype, device))
        return "model", "processor"

    def batch_chat(model, processor, queries, max_new_tokens=1024, do_sample=False):
        assert (model, processor, do_sample) == ("model", "processor", False)
        calls["batches"].append((queries, max_new_tokens))
        return [SAMPLE_ANSWERS[q["prompt"]] for q in queries]

    monkeypatch.setattr(mossvl, "load", load, raising=False)
    monkeypatch.setattr(mossvl, "batch_chat", batch_chat, raising=False)
    return calls


def test_eval_defaults_to_the_bundled_samples(fake_api, tmp_path, capsys):
    args = ["eval", "--output", str(tmp_path), "--batch-size", "3", "--max-new-tokens", "8", "--quiet"]
    assert main(args) == 0
    assert fake_api["load"] == [(None, None, "auto")]
    assert [len(queries) for queries, _ in fake_api["batches"]] == [3, 1]
    assert {tokens for _, tokens in fake_api["batches"]} == {8}
    first = fake_api["batches"][0][0][0]
    assert first == {
        "prompt": "What color is the shape?",
        "images": [str(SAMPLES_DIR / "shape.png")],
        "videos": [],
    }
    summary = json.loads((tmp_path / "results.json").read_text())
    assert {t["task"]: t["accuracy"] for t in summary["tasks"]} == {
        "color": 1.0,
        "count": 1.0,
        "temporal": 1.0,
        "event": 0.0,
    }
    assert (tmp_path / "eval.png").is_file() and "| color | exact | 1 | 100.0%" in capsys.readouterr().out


def test_eval_limit_and_explicit_model(fake_api, tmp_path):
    argv = [
        "eval",
        "--model",
        "some/dir",
        "--limit",
        "2",
        "--dtype",
        "bfloat16",
        "--output",
        str(tmp_path),
        "--quiet",
    ]
    assert main(argv) == 0
    assert fake_api["load"] == [("some/dir", "bfloat16", "auto")]
    assert json.loads((tmp_path / "results.json").read_text())["n"] == 2


def test_eval_missing_media_fails_before_loading(fake_api, tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps({"id": "x", "question": "q", "answer": "a", "images": ["nope.png"]}) + "\n"
    )
    assert main(["eval", "--questions", str(questions), "--output", str(tmp_path)]) == 2
    assert "question 'x': media file" in capsys.readouterr().err
    assert fake_api["load"] == []


def test_eval_rejects_a_zero_batch_size():
    with pytest.raises(SystemExit):
        main(["eval", "--batch-size", "0"])
