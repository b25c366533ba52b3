"""`mossvl quantize` / quantize_checkpoint: the written layout and formats, reloading, generation, and the refusals."""

import importlib.util
import json
import struct
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import mossvl
from mossvl.cli.main import main
from mossvl.errors import CheckpointError, ConfigError
from mossvl.evaluation import load_questions
from mossvl.model import MossVLForConditionalGeneration
from mossvl.quantization import (
    Int8DynamicLinear,
    MossVLInt8DynamicConfig,
    adapt_quantized_model,
    quantize_checkpoint,
)
from mossvl.quantization import scope as sc
from mossvl.quantization.fp8 import quantized_modules

# Max |logits - fp32 logits| over the golden cases (benchmarks/bench_quantization.py; logits have std ~1), with
# about 1.5x headroom: int8-dynamic measured 0.17 with 8-bit activations and 0.35 with the 7-bit ones of CPUs
# without AVX512-VNNI; FP8 run through compressed-tensors 0.41.
DRIFT_BOUND = {"int8-dynamic": 0.5, "fp8-dynamic": 0.6}
GOLDEN_CASES = ["text_only", "image_single", "image_two", "video_single", "interleaved"]
INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "grid_thw", "media_nums_per_sample")

# FP8 needs the optional compressed-tensors package (the `quant` extra); int8-dynamic needs nothing extra.
needs_compressed_tensors = pytest.mark.skipif(
    importlib.util.find_spec("compressed_tensors") is None,
    reason="FP8 needs compressed-tensors: pip install 'mossvl[quant]'",
)
CPU_METHODS = ["int8-dynamic", pytest.param("fp8-dynamic", marks=needs_compressed_tensors)]


def safetensors_header(folder) -> dict:
    with open(folder / "model.safetensors", "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def golden_targets(golden_dir) -> list[str]:
    config = json.loads((golden_dir / "config.json").read_text())
    return sc.dense_targets(sc.layer_scope(mossvl.MossVLTextConfig(**config["text_config"])))


def max_drift(model, reference, golden_expected) -> float:
    drift = 0.0
    for name in GOLDEN_CASES:
        expected = golden_expected(name)
        inputs = {key: expected[key] for key in INPUT_KEYS}
        with torch.no_grad():
            ours = model(**inputs, use_cache=False).logits
            base = reference(**inputs, use_cache=False).logits
        drift = max(drift, (ours - base).abs().max().item())
    return drift


@pytest.mark.parametrize(
    ("method", "weight_dtype", "scale_dtype", "report"),
    [
        ("int8-dynamic", "I8", "F32", "quantization_report.json"),
        pytest.param(
            "fp8-dynamic", "F8_E4M3", "BF16", "mossvl_fp8_dynamic_report.json", marks=needs_compressed_tensors
        ),
    ],
)
def test_layout_scope_and_report(quantized, golden_dir, method, weight_dtype, scale_dtype, report):
    folder = quantized("golden", method)
    targets = golden_targets(golden_dir)
    assert len(targets) == 28  # 7 x the 4 self-attention layers of the golden model
    header = safetensors_header(folder)
    for name in targets:
        assert header[f"{name}.weight"]["dtype"] == weight_dtype
        out_features = header[f"{name}.weight"]["shape"][0]
        assert header[f"{name}.weight_scale"]["dtype"] == scale_dtype
        assert header[f"{name}.weight_scale"]["shape"] == [out_features, 1]
    kept = [key for key in header if key != "__metadata__" and not key.startswith(tuple(targets))]
    assert {header[key]["dtype"] for key in kept} == {"BF16"}  # the source's dtype
    assert any(".cross_attn.q_proj." in key for key in kept) and "lm_head.weight" in kept
    assert not any(key.endswith("weight_scale") for key in kept)

    written = json.loads((folder / report).read_text())
    assert written["method"] == method
    assert written["quantized_count"] == written["expected_count"] == 28
    assert written["quantized_modules"] == targets
    assert written["scope"]["cross_attention_layers"] == [1, 4]
    sizes = written["sizes"]
    assert sizes["quantized_linears_bytes_after"] < sizes["quantized_linears_bytes_before"]
    assert sizes["output_weights_bytes"] < sizes["source_weights_bytes"]

    for support in ("preprocessor_config.json", "video_preprocessor_config.json", "generation_config.json"):
        assert (folder / support).read_bytes() == (golden_dir / support).read_bytes()
    assert (folder / "tokenizer" / "tokenizer.json").is_file()


@needs_compressed_tensors
def test_fp8_config_is_the_official_compressed_tensors_format(quantized, golden_dir):
    config = json.loads((quantized("golden", "fp8-dynamic") / "config.json").read_text())
    quantization = config["quantization_config"]
    assert quantization["quant_method"] == "compressed-tensors"
    assert quantization["format"] == "float-quantized"
    group = quantization["config_groups"]["group_0"]
    assert group["targets"] == ["Linear"]
    fields = ("num_bits", "type", "strategy", "symmetric", "dynamic")
    assert [group["weights"][key] for key in fields] == [8, "float", "channel", True, False]
    assert [group["input_activations"][key] for key in fields] == [8, "float", "token", True, True]
    ignored = set(quantization["ignore"])
    assert {
        "lm_head",
        "model.language_model.layers.1.cross_attn.q_proj",
        "model.visual.merger.linear_fc1",
    } <= ignored
    assert "model.language_model.layers.1.mlp.up_proj" in ignored
    assert not ignored & set(golden_targets(golden_dir))


@pytest.mark.parametrize("method", CPU_METHODS)
def test_reloads_with_both_apis_and_stays_close_to_fp32(quantized, golden_model, golden_expected, method):
    folder = quantized("golden", method)
    model, processor = mossvl.load(folder)
    auto = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert isinstance(auto, MossVLForConditionalGeneration)
    layer = model.model.language_model.layers[0].self_attn.q_proj
    # On the CPU mossvl.load runs FP8 layers as int8-dynamic ones (faster there); the Auto class keeps them FP8.
    assert isinstance(layer, Int8DynamicLinear) and layer.is_packed
    if method != "int8-dynamic":
        assert len(quantized_modules(auto)) == 28
        assert auto.model.language_model.layers[0].self_attn.q_proj.weight.dtype == torch.float8_e4m3fn
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id
    drift = max_drift(model, golden_model, golden_expected)
    print(f"{method}: max golden logit drift {drift:.3f}")
    assert 0 < drift <= DRIFT_BOUND[method]
    if method != "int8-dynamic":
        adapt_quantized_model(auto, "cpu")  # what mossvl.load does on the CPU
    assert max_drift(auto, model, golden_expected) == 0.0


@pytest.mark.parametrize("method", CPU_METHODS)
def test_generate_greedy_tokens(quantized, golden_expected, method):
    model, _ = mossvl.load(quantized("golden", method))
    expected = golden_expected("image_single")
    inputs = {key: expected[key] for key in (*INPUT_KEYS, "cross_attention_mask")}
    with torch.no_grad():
        first = model(**inputs, use_cache=False).logits[:, -1].argmax(dim=-1)
        tokens = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = tokens[:, inputs["input_ids"].shape[1] :]
    assert new.shape == (1, 8)
    assert new[0, 0] == first[0]


@pytest.mark.parametrize("method", CPU_METHODS)
def test_demo_model_still_answers_the_sample_questions(quantized, method):
    from mossvl.data.synthetic import SAMPLES_DIR

    questions = load_questions(SAMPLES_DIR / "questions.json", check_media=True)
    model, processor = mossvl.load(quantized("demo", method))
    answers = mossvl.batch_chat(model, processor, [q.to_query() for q in questions], max_new_tokens=8)
    assert answers == [q.answer for q in questions]  # what the fp32 model answers (README "The demo model")


def test_quantize_while_loading(golden_dir, golden_model, golden_expected):
    config = MossVLInt8DynamicConfig()
    model = MossVLForConditionalGeneration.from_pretrained(
        golden_dir, dtype=torch.float32, quantization_config=config
    ).eval()
    names = [name for name, module in model.named_modules() if isinstance(module, Int8DynamicLinear)]
    assert names == config.targets == golden_targets(golden_dir)
    assert max_drift(model, golden_model, golden_expected) <= DRIFT_BOUND["int8-dynamic"]


def test_sharded_output_has_an_index_and_reloads(quantized, golden_dir, golden_expected, tmp_path):
    report = quantize_checkpoint(golden_dir, tmp_path, "int8-dynamic", max_shard_size="1MB")
    shards = sorted(path.name for path in tmp_path.glob("model*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    whole_folder = quantized("golden", "int8-dynamic")
    whole_report = json.loads((whole_folder / "quantization_report.json").read_text())
    assert report["sizes"]["output_weights_bytes"] == whole_report["sizes"]["output_weights_bytes"]
    sharded, _ = mossvl.load(tmp_path)
    whole, _ = mossvl.load(whole_folder)
    assert max_drift(sharded, whole, golden_expected) == 0.0


def test_cli_writes_the_checkpoint_and_prints_a_summary(golden_dir, tmp_path, capsys):
    output = tmp_path / "out"
    assert (
        main(["quantize", "--source", str(golden_dir), "--output", str(output), "--method", "int8-dynamic"])
        == 0
    )
    assert "int8-dynamic: quantized 28 linears (expected 28)" in capsys.readouterr().out
    assert (output / "config.json").is_file() and (output / "quantization_report.json").is_file()


def test_non_empty_output_is_refused(golden_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="is not empty"):
        quantize_checkpoint(golden_dir, tmp_path, "int8-dynamic")
    args = ["quantize", "--source", str(golden_dir), "--output", str(tmp_path), "--method", "fp8-dynamic"]
    assert main(args) == 2
    assert "is not empty; pass a new or empty folder" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


def test_bad_scope_is_refused(golden_dir, tmp_path, capsys):
    output = tmp_path / "out"
    args = ["quantize", "--source", str(golden_dir), "--output", str(output), "--method", "int8-dynamic"]
    assert main([*args, "--cross-layers", "2,6"]) == 2
    assert "unexpected scope: --cross-layers [2, 6] but the checkpoint's" in capsys.readouterr().err
    assert main([*args, "--num-layers", "48"]) == 2
    assert "--num-layers 48 but" in capsys.readouterr().err
    assert not output.exists()


def test_nf4_on_cpu_is_a_clear_error(golden_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        quantize_checkpoint(golden_dir, tmp_path / "out", "nf4")
    args = ["quantize", "--source", str(golden_dir), "--output", str(tmp_path / "out"), "--method", "nf4"]
    assert main(args) == 2
    assert "bitsandbytes NF4 is a GPU format" in capsys.readouterr().err


def test_fp8_without_compressed_tensors_names_the_install(golden_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "compressed_tensors", None)  # makes `import compressed_tensors` fail
    with pytest.raises(ConfigError, match=r"pip install 'mossvl\[quant\]'"):
        quantize_checkpoint(golden_dir, tmp_path / "out", "fp8-dynamic")
    assert not (tmp_path / "out").exists()


def test_a_source_that_is_not_moss_vl_is_refused(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="is not a MOSS-VL checkpoint \\(model_type 'llama'\\)"):
        quantize_checkpoint(tmp_path / "src", tmp_path / "out", "int8-dynamic")


def test_an_already_quantized_source_is_refused(quantized, tmp_path):
    with pytest.raises(CheckpointError, match=r"already quantized \(mossvl-int8-dynamic\)"):
        quantize_checkpoint(quantized("golden", "int8-dynamic"), tmp_path / "out", "fp8-dynamic")
