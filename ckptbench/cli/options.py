"""Flags and flag values more than one subcommand takes: the weights, the output, the config file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ckptbench.cli.app import Context
from ckptbench.core.errors import UserError
from ckptbench.spec import config as config_mod
from ckptbench.spec.presets import VALUES

PACKAGED_CONFIG = Path(__file__).resolve().parents[1] / "phase4_config.json"
CONFIG_NAME = "phase4_config.json"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_weight_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that choose the weights, shared by run, tune and docs/explain/explain.py."""
    parser.add_argument("--model", help="weight preset (see list-models)")
    parser.add_argument("--weights", help="a local Hugging Face checkpoint folder, or a model id org/name[@revision] "
                        "taken from the Hugging Face cache (downloaded when there is a network)")
    parser.add_argument("--dtype", choices=config_mod.DTYPES, help="dtype the weights are stored in")
    parser.add_argument("--values", choices=VALUES,
                        help="how preset values are drawn: random float32, or float16/bfloat16 values (which "
                             "compress like a real half-precision checkpoint)")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", help="where checkpoints are written: a folder, s3://BUCKET/PREFIX, "
                        "gs://BUCKET/PREFIX or memory:// (default: OUTPUT_DIR/runs)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted suite in the same output folder, running only missing runs")
    parser.add_argument("--no-progress", action="store_true", help="no progress display on stderr")


def config_path(args: argparse.Namespace, context: Context) -> tuple[Path, dict]:
    """The config file to read and the overrides that follow from where it was found."""
    if getattr(args, "config", None) is not None:
        return Path(args.config), {}
    if context.default_config is not None:
        return context.default_config, {}
    local = Path.cwd() / CONFIG_NAME
    if local.is_file():
        return local, {}
    return PACKAGED_CONFIG, {"output_dir": str(Path.cwd() / config_mod.DEFAULT_OUTPUT_DIR)}


def weight_overrides(args: argparse.Namespace) -> dict:
    if args.values is not None and args.weights is not None:
        raise UserError("--values: a checkpoint (--weights) has its own values; drop --values")
    return {"model": args.model, "weights": args.weights, "dtype": args.dtype, "values": args.values}


def parse_processes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--processes: {text!r} is not a list of process counts; use e.g. 4 or 1,2,4") from None


def parse_tp(text: str) -> int:
    """--tp N: tensor-parallel readers for every test (checked against the model by the config)."""
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--tp: {text!r} is not a number of tensor-parallel ranks; use e.g. 2") from None


def parse_tests(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]
