"""`list-models`: the weight presets, their sizes and where their hyperparameters come from."""

from __future__ import annotations

import argparse

from ckptbench.cli.app import Command
from ckptbench.reports import tables as report
from ckptbench.spec import presets as weights


class ListModels(Command):
    name = "list-models"

    summary = "List the weight presets with parameter counts and sizes."

    def execute(self, args: argparse.Namespace, context) -> int:
        print(models_table())
        return 0


def models_table() -> str:
    rows = []
    for name, preset in weights.PRESETS.items():
        n_params = preset.n_params
        rows.append([name + (" (default)" if name == weights.DEFAULT_PRESET else ""), f"{n_params / 1e6:,.1f}M",
                     f"{n_params * 4 / 1e9:.2f} GB", f"{n_params * 2 / 1e9:.2f} GB", preset.origin])
    return report.table(["preset", "params", "float32", "bfloat16", "hyperparameters of"], rows)


COMMAND = ListModels()
