"""`mossvl quantize --source CKPT --output DIR --method ...`: write a quantized copy of a 16-bit checkpoint.

Methods: ``int8-dynamic`` (the fastest CPU path: int8 weights per channel, int8 activations per call),
``fp8-dynamic`` (the official compressed-tensors FP8_DYNAMIC format; runs on GPUs, and on CPUs via int8) and
``nf4`` (the official bitsandbytes NF4 keep-ends recipe; needs a CUDA GPU). The scope is the official one, read
from the checkpoint's config; the output loads with ``mossvl.load(DIR)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _layer_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected layer indices like 2,6,10, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..quantization.checkpoint import DTYPES, METHODS
    from ..quantization.scope import DEFAULT_KEEP_END_LAYERS, EXTENTS

    parser.add_argument("--source", required=True, type=Path, help="16-bit checkpoint folder")
    parser.add_argument(
        "--output", required=True, type=Path, help="new or empty folder for the quantized copy"
    )
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument(
        "--scope",
        default="official",
        choices=EXTENTS,
        help="linears to quantize (int8-dynamic, fp8-dynamic): official = the self-attention layers' q/k/v/o and "
        "MLP linears; official+lm_head adds lm_head (faster CPU decoding); decoder+lm_head also the "
        "cross-attention layers (least accurate)",
    )
    parser.add_argument(
        "--num-layers", type=int, default=None, help="expected text_config.num_hidden_layers (checked)"
    )
    parser.add_argument(
        "--cross-layers",
        type=_layer_list,
        default=None,
        help="expected text_config.cross_attention_layers, e.g. 2,6,10 (checked)",
    )
    parser.add_argument(
        "--keep-end-layers",
        type=int,
        default=DEFAULT_KEEP_END_LAYERS,
        help=f"nf4: language layers kept in 16-bit at each end (default {DEFAULT_KEEP_END_LAYERS})",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=sorted(DTYPES),
        help="dtype of the tensors left unquantized (default: the source's)",
    )
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")


def run(args: argparse.Namespace) -> int:
    from ..quantization import quantize_checkpoint
    from ..quantization.checkpoint import REPORT_NAMES

    report = quantize_checkpoint(
        args.source,
        args.output,
        args.method,
        scope=args.scope,
        num_layers=args.num_layers,
        cross_layers=args.cross_layers,
        keep_end_layers=args.keep_end_layers,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
    )
    sizes = report["sizes"]
    mib = 2**20
    print(
        f"{args.method}: quantized {report['quantized_count']} linears (expected {report['expected_count']}); "
        f"weights {sizes['source_weights_bytes'] / mib:.1f} MiB -> {sizes['output_weights_bytes'] / mib:.1f} MiB "
        f"(quantized linears {sizes['quantized_linears_bytes_before'] / mib:.1f} -> "
        f"{sizes['quantized_linears_bytes_after'] / mib:.1f} MiB)"
    )
    print(f"wrote {args.output} (report: {args.output / REPORT_NAMES[args.method]})")
    return 0
