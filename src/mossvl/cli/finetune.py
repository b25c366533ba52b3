"""`mossvl finetune`: fine-tune a model (full or LoRA) on JSON/JSONL data; every flag goes to the training parser.

Same flags as ``python -m mossvl.training.finetune`` (HfArgumentParser over the model, data and HF training
arguments), e.g. ``mossvl finetune --model_name_or_path M --data_path train.json --output_dir out --bf16 True``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        help="training flags (see `mossvl finetune --help`), or one .json/.yaml file holding them",
    )
    # HfArgumentParser owns the flags. With no option prefix here, argparse hands every token (--help included)
    # to `args` untouched instead of rejecting the unknown `--flag`s; importing transformers is left to `run`.
    parser.prefix_chars = "\0"


def run(args: argparse.Namespace) -> int:
    from ..training.finetune import main

    return main(args.args, prog="mossvl finetune")
