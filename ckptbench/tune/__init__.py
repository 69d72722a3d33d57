"""`tune`: the fastest TensorStore layout for this model on this disk, within a time budget.

Successive halving over a search space of layouts, every candidate a normal suite run. The modules, lower ones never
importing higher ones: settings, space (the candidates), budget (the arithmetic), state (tune_state.json), policy (the
decisions, pure functions), answer (what to paste), checkpoint, document (tuning.json), loop (the stages), session
(`run`, `resume`, `dry_run`); report and plot render tuning.json and are imported by the command only.
"""
