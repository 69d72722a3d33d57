"""The figures, drawn from documents: they measure and compute nothing (tune's figure lives in tune.plot)."""
