"""Entry point of the `mossvl` command: dispatches to one module per subcommand and turns errors into one line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Collection

# Subcommand name -> module with `add_arguments(parser)` and `run(args) -> int`. Imported lazily so that
# `mossvl --help` stays fast and one broken subcommand cannot break the others.
SUBCOMMANDS = {
    "ask": ("mossvl.cli.ask", "Ask a question about images and videos, streaming the answer."),
    "run": ("mossvl.cli.run", "Run a JSON/JSONL file of queries and write the results."),
    "finetune": ("mossvl.cli.finetune", "Fine-tune a model (full or LoRA) on JSON/JSONL data."),
    "eval": ("mossvl.cli.evaluate", "Evaluate a model on a question set."),
    "quantize": ("mossvl.cli.quantize", "Write a quantized copy of a checkpoint (int8, FP8 or NF4)."),
    "serve": ("mossvl.cli.serve", "Serve a model over an OpenAI-compatible HTTP API."),
    "realtime": ("mossvl.cli.realtime", "Stream a video or a camera into a realtime session."),
}


def build_parser(
    commands: Collection[str] | None = None,
) -> tuple[argparse.ArgumentParser, dict[str, object]]:
    """The parser and the modules of ``commands`` (None: all). Every subcommand is listed, but only those of
    ``commands`` get their arguments, so that ``mossvl --help`` and a CLI error import none of them."""
    parser = argparse.ArgumentParser(prog="mossvl", description="MOSS-VL video and image understanding.")
    parser.add_argument("--version", action="version", version=f"mossvl {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = None
        if commands is None or name in commands:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                continue
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if module is not None:
            module.add_arguments(sub)
            modules[name] = module
    return parser, modules


def _command(argv: list[str]) -> str | None:
    """The subcommand of a command line: its first positional argument (the top level has no option with a value)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mossvl")
    except PackageNotFoundError:
        return "0+unknown"


def main(argv: list[str] | None = None) -> int:
    from mossvl.errors import MossVLError

    argv = sys.argv[1:] if argv is None else argv
    parser, modules = build_parser([_command(argv)])
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except MossVLError as exc:
        print(f"mossvl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"mossvl {args.command}: error: file not found: {exc.filename or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mossvl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
