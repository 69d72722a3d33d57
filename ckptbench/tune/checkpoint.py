"""The tuned checkpoint: the weights written in the winning layout (untimed, after the search) and read back bit
for bit with nothing but the paste-ready spec and context, so the printed JSON is known to work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ckptbench.spec.fields import TestSpec
from ckptbench.tune.answer import paste_ready, read_back
from ckptbench.tune.settings import Settings

CHECKPOINT = "tuned_checkpoint"  # the run label of the weights written in the winning layout
PLACEHOLDER = "CHECKPOINT_DIR/"  # where the checkpoint's folder goes in a spec whose checkpoint was not kept


def write_tuned(test: TestSpec, settings: Settings, tensors: Mapping[str, Any], output_dir: Path,
                max_inflight_bytes: int) -> dict[str, Any]:
    """Write `tensors` in the test's layout and read them back with the paste alone; the paste, with whether that
    worked (recorded, not raised). Kept with keep_checkpoint, else removed and its path replaced by PLACEHOLDER."""
    from ckptbench.bench import storage, targets
    from ckptbench.bench.verify import mismatches

    target = targets.parse(settings.storage, output_dir)
    target.discard(CHECKPOINT)  # one an earlier tune kept (only if it carries the run marker)
    location = target.new_run(CHECKPOINT)
    extra = target.context_spec()
    example = max(tensors, key=lambda n: tensors[n].size)
    paste = paste_ready(test, settings.dtype, example, tensors[example].shape, location, extra)
    layout = storage.Layout.of(test, settings.dtype)
    try:
        storage.save(tensors, location, layout, max_inflight_bytes, layout.context(extra))
        bad = mismatches(tensors, read_back(paste, tensors))
        paste["verified"] = not bad
        paste["verify_error"] = f"{len(bad)} arrays differ, first {bad[0]}" if bad else None
    except Exception as exc:  # recorded, not raised: the measurements stand on their own
        paste["verified"], paste["verify_error"] = False, f"{type(exc).__name__}: {exc}".splitlines()[0]
    if settings.keep_checkpoint:
        paste["checkpoint"] = str(location.local_dir or location.base["path"])
    else:
        target.remove(location, settle=True)
        paste["checkpoint"] = None
        paste["spec"] = json.loads(json.dumps(paste["spec"]).replace(location.base["path"], PLACEHOLDER))
    target.finish()
    return paste
