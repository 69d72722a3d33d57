"""Shared helpers: the repository's paths, config files, tiny weights, real HF checkpoints, in-process CLI runs."""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = REPO / "phase4_config.json"
PACKAGED_CONFIG = REPO / "ckptbench" / "phase4_config.json"  # the package's view of the one default config
STREAMLINED = REPO / "run_phase4_streamlined.py"
FRAMEWORK = REPO / "phase4_optimization_testing.py"

# No test may reach the network; transformers and huggingface_hub honour these.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pytest_collection_finish(session: pytest.Session) -> None:
    _freeze_what_lives()


def pytest_runtest_teardown(item: pytest.Item) -> None:
    _freeze_what_lives()  # what the test imported (torch, say) or its fixtures made; and again after a suite ran
    # (bench.suite freezes and unfreezes around its runs)


def _freeze_what_lives() -> None:
    """What lives now (every module: torch, transformers, matplotlib...; the session's fixtures) is moved out of the
    garbage collector's sight, so that the full collection a run makes before each clock (system.release_free_memory)
    walks only what the test made, as bench.suite does for its runs; not the whole session again each time. The
    collection here walks only what the last test made."""
    gc.collect()
    gc.freeze()


def minimal_config(**top: Any) -> dict[str, Any]:
    """A small valid config: a raw baseline and one second test; keyword arguments set top-level keys."""
    data: dict[str, Any] = {
        "model": "tiny",
        "baseline": "baseline",
        "testing": {"num_runs": 1},
        "test_configurations": [
            {"name": "baseline", "chunk_size_elements": 16384, "concurrency_limit": 1, "compression": "none"},
            {"name": "fast", "chunk_size_elements": 262144, "concurrency_limit": 8,
             "compression": {"id": "gzip", "level": 1}},
        ],
    }
    data.update(top)
    return data


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """write_config(dict_or_text, name="config.json") -> path of the file written under tmp_path."""

    def write(content: Any, name: str = "config.json") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content, indent=1), encoding="utf-8")
        return path

    return write


@pytest.fixture
def run_cli(capsys) -> Callable[..., tuple[int, str, str]]:
    """run_cli(*argv) -> (exit status, stdout, stderr) of ckptbench.cli.main, run in this process."""
    from ckptbench.cli import app as cli

    def run(*argv: Any) -> tuple[int, str, str]:
        capsys.readouterr()  # drop whatever came before
        status = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture(scope="session")
def tiny_weights():
    """The `tiny` preset in float32, made once per session (read-only: do not modify the arrays)."""
    from ckptbench.sources import weights

    made = weights.from_preset("tiny", "float32")
    for array in made.tensors.values():
        array.flags.writeable = False
    return made


def small_llama_config(tie_word_embeddings: bool = False):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=128, tie_word_embeddings=tie_word_embeddings)


@pytest.fixture(scope="session")
def hf_model():
    """A tiny LlamaForCausalLM whose every parameter (norms included) holds distinct random values."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(1234)
    model = LlamaForCausalLM(small_llama_config())
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.02)
    return model


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, hf_model):
    """A real Hugging Face checkpoint saved twice: single file and sharded (read-only templates; copy before damaging)."""
    root = tmp_path_factory.mktemp("hf")
    hf_model.save_pretrained(root / "single")
    hf_model.save_pretrained(root / "sharded", max_shard_size="40KB")
    assert len(list((root / "sharded").glob("model-*.safetensors"))) >= 2
    return root


def reference_state(model) -> dict[str, np.ndarray]:
    """The model's parameters as float32 numpy arrays, keyed as save_pretrained keys them."""
    return {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}


def bits(array: np.ndarray) -> np.ndarray:
    """The raw bytes of an array, for bit-for-bit comparison (NaN and -0.0 included)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def assert_same_bits(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        assert np.array_equal(bits(got[name]), bits(want)), name


def act_on_stderr_line(proc, marker: str, act: Callable[[], None], timeout: float = 120) -> tuple[int, str]:
    """Read a child's stderr until a line holds marker, call act(), then let the child finish.

    Both pipes keep being drained so the child never blocks on a full pipe while it stops.
    Returns (exit status, everything the child wrote to stderr).
    """
    import threading

    seen: list[str] = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            act()
            break
    rest: list[str] = []
    drain = threading.Thread(target=lambda: rest.extend(proc.stderr), daemon=True)
    drain.start()
    proc.stdout.read()
    status = proc.wait(timeout=timeout)
    drain.join(timeout=5)
    return status, "".join(seen + rest)


def run_config(root: Path, suite: dict[str, Any], name: str = "suite.json") -> tuple[int, dict[str, Any], Path]:
    """Write suite to root/name and run it with the API (ckptbench.run), figures drawn beside results.json:
    (0 if every run succeeded else 1, the results document, the output folder)."""
    import ckptbench

    path = root / name
    path.write_text(json.dumps(suite))
    out = root / "out"
    results = ckptbench.run(ckptbench.load_config(path, output_dir=out))
    results.draw(out)
    return (1 if results.failed_runs or not results.complete else 0), results.document, out
