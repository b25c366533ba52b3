"""MossVLForConditionalGeneration behaviour beyond golden parity: dtypes, attention backends, loss, options, errors."""

import pytest
import torch
from transformers import DynamicCache

from mossvl.errors import QueryError
from mossvl.model import MossVLConfig, MossVLForConditionalGeneration

IMAGE_PAD = 396


def load_case(golden_expected, name: str) -> tuple[dict, dict]:
    expected = golden_expected(name)
    keys = ("input_ids", "attention_mask", "pixel_values", "grid_thw", "media_nums_per_sample")
    return expected, {key: expected[key] for key in keys}


@torch.no_grad()
def test_bfloat16_forward_and_generate_on_cpu(golden_dir, golden_expected):
    expected, inputs = load_case(golden_expected, "interleaved")
    model = MossVLForConditionalGeneration.from_pretrained(golden_dir, dtype=torch.bfloat16).eval()
    logits = model(**inputs, use_cache=False).logits
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - expected["logits"]).abs().max().item() < 0.25
    tokens = model.generate(**inputs, max_new_tokens=8, do_sample=False)[:, inputs["input_ids"].shape[1] :]
    assert tokens.shape == (1, 8)


@torch.no_grad()
def test_eager_attention_matches_golden(golden_dir, golden_expected):
    expected, inputs = load_case(golden_expected, "batch_image_video")
    model = MossVLForConditionalGeneration.from_pretrained(
        golden_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert model.config.text_config._attn_implementation == "eager"
    logits = model(**inputs, use_cache=False).logits
    valid = expected["attention_mask"].bool()
    assert (logits - expected["logits"]).abs()[valid].max().item() <= 1e-4


@torch.no_grad()
def test_text_only_without_media_skips_cross_layers(golden_model, golden_expected):
    expected, inputs = load_case(golden_expected, "text_only")
    logits = golden_model(input_ids=inputs["input_ids"], use_cache=False).logits
    assert (logits - expected["logits"]).abs().max().item() <= 1e-5


@torch.no_grad()
def test_vision_chunking_and_logits_to_keep(golden_model, golden_expected):
    _, inputs = load_case(golden_expected, "image_two")
    full = golden_model(**inputs, use_cache=False).logits
    chunked = golden_model(**inputs, use_cache=False, vision_chunked_length=1).logits
    last = golden_model(**inputs, use_cache=False, logits_to_keep=1).logits
    assert (chunked - full).abs().max().item() <= 1e-5
    assert last.shape[1] == 1 and (last[:, 0] - full[:, -1]).abs().max().item() <= 1e-5


@torch.no_grad()
def test_loss_is_shifted_cross_entropy_ignoring_minus_100(golden_model, golden_expected):
    _, inputs = load_case(golden_expected, "image_single")
    labels = inputs["input_ids"].clone()
    labels[:, :10] = -100
    labels[labels == IMAGE_PAD] = -100
    out = golden_model(**inputs, labels=labels, use_cache=False)
    reference = torch.nn.functional.cross_entropy(out.logits[0, :-1], labels[0, 1:], ignore_index=-100)
    assert torch.allclose(out.loss, reference, atol=1e-5)


def tiny_model() -> MossVLForConditionalGeneration:
    torch.manual_seed(0)
    config = MossVLConfig(
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "num_position_embeddings": 16,
            "deepstack_visual_indexes": [0],
            "out_hidden_size": 64,
        },
        text_config={
            "num_hidden_layers": 2,
            "cross_attention_layers": [1],
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": 100,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
        },
        image_token_id=99,
    )
    return MossVLForConditionalGeneration(config)


def test_training_step_reaches_vision_and_gates():
    model = tiny_model().train()
    model.activation_checkpointing_enable()
    for layer in model.model.language_model.layers:
        if hasattr(layer, "cross_attn_attn_gate"):
            torch.nn.init.constant_(layer.cross_attn_attn_gate, 0.5)
            torch.nn.init.constant_(layer.cross_attn_mlp_gate, 0.5)
    ids = torch.tensor([[1, 99, 5, 6, 7]])
    out = model(
        input_ids=ids,
        pixel_values=torch.randn(16, 768),
        grid_thw=torch.tensor([[1, 4, 4]]),
        labels=ids,
        use_cache=False,
    )
    out.loss.backward()
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.model.separator_token.grad.abs().sum() > 0
    assert model.model.language_model.layers[1].cross_attn_attn_gate.grad is not None


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input_ids": torch.tensor([[1, 99, 99]])}, "1 image/video frames"),
        ({"input_ids": torch.tensor([[1, 99], [99, 2]])}, "media_nums_per_sample is required"),
        (
            {"input_ids": torch.tensor([[1, 99]]), "media_nums_per_sample": [2]},
            "media_nums_per_sample sums to 2",
        ),
        ({"input_ids": torch.tensor([[1, 99]]), "grid_thw": None}, "without grid_thw"),
    ],
)
def test_bad_inputs_raise_query_error(inputs, message):
    model = tiny_model().eval()
    rows = 16 * (2 if inputs["input_ids"].shape[0] == 2 else 1)
    media = {"pixel_values": torch.zeros(rows, 768), "grid_thw": torch.tensor([[1, 4, 4]] * (rows // 16))}
    with pytest.raises(QueryError, match=message):
        model(**{**media, **inputs})


def test_a_filled_foreign_cache_is_rejected():
    model = tiny_model().eval()
    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 3, 16), torch.zeros(1, 2, 3, 16), 0)
    with pytest.raises(QueryError, match="must be a MossVLCache"):
        model(input_ids=torch.tensor([[1, 2]]), past_key_values=cache)


def test_several_return_sequences_repeat_each_samples_media(golden_model, golden_expected):
    expected, inputs = load_case(golden_expected, "batch_image_video")
    torch.manual_seed(0)
    out = golden_model.generate(
        **inputs, max_new_tokens=4, do_sample=True, top_k=1, num_return_sequences=2, pad_token_id=384
    )
    tokens = out[:, inputs["input_ids"].shape[1] :]
    assert torch.equal(tokens, expected["gen_tokens"][:, :4].repeat_interleave(2, dim=0))
