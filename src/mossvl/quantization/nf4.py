"""NF4 keep-ends, the official bitsandbytes recipe: 4-bit NormalFloat weights with double quantization and bf16
compute (W4A16), the first and last ``keep_end_layers`` language layers, every ``cross_attn``, the vision tower
and ``lm_head`` kept in 16-bit (scope in :mod:`mossvl.quantization.scope`). bitsandbytes quantizes while
transformers loads the weights, on a CUDA GPU; the official checkpoints load on GPUs only, and so do ours.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError


def require_cuda(what: str) -> None:
    """Raise ConfigError unless a CUDA GPU and bitsandbytes are there."""
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{what} needs a CUDA GPU (bitsandbytes NF4 is a GPU format) and none is available; on the CPU use "
            "--method int8-dynamic (or fp8-dynamic for a GPU checkpoint made on the CPU)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"{what} needs bitsandbytes: pip install 'mossvl[nf4]'") from exc


def nf4_config(skip_modules: Sequence[str]):
    """The official NF4 settings as a transformers ``BitsAndBytesConfig`` that leaves ``skip_modules`` in 16-bit."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=list(skip_modules),
    )


def nf4_modules(model: nn.Module) -> list[str]:
    """Names of the model's bitsandbytes 4-bit linears."""
    import bitsandbytes as bnb

    return [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
