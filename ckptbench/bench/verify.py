"""Bit-for-bit verification of a loaded checkpoint against its source.

Each loaded tensor's xxh3-128 digest is compared with the source's (sources.source_file): recorded when the source file
was written, so verifying never reads the source back (it may have left the page cache for the load), and no model-sized
temporary is made.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ckptbench.sources.source_file import Box, digest, expected_digest, select


def mismatches(source: Mapping[str, np.ndarray], loaded: Mapping[str, np.ndarray],
               boxes: Mapping[str, Box] | None = None) -> list[str]:
    """Names whose loaded bytes, shape or dtype differ from the source (NaN and -0.0 compared as bits). `boxes`: a
    process that loaded parts of tensors (a writer's rows, a tensor-parallel rank's slice) checks each loaded part
    against the same part of the source; only the tensors named are expected then."""
    expected_names = list(source) if boxes is None else list(boxes)
    bad = [name for name in expected_names if name not in loaded]
    for name in expected_names:
        got = loaded.get(name)
        if got is None:
            continue
        box = () if boxes is None else boxes[name]
        want = select(source[name], box)  # a view: only its shape and dtype are read here
        if got.dtype != want.dtype or got.shape != want.shape or digest(got) != expected_digest(source, name, box):
            bad.append(name)
    bad.extend(name for name in loaded if name not in expected_names)
    return bad
