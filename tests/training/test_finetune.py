"""Fine-tuning end to end on the golden tiny checkpoint: loss goes down, freezing, LoRA, merging and resuming."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from mossvl.errors import ConfigError
from mossvl.model import MossVLForConditionalGeneration
from mossvl.training.data import SFTCollator, SFTDataset
from mossvl.training.finetune import apply_lora, freeze_modules, lora_target_regex, parse_args, train


@pytest.fixture
def batch(sft_file, golden_processor, media_dir):
    data = SFTDataset(sft_file, golden_processor, data_dir=media_dir)
    return SFTCollator(golden_processor.tokenizer.pad_token_id)([data[i] for i in range(len(data))])


def fresh_model(golden_dir):
    return MossVLForConditionalGeneration.from_pretrained(golden_dir, dtype=torch.float32)


def loss_of(model, batch) -> float:
    with torch.no_grad():
        return float(model.eval()(**batch).loss)


def assert_params(model, reference, same: bool, select) -> None:
    reference = dict(reference.named_parameters())
    checked = 0
    for name, param in model.named_parameters():
        if select(name):
            assert torch.equal(param, reference[name]) == same, name
            checked += 1
    assert checked


def test_full_finetune_lowers_loss_and_keeps_vision_frozen(make_args, golden_model, golden_processor, batch):
    out = train(*make_args(max_steps=6))
    trained = MossVLForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    assert loss_of(trained, batch) < loss_of(golden_model, batch) - 0.5
    frozen = lambda name: name.startswith(("model.visual.", "model.separator_token"))  # noqa: E731
    assert_params(trained, golden_model, same=True, select=frozen)
    assert_params(trained, golden_model, same=False, select=lambda n: n.endswith("self_attn.q_proj.weight"))
    assert_params(trained, golden_model, same=False, select=lambda n: n == "lm_head.weight")
    assert trained.config.text_config.use_cache  # restored for inference
    assert (out / "preprocessor_config.json").is_file()  # the processor is saved with the model
    type(golden_processor).from_pretrained(out)
    assert isinstance(AutoModelForCausalLM.from_pretrained(out), MossVLForConditionalGeneration)


def test_freeze_modules_groups(golden_dir):
    from mossvl.training.arguments import ModelArguments

    model = fresh_model(golden_dir)
    freeze_modules(model, ModelArguments("m", tune_vision=True, tune_language=False, tune_lm_head=False))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        n for n, _ in model.named_parameters() if n.startswith(("model.visual.", "model.separator"))
    }
    with pytest.raises(ConfigError, match="nothing to train"):
        freeze_modules(model, ModelArguments("m", tune_vision=False, tune_language=False, tune_lm_head=False))


@pytest.mark.parametrize(
    ("scope", "layers"), [("self", {0, 2, 3, 5}), ("cross", {1, 4}), ("both", set(range(6)))]
)
def test_lora_scope_selects_decoder_layers(golden_dir, scope, layers):
    model = fresh_model(golden_dir)
    regex = lora_target_regex(model, "q_proj,k_proj,v_proj,o_proj", scope)
    matched = [name for name, _ in model.named_modules() if re.fullmatch(regex, name)]
    assert len(matched) == 4 * len(layers)
    assert {int(name.split(".")[3]) for name in matched} == layers
    assert not any("visual" in name for name in matched)
    vision = lora_target_regex(model, "q_proj,qkv", scope, vision=True)
    assert (
        sum(re.fullmatch(vision, name) is not None for name, _ in model.named_modules() if "visual" in name)
        == 4
    )
    with pytest.raises(ConfigError, match="match no module"):
        lora_target_regex(model, "nope_proj", scope)


def test_lora_trains_adapters_only_and_merge_matches(make_args, golden_dir, golden_model, batch):
    from peft import PeftModel

    model_args, data_args, training_args = make_args(
        lora_enable=True, lora_r=4, lora_alpha=8, lora_scope="cross", learning_rate=1e-2
    )
    wrapped = apply_lora(fresh_model(golden_dir), training_args)
    trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name and ".cross_attn." in name for name in trainable)

    out = train(model_args, data_args, training_args)
    adapter = PeftModel.from_pretrained(fresh_model(golden_dir), out / "adapter")
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 4 and saved["bias"] == "none" and saved["task_type"] == "CAUSAL_LM"
    merged = MossVLForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    assert not (out / "adapter_config.json").exists()  # the output folder is a plain checkpoint
    with torch.no_grad():
        expected = adapter.eval()(**batch).logits
        actual = merged.eval()(**batch).logits
    assert (expected - actual).abs().max() <= 1e-5
    # Only the adapted projections differ from the base weights after merging.
    adapted = lambda name: re.search(r"\.cross_attn\.[qkvo]_proj\.weight$", name) is not None  # noqa: E731
    assert_params(merged, golden_model, same=False, select=adapted)
    assert_params(merged, golden_model, same=True, select=lambda name: not adapted(name))


def test_resume_continues_from_last_checkpoint(make_args):
    args = dict(save_strategy="steps", save_steps=2, max_steps=4)
    straight = train(*make_args("straight", **args))
    first = train(*make_args("resumed", **{**args, "max_steps": 2}))
    assert (first / "checkpoint-2").is_dir()
    resumed = train(*make_args("resumed", **args))
    state = json.loads((resumed / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    a = MossVLForConditionalGeneration.from_pretrained(straight, dtype=torch.float32)
    b = MossVLForConditionalGeneration.from_pretrained(resumed, dtype=torch.float32)
    for (name, x), y in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5, msg=name)


def test_activation_checkpointing_trains(make_args):
    out = train(
        *make_args(max_steps=1, activation_checkpointing=True, lora_enable=True, lora_r=2, merge_lora=False)
    )
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_parse_args_from_flags_and_yaml(tmp_path):
    flags = [
        "--model_name_or_path",
        "m",
        "--data_path",
        "d.json",
        "--output_dir",
        str(tmp_path),
        "--lora_enable",
    ]
    model_args, data_args, training_args = parse_args(
        [*flags, "--lora_scope", "cross", "--max_length", "128"]
    )
    assert training_args.lora_enable and training_args.lora_scope == "cross" and data_args.max_length == 128
    assert (
        training_args.lora_r == 64
        and training_args.lora_alpha == 128
        and not training_args.remove_unused_columns
    )
    assert not model_args.tune_vision and model_args.tune_language and model_args.tune_lm_head
    config = tmp_path / "train.yaml"
    config.write_text(
        f"model_name_or_path: m\ndata_path: d.json\noutput_dir: {tmp_path}\nbf16: false\nlora_r: 8\n"
    )
    assert parse_args([str(config)])[2].lora_r == 8
    with pytest.raises(SystemExit):
        parse_args([*flags, "--lora_scope", "sideways"])


def test_cli_passes_flags_through():
    from mossvl.cli.main import build_parser

    parser, _ = build_parser()
    args = parser.parse_args(["finetune", "--model_name_or_path", "m", "--bf16", "True", "--help"])
    assert args.args == ["--model_name_or_path", "m", "--bf16", "True", "--help"]
