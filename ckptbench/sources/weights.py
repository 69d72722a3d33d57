"""Where the weights come from: LLaMA-shaped presets made in code, or a real checkpoint.

A preset's values are drawn from a seeded normal distribution (std 0.02, LLaMA's initializer), per tensor from a seed
derived from its name, so every run and every subset sees the same bytes; how they are drawn (`values`) decides how well
they compress (PHASE4_GUIDE.md, section 4.1). A checkpoint folder or a Hugging Face model id (`--weights`) gives the
real values.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import ml_dtypes
import numpy as np

from ckptbench.core.errors import UserError, first_line
from ckptbench.sources import hub
from ckptbench.sources.source_file import SourceFile
from ckptbench.spec.hub_id import looks_like_hub_id
from ckptbench.spec.presets import NUMPY_DTYPES, PRESETS, VALUES, preset_shapes

INIT_STD = 0.02
SEED = 20240604
_VALUE_DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
# A checkpoint file's reader: each tensor's name and torch tensor, or with shapes True its shape (headers only).
Reader = Callable[[Path, bool], Iterator[tuple[str, Any]]]


@dataclass
class Weights:
    """Named tensors, C-contiguous, all in one dtype, plus where they came from: arrays in memory (`Planned.in_memory`),
    or read-only views of a source file (`Planned.to_file`), which the kernel can drop while a load fills memory."""

    tensors: Mapping[str, np.ndarray]
    dtype: str
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return sum(int(a.size) for a in self.tensors.values())

    @property
    def size_bytes(self) -> int:
        return sum(int(a.nbytes) for a in self.tensors.values())

    def describe(self) -> dict[str, Any]:
        return {**self.source, "dtype": self.dtype, "n_tensors": len(self.tensors),
                "n_params": self.n_params, "size_bytes": self.size_bytes}


def _check_preset(name: str, values: str = "random") -> None:
    if name not in PRESETS:
        raise UserError(f"--model: unknown preset {name!r}; run --list-models to see the presets")
    if values not in VALUES:
        raise UserError(f"--values: unknown values {values!r}; use one of {', '.join(VALUES)}")


def _drawn(name: str, target: np.dtype, values: str) -> Iterator[tuple[str, np.ndarray]]:
    """Seeded synthetic weights with a preset's real names and shapes, made one tensor at a time."""
    for param, shape in preset_shapes(name):
        rng = np.random.default_rng([SEED, zlib.crc32(param.encode())])
        drawn = rng.standard_normal(shape, dtype=np.float32)
        drawn *= np.float32(INIT_STD)
        if values in _VALUE_DTYPES:  # round to the half-precision grid first, as a real checkpoint's values are
            drawn = drawn.astype(_VALUE_DTYPES[values])
        yield param, np.ascontiguousarray(drawn.astype(target, copy=False))


def from_preset(name: str, dtype: str = "float32", values: str = "random") -> Weights:
    """Seeded synthetic weights with a preset's real names and shapes (values: see VALUES), in memory."""
    return plan(name, None, dtype, values).in_memory()


def from_directory(path: Path, dtype: str = "float32") -> Weights:
    """A local Hugging Face checkpoint folder (safetensors, sharded or single, or pytorch_model.bin) in memory."""
    return plan("", path, dtype, origin={}).in_memory()


def load(model: str, weights_source: str | Path | None, dtype: str, values: str = "random") -> Weights:
    """The configured weights in memory: a checkpoint (folder or hub id) when given, else the preset."""
    return plan(model, weights_source, dtype, values).in_memory()


def _read(path: Path, target: np.dtype | None) -> Iterator[tuple[str, Any]]:
    """A checkpoint folder's tensors converted to `target` one at a time, or with target None each tensor's shape
    (from the files' headers, no tensor read); a damaged file is named in one line."""
    files, reader = _checkpoint_files(path)
    found = False
    for file in files:
        try:
            for name, tensor in reader(file, target is None):
                found = True
                yield name, tensor if target is None else _to_numpy(tensor, target)
        except UserError:
            raise
        except Exception as exc:  # safetensors and torch raise many types for a damaged file
            raise UserError(f"--weights: {file} cannot be read ({first_line(exc)}); is it complete and "
                            "uncorrupted?") from None
    if not found:
        raise UserError(f"--weights: {path} holds no tensors; give a folder with model weights")


def _checkpoint_files(path: Path) -> tuple[list[Path], Reader]:
    """The weight files of a checkpoint folder, sharded (by an index) or single, and their reader."""
    for index_name, reader in (("model.safetensors.index.json", _read_safetensors),
                               ("pytorch_model.bin.index.json", _read_torch)):
        index = path / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise UserError(f"--weights: {index} is not a valid index (needs a 'weight_map')") from None
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise UserError(f"--weights: {index} lists {missing[0]}, which is missing from {path}")
            return [path / s for s in shards], reader
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"], _read_safetensors
    if (path / "pytorch_model.bin").is_file():
        return [path / "pytorch_model.bin"], _read_torch
    raise UserError(f"--weights: {path} holds no model.safetensors.index.json, model.safetensors, "
                    "pytorch_model.bin.index.json or pytorch_model.bin")


def _read_safetensors(file: Path, shapes: bool) -> Iterator[tuple[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        for name in handle.keys():
            yield name, tuple(handle.get_slice(name).get_shape()) if shapes else handle.get_tensor(name)


def _read_torch(file: Path, shapes: bool) -> Iterator[tuple[str, Any]]:
    import torch

    state = torch.load(str(file), map_location="cpu", weights_only=True, mmap=shapes)
    if not isinstance(state, dict):
        raise UserError(f"--weights: {file} holds no state dict of tensors")
    yield from ((n, tuple(t.shape) if shapes else t) for n, t in state.items() if isinstance(t, torch.Tensor))


def _to_numpy(tensor: Any, target: np.dtype) -> np.ndarray:
    import torch

    if not tensor.is_floating_point():
        raise UserError(f"--weights: tensor of dtype {tensor.dtype} found; only floating-point weights are benchmarked")
    if target == NUMPY_DTYPES["bfloat16"]:
        # numpy has no bfloat16: reinterpret torch's bits as ml_dtypes' bfloat16.
        bits = tensor.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
        return np.ascontiguousarray(bits.view(target))
    return np.ascontiguousarray(tensor.to(torch.float32).numpy().astype(target, copy=False))


def estimate_bytes(model: str, weights_source: str | Path | None, dtype: str) -> int:
    """Bytes the weights will take in memory, known before loading them (an upper bound for folders)."""
    itemsize = NUMPY_DTYPES[dtype].itemsize
    if weights_source is None:
        _check_preset(model)
        return PRESETS[model].n_params * itemsize
    folder = Path(weights_source)
    if not folder.is_dir():
        return 0  # plan gives the precise error
    stored = sum(f.stat().st_size for f in folder.iterdir()
                 if f.is_file() and f.suffix in (".safetensors", ".bin"))
    return stored * itemsize // 2  # stored tensors are at least 2 bytes per element


def resolve(weights_source: str | None) -> tuple[Path | None, dict[str, Any]]:
    """(local folder, what to record about it) for --weights: a folder, or a hub id resolved through the cache."""
    return (None, {}) if weights_source is None else _resolve(weights_source)


def _resolve(weights_source: str) -> tuple[Path, dict[str, Any]]:
    if looks_like_hub_id(weights_source):  # and no such local folder
        checkpoint = hub.resolve(weights_source)
        return checkpoint.path, hub.describe(checkpoint)
    return Path(weights_source), {}


@dataclass(frozen=True)
class Planned:
    """The weights a suite will use, known before any is made: where they come from, and every tensor's shape.
    The checks that must come before anything is written (memory, disk, a resumed journal's fingerprint) read
    this; `to_file` or `in_memory` then makes the weights."""

    model: str
    folder: Path | None  # a local checkpoint folder (a hub id resolved through the cache), or None: the preset
    dtype: str
    values: str
    origin: dict[str, Any]
    shapes: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def n_params(self) -> int:
        return sum(math.prod(shape) for _, shape in self.shapes)

    @property
    def size_bytes(self) -> int:
        return self.n_params * NUMPY_DTYPES[self.dtype].itemsize

    def describe(self) -> dict[str, Any]:
        """What Weights.describe() of the made weights gives."""
        return {**self.origin, "dtype": self.dtype, "n_tensors": len(self.shapes), "n_params": self.n_params,
                "size_bytes": self.size_bytes}

    def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        target = NUMPY_DTYPES[self.dtype]
        return _drawn(self.model, target, self.values) if self.folder is None else _read(self.folder, target)

    def in_memory(self) -> Weights:
        return Weights(dict(self.tensors()), self.dtype, dict(self.origin))

    def to_file(self, folder: Path) -> Weights:
        """The weights written one tensor at a time into a source file in `folder`, and mapped: only one tensor
        is ever in anonymous memory (sources.source_file says why)."""
        return Weights(SourceFile.write(folder, self.tensors()).tensors, self.dtype, dict(self.origin))


def plan(model: str, weights_source: str | Path | None, dtype: str, values: str = "random",
         origin: Mapping[str, Any] | None = None) -> Planned:
    """The weights a config names, planned: a hub id is resolved through the cache (downloaded when there is
    a network and it is missing; `origin` is what `resolve` recorded when the caller resolved it already),
    a checkpoint's shapes read from its headers, a preset's from its table."""
    if weights_source is None:
        _check_preset(model, values)
        drawn = {"kind": "preset", "name": model, "origin": PRESETS[model].origin, "values": values,
                 "init": f"normal(0, {INIT_STD}) drawn as {'float32' if values == 'random' else values}, "
                         f"seed {SEED} + crc32(name)"}
        return Planned(model, None, dtype, values, drawn, tuple(preset_shapes(model)))
    if origin is None:
        weights_source, origin = _resolve(str(weights_source))
    folder = Path(weights_source)
    if not folder.exists():
        raise UserError(f"--weights: {folder} does not exist; give a local checkpoint folder")
    if not folder.is_dir():
        raise UserError(f"--weights: {folder} is a file; give the folder that holds it")
    files, _ = _checkpoint_files(folder)
    described = {"kind": "directory", "path": str(folder.resolve()), "values": "checkpoint",
                 "files": [f.name for f in files]}
    return Planned(model, folder, dtype, "checkpoint", {**described, **origin}, tuple(_read(folder, None)))
