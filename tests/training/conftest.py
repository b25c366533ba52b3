"""Fixtures of the fine-tuning tests: a small synthetic SFT data file over the golden media, and a training-args maker."""

from __future__ import annotations

import json

import pytest

RECORDS = [
    {"prompt": "What colour dominates?", "response": "Mostly blue.", "images": ["img_a_64x96.png"]},
    {
        "conversations": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "<|image|>\nShapes?"},
            {"role": "assistant", "content": "Two boxes."},
            {"role": "user", "content": "And here <|image|>?"},
            {"role": "assistant", "content": "A circle."},
        ],
        "images": ["img_b_80x120.png", "img_c_50x70.png"],
    },
    {
        "prompt": "Describe the clip.",
        "response": "A square moves right.",
        "videos": ["vid_a_47f_10fps_48x64.mp4"],
    },
    {"prompt": "Say hi.", "response": "Hi there!"},
    {
        "messages": [
            {"role": "user", "content": "Two parts: <|video|>"},
            {"role": "assistant", "content": "Moving, then still."},
        ],
        "videos": [{"video_path": "vid_b_30f_6fps_40x90.mp4", "segments": [[0.0, 2.0], [3.0, 5.0]]}],
    },
    {
        "prompt": "Which is wider?",
        "response": "The second.",
        "images": ["img_d_96x64.png", "img_a_64x96.png"],
    },
]


@pytest.fixture
def media_dir(golden_dir):
    return golden_dir / "media"


def write_records(path):
    path.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    return path


@pytest.fixture
def sft_file(tmp_path):
    """A JSONL file of six records in both formats (images, multi-turn, video, text-only, segmented video)."""
    return write_records(tmp_path / "train.jsonl")


@pytest.fixture(scope="module")
def module_sft_file(tmp_path_factory):
    """The same records in a file shared by a test module, for training runs that several of its tests compare."""
    return write_records(tmp_path_factory.mktemp("sft") / "train.jsonl")


@pytest.fixture
def make_args(tmp_path, golden_dir, media_dir, sft_file):
    """Builds (ModelArguments, DataArguments, TrainingArguments) for a tiny CPU run on the golden checkpoint."""
    from mossvl.training.arguments import DataArguments, ModelArguments, TrainingArguments

    def make(
        output_name: str = "out", data_path=None, model_kwargs=None, data_kwargs=None, **training_kwargs
    ):
        training = {
            "output_dir": str(tmp_path / output_name),
            "per_device_train_batch_size": 2,
            "max_steps": 4,
            "learning_rate": 1e-3,
            "lr_scheduler_type": "constant",
            "save_strategy": "no",
            "logging_steps": 1,
            "report_to": "none",
            "disable_tqdm": True,
            "use_cpu": True,
            "seed": 0,
            "dataloader_num_workers": 0,
        }
        training.update(training_kwargs)
        return (
            ModelArguments(model_name_or_path=str(golden_dir), **(model_kwargs or {})),
            DataArguments(
                data_path=str(data_path or sft_file), data_dir=str(media_dir), **(data_kwargs or {})
            ),
            TrainingArguments(**training),
        )

    return make
