"""The `llamagen` command. Each sub-command is a `run_*(args)` function; the parsers live only in this package.

`build_parser` makes the command and its groups (train, export, eval, sweep); each module adds its own sub-commands:
`inference` (reconstruct, generate, complete, demo), `sampling` (sample), `training` (extract-codes, train ...),
`evaluation` (eval, export, sweep).
Heavy modules are imported inside the `run_*` functions, so that `llamagen --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys

from llamagen.cli import evaluation, inference, sampling, training
from llamagen.cli.common import USER_ERRORS, check_output_path, parse_config
from llamagen.fast.freed_memory import keep_freed_memory

__all__ = ["build_parser", "check_output_path", "command", "main", "parse_config"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamagen", description="LlamaGen: VQ image tokenizer and Llama image generator"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    # In the order `llamagen --help` lists them.
    inference.add_commands(commands)
    sampling.add_sample_command(commands)
    training.add_extract_codes(commands)
    evaluate = commands.add_parser("eval", help="evaluate a model").add_subparsers(dest="model", required=True)
    export = commands.add_parser("export", help="ship a trained model").add_subparsers(dest="model", required=True)
    train = commands.add_parser("train", help="train a model").add_subparsers(dest="model", required=True)
    sweep = commands.add_parser("sweep", help="studies over many small models").add_subparsers(
        dest="study", required=True
    )
    evaluation.add_eval_commands(evaluate)
    evaluation.add_export_commands(export)
    training.add_train_commands(train)
    evaluation.add_sweep_commands(sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except USER_ERRORS as error:
        if not getattr(error, "reported_elsewhere", False):  # under torchrun, by the first process
            print(f"llamagen {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


def command() -> int:
    """The `llamagen` executable: `main` on the command line's arguments, in a process that keeps the memory its
    tensors free for the next ones (`keep_freed_memory`: a CPU's tokenizers run up to 1.7x faster)."""
    keep_freed_memory()
    return main()
