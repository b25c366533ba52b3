"""Loading quantized checkpoints: device checks, the KV8 packaging, and FP8 models turned into int8 for the CPU."""

import importlib.util
import json
import shutil

import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM

import mossvl
from mossvl.errors import CheckpointError, ConfigError
from mossvl.model import MossVLForConditionalGeneration
from mossvl.quantization import (
    Int8DynamicLinear,
    QuantizedCacheWarning,
    adapt_quantized_model,
    check_kv_cache_packaging,
    check_quantized_checkpoint,
)
from mossvl.quantization.fp8 import quantized_modules
from mossvl.quantization.int8_quantizer import MossVLInt8DynamicConfig, MossVLInt8DynamicQuantizer

# FP8 needs the optional compressed-tensors package (the `quant` extra); int8-dynamic needs nothing extra.
needs_compressed_tensors = pytest.mark.skipif(
    importlib.util.find_spec("compressed_tensors") is None,
    reason="FP8 needs compressed-tensors: pip install 'mossvl[quant]'",
)

# The official KV8 packaging (reference-features §4.1).
KV8_GENERATION_CONFIG = {
    "cache_implementation": "quantized",
    "cache_config": {
        "backend": "hqq",
        "nbits": 8,
        "axis_key": 0,
        "axis_value": 0,
        "q_group_size": 64,
        "residual_length": 128,
    },
}
NF4_QUANTIZATION_CONFIG = {
    "quant_method": "bitsandbytes",
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": "bfloat16",
}
# Max golden logit drift of an FP8 checkpoint run as int8 on the CPU: measured 0.42 with 8-bit activations and
# 0.54 with 7-bit ones (CPUs without AVX512-VNNI).
FP8_AS_INT8_DRIFT_BOUND = 0.8


def checkpoint_with(golden_dir, folder, quantization_config=None, generation=None):
    """A copy of the golden checkpoint's config and generation config with the given additions (no weights)."""
    folder.mkdir(exist_ok=True)
    config = json.loads((golden_dir / "config.json").read_text())
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(golden_dir / "generation_config.json", folder)
    if generation is not None:
        merged = {**json.loads((folder / "generation_config.json").read_text()), **generation}
        (folder / "generation_config.json").write_text(json.dumps(merged))
    return folder


def test_nf4_needs_a_gpu(golden_dir, tmp_path):
    folder = checkpoint_with(golden_dir, tmp_path, NF4_QUANTIZATION_CONFIG)
    with pytest.raises(
        CheckpointError, match="NF4 \\(bitsandbytes 4-bit\\) checkpoint, which loads on a CUDA GPU"
    ):
        check_quantized_checkpoint(folder, "cpu")
    check_quantized_checkpoint(folder, "cuda")


def test_int8_dynamic_runs_on_the_cpu_only(quantized):
    folder = quantized("golden", "int8-dynamic")
    check_quantized_checkpoint(folder, "cpu")
    with pytest.raises(CheckpointError, match="int8-dynamic checkpoint, which runs on the CPU only"):
        check_quantized_checkpoint(folder, "cuda:0")


def test_the_int8_quantizer_refuses_a_gpu_device_map():
    quantizer = MossVLInt8DynamicQuantizer(MossVLInt8DynamicConfig())
    quantizer.validate_environment(device_map={"": "cpu"})
    with pytest.raises(ConfigError, match="run on the CPU only"):
        quantizer.validate_environment(device_map={"": 0})
    with pytest.raises(ConfigError, match="unknown scope 'everything'"):
        MossVLInt8DynamicConfig(scope="everything")


@needs_compressed_tensors
def test_plain_and_fp8_checkpoints_pass(golden_dir, quantized):
    check_quantized_checkpoint(golden_dir, "cpu")
    check_quantized_checkpoint(quantized("golden", "fp8-dynamic"), "cuda")


def test_kv8_packaging_is_reported(golden_dir, tmp_path):
    folder = checkpoint_with(golden_dir, tmp_path, generation=KV8_GENERATION_CONFIG)
    with pytest.warns(QuantizedCacheWarning, match=r"quantized KV cache .*backend hqq, .*nbits 8"):
        settings = check_kv_cache_packaging(folder)
    assert settings == KV8_GENERATION_CONFIG["cache_config"]
    with pytest.raises(CheckpointError, match="official KV8 HQQ packaging"):
        check_kv_cache_packaging(folder, strict=True)
    with pytest.warns(QuantizedCacheWarning):
        check_quantized_checkpoint(folder, "cpu")


def test_no_kv8_packaging_is_silent(golden_dir, recwarn):
    assert check_kv_cache_packaging(golden_dir) is None
    assert not [w for w in recwarn if issubclass(w.category, QuantizedCacheWarning)]


@needs_compressed_tensors
def test_fp8_becomes_int8_on_the_cpu(quantized, golden_model, golden_expected, tmp_path):
    folder = quantized("golden", "fp8-dynamic")
    model, _ = mossvl.load(folder)
    assert adapt_quantized_model(model, "cpu") is model
    layers = [m for m in model.modules() if isinstance(m, Int8DynamicLinear)]
    assert len(layers) == 28 and all(layer.is_packed for layer in layers)
    assert not quantized_modules(model)
    assert model.config.quantization_config.quant_method == "mossvl-int8-dynamic"

    expected = golden_expected("video_single")
    inputs = {key: expected[key] for key in ("input_ids", "attention_mask", "pixel_values", "grid_thw")}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits
        drift = (logits - golden_model(**inputs, use_cache=False).logits).abs().max().item()
    assert 0 < drift <= FP8_AS_INT8_DRIFT_BOUND

    # Saved, it is an int8-dynamic checkpoint that reloads to the same numbers.
    model.save_pretrained(tmp_path)
    reloaded = MossVLForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs, use_cache=False).logits, logits)


@needs_compressed_tensors
def test_fp8_as_compressed_tensors_loads_it_answers_through_the_engine(quantized, golden_processor):
    """compressed-tensors keeps FP8 weights in ``nn.Linear`` modules; the engine's CPU weight layout must leave
    them as they are, or their forward multiplies float activations by float8 weights."""
    model = MossVLForConditionalGeneration.from_pretrained(quantized("golden", "fp8-dynamic")).eval()
    assert quantized_modules(model)
    query = {"prompt": "What is it?", "images": [Image.new("RGB", (64, 64), "red")]}
    answer = mossvl.chat(model, golden_processor, query, max_new_tokens=4, do_sample=False)
    assert isinstance(answer, str)


@needs_compressed_tensors
def test_adapting_leaves_gpu_targets_and_plain_models_alone(quantized, golden_model):
    model = AutoModelForCausalLM.from_pretrained(quantized("golden", "fp8-dynamic"), dtype=torch.float32)
    adapt_quantized_model(model, "cuda")
    assert len(quantized_modules(model)) == 28
    adapt_quantized_model(golden_model, "cpu")
    assert not any(isinstance(m, Int8DynamicLinear) for m in golden_model.modules())
