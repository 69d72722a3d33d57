"""ckptbench: honest save/load benchmarks of LLM checkpoints stored with TensorStore."""

__version__ = "0.1.0"
