"""Loading quantized checkpoints: clear errors before a load that cannot work, and the CPU form of FP8 models.

* :func:`check_quantized_checkpoint` (call before ``from_pretrained``): NF4 (bitsandbytes) needs a CUDA GPU,
  int8-dynamic runs on the CPU only, FP8 (compressed-tensors) needs that package; also runs
  :func:`check_kv_cache_packaging`.
* :func:`check_kv_cache_packaging`: the official KV8 packaging (``cache_implementation: "quantized"`` with an HQQ
  ``cache_config`` in ``generation_config.json``) is detected and reported; :func:`packaged_kv_cache_dtype` tells
  the inference engine, which then keeps its KV cache in int8 (its own per-token scales, not HQQ).
* :func:`adapt_quantized_model` (call after loading): on the CPU an FP8 model's layers become int8-dynamic layers,
  the fastest of the three CPU options measured by benchmarks/bench_quantization.py (the others: compressed-tensors'
  FP8 emulation, which transformers uses by default and decodes slower than fp32, and weights dequantized at load,
  as fast as fp32); every demo-model task stays within 2 points of fp32.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from ..errors import CheckpointError
from .fp8 import quantized_modules, require_compressed_tensors, to_int8_dynamic
from .int8_quantizer import INT8_DYNAMIC_METHOD

COMPRESSED_TENSORS = "compressed-tensors"
BITSANDBYTES_4BIT = "bitsandbytes_4bit"


class QuantizedCacheWarning(UserWarning):
    """A checkpoint asks for a quantized KV cache that mossvl does not build as asked (HQQ)."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {str(path)!r}: {exc}") from exc


def checkpoint_quantization(folder: str | os.PathLike) -> dict | None:
    """The ``quantization_config`` of ``folder/config.json`` (top level, else in ``text_config``), or None."""
    config = _read_json(Path(folder) / "config.json")
    found = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config")
    return dict(found) if found else None


def quantization_method(quantization_config: dict | None) -> str | None:
    """The method a ``quantization_config`` dict names, with bitsandbytes' 4-/8-bit told apart."""
    if not quantization_config:
        return None
    if quantization_config.get("load_in_4bit"):
        return BITSANDBYTES_4BIT
    if quantization_config.get("load_in_8bit"):
        return "bitsandbytes_8bit"
    return quantization_config.get("quant_method")


def packaged_kv_cache_dtype(generation: dict | None) -> str | None:
    """``"int8"`` when a generation config (as a dict) asks for an 8-bit quantized KV cache, as the official KV8
    packaging does; else None."""
    if not generation or generation.get("cache_implementation") != "quantized":
        return None
    return "int8" if (generation.get("cache_config") or {}).get("nbits") == 8 else None


def check_kv_cache_packaging(folder: str | os.PathLike, strict: bool = False) -> dict | None:
    """Detect the official KV8 packaging in ``folder/generation_config.json``; return its cache settings or None.

    mossvl builds no HQQ cache: for 8 bits its engines keep their KV cache (self- and cross-attention) in int8 with
    their own per-token scales instead, for other widths in the model dtype. A ``QuantizedCacheWarning`` says so,
    or with ``strict=True`` a CheckpointError refuses the checkpoint.
    """
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return None
    generation = _read_json(path)
    if generation.get("cache_implementation") != "quantized":
        return None
    settings = dict(generation.get("cache_config") or {})
    described = ", ".join(f"{key} {value}" for key, value in sorted(settings.items())) or "no cache_config"
    if packaged_kv_cache_dtype(generation) == "int8":
        honoured = (
            "mossvl builds no HQQ cache; its engines keep this model's KV cache in int8 with their own per-token "
            "scales instead (EngineConfig.kv_cache_dtype / --kv-cache-dtype 'model' keeps the model dtype)"
        )
    else:
        honoured = "mossvl has no such cache: its KV cache stays in the model dtype, exact but larger"
    message = (
        f"{str(path)!r} asks for a quantized KV cache (cache_implementation 'quantized': {described}; the "
        f"official KV8 HQQ packaging). {honoured}"
    )
    if strict:
        raise CheckpointError(message)
    warnings.warn(message, QuantizedCacheWarning, stacklevel=2)
    return settings


def check_quantized_checkpoint(folder: str | os.PathLike, device: str | torch.device = "cpu") -> None:
    """Raise CheckpointError if ``folder``'s quantization cannot be loaded on ``device``, naming what would work."""
    device = torch.device(device)
    method = quantization_method(checkpoint_quantization(folder))
    if method == BITSANDBYTES_4BIT and device.type != "cuda":
        raise CheckpointError(
            f"{str(folder)!r} is an NF4 (bitsandbytes 4-bit) checkpoint, which loads on a CUDA GPU only; pass "
            "device='cuda' (and pip install 'mossvl[nf4]'), or on the CPU use the 16-bit checkpoint, optionally "
            "quantized with `mossvl quantize --method int8-dynamic`"
        )
    if method == INT8_DYNAMIC_METHOD and device.type != "cpu":
        raise CheckpointError(
            f"{str(folder)!r} is an int8-dynamic checkpoint, which runs on the CPU only; load it with "
            "device='cpu', or quantize the 16-bit checkpoint with fp8-dynamic or nf4 for a GPU"
        )
    if method == COMPRESSED_TENSORS:
        try:
            require_compressed_tensors()
        except Exception as exc:
            raise CheckpointError(f"cannot load {str(folder)!r}: {exc}") from exc
    check_kv_cache_packaging(folder)


def adapt_quantized_model(model: torch.nn.Module, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Give a loaded quantized model its fastest form for ``device``: on the CPU, FP8 (compressed-tensors) layers
    become int8-dynamic layers (see :func:`mossvl.quantization.fp8.to_int8_dynamic`); anything else is unchanged."""
    if torch.device(device).type == "cpu" and quantized_modules(model):
        to_int8_dynamic(model)
    return model


def run_decompression_hook(model: torch.nn.Module) -> bool:
    """Do now what a compressed-tensors model does on its first ``forward`` (a pre-hook that decompresses its FP8
    weights in place); returns whether it had to. The engine calls the model's layers directly, so that hook would
    never run and the layers would multiply float activations by FP8 weights."""
    if getattr(model, "ct_decompress_hook", None) is None:
        return False
    model.hf_quantizer.compressor.decompress_model(model)
    return True
