"""`tune`: the fastest TensorStore layout for this model on this disk, within a time budget.

Successive halving over a search space of layouts: every candidate a normal suite run
(fsync'd saves, cold loads, verified), the reference rows measured alongside, the
budget kept by not starting any run that would not end in time, and the answer printed
as a TensorStore spec, context and Phase 4 test entry that are known to read back.

The modules, each one concern, lower ones never importing higher ones:

- settings: what a tune measures and how long it may take (`Settings`), and its suites' config;
- space: the search-space file, its candidates for one model (`Universe`), rung 0's sample;
- budget: the budget as arithmetic: priors, measured `Durations`, the plan, what fits;
- state: `TuneState`, saved after every run as tune_state.json (kind "tune state");
- policy: the decisions (noise model, ranking, halving, separation, Pareto front, the next
  stage and what a finished stage concludes), pure functions of the state and the samples;
- answer: the recommendation, the paste-ready spec, context and test entry, reading it back;
- checkpoint: the weights written in the winning layout and read back with the paste;
- document: tuning.json (kind "tuning"): build, write, read, validate, upgrades;
- loop: the stages, each suite run by an injected executor, the budget kept by `may_start`;
- session: `run` and `resume`, from the weights to tuning.json;
- report, plot: the console text and tuning.png from tuning.json (rendering only: imported by the
  command, not by the other modules).

The package exports what the command and the tests use; a module's other names are imported from
the module itself (`from ckptbench.tune.budget import OVERPLAN`).
"""

from ckptbench.tune.budget import (
    FINALISTS,
    Durations,
    Plan,
    continuation_s,
    final_s,
    fits,
    halving_sizes,
    plan_budget,
    prior_candidate_s,
    prior_reference_s,
)
from ckptbench.tune.checkpoint import CHECKPOINT
from ckptbench.tune.document import TUNING, TUNING_FILE, Tuning, read
from ckptbench.tune.policy import PRIOR_DF, PRIOR_LOG_SD, Halving, Noise, halve, noise_model, pareto, rank, separation
from ckptbench.tune.session import dry_run, resume, run
from ckptbench.tune.settings import (
    DEFAULT_BUDGET_S,
    DEFAULT_OBJECTIVE,
    DEFAULT_REFERENCES,
    OBJECTIVES,
    SPACE_FILE,
    Settings,
    check_settings,
)
from ckptbench.tune.space import T5X, Universe, candidates, layout_key, load_space, make_universe, sample
from ckptbench.tune.state import STATE_FILE, TUNE_STATE, TuneState

__all__ = ["CHECKPOINT", "DEFAULT_BUDGET_S", "DEFAULT_OBJECTIVE", "DEFAULT_REFERENCES", "Durations", "FINALISTS",
           "Halving", "Noise", "OBJECTIVES", "PRIOR_DF", "PRIOR_LOG_SD", "Plan", "SPACE_FILE", "STATE_FILE",
           "Settings", "T5X", "TUNE_STATE", "TUNING", "TUNING_FILE", "TuneState", "Tuning", "Universe", "candidates",
           "check_settings", "continuation_s", "dry_run", "final_s", "fits", "halve", "halving_sizes", "layout_key",
           "load_space", "make_universe", "noise_model", "pareto", "plan_budget", "prior_candidate_s",
           "prior_reference_s", "rank", "read", "resume", "run", "sample", "separation"]
