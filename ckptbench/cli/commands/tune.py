"""`tune`: find the fastest TensorStore layout for a model on this disk within a time budget, and print what to paste.

Exit status: 0 a recommendation was made; 1 no candidate could be measured; 2 bad input (one line, nothing written);
130/143 stopped by Ctrl-C / SIGTERM (everything measured is kept; --resume continues).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Mapping

from ckptbench.cli.app import Command, Context
from ckptbench.cli.options import add_output_arguments, add_weight_arguments, config_path, parse_tp, weight_overrides
from ckptbench.core.errors import Stopped, UserError
from ckptbench.core.units import parse_duration
from ckptbench.spec import config as config_mod
from ckptbench.spec.presets import PRESETS, VALUES
from ckptbench.spec.references import REFERENCES
from ckptbench.spec.suite import OBJECTIVES
from ckptbench.tune.settings import DEFAULT_BUDGET_S, DEFAULT_OBJECTIVE, SPACE_FILE, Settings

DEFAULT_OUTPUT_DIR = "saved_models/tune"


class Tune(Command):
    name = "tune"

    summary = ("Find the fastest TensorStore layout for a model on this disk within a time budget: successive "
               "halving over a search space (sweeps/tune_space.json: chunk size, concurrency, format, compression, "
               "file_io_mode, chunk strategy), every run fsync'd, loaded cold and verified; safetensors, "
               "torch.save and the device ceiling measured alongside. Prints the winner with its confidence "
               "intervals and the TensorStore spec, context and Phase 4 test entry to paste; writes tuning.json "
               "and tuning.png.")

    def add_arguments(self, parser: argparse.ArgumentParser, context: Context) -> None:
        add_weight_arguments(parser)
        parser.add_argument("--budget", help=f"wall time for the whole tune, e.g. 90s, 5m, 1h (default "
                            f"{DEFAULT_BUDGET_S / 60:g}m); with --resume, a new total (the time already spent counts)")
        parser.add_argument("--objective", choices=list(OBJECTIVES),
                            help="what to minimise: save or load seconds, balanced = save + load seconds (default), "
                                 "or size = bytes on disk")
        parser.add_argument("--output-dir", help=f"where tuning.json, tuning.png and each rung's results go "
                            f"(default: {DEFAULT_OUTPUT_DIR} beside the default config)")
        parser.add_argument("--space", type=Path, help="search-space JSON (default: sweeps/tune_space.json)")
        parser.add_argument("--seed", type=int,
                            help="seed of the sample and of every shuffle (default: random, recorded)")
        parser.add_argument("--keep", action="store_true",
                            help="keep the weights written in the winning layout "
                                 "(OUTPUT_DIR/runs/tuned_checkpoint, or under --storage)")
        add_output_arguments(parser)
        parser.add_argument("--details", action="store_true",
                            help="also the winner against every peer, and a row for every candidate measured")
        parser.add_argument("--references", help="comma-separated reference rows measured beside the candidates, or "
                                                  "all (default: safetensors,runai_streamer,device_ceiling)")
        parser.add_argument("--tp", help="search for tensor-parallel loads: every candidate loaded by N readers, "
                                         "each reading its slice; adds chunk_strategy tp_aligned to the space")
        parser.add_argument("--dry-run", action="store_true",
                            help="print the plan (the space, what fits the budget, disk, peak memory) and the "
                                 "pre-check's verdict, and write nothing: exit 0, or 2 when it refuses")

    def execute(self, args: argparse.Namespace, context: Context) -> int:
        from ckptbench.reports.progress import TuneProgress
        from ckptbench.tune import report, session

        budget_s = None if args.budget is None else parse_duration(args.budget, "--budget")
        output_dir = Path(args.output_dir) if args.output_dir else _default_output_dir(context)
        if args.dry_run:
            info = session.dry_run(_settings(args, context, output_dir, budget_s))
            print(report.dry_run_text(info))
            return 0 if info["refusal"] is None else 2
        progress = TuneProgress(enabled=not args.no_progress)
        hooks = session.Hooks(on_event=progress.event, draw=_draw)
        try:
            if args.resume:
                given = {**weight_overrides(args), "storage": args.storage, "objective": args.objective}
                tuning = session.resume(output_dir, given=given, budget_s=budget_s,
                                        keep_checkpoint=True if args.keep else None, hooks=hooks)
            else:
                tuning = session.run(_settings(args, context, output_dir, budget_s), hooks)
        except Stopped as stop:
            progress.close()
            if stop.partial is None:
                print(f"error: stopped by {stop} before anything was measured", file=sys.stderr)
            else:
                print(f"error: stopped by {stop}; everything measured is kept in {output_dir}; continue with "
                      "tune --resume" + (f" --output-dir {output_dir}" if args.output_dir else ""), file=sys.stderr)
            return stop.exit_status
        progress.close()
        print(report.text(tuning.document, args.details))
        print(f"Tuning: {tuning.path}" + (f"\nPlot:   {tuning.plot_path}" if tuning.plot_path else ""))
        return 0 if tuning.recommendation is not None else 1


def _default_output_dir(context: Context) -> Path:
    """saved_models/tune beside the entry script's config, else in the working folder (as `run` does)."""
    base = context.default_config.parent if context.default_config is not None else Path.cwd()
    return base / DEFAULT_OUTPUT_DIR


def _draw(document: Mapping[str, Any], folder: Path) -> Path | None:
    """tuning.png in the tune's folder: drawn by the tune as it finishes, so its time counts in the budget."""
    from ckptbench.tune import plot

    return plot.draw(document, folder / plot.PLOT_FILE)


def _settings(args: argparse.Namespace, context: Context, output_dir: Path, budget_s: float | None) -> Settings:
    """The tune's settings: the flags, else the default config's model, dtype and values (those `run` uses)."""
    weights = weight_overrides(args)
    path, _ = config_path(args, context)
    defaults = config_mod.load(path)
    if weights["weights"] is None and weights["model"] is None and defaults.weights is not None:
        weights["weights"] = defaults.weights
    if weights["model"] is not None and weights["model"] not in PRESETS:
        raise UserError(f"--model: unknown preset {weights['model']!r}; run --list-models to see the presets")
    kinds: dict[str, Any] = {} if args.references is None else {"reference_kinds": _reference_kinds(args.references)}
    return Settings(
        output_dir=output_dir,
        model=weights["model"] or defaults.model,
        weights=weights["weights"],
        dtype=weights["dtype"] or defaults.dtype,
        values=weights["values"] or (defaults.values if defaults.values in VALUES else "random"),
        storage=args.storage,
        objective=args.objective or DEFAULT_OBJECTIVE,
        budget_s=budget_s if budget_s is not None else DEFAULT_BUDGET_S,
        seed=args.seed,
        space_path=args.space or SPACE_FILE,
        cache_eviction=defaults.cache_eviction,
        noise_pct=defaults.noise_pct,
        keep_checkpoint=args.keep,
        tp=1 if args.tp is None else parse_tp(args.tp),
        **kinds,
    )


def _reference_kinds(text: str) -> tuple[str, ...]:
    return tuple(REFERENCES) if text.strip() == "all" else tuple(k.strip() for k in text.split(",") if k.strip())


COMMAND = Tune()
