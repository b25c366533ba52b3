"""The shipped demo model: loads through the public API, has the official architecture shape, answers the bundled
samples and freshly generated synthetic questions correctly, and `python -m mossvl.demo` reports its score."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

import mossvl
from mossvl.data.synthetic import SAMPLES_DIR, TASKS, make_sample, sample_records, write_media
from mossvl.evaluation import load_questions, score_answer
from mossvl.inference.api import demo_model_dir

# Test-split samples of seed 7: the shipped model never saw this seed (it trains on seed 0).
SYNTHETIC_SEED = 7
SYNTHETIC_COUNT = 2 * len(TASKS)
MIN_SYNTHETIC_CORRECT = 12


@pytest.fixture(scope="module")
def demo():
    return mossvl.load()


def _answers(demo, questions) -> list[str]:
    model, processor = demo
    queries = [q.to_query() for q in questions]
    return mossvl.batch_chat(model, processor, queries, max_new_tokens=8, do_sample=False)


def test_shipped_files_are_small_bf16_safetensors():
    folder = demo_model_dir()
    weights = folder / "model.safetensors"
    assert weights.stat().st_size <= 20 * 2**20
    assert {tensor.dtype for tensor in load_file(weights).values()} == {torch.bfloat16}
    for name in (
        "config.json",
        "tokenizer.json",
        "preprocessor_config.json",
        "video_preprocessor_config.json",
    ):
        assert (folder / name).is_file(), name


def test_architecture_has_the_official_shape(demo):
    model, _ = demo
    config = model.config
    assert config.model_type == "moss_vl"
    assert len(config.vision_config.deepstack_visual_indexes) == 3
    assert config.vision_config.out_hidden_size == config.text_config.hidden_size
    cross = config.text_config.cross_attention_layers
    assert 2 <= len(cross) < config.text_config.num_hidden_layers
    assert config.text_config.rope_parameters["mrope_interleaved"]
    params = sum(p.numel() for p in model.parameters())
    assert 1e6 < params < 2e7
    # Every cross layer kept a non-zero gate: vision really feeds the decoder.
    for index in cross:
        layer = model.model.language_model.layers[index]
        assert abs(layer.cross_attn_attn_gate.item()) > 0.05


def test_answers_every_bundled_sample(demo):
    questions = load_questions(SAMPLES_DIR / "questions.json", check_media=True)
    answers = dict(zip([q.id for q in questions], _answers(demo, questions), strict=True))
    assert answers == {
        "sample-color": "green",
        "sample-count": "3",
        "sample-temporal": "2.3 seconds",
        "sample-event": "appears",
    }


def test_answers_unseen_synthetic_questions(demo, tmp_path):
    records = []
    for index in range(SYNTHETIC_COUNT):
        sample = make_sample(SYNTHETIC_SEED, "test", index)
        name = f"q{index}.mp4" if sample.is_video else f"q{index}.png"
        write_media(sample, tmp_path / name)
        records.append(sample_records(sample, name, f"q{index}")[1])
    (tmp_path / "questions.json").write_text(json.dumps(records), encoding="utf-8")
    questions = load_questions(tmp_path / "questions.json")
    answers = _answers(demo, questions)
    results = [
        (q.task, q.answer, a, score_answer(q, a).correct) for q, a in zip(questions, answers, strict=True)
    ]
    assert {task for task, *_ in results} == set(TASKS)
    assert sum(ok for *_, ok in results) >= MIN_SYNTHETIC_CORRECT, results


def test_demo_command_prints_each_answer_and_the_score(capsys):
    from mossvl.demo import main

    assert main([]) == 0
    out = capsys.readouterr().out
    questions = json.loads((SAMPLES_DIR / "questions.json").read_text(encoding="utf-8"))
    for question in questions:
        assert question["question"] in out
    assert re.search(rf"\b{len(questions)}/{len(questions)} correct in ", out)
