"""`run` (the default subcommand): run a suite from a config file, print its tables, draw its figures.

Exit status: 0 all runs succeeded; 1 some runs failed or the suite stopped after a
storage failure; 2 bad input (one line, nothing written); 130/143 stopped by Ctrl-C /
SIGTERM (the results so far are kept; --resume continues).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ckptbench.spec import config as config_mod
from ckptbench.cli.app import Context, subcommand_help
from ckptbench.core.errors import UserError

PACKAGED_CONFIG = Path(__file__).resolve().parents[2] / "phase4_config.json"
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
    """The flags that choose the weights, shared by run, tune and explain."""
    from ckptbench.sources import weights

    parser.add_argument("--model", help="weight preset (see list-models)")
    parser.add_argument("--weights", help="a local Hugging Face checkpoint folder, or a model id org/name[@revision] "
                        "taken from the Hugging Face cache (downloaded when there is a network)")
    parser.add_argument("--dtype", choices=config_mod.DTYPES, help="dtype the weights are stored in")
    parser.add_argument("--values", choices=weights.VALUES,
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


def parse_tests(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


class Run:
    def description(self, context: Context) -> str:
        return ("Benchmark saving and loading LLaMA weights as TensorStore zarr arrays: every test of the config, "
                "with cold loads, bit-exact verification and interleaved rounds. " + subcommand_help())

    def add_arguments(self, parser: argparse.ArgumentParser, context: Context) -> None:
        default = context.default_config or f"./{CONFIG_NAME}, else the packaged default"
        parser.add_argument("--config", type=Path, help=f"suite config JSON (default: {default})")
        parser.add_argument("--output-dir", help="where results.json, the figures and run folders go")
        parser.add_argument("--runs", type=positive_int, help="measured runs per test (overrides testing.num_runs)")
        add_weight_arguments(parser)
        parser.add_argument("--tests", help="comma-separated subset of test names to run")
        parser.add_argument("--processes", help="worker processes per save and load, e.g. 4, or 1,2,4 to compare")
        parser.add_argument("--seed", type=int, help="seed of the per-round shuffle (default: random, recorded)")
        parser.add_argument("--order", choices=("interleaved", "blocked"),
                            help="interleaved rounds (default) or each test's runs back to back, as the original")
        parser.add_argument("--cache-eviction", choices=config_mod.CACHE_EVICTION,
                            help="how loads are made cold (default: auto; none leaves them warm, as the original)")
        parser.add_argument("--keep", action="store_true",
                            help="keep the last run's checkpoint of each test under OUTPUT_DIR/runs for inspection")
        add_output_arguments(parser)
        parser.add_argument("--list-models", action="store_true", help="list weight presets and exit")

    def run(self, args: argparse.Namespace, context: Context) -> int:
        if args.list_models:
            from ckptbench.cli.commands.list_models import COMMAND as list_models

            return list_models.run(args, context)
        path, implied = config_path(args, context)
        suite = config_mod.load(path, **{**implied, **_overrides(args)})
        from ckptbench.core import interrupt
        from ckptbench.bench import suite as runner
        from ckptbench.reports.progress import Progress

        progress = Progress(enabled=not args.no_progress)
        try:
            results = runner.run(suite, resume=args.resume, keep=args.keep, on_start=progress.start,
                                 on_phase=progress.phase, on_record=progress.finished)
        except interrupt.Interrupted as stop:
            progress.close()
            show(stop.results)
            print(f"error: stopped by {stop}; the runs so far are kept in "
                  f"{suite.output_dir / 'journal.jsonl'}; continue with --resume", file=sys.stderr)
            return stop.exit_status
        progress.close()
        if results is None:  # a rank other than 0 of a launch: it served rank 0, which reports
            return 0
        show(results)
        if not results.complete:
            print("error: the suite stopped early after a storage failure; see the warnings; "
                  "continue with --resume once fixed", file=sys.stderr)
        return 1 if results.failed_runs or not results.complete else 0


def _overrides(args: argparse.Namespace) -> dict:
    return {"output_dir": args.output_dir, "num_runs": args.runs, "tests": parse_tests(args.tests),
            "seed": args.seed, "storage": args.storage, "processes": parse_processes(args.processes),
            "order": args.order, "cache_eviction": args.cache_eviction, **weight_overrides(args)}


def show(results) -> None:
    """The console tables, then the figures beside results.json."""
    drawn = results.draw(results.path.parent) if results.path is not None else []
    print(results.report())
    print(f"\nResults: {results.path}" + "".join(f"\nPlot:    {p}" for p in drawn))


COMMAND = Run()
