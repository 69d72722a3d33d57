"""`explain`: why the original's expectations differ: its conditions, one at a time, in one suite.

The Phase 4 summary's expected results came from the original harness, whose conditions are known.
`explain` measures the claims' tests under several arms (the user's config, every one of the
original's conditions at once, and one condition at a time), all interleaved in one suite so they
share the machine's state, then credits each condition with what switching it does to each claim.

The modules, each one step, lower ones never importing higher ones:

- conditions: the original's conditions as data (original_harness.json, original_conditions.json);
- design: the arms, each condition's status, the claims and the one suite's tests (no I/O);
- words: claim labels, the one-sentence summaries, the console's answer;
- judge: each claim under each arm, and the effect of switching each condition;
- document: explain.json (kind "explanation"): build, write, read, validate, upgrades;
- run: the user's config to explain.json, through an injected suite executor, within a budget;
- plot: explain.png from explain.json (rendering only: imported by the command, not by the others).

The package exports every module's public names but plot's; `design`, `judge` and `run` here are the
functions, which hide their modules' names, so import a module's other names from the module itself
(`from ckptbench.explain.run import WARN_AFTER_RUNS`).
"""

from ckptbench.explain.conditions import BY_NAME, CONDITIONS, NOT_MODELLED, Condition, load_original
from ckptbench.explain.design import Arm, Claim, Design, Setup, build_suite, chunk_files, design, setup_of
from ckptbench.explain.document import EXPLAIN_FILE, EXPLAIN_VERSION, EXPLANATION, build, read, validate, write
from ckptbench.explain.judge import judge
from ckptbench.explain.run import DEFAULT_BUDGET_S, DEFAULT_RUNS, OUTPUT_NAME, Explanation, Settings, designed, run
from ckptbench.explain.words import answer, claim_label, summary

__all__ = ["Arm", "BY_NAME", "CONDITIONS", "Claim", "Condition", "DEFAULT_BUDGET_S", "DEFAULT_RUNS", "Design",
           "EXPLAIN_FILE", "EXPLAIN_VERSION", "EXPLANATION", "Explanation", "NOT_MODELLED", "OUTPUT_NAME", "Settings",
           "Setup", "answer", "build", "build_suite", "chunk_files", "claim_label", "design", "designed", "judge",
           "load_original",
           "read", "run", "setup_of", "summary", "validate", "write"]
