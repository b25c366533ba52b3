"""``quantize_checkpoint``: quantize a 16-bit MOSS-VL checkpoint folder into a new folder in the official layout.

The output holds ``config.json`` (with its ``quantization_config``), ``model*.safetensors`` (+ index when
sharded), the source's support files (processor and video-processor configs, tokenizer, chat template,
generation config, anything else that is not weights) and a JSON report of what was quantized.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from ..errors import CheckpointError, ConfigError
from . import scope as sc
from .fp8 import quantize_fp8_dynamic, quantized_modules, require_compressed_tensors
from .int8_linear import Int8DynamicLinear
from .int8_quantizer import MossVLInt8DynamicConfig, register
from .loading import checkpoint_quantization, quantization_method
from .nf4 import nf4_config, nf4_modules, require_cuda

REPORT_NAMES = {
    "int8-dynamic": "quantization_report.json",
    "fp8-dynamic": "mossvl_fp8_dynamic_report.json",  # the official scripts' report names
    "nf4": "quantization_report.json",
}
METHODS = tuple(REPORT_NAMES)
SCHEMES = {
    "int8-dynamic": "int8 weights (symmetric, per output channel) + int8 activations quantized per call (CPU)",
    "fp8-dynamic": "compressed-tensors FP8_DYNAMIC: FP8 e4m3 weights with per-channel static scales, FP8 "
    "activations quantized per token at run time",
    "nf4": "bitsandbytes NF4 with double quantization and bf16 compute (W4A16), keep-ends",
}
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth")
DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class _Quantized:
    """A quantized model in memory, the names of its quantized linears, and a step to run after saving."""

    model: torch.nn.Module
    names: list[str]
    after_save: Callable[[Path], None] | None = None


def check_output_folder(output: str | os.PathLike) -> None:
    """Raise CheckpointError unless ``output`` is absent or an empty folder."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise CheckpointError(f"output {str(output)!r} is a file; pass a new or empty folder")
    if output.is_dir() and any(output.iterdir()):
        raise CheckpointError(
            f"output folder {str(output)!r} is not empty; pass a new or empty folder (nothing was written)"
        )


def quantize_checkpoint(
    source: str | os.PathLike,
    output: str | os.PathLike,
    method: str,
    scope: str = "official",
    num_layers: int | None = None,
    cross_layers: Sequence[int] | None = None,
    keep_end_layers: int = sc.DEFAULT_KEEP_END_LAYERS,
    dtype: str = "auto",
    max_shard_size: str = "5GB",
) -> dict:
    """Quantize ``source`` into ``output`` with ``method`` (int8-dynamic, fp8-dynamic or nf4) and return the report.

    ``scope`` widens int8/FP8 beyond the official self-attention layers (``official+lm_head``, ``decoder+lm_head``);
    ``num_layers`` / ``cross_layers`` must match the checkpoint's config when given; ``keep_end_layers`` is NF4's.
    ``dtype`` is the dtype of the tensors left unquantized (``auto``: the source's). Nothing is written when a
    check fails: a non-empty output, a source that is not a 16-bit MOSS-VL checkpoint, an unexpected scope or count.
    """
    from ..model import MossVLConfig

    source, output = Path(source), Path(output)
    if method not in METHODS:
        raise ConfigError(f"unknown quantization method {method!r}; choose one of {list(METHODS)}")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {list(DTYPES)}")
    if not (source / "config.json").is_file():
        raise CheckpointError(f"source {str(source)!r} is not a checkpoint folder (no config.json)")
    model_type = json.loads((source / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type != MossVLConfig.model_type:
        raise CheckpointError(
            f"source {str(source)!r} is not a MOSS-VL checkpoint (model_type {model_type!r})"
        )
    check_output_folder(output)
    already = quantization_method(checkpoint_quantization(source))
    if already:
        raise CheckpointError(
            f"source {str(source)!r} is already quantized ({already}); quantize the 16-bit checkpoint instead"
        )
    layers = sc.layer_scope(MossVLConfig.from_pretrained(source).text_config, num_layers, cross_layers)
    if method == "nf4":
        if scope != "official":
            raise ConfigError(
                "nf4 has one scope, the official keep-ends one (use --keep-end-layers to change it)"
            )
        require_cuda("--method nf4")
        targets = sc.keep_ends_targets(layers, keep_end_layers)
        expected = sc.expected_keep_ends_count(layers, keep_end_layers)
    else:
        if method == "fp8-dynamic":
            require_compressed_tensors()
        targets = sc.dense_targets(layers, scope)
        expected = sc.expected_dense_count(layers, scope)

    started = time.perf_counter()
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one bar per tensor is noise on a command line
    try:
        if method == "int8-dynamic":
            quantized = _int8_dynamic(source, targets, scope, DTYPES[dtype])
        elif method == "fp8-dynamic":
            quantized = _fp8_dynamic(source, targets, DTYPES[dtype])
        else:
            quantized = _nf4(source, layers, keep_end_layers)
        sc.check_count(quantized.names, expected, method)
        quantized.model.save_pretrained(output, max_shard_size=max_shard_size)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    if quantized.after_save is not None:
        quantized.after_save(output)
    copy_support_files(source, output)
    report = _report(source, output, method, scope, layers, keep_end_layers, quantized, expected)
    report["seconds"] = round(time.perf_counter() - started, 2)
    (output / REPORT_NAMES[method]).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _int8_dynamic(source: Path, targets: list[str], scope: str, dtype) -> _Quantized:
    from ..model import MossVLForConditionalGeneration

    register()
    config = MossVLInt8DynamicConfig(targets=targets, scope=scope)
    model = MossVLForConditionalGeneration.from_pretrained(source, dtype=dtype, quantization_config=config)
    names = [name for name, module in model.named_modules() if isinstance(module, Int8DynamicLinear)]
    return _Quantized(model, names)


def _fp8_dynamic(source: Path, targets: list[str], dtype) -> _Quantized:
    from ..model import MossVLForConditionalGeneration

    model = MossVLForConditionalGeneration.from_pretrained(source, dtype=dtype)
    sc.check_linear_targets(model, targets)
    compressor = quantize_fp8_dynamic(model, targets)
    return _Quantized(model, list(quantized_modules(model)), compressor.update_config)


def _nf4(source: Path, layers: sc.LayerScope, keep_end_layers: int) -> _Quantized:
    from ..model import MossVLForConditionalGeneration

    config = nf4_config(sc.keep_ends_skipped(layers, keep_end_layers))
    model = MossVLForConditionalGeneration.from_pretrained(
        source, dtype=torch.bfloat16, quantization_config=config, device_map={"": torch.cuda.current_device()}
    )
    return _Quantized(model, nf4_modules(model))


def copy_support_files(source: Path, output: Path) -> list[str]:
    """Copy everything of ``source`` that is not weights or ``config.json`` into ``output`` (the source's own
    generation config replaces the one ``save_pretrained`` wrote); returns the copied names."""
    copied = []
    for path in sorted(source.iterdir()):
        if path.name == "config.json" or path.name.startswith(".") or path.name.endswith(WEIGHT_SUFFIXES):
            continue
        if path.is_dir():
            shutil.copytree(path, output / path.name, dirs_exist_ok=True)
        else:
            shutil.copy2(path, output / path.name)
        copied.append(path.name)
    return copied


def tensor_bytes(folder: Path) -> dict[str, int]:
    """Stored size of every tensor in ``folder``'s safetensors files, read from their headers."""
    sizes = {}
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            # safetensors layout: an 8-byte little-endian header length, then the JSON header.
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                start, end = entry["data_offsets"]
                sizes[name] = end - start
    return sizes


def _module_bytes(sizes: dict[str, int], modules: Sequence[str]) -> int:
    prefixes = tuple(f"{name}." for name in modules)
    return sum(size for name, size in sizes.items() if name.startswith(prefixes))


def _versions(method: str) -> dict[str, str]:
    packages = ["mossvl", "torch", "transformers"]
    packages += {"fp8-dynamic": ["compressed-tensors"], "nf4": ["bitsandbytes"]}.get(method, [])
    return {name: metadata.version(name) for name in packages}


def _report(
    source: Path,
    output: Path,
    method: str,
    scope: str,
    layers: sc.LayerScope,
    keep_end_layers: int,
    quantized: _Quantized,
    expected: int,
) -> dict:
    before, after = tensor_bytes(source), tensor_bytes(output)
    layout = {
        "extent": "keep-ends" if method == "nf4" else scope,
        "num_hidden_layers": layers.num_layers,
        "cross_attention_layers": list(layers.cross_layers),
        "self_attention_layers": list(layers.self_layers),
    }
    if method == "nf4":
        layout["keep_end_layers"] = keep_end_layers
    return {
        "method": method,
        "scheme": SCHEMES[method],
        "source": str(source),
        "output": str(output),
        "scope": layout,
        "expected_count": expected,
        "quantized_count": len(quantized.names),
        "quantized_modules": quantized.names,
        "sizes": {
            "source_weights_bytes": sum(before.values()),
            "output_weights_bytes": sum(after.values()),
            "quantized_linears_bytes_before": _module_bytes(before, quantized.names),
            "quantized_linears_bytes_after": _module_bytes(after, quantized.names),
        },
        "unquantized_dtype": str(quantized.model.dtype).removeprefix("torch."),
        "versions": _versions(method),
    }
