"""The answer of a tune: the recommendation, what to paste (the TensorStore spec and context of the winning
layout, its Phase 4 test entry), and reading a checkpoint back with nothing but that (`checkpoint.write_tuned`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from ckptbench.analysis import change as analysis
from ckptbench.analysis import stats
from ckptbench.core.units import size_label
from ckptbench.documents.ceiling import pooled_pct_of_ceiling
from ckptbench.spec.fields import TestSpec, entry
from ckptbench.spec.references import REFERENCES, kind_of
from ckptbench.tune.budget import mean
from ckptbench.tune.policy import FIGURES, Samples, compare_metric, separation
from ckptbench.tune.space import T5X

if TYPE_CHECKING:  # bench imports TensorStore: only when a test is pasted
    from ckptbench.bench.targets import RunLocation

_AS_RATE = {"save_s": "save_gbps", "load_s": "load_gbps", "total_s": "total_gbps"}


def summaries(samples: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Every figure's summary (mean, CI, ...) of one test."""
    return {metric: stats.summarize(samples.get(metric, [])) for metric in FIGURES}


def recommend(samples: Samples, finalists: Sequence[str], metric: str, noise_pct: float,
              confirmation: Samples | None = None, documents: Iterable[Mapping[str, Any]] = ()
              ) -> dict[str, Any] | None:
    """The winner among the finalists, its figures, its % of the ceiling (over the stages' results `documents`),
    against each peer and t5x_full, against the fastest peer (`fastest_peers`, from the final rounds' samples
    `confirmation`), and the runner-up with whether the two can be told apart."""
    values = {n: samples[n][metric] for n in finalists if n in samples and samples[n][metric]}
    tiebreak = {n: samples[n]["total_s"] for n in values}
    decided = separation(values, metric, noise_pct, tiebreak)
    winner = decided["winner"]
    if winner is None:
        return None
    mine = samples[winner]
    out: dict[str, Any] = {"test": winner, "metric": metric, "figures": summaries(mine),
                           "objective": stats.summarize(mine[metric])}
    pct = pooled_pct_of_ceiling(documents, winner)
    out["pct_of_ceiling"] = {}
    if any(value is not None for value in pct.values()):
        out["pct_of_ceiling"] = {"save_gbps": pct["save_gbps"], "load_gbps": pct["load_gbps"]}
        if metric in _AS_RATE:  # the objective as a speed: save + load over total_s
            out["pct_of_ceiling"][metric] = pct[_AS_RATE[metric]]
    out["versus"] = {}
    for other in [*(name for name in samples if is_peer(name)), T5X]:
        if other == winner or other not in samples or not samples[other][metric]:
            continue
        comparison = analysis.compare(mine[metric], samples[other][metric], metric=compare_metric(metric),
                                      noise_pct=noise_pct)
        out["versus"][other] = {"mean": mean(samples[other][metric]), "n": len(samples[other][metric]), **comparison}
    out["peers"] = fastest_peers(samples, winner, noise_pct, confirmation)
    second = decided["runner_up"]
    out["runner_up"] = None if second is None else {
        "test": second, "objective": stats.summarize(samples[second][metric]), "comparison": decided["comparison"],
        "distinguishable": decided["separated"], "judgement": decided["judgement"]}
    return out


MIN_CONFIRMATION_RUNS = 2  # the winner's runs after it was chosen that the answer against the peer stands on


def fastest_peers(samples: Samples, winner: str, noise_pct: float,
                  confirmation: Samples | None = None) -> dict[str, Any]:
    """For save, load and save + load: the fastest peer measured and the winner against it, or None. The winner's
    runs up to its choice favour it, so the comparison stands on its runs in the final rounds (`confirmation`)
    when it has MIN_CONFIRMATION_RUNS of them; else `basis` says it is the best of K, selected from these runs."""
    n_candidates = sum(1 for name in samples if name not in REFERENCES and samples[name].get("save_s"))
    confirmed = (confirmation or {}).get(winner) or {}
    out: dict[str, Any] = {}
    for metric in ("save_s", "load_s", "total_s"):
        peers = {name: values[metric] for name, values in samples.items() if is_peer(name) and values[metric]}
        if not peers or not samples[winner][metric]:
            out[metric] = None
            continue
        fastest = min(peers, key=lambda kind: mean(peers[kind]))
        if len(confirmed.get(metric, ())) >= MIN_CONFIRMATION_RUNS:
            mine = confirmed[metric]
            basis = f"from the winner's {len(mine)} runs in the final rounds, after it was chosen"
        else:
            mine = samples[winner][metric]
            basis = f"best of {n_candidates} candidates, selected from these runs"
        out[metric] = {"test": fastest, "mean": mean(peers[fastest]), "n": len(peers[fastest]), "basis": basis,
                       "winner_n": len(mine),
                       **analysis.compare(mine, peers[fastest], metric=compare_metric(metric), noise_pct=noise_pct)}
    return out


def is_peer(name: str) -> bool:
    """A reference row a user could pick instead of TensorStore (each setting of a peer the space tries is one)."""
    kind = kind_of(name)
    return kind is not None and REFERENCES[kind].peer


def describe_layout(test: TestSpec) -> str:
    """'zarr3 on ocdbt, 4MB chunks (halve), concurrency 128, zstd-1, file_io_mode direct'."""
    from ckptbench.spec.compression import label

    fmt = test.format + (" on ocdbt" if test.kvstore == "ocdbt" else "")
    if test.shard_bytes is not None:
        fmt += f" sharded ({size_label(test.shard_bytes)} shards)"
    chunk = (f"{test.chunk_size_elements:,}-element" if test.chunk_size_elements is not None
             else size_label(test.chunk_bytes or 0))
    text = (f"{fmt}, {chunk} chunks ({test.chunk_strategy}), concurrency {test.concurrency_limit}, "
            f"{label(test.compression)}")
    if test.file_io_mode != "default":
        text += f", file_io_mode {test.file_io_mode}"
    return text


def paste_ready(test: TestSpec, dtype: str, example: str, shape: Sequence[int], checkpoint: Path | RunLocation,
                context_extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What to paste: the TensorStore spec of one array (example) of a checkpoint at `checkpoint` (a folder or a
    targets.RunLocation) in the test's layout, the context JSON, and a test entry for phase4_config.json."""
    from ckptbench.bench.storage import Layout

    layout = Layout.of(test, dtype)
    spec = layout.array_spec(checkpoint, example, tuple(int(d) for d in shape), dtype)
    for key in ("create", "store_data_equal_to_fill_value"):
        spec.pop(key, None)
    return {"spec": spec, "context": layout.context_spec(context_extra), "example_array": example,
            "test_entry": entry(test, name="tuned", description=f"found by tune: {describe_layout(test)}")}


def array_spec_for(paste: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The pasted spec for another array of the checkpoint: its name in the kvstore path, no metadata."""
    spec = json.loads(json.dumps({k: v for k, v in paste["spec"].items() if k != "metadata"}))
    spec["kvstore"]["path"] = spec["kvstore"]["path"].replace(paste["example_array"], name)
    return spec


def read_back(paste: Mapping[str, Any], names: Iterable[str]) -> dict[str, np.ndarray]:
    """Read a checkpoint's arrays with nothing but the pasted spec and context."""
    import tensorstore as ts

    context = ts.Context(paste["context"])
    opened = {n: ts.open(array_spec_for(paste, n), open=True, context=context) for n in names}
    stores = {n: future.result() for n, future in opened.items()}
    reads = {n: store.read() for n, store in stores.items()}
    return {n: np.asarray(future.result()) for n, future in reads.items()}
