"""The reference rows: what a user would store checkpoints with instead, and the device's own ceiling.

Every fact about a reference kind lives in its entry here: its name in a config's
`references` block (and its test's name), its words, what the memory pre-check and
`tune`'s budget assume of it before anything is measured, and its colour in figures.
The code that measures each kind is `bench.references`, keyed by the same names.
"""

from __future__ import annotations

from dataclasses import dataclass

CEILING = "device_ceiling"


@dataclass(frozen=True)
class Reference:
    kind: str  # the config's key, the test's name and the back end's name
    label: str  # in words
    description: str  # what one run does, for results.json
    memory_multiplier: float  # peak anonymous memory of the whole process per byte of model (bench.capacity)
    prior_s_per_gb: float  # seconds of one run per GB of model, before anything is measured (tune's budget)
    colour: str
    peer: bool = True  # a loader a user could pick instead of TensorStore (the ceiling is not one)


# Multipliers (anonymous memory per byte of model, beyond the process's fixed part) and priors measured on a
# 2-core VM with the 0.54 GB smollm2-135m (docs/measurements/memory.md): each holds its loaded copy (the
# ceiling, its read buffer); the source weights are a mapped file, not counted.
REFERENCES: dict[str, Reference] = {ref.kind: ref for ref in (
    Reference("safetensors", "safetensors",
              "reference: safetensors save_file + fsync, load_file with every tensor copied out of the map",
              1.05, 10.0, "#6a4c93"),
    Reference("torch_save", "torch.save", "reference: torch.save + fsync, torch.load", 1.05, 11.0, "#1b998b"),
    Reference(CEILING, "device ceiling",
              "reference: the same bytes written and read cold in raw files, over a grid of access patterns; the "
              "fastest pattern of each run is the ceiling", 1.05, 15.0, "#c1121f", peer=False),
)}


def label(kind: str) -> str:
    """A reference kind in words, or the name itself for anything else."""
    return REFERENCES[kind].label if kind in REFERENCES else kind
