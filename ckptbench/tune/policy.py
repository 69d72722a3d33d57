"""The search's decisions: pure functions of the tune's state and the measured samples (no clock, no I/O).

The stages (rung 0, the halving rungs, the final rounds) and their rules: PHASE4_GUIDE.md, "The search". Skipping
before a run (`skip_reason`) and not running again (`censored`) use HOPELESS_FACTOR; the noise model pools the
log-scale spread over every test with two runs or more, with a prior of PRIOR_LOG_SD (10 %, pyperf's "noisy") weighted
as PRIOR_DF degrees of freedom. Sizes have no noise: the larger loses outright.

A save's figure is what a checkpoint costs training (`gather`): a sync save's save_s, an async one's training_lost_s.

`next_stage` and `conclude` return a new state and leave the one given as it was, so a stop at any moment leaves a
state that resumes consistently.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ckptbench.analysis import change as analysis
from ckptbench.analysis import stats
from ckptbench.analysis.change import MIN_RUNS_FOR_CI
from ckptbench.core.units import human_bytes
from ckptbench.documents import results
from ckptbench.spec.references import CEILING, REFERENCES, kind_of
from ckptbench.tune import budget
from ckptbench.tune.budget import FINALISTS, fits, mean
from ckptbench.tune.space import CANDIDATES_BEFORE_CEILING, T5X, shuffled, stage_seed
from ckptbench.tune.state import FINAL, HALVING, Stage, TuneState

ALPHA = stats.ALPHA
PRIOR_LOG_SD = 0.10
PRIOR_DF = 8
HOPELESS_FACTOR = 4.0  # on a time objective, a candidate this many times the best so far is not run (again)
FIGURES = ("save_s", "load_s", "total_s", "size_bytes", "save_gbps", "load_gbps", "blocked_s", "commit_s")

Samples = Mapping[str, Mapping[str, Sequence[float]]]  # test -> metric -> values, over every stage so far


def gather(documents: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Every test's per-metric values over several results documents; an async save's save_s is its training_lost_s
    (the module docstring), its time to durable commit_s."""
    out: dict[str, dict[str, list[float]]] = {}
    for document in documents:
        for test in document["tests"]:
            mine = results.samples(test["runs"], int(document["weights"]["size_bytes"]))
            if mine["training_lost_s"]:  # an async save's runs (a running stage's tests have no settings yet)
                mine["save_s"] = mine["training_lost_s"]
                mine["total_s"] = [lost_s + load_s for lost_s, load_s in zip(mine["save_s"], mine["load_s"])]
            merged = out.setdefault(test["name"], {m: [] for m in FIGURES})
            for metric in FIGURES:
                merged[metric] += mine[metric]
    return out


@dataclass(frozen=True)
class Noise:
    """Run-to-run spread on the log scale, pooled over groups with >= 2 runs and a prior."""

    log_sd: float
    df: float
    measured_df: int = 0

    @property
    def t(self) -> float:
        return float(stats.t_quantile(1 - ALPHA / 2, self.df)) if self.log_sd > 0 else 0.0

    def halfwidth(self, n_a: int, n_b: int) -> float:
        """Half the 95 % interval of log(mean_a / mean_b) for means of n_a and n_b runs."""
        return self.t * self.log_sd * math.sqrt(1 / n_a + 1 / n_b)

    def to_json(self) -> dict[str, Any]:
        noisy = math.isfinite(self.df)  # sizes: no noise, no degrees of freedom
        return {"log_sd": self.log_sd, "df": self.df if noisy else None, "measured_df": self.measured_df,
                "prior_log_sd": PRIOR_LOG_SD if noisy else 0.0, "prior_df": PRIOR_DF if noisy else 0}


def noise_model(groups: Iterable[Sequence[float]], noisy: bool = True) -> Noise:
    """The pooled log-scale spread of repeated runs (each group: one test's values); none for sizes."""
    if not noisy:
        return Noise(0.0, math.inf)
    squares, measured = PRIOR_DF * PRIOR_LOG_SD ** 2, 0
    for values in groups:
        positive = [float(v) for v in values if v > 0]
        if len(positive) >= 2:
            squares += (len(positive) - 1) * (stats.mean_std(np.log(positive))[1] or 0.0) ** 2
            measured += len(positive) - 1
    return Noise(math.sqrt(squares / (PRIOR_DF + measured)), float(PRIOR_DF + measured), measured)


def rank(values: Mapping[str, Sequence[float]], tiebreak: Mapping[str, Sequence[float]] | None = None) -> list[str]:
    """Names from best to worst by mean (lower is better), ties broken by `tiebreak`'s mean, then name."""
    def key(name: str) -> tuple[float, float, str]:
        second = mean(tiebreak[name]) if tiebreak and tiebreak.get(name) else 0.0
        return (mean(values[name]), second, name)
    return sorted((n for n in values if len(values[n])), key=key)


@dataclass(frozen=True)
class Halving:
    ranking: list[str]
    kept: list[str]
    eliminated: dict[str, dict[str, Any]]  # name -> {reason, mean, cut_mean, change_pct, best_case_pct}
    cut: str | None


def halve(values: Mapping[str, Sequence[float]], noise: Noise, *, keep_at_least: int = FINALISTS,
          tiebreak: Mapping[str, Sequence[float]] | None = None, metric: str = "total_s") -> Halving:
    """Keep the better half (at least keep_at_least); of the rest, drop only those that lose even in their
    best case against the cut (the last kept)."""
    ranking = rank(values, tiebreak)
    keep = max(keep_at_least, math.ceil(len(ranking) / 2))
    if len(ranking) <= keep:
        return Halving(ranking, list(ranking), {}, None)
    cut = ranking[keep - 1]
    cut_mean, cut_n = mean(values[cut]), len(values[cut])
    kept, eliminated = list(ranking[:keep]), {}
    for name in ranking[keep:]:
        mine, n = mean(values[name]), len(values[name])
        loss = math.log(mine / cut_mean) if cut_mean > 0 and mine > 0 else 0.0
        best_case = loss - noise.halfwidth(n, cut_n)
        if best_case > 0 or (noise.log_sd == 0 and mine > cut_mean):
            change, best = 100 * (mine / cut_mean - 1), 100 * math.expm1(best_case)
            eliminated[name] = {
                "reason": f"{metric} {mine:.4g} ({n} run{'s' if n > 1 else ''}) vs {cut_mean:.4g} for {cut}, the last "
                          f"kept: {change:+.1f}%; even its best case ({best:+.1f}% at the 95% bound, pooled spread "
                          f"{100 * noise.log_sd:.1f}%) loses",
                "mean": mine, "n": n, "cut": cut, "cut_mean": cut_mean, "change_pct": change, "best_case_pct": best}
        else:
            kept.append(name)
    return Halving(ranking, kept, eliminated, cut)


def compare_metric(metric: str) -> str:
    """analysis.compare judges sizes as sizes and every time (total_s too) as a time."""
    return "size_bytes" if metric == "size_bytes" else "save_s"


MIN_RUNS_FOR_TEST = 2  # Welch's test is defined at two runs a side (its interval is wide there, its p-value holds)
SEPARATED, NOT_DISTINGUISHABLE, NOT_COMPARED = "separated", "not distinguishable", "not compared"


def judge(values: Sequence[float], baseline: Sequence[float], metric: str, noise_pct: float) -> dict[str, Any]:
    """values against baseline by analysis.compare, with the test from two runs a side."""
    return analysis.compare(values, baseline, metric=compare_metric(metric), noise_pct=noise_pct,
                            min_runs=MIN_RUNS_FOR_TEST)


def judgement(comparison: Mapping[str, Any] | None) -> str:
    """SEPARATED (p < ALPHA), NOT_DISTINGUISHABLE (the test ran, p >= ALPHA: only then are two tests tied), or
    NOT_COMPARED (no test ran)."""
    p_value = (comparison or {}).get("p_value")
    if p_value is None:
        return NOT_COMPARED
    return SEPARATED if p_value < ALPHA else NOT_DISTINGUISHABLE


def separation(values: Mapping[str, Sequence[float]], metric: str, noise_pct: float,
               tiebreak: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """The leader, the runner-up and whether they differ (`judge`, `judgement`)."""
    ranking = rank(values, tiebreak)
    out: dict[str, Any] = {"winner": ranking[0] if ranking else None, "runner_up": None, "comparison": None,
                           "separated": False, "judgement": NOT_COMPARED, "ranking": ranking}
    if len(ranking) >= 2:
        comparison = judge(values[ranking[1]], values[ranking[0]], metric, noise_pct)
        verdict = judgement(comparison)
        out.update(runner_up=ranking[1], comparison=comparison, judgement=verdict, separated=verdict == SEPARATED)
    return out


def pareto(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names not dominated in both coordinates (lower is better), by the first coordinate."""
    ordered = sorted(points, key=lambda n: (points[n][0], points[n][1]))
    front, best_y = [], math.inf
    for name in ordered:
        if points[name][1] < best_y:
            front.append(name)
            best_y = points[name][1]
    return front


def ranked(names: Iterable[str], samples: Samples, metric: str) -> list[str]:
    """The measured ones of `names`, best first on the metric (ties: by save + load seconds)."""
    values = {n: samples[n][metric] for n in names if n in samples and samples[n][metric]}
    return rank(values, {n: samples[n]["total_s"] for n in values})


@dataclass(frozen=True)
class Situation:
    """What a decision reads besides the state: the settings, the budget time spent, the stages' results."""

    documents: Mapping[str, Mapping[str, Any]]  # stage name -> its results.json
    metric: str
    noise_pct: float
    seed: int
    elapsed_s: float
    references: Sequence[str]
    has_t5x: bool  # whether t5x_full is a candidate of this space
    codecs: Mapping[str, str] = dataclasses.field(default_factory=dict)  # candidate -> its compression's label
    model_bytes: int = 0

    @cached_property
    def samples(self) -> dict[str, dict[str, list[float]]]:
        return gather(self.documents.values())


def finish_reserve_s(state: TuneState, situation: Situation) -> float:
    """The time kept for the finish: the tuned checkpoint (about one run of the slower finalist, or leader),
    tuning.json and the figure."""
    names = state.finalists or ranked(state.alive, situation.samples, situation.metric)[:FINALISTS]
    durations = state.durations
    return budget.FINISH_FIXED_S + max([durations.of(n) for n in names] or [durations.typical_candidate_s()])


def rung0_members(state: TuneState, references: Sequence[str]) -> list[str]:
    """Rung 0's order: the peers, the first candidates, the device ceiling (the costliest reference run, and only
    context: what a machine slower than the priors leaves out), then the rest of the sample."""
    first, ceiling = state.rung0_order[:CANDIDATES_BEFORE_CEILING], [r for r in references if r == CEILING]
    return [r for r in references if r != CEILING] + first + ceiling + state.rung0_order[len(first):]


def final_references(state: TuneState, situation: Situation) -> list[str]:
    """The reference row the final measures again: rung 0's fastest peer on the objective; before any is measured,
    the slowest to plan for. The device ceiling runs in rung 0 only."""
    peers = [r for r in situation.references if REFERENCES[kind_of(r) or r].peer]
    fastest = ranked(peers, situation.samples, situation.metric)[:1]
    return fastest or ([max(peers, key=state.durations.of)] if peers else [])


def may_start(state: TuneState, stage: Stage, test: str, situation: Situation) -> bool:
    """No run starts that is not expected to end by the stage's deadline; in rung 0, none that would leave too
    little for what must follow it."""
    durations = state.durations
    if not fits(situation.elapsed_s, durations.of(test), stage.deadline_s):
        return False
    if stage.name != "rung-0":
        return True
    # what must follow rung 0 (the later rungs and the final for the candidates it will have measured), from the
    # durations measured so far, must still fit after this run: a wrong prior changes how many it measures
    n_measured = sum(1 for n in state.rung0_order if durations.runs.get(n)) + (0 if kind_of(test) is not None else 1)
    rest_s = budget.continuation_s(n_measured, budget.survivor_run_s(durations, situation.metric),
                                   sum(durations.of(r) for r in final_references(state, situation)),
                                   durations.overhead_s(), durations.of(T5X) if t5x_in_final(situation) else None)
    return fits(situation.elapsed_s, durations.of(test) + rest_s, state.budget_s - finish_reserve_s(state, situation))


def skip_reason(state: TuneState, stage: Stage, test: str, situation: Situation) -> dict[str, Any] | None:
    """Why a candidate of rung 0 is skipped before it runs, or None: on a time objective, the best measured so far of
    the candidates with its compression is more than HOPELESS_FACTOR times the best candidate's. t5x_full,
    reference rows and later stages are never skipped."""
    metric, codecs = situation.metric, situation.codecs
    if stage.name != "rung-0" or test in REFERENCES or test == T5X or metric == "size_bytes" or test not in codecs:
        return None
    means = {n: mean(situation.samples[n][metric]) for n in codecs
             if n != test and situation.samples.get(n, {}).get(metric)}
    same = [value for n, value in means.items() if codecs[n] == codecs[test]]
    if not same:
        return None
    best = min(means, key=means.__getitem__)
    predicted_s = min(same)
    if predicted_s <= HOPELESS_FACTOR * means[best]:
        return None
    rate = f", {human_bytes(situation.model_bytes / predicted_s)}/s of weights" if situation.model_bytes else ""
    return {"stage": stage.name, "skipped": True, "predicted": predicted_s, "best": best, "best_mean": means[best],
            "factor": HOPELESS_FACTOR,
            "reason": f"skipped before running: {metric} predicted at least {predicted_s:.3g} s by its compression "
                      f"({codecs[test]}) as measured earlier in this tune{rate}, more than {HOPELESS_FACTOR:g}x "
                      f"the best so far ({means[best]:.3g} s, {best})"}


def censored(values: Mapping[str, Sequence[float]], metric: str, stage: str,
             keep_at_least: int = FINALISTS) -> dict[str, dict[str, Any]]:
    """On a time objective, the candidates more than HOPELESS_FACTOR times the best: not run again, leaving at
    least keep_at_least."""
    means = {n: mean(v) for n, v in values.items() if len(v)}
    ranking = sorted(means, key=means.__getitem__)
    if metric == "size_bytes" or not ranking:
        return {}
    best = ranking[0]
    out: dict[str, dict[str, Any]] = {}
    for name in ranking[keep_at_least:]:
        ratio = means[name] / means[best] if means[best] > 0 else math.inf
        if ratio > HOPELESS_FACTOR:
            n = len(values[name])
            out[name] = {"stage": stage, "censored": True, "factor": HOPELESS_FACTOR, "mean": means[name], "n": n,
                         "best": best, "best_mean": means[best],
                         "reason": f"more than {HOPELESS_FACTOR:g}x slower than the best ({metric} {means[name]:.3g} s "
                                   f"in {n} run{'s' if n > 1 else ''} against {means[best]:.3g} s for {best}): not "
                                   "run again"}
    return out


def _new_stage(state: TuneState, name: str, kind: str, members: list[str], deadline_s: float) -> Stage:
    return Stage(name, kind, members, stage_seed(state.seed, name), deadline_s,
                 planned_s=state.durations.suite_s(members))


def next_stage(state: TuneState, situation: Situation) -> TuneState:
    """A new state with the next stage appended, or with why the search ends (then no stage is added)."""
    state = copy.deepcopy(state)
    stages, references, elapsed_s = state.stages, list(situation.references), situation.elapsed_s
    if not stages:  # rung 0 lists more than it is expected to measure: planned as the plan's
        stages.append(dataclasses.replace(_new_stage(state, "rung-0", HALVING, rung0_members(state, references),
                                                     state.budget_s - finish_reserve_s(state, situation)),
                                          planned_s=state.plan.rung0_s))
        return state
    leaders = ranked(state.alive, situation.samples, situation.metric)
    if state.phase == "halving":
        finalists = leaders[:FINALISTS]
        rung = f"rung-{sum(1 for s in stages if s.kind == HALVING)}"
        if len(leaders) > FINALISTS:
            members = shuffled(leaders, state.seed, rung)  # the reference rows: in rung 0 and the final only
            t5x = [T5X] if t5x_in_final(situation) and T5X not in finalists else []
            deadline_s = (state.budget_s - finish_reserve_s(state, situation)
                          - budget.final_needs_s(state.durations, finalists,
                                                 t5x + final_references(state, situation)))
            if fits(elapsed_s, state.durations.suite_s(members), deadline_s):
                stages.append(_new_stage(state, rung, HALVING, members, deadline_s))
                return state
        state.phase = "final"
        state.finalists = finalists
    finalists = state.finalists
    if len(finalists) < 2:
        state.stopped_by = "one candidate measured" if finalists else "nothing measured"
        return state
    finals = [s for s in stages if s.kind == FINAL]
    peer = final_references(state, situation)
    # The winner is compared with the fastest peer by an interval, which needs MIN_RUNS_FOR_CI runs of it.
    peer_short = [p for p in peer if situation.metric != "size_bytes"  # sizes are exact: no interval to wait for
                  and len(situation.samples.get(p, {}).get(situation.metric, ())) < MIN_RUNS_FOR_CI]
    if finals and (finals[-1].decision or {}).get("separated") and not peer_short:
        state.stopped_by = "separated"
        return state
    name = f"final-{len(finals) + 1}"
    t5x = [T5X] if situation.has_t5x and T5X not in finalists and not t5x_settled(finalists, situation) else []
    extra = peer if not finals or peer_short else []
    deadline_s = state.budget_s - finish_reserve_s(state, situation)
    # When the whole round does not fit, the finalists come first, then the fastest peer (the answer compares
    # the winner with it), then t5x_full.
    for members in (finalists + t5x + extra, finalists + extra, finalists + t5x, finalists):
        if fits(elapsed_s, state.durations.suite_s(members), deadline_s):
            stages.append(_new_stage(state, name, FINAL, shuffled(members, state.seed, name), deadline_s))
            return state
    state.stopped_by = "budget"
    return state


def t5x_in_final(situation: Situation) -> bool:
    """Whether the final is to measure t5x_full: a candidate of this space not censored so far."""
    if not situation.has_t5x:
        return False
    metric = situation.metric
    values = {n: situation.samples[n][metric] for n in situation.codecs if situation.samples.get(n, {}).get(metric)}
    return T5X not in values or T5X not in censored(values, metric, "", keep_at_least=1)


def t5x_settled(finalists: Sequence[str], situation: Situation) -> bool:
    """Whether the leader's difference from t5x_full is significant, or t5x_full is censored: then the final stops
    measuring it."""
    samples, metric = situation.samples, situation.metric
    leader = ranked(finalists, samples, metric)[:1]
    if not leader or T5X not in samples:
        return False
    if censored({T5X: samples[T5X][metric], leader[0]: samples[leader[0]][metric]}, metric, "", keep_at_least=1):
        return True  # more than HOPELESS_FACTOR times slower: not run again
    if len(samples[T5X][metric]) < 2:
        return False
    return judgement(judge(samples[T5X][metric], samples[leader[0]][metric], metric,
                           situation.noise_pct)) == SEPARATED


def conclude(state: TuneState, status: str, situation: Situation) -> TuneState:
    """A new state after the latest stage ran: who stays (halving) or whether the final is decided, with reasons.
    A candidate whose every run failed is eliminated."""
    state = copy.deepcopy(state)
    stage = state.stages[-1]
    samples, metric = situation.samples, situation.metric
    ran = {t["name"]: t for t in situation.documents[stage.name]["tests"]}
    stage.status = status
    stage.figures = {name: {"runs": [{k: r[k] for k in ("save_s", "load_s", "size_bytes", "load_cache", "error")}
                                     for r in t["runs"] if not r["warmup"]]} for name, t in ran.items() if t["runs"]}
    failed = {name: t["runs"][-1]["error"] for name, t in ran.items()
              if kind_of(name) is None and t["runs"] and all(r["error"] is not None for r in t["runs"])}
    for name, error in failed.items():
        state.eliminated[name] = {"stage": stage.name, "reason": f"failed: {error}"}
    tiebreak = {n: samples[n]["total_s"] for n in samples}
    if stage.kind == FINAL:
        values = {n: samples[n][metric] for n in state.finalists if samples.get(n, {}).get(metric)}
        decided = separation(values, metric, situation.noise_pct, tiebreak)
        stage.decision = {"winner": decided["winner"], "runner_up": decided["runner_up"],
                          "separated": decided["separated"], "judgement": decided["judgement"],
                          "p_value": (decided["comparison"] or {}).get("p_value")}
        return state
    if stage.name == "rung-0":
        measured = [n for n in stage.members if kind_of(n) is None and ran.get(n, {}).get("runs")]
        state.not_measured = [n for n in stage.members if kind_of(n) is None and n not in measured
                              and not state.eliminated.get(n, {}).get("skipped")]
        alive = [n for n in measured if n not in failed]
    else:
        alive = [n for n in state.alive if n not in failed]
    values = {n: samples[n][metric] for n in alive if samples.get(n, {}).get(metric)}
    noisy = analysis.METRICS[compare_metric(metric)][3]  # sizes have no run-to-run noise
    noise = noise_model((v[metric] for v in samples.values()), noisy=noisy)
    halving = halve(values, noise, tiebreak=tiebreak, metric=metric)
    for name, why in halving.eliminated.items():
        state.eliminated[name] = {"stage": stage.name, **why}
    hopeless = censored({n: values[n] for n in halving.kept}, metric, stage.name)
    state.eliminated.update(hopeless)
    state.alive = [n for n in halving.kept if n not in hopeless]
    skipped = sorted(n for n in stage.members if state.eliminated.get(n, {}).get("skipped"))
    stage.decision = {"ranking": halving.ranking, "kept": state.alive, "cut": halving.cut,
                      "eliminated": sorted([*halving.eliminated, *hopeless]), "censored": sorted(hopeless),
                      "skipped": skipped, "failed": sorted(failed), "noise": noise.to_json()}
    return state
