"""The shipped fine-tuning examples: configs parse, the shell script is valid, the sample data load in both formats."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from mossvl.processing.conversation import conversation_from_record
from mossvl.training.records import index_records, read_record

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "finetune"


@pytest.mark.parametrize(("name", "stage"), [("ds_zero2.json", 2), ("ds_zero3.json", 3)])
def test_deepspeed_configs_parse(name, stage):
    config = json.loads((EXAMPLES / name).read_text())
    assert config["zero_optimization"]["stage"] == stage
    assert config["train_micro_batch_size_per_gpu"] == "auto"  # filled in by the Trainer


def test_accelerate_fsdp_config_parses_and_wraps_real_layer_classes():
    from mossvl.model import text, vision

    config = yaml.safe_load((EXAMPLES / "accelerate_fsdp.yaml").read_text())
    assert config["distributed_type"] == "FSDP"
    for name in config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(","):
        assert hasattr(text, name) or hasattr(vision, name), name


def test_cpu_fsdp_config_shards_like_the_gpu_one():
    gpu = yaml.safe_load((EXAMPLES / "accelerate_fsdp.yaml").read_text())
    cpu = yaml.safe_load((EXAMPLES / "accelerate_fsdp_cpu.yaml").read_text())
    assert cpu["fsdp_config"] == gpu["fsdp_config"]  # what the CPU runs of test_distributed.py vouch for
    assert cpu["distributed_type"] == "FSDP" and cpu["mixed_precision"] == "no" and cpu["use_cpu"] is False


def test_run_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(EXAMPLES / "run_sft.sh")], check=True)


@pytest.mark.parametrize(
    ("name", "count"), [("data_prompt_response.json", 5), ("data_conversations.json", 3)]
)
def test_example_data_normalise(golden_dir, name, count):
    path = EXAMPLES / name
    spans = index_records(path)
    assert len(spans) == count
    for index, span in enumerate(spans):
        conversation = conversation_from_record(read_record(path, span, index), index, golden_dir / "media")
        assert conversation.messages[-1]["role"] == "assistant"
