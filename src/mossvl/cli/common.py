"""Flags shared by the inference subcommands (checkpoint, device, generation, media) and their conversion to kwargs."""

from __future__ import annotations

import argparse

from ..constants import GENERATE_DEFAULTS, VISION_CHUNKED_LENGTH

# The CLI answers are short by default, like the reference run_inference.py (256); queries may ask for more.
CLI_MAX_NEW_TOKENS = 256


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--checkpoint",
        "--model",
        dest="checkpoint",
        default=None,
        help="model folder (config.json, safetensors, processor files); default: the shipped demo model",
    )
    group.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    group.add_argument(
        "--attn-implementation",
        default=None,
        choices=["sdpa", "eager", "flash_attention_2"],
        help="attention kernel (default: sdpa; flash_attention_2 needs flash-attn on a GPU)",
    )
    group.add_argument(
        "--vision-chunked-length",
        type=int,
        default=VISION_CHUNKED_LENGTH,
        help="media items per vision-tower forward (memory knob)",
    )


def add_generation_arguments(
    parser: argparse.ArgumentParser, max_new_tokens: int = CLI_MAX_NEW_TOKENS
) -> None:
    group = parser.add_argument_group("generation (defaults; a query's own generate_kwargs win)")
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    group.add_argument(
        "--temperature", type=float, default=GENERATE_DEFAULTS["temperature"], help="<= 0 means greedy"
    )
    group.add_argument("--top-k", type=int, default=GENERATE_DEFAULTS["top_k"])
    group.add_argument("--top-p", type=float, default=GENERATE_DEFAULTS["top_p"])
    group.add_argument("--repetition-penalty", type=float, default=GENERATE_DEFAULTS["repetition_penalty"])
    group.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    group.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    group.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def add_media_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("media (defaults; a query's own media_kwargs win)")
    group.add_argument("--video-fps", type=float, default=None, help="video sampling rate (default 1.0)")
    group.add_argument("--max-frames", type=int, default=None, help="frame cap per query (default 256)")
    group.add_argument("--max-pixels", type=int, default=None, help="pixel cap per image or frame")


def generate_kwargs_from_args(args: argparse.Namespace) -> dict:
    kwargs = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
        "do_sample": args.do_sample,
    }
    if args.seed is not None:
        kwargs["seed"] = args.seed
    if args.stop:
        kwargs["stop"] = list(args.stop)
    return kwargs


def media_kwargs_from_args(args: argparse.Namespace) -> dict:
    pairs = {"video_fps": args.video_fps, "max_frames": args.max_frames, "max_pixels": args.max_pixels}
    return {key: value for key, value in pairs.items() if value is not None}


def load_from_args(args: argparse.Namespace):
    """(model, processor) for the --checkpoint/--dtype/--device/--attn-implementation flags."""
    from ..inference.api import load

    return load(
        args.checkpoint, dtype=args.dtype, device=args.device, attn_implementation=args.attn_implementation
    )
