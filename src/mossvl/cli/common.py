"""Flags shared by the inference subcommands (checkpoint, device, engine, generation, media) and their kwargs.

Generation flags that are not given leave the checkpoint's ``generation_config.json`` (then the official
defaults) in charge; a query's own ``generate_kwargs`` win over both.
"""

from __future__ import annotations

import argparse

from ..constants import GENERATE_DEFAULTS


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--checkpoint",
        "--model",
        dest="checkpoint",
        default=None,
        help="model folder or hub id (config.json, safetensors, processor files); default: the shipped demo model",
    )
    group.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16", "auto"],
        help="weight dtype (default: float32 on the CPU, the checkpoint's dtype on a GPU; auto: the checkpoint's)",
    )
    group.add_argument(
        "--device", default="auto", help="torch device: auto (CUDA if available), cpu, cuda, cuda:1"
    )
    group.add_argument(
        "--attn-implementation",
        default=None,
        choices=["sdpa", "eager", "flash_attention_2"],
        help="attention kernel (default: sdpa; flash_attention_2 needs flash-attn on a GPU)",
    )
    group.add_argument(
        "--cross-attention-implementation",
        default=None,
        choices=["sdpa", "eager"],
        help="kernel of the cross-attention layers only (default: sdpa, or eager when --attn-implementation is eager)",
    )


def add_kv_cache_argument(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--kv-cache-dtype",
        default="auto",
        choices=["auto", "model", "int8"],
        help="KV cache storage: auto (default: int8 if the checkpoint's generation_config asks for an 8-bit "
        "quantized cache, else the model dtype), model (the model dtype), int8 (per-token scales: a quarter "
        "of fp32's memory, half of bf16's)",
    )


def kv_cache_dtype_from_args(args: argparse.Namespace) -> str | None:
    """``EngineConfig.kv_cache_dtype`` of ``--kv-cache-dtype`` (auto: None, the checkpoint's choice)."""
    return None if args.kv_cache_dtype == "auto" else args.kv_cache_dtype


# --silence-bias of the realtime and eval commands (RealtimeConfig.silence_bias).
SILENCE_BIAS_HELP = (
    "added to the logit of <|silence|> after each frame: below 0 speaks more readily (default: the checkpoint's "
    "generation_config)"
)


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "generation (defaults: the checkpoint's generation_config.json; a query's own generate_kwargs win)"
    )
    group.add_argument(
        "--max-new-tokens", type=int, default=None, help=f"default {GENERATE_DEFAULTS['max_new_tokens']}"
    )
    group.add_argument("--temperature", type=float, default=None, help="<= 0 means greedy")
    group.add_argument("--top-k", type=int, default=None)
    group.add_argument("--top-p", type=float, default=None)
    group.add_argument("--repetition-penalty", type=float, default=None)
    group.add_argument(
        "--do-sample", action="store_true", default=None, help="sample instead of greedy decoding"
    )
    group.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    group.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def add_media_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("media (defaults; a query's own media_kwargs win)")
    group.add_argument("--video-fps", type=float, default=None, help="video sampling rate (default 1.0)")
    group.add_argument("--max-frames", type=int, default=None, help="frame cap per query (default 256)")
    group.add_argument("--max-pixels", type=int, default=None, help="pixel cap per image or frame")


def generate_kwargs_from_args(args: argparse.Namespace) -> dict:
    """The generation flags that were given."""
    names = (
        "max_new_tokens",
        "temperature",
        "top_k",
        "top_p",
        "repetition_penalty",
        "do_sample",
        "seed",
        "stop",
    )
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def media_kwargs_from_args(args: argparse.Namespace) -> dict:
    pairs = {"video_fps": args.video_fps, "max_frames": args.max_frames, "max_pixels": args.max_pixels}
    return {key: value for key, value in pairs.items() if value is not None}


def load_from_args(args: argparse.Namespace):
    """(model, processor) for the model flags."""
    from ..inference.api import load

    kwargs = {}
    if args.cross_attention_implementation is not None:
        kwargs["cross_attention_implementation"] = args.cross_attention_implementation
    return load(
        args.checkpoint,
        dtype=args.dtype,
        device=args.device,
        attn_implementation=args.attn_implementation,
        **kwargs,
    )
