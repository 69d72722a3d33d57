"""The console report of a results document: text or markdown; nothing is measured or computed here.

`console` is what `run` and `show` print; `full_report` (`--details`, and the Python API's `Results.report`) adds every
table and every warning.
"""

from __future__ import annotations

from typing import Any, Mapping

from ckptbench.analysis import change as analysis
from ckptbench.documents.findings import elsewhere
from ckptbench.documents.store import weights_name
from ckptbench.documents.while_training import is_async
from ckptbench.reports import while_training
from ckptbench.reports.tables import BRIEF, NA, change, ci_pct, mean_pm, ratio_brief, ratio_ci, table, verdict
from ckptbench.spec.references import CEILING

OBJECTIVE_WORDS = {"save": "save", "load": "load", "balanced": "save + load", "size": "size"}
MAX_WARNING_LINES = 6


def answer_lines(document: Mapping[str, Any]) -> list[str]:
    """TensorStore's best per objective against the baseline, the fastest peer and the device ceiling, and where the
    winners were chosen from."""
    best = document.get("best") or {}
    if not best:
        saved_async = any(t["kind"] == "tensorstore" and is_async(t) and t["stats"]["save_s"]["n"] for t in
                          document["tests"])  # sync rows alone are answered here, async ones below
        return ["Answer: every TensorStore test that ran saved async: see checkpoint while training" if saved_async
                else "Answer: no TensorStore test has a successful run", *while_training.lines(document)]
    width = max(len(OBJECTIVE_WORDS[o]) for o in best) + 1
    lines = ["Answer: TensorStore's best per objective, against the baseline | the fastest peer | the device "
             "ceiling (ratios of means, 95% CIs):"]
    for objective, entry in best.items():
        metric = entry["metric"]
        parts = [_against(entry, role, metric) for role in ("baseline", "peer", "ceiling")]
        confirmed = entry.get("confirmation")
        mean = (f"{_quantity(confirmed['mean'], metric)} (confirmed)" if confirmed
                else _quantity(entry["mean"], metric))
        lines.append(f"  {(OBJECTIVE_WORDS[objective] + ':').ljust(width)} {entry['test']} "
                     f"{mean}: " + " | ".join(p for p in parts if p))
    return lines + _selection_lines(document) + while_training.lines(document)  # async saves' answer


def _selection_lines(document: Mapping[str, Any]) -> list[str]:
    """Where the answer's ratios come from: confirmation rounds after the selection, or the selection's own runs
    ("best of K, selected from these runs", which flatters the winner and the fastest peer)."""
    best = document["best"]
    section = document.get("confirmation") or {}
    confirmed = [o for o, e in best.items() if e.get("confirmation")]
    timed = [o for o, e in best.items() if e["metric"] != "size_bytes" and o not in confirmed]
    lines = []
    if confirmed:
        pause = f", {section['pause_s']:g} s apart" if section.get("pause_s") and section["blocks"] > 1 else ""
        blocks = max(best[o]["confirmation"]["blocks"] for o in confirmed)
        plural = "s" if blocks > 1 else ""
        lines.append(f"  {', '.join(OBJECTIVE_WORDS[o] for o in confirmed)}: the peer and ceiling ratios come only "
                     f"from {blocks} block{plural} of {section['rounds']} fresh interleaved rounds after the selection"
                     f"{pause}" + _baseline_note([best[o] for o in confirmed]))
    if timed:
        of = _of(best[timed[0]], "", " and of {peer} peers") or " of K"
        stopped = " (the confirmation rounds did not run)" if section.get("selected") and not confirmed else ""
        flattered = "both" if (best[timed[0]].get("selected_from") or {}).get("peer", 1) else "it"
        lines.append(f"  {', '.join(OBJECTIVE_WORDS[o] for o in timed)}: best{of}, selected from these runs, "
                     f"which flatters {flattered}{stopped}; testing.confirm_rounds measures them again in fresh "
                     "rounds")
    return lines


def _baseline_note(confirmed: list[Mapping[str, Any]]) -> str:
    """The baseline's ratio is not measured again: where it comes from, if a confirmed winner has one."""
    entry = next((e for e in confirmed if (e.get("against") or {}).get("baseline")), None)
    if entry is None:
        return ""
    counts = _of(entry, " (best")
    return ("; the baseline's from the runs it was selected from" + counts
            + (", which flatters it)" if counts else ""))


def _of(entry: Mapping[str, Any], lead: str, peers: str = "") -> str:
    """' of 6 TensorStore tests' (and `peers` filled in): how many the winner was the best of; '' if unknown."""
    counts = entry.get("selected_from") or {}
    if not counts.get("tensorstore"):
        return ""
    return f"{lead} of {counts['tensorstore']} TensorStore tests" + (peers.format(peer=counts["peer"])
                                                                     if counts.get("peer") else "")


def _against(entry: Mapping[str, Any], role: str, metric: str) -> str:
    comparison = (entry.get("against") or {}).get(role)
    if role == "baseline" and comparison is None:
        return "is the baseline" if "against" in entry else ""
    if comparison is None:
        return "no peer measured" if role == "peer" else ""
    words_metric = "size_bytes" if metric == "size_bytes" else "save_s"
    if role == "ceiling" and metric == "size_bytes":
        return f"{comparison['ratio']:.2f}x the raw bytes"
    note = "peer" if role == "peer" else ""
    if comparison.get("blocks_disagree"):
        return (f"blocks disagree against {comparison['test']}" + (f" ({note})" if note else "")
                + f", {comparison['blocks_disagree']}: "
                + ", ".join(f"block {c['block']} {ratio_brief(c)}" for c in comparison["blocks"]))
    words = analysis.ratio_words(comparison, comparison["test"], words_metric, ci_label="", note=note)
    spread = comparison.get("block_ratio_range")
    if spread:
        flip = comparison["ratio"] < 1.0  # the blocks' ratios the way the words read: >= 1 for the pooled one
        ends = sorted(1 / r if flip else r for r in spread)
        words += f" [blocks {analysis.range_text(*ends) or analysis.ratio_text(ends[0]) + ' each'}]"
    return words


def _quantity(value: float | None, metric: str) -> str:
    if value is None:
        return NA
    return f"{value / 1e6:.1f} MB" if metric == "size_bytes" else f"{value:.3g} s"


def _num(value: float) -> str:
    """Three significant digits, without an exponent: 0.631, 13.5, 630, 1234."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _mean_ci(summary: Mapping[str, Any]) -> str:
    """'0.631 [0.402-0.99]': the mean and its 95 % interval on the log scale; 'too few runs' without one."""
    mean = summary.get("mean") if summary else None
    if mean is None:
        return NA
    interval = summary.get("ci95")
    if interval is None:
        return f"{_num(mean)}, too few runs" if summary["n"] <= 2 else _num(mean)
    return f"{_num(mean)} [{_num(interval[0])}-{_num(interval[1])}]"


_SHORT = {**BRIEF, analysis.INSUFFICIENT: "-", analysis.TOO_FEW: "too few runs"}


def _versus(comparison: Mapping[str, Any] | None) -> str:
    """'-35% faster', '+3% n.s.', '+0% same', '-20% too few runs'."""
    if not comparison or comparison.get("change_pct") is None:
        return NA
    word = comparison["verdict"]
    return f"{round(comparison['change_pct']):+d}% {_SHORT.get(word, word)}"  # round(): never "-0%"


def main_table(document: Mapping[str, Any], fmt: str = "text") -> str:
    """The one table of the default console."""
    headers = ["test", "save s [95% CI]", "load s [95% CI]", "GB/s save/load", "% of ceiling", "size MB",
               "save vs base", "load vs base", "size vs base"]
    rows = []
    for test in document["tests"]:
        s, vs = test["stats"], test["vs_baseline"]
        pct = test.get("pct_of_ceiling") or {}
        rates = [s[m]["mean"] for m in ("save_gbps", "load_gbps")]
        rows.append([
            _row_name(document, test, "ref") + (f" ({test['failed_runs']} failed)" if test.get("failed_runs") else ""),
            _mean_ci(s["save_s"]), _mean_ci(s["load_s"]), NA if None in rates else f"{rates[0]:.3g}/{rates[1]:.3g}",
            NA if pct.get("save_gbps") is None or pct.get("load_gbps") is None
            else f"{pct['save_gbps']:.0f}/{pct['load_gbps']:.0f}",
            NA if s["size_bytes"]["mean"] is None else f"{s['size_bytes']['mean'] / 1e6:.1f}",
            *(_versus(vs.get(m)) for m in ("save_s", "load_s", "size_bytes"))])
    return table(headers, rows, fmt)


def _row_name(document: Mapping[str, Any], test: Mapping[str, Any], reference: str) -> str:
    """'x (baseline) (ref) (label)': the test's name and what it is ('reference': the word a reference row gets)."""
    name = test["name"] + (" (baseline)" if test["name"] == document["baseline"] else "")
    name += f" ({reference})" if test.get("kind") == "reference" else ""
    return name + "".join(f" ({label})" for label in test.get("labels", []))


def claims_line(document: Mapping[str, Any]) -> str | None:
    """One line: how many of the summary's claims were confirmed, contradicted, ... and where the figure is."""
    claims = [c for t in document["tests"] for c in t["claims"]]
    if not claims:
        return None
    counts = {o: sum(1 for c in claims if c["outcome"] == o) for o in analysis.OUTCOMES}
    words = {"consistent, not pinned down": "consistent"}
    text = ", ".join(f"{n} {words.get(o, o)}" for o, n in counts.items())
    return (f"Claims check ({len(claims)} expected results of the Phase 4 summary): {text}; figure claims_check.png, "
            "table --details")


def page_cache_line(document: Mapping[str, Any]) -> str | None:
    """One line: each claim to read around the page cache (O_DIRECT), as measured after the row's loads."""
    parts = []
    for test in document["tests"]:
        cache = test.get("page_cache") or {}
        if cache.get("claim_held") is None:
            continue
        verdict = "held" if cache["claim_held"] else f"broken in {cache['claim_broken_runs']} of"
        parts.append(f"{test['name']} ({cache['claim']}) {verdict} {cache['claim_runs']} loads, at most "
                     f"{cache['claim_resident_pct_max']:.0f}% resident")
    if not parts:
        return None
    limit = next(t["page_cache"]["limit_pct"] for t in document["tests"] if (t.get("page_cache") or {}).get("claim"))
    return f"Page-cache claims, measured right after each load (limit {limit:g}%): " + "; ".join(parts)


def warning_lines(document: Mapping[str, Any], most: int = MAX_WARNING_LINES) -> list[str]:
    """What threatens the answer first (documents.results' alerts), then the noise in one line: at most `most`
    lines, the header included."""
    alerts = document.get("alerts") or []
    noise = _noise_line(document.get("noise") or {})
    total = len(document.get("warnings") or [])
    if not alerts and noise is None:
        return []
    lines = [f"Warnings ({total} in all; --details lists each):"]
    room = most - 1 - (noise is not None)
    shown = alerts[:room]
    if len(alerts) > room:
        shown = alerts[:room - 1]
        rest = alerts[room - 1:]
        shown.append({"text": f"{len(rest)} more: " + "; ".join(a["kind"] for a in rest) + " (--details)"})
    lines += [f"  ! {a['text']}" for a in shown]
    if noise is not None:
        lines.append(f"  ! {noise}")
    return lines


def _noise_line(noise: Mapping[str, Any]) -> str | None:
    if not noise or not noise.get("n_metrics"):
        return None
    noisy = len(noise["noisy"])
    needed, runs = noise.get("runs_for_precision"), noise.get("runs")
    if not noisy and (needed is None or runs is None or needed <= runs):
        return None
    text = (f"noise: {noisy} of {noise['n_metrics']} save/load times have a CV above {noise.get('cv_limit_pct', 10):g}%"
            + (f", {noise['outliers']} outlier run(s)" if noise.get("outliers") else ""))
    if needed is not None and (runs is None or needed > runs):
        rows = ", ".join(noise["answer_rows"][:3]) + (" ..." if len(noise["answer_rows"]) > 3 else "")
        text += f"; +-{noise['precision_pct']:g}% on the answer's rows ({rows}) needs --runs {needed}"
    return text


def busy_lines(document: Mapping[str, Any]) -> list[str]:
    """One line when other processes kept the machine busy during a timed operation (documents.findings.busy), one
    when some operations were not watched (no /proc). Nothing on a quiet machine."""
    busy = document.get("busy")
    if busy is None:  # a file of this version written before the harness watched other processes
        return ["! other processes' use of the machine was not measured (a file written before ckptbench watched "
                "it): the machine may have been busy"]
    if not busy["timed"]:
        return []
    lines = []
    if busy["operations"]:
        answer = busy["answer_tests"]
        lines.append(f"! the machine was busy: other processes used {busy['other_cpu_pct']:.0f} % of a core and "
                     f"wrote {busy['other_write_bytes'] / 1e9:.2f} GB (read {busy['other_read_bytes'] / 1e9:.2f} GB) "
                     f"during {busy['operations']} of {busy['timed']} timed operations, in "
                     f"{', '.join(busy['tests'])}; "
                     + (f"the answer's rows were affected ({', '.join(answer)})" if answer
                        else "the answer's rows were not"))
    if busy["not_measured"]:
        lines.append(f"! other processes' use of the machine was not measured during {busy['not_measured']} of "
                     f"{busy['timed']} timed operations (no /proc, or a file written before it was): the machine "
                     "may have been busy")
    return lines


def _head(document: Mapping[str, Any], fmt: str) -> list[str]:
    """What every console report starts with: the header, the answer, a busy machine, the one table."""
    return [headline(document), "", *answer_lines(document), *busy_lines(document), "", main_table(document, fmt)]


def console(document: Mapping[str, Any], fmt: str = "text") -> str:
    """The default console: header, answer, one table, the claims in a line, the warnings grouped."""
    parts = _head(document, fmt)
    claims = [line for line in (claims_line(document), page_cache_line(document)) if line]
    parts += ["", *claims] if claims else []
    warnings = warning_lines(document)
    parts += ["", *warnings] if warnings else []
    return "\n".join(parts)


def summary_table(document: Mapping[str, Any], fmt: str = "text") -> str:
    """The per-test table: times, throughput, size, and change vs baseline."""
    headers = ["test", "runs", "save s", "load s", "save GB/s", "load GB/s", "size MB", "files",
               "save vs base", "load vs base", "size vs base", "busy ops"]
    rows = []
    for test in document["tests"]:
        s, vs = test["stats"], test["vs_baseline"]
        runs = f"{s['save_s']['n']}" + (f" ({test['failed_runs']} failed)" if test["failed_runs"] else "")
        ok_runs = [r for r in test["runs"] if r["error"] is None]
        rows.append([_row_name(document, test, "reference"), runs, mean_pm(s["save_s"]), mean_pm(s["load_s"]),
                     mean_pm(s["save_gbps"]), mean_pm(s["load_gbps"]), mean_pm(s["size_bytes"], 1e6, 1),
                     str(ok_runs[-1]["n_files"]) if ok_runs else NA,
                     *(change(vs.get(m)) for m in ("save_s", "load_s", "size_bytes")), _busy_ops(test.get("busy"))])
    return table(headers, rows, fmt)


def _busy_ops(busy: Mapping[str, Any] | None) -> str:
    """'1/6': timed operations during which the machine was busy, of those timed; '?' where none was watched."""
    if not busy or busy["not_measured"] == busy["timed"]:
        return "?"
    return f"{busy['operations']}/{busy['timed']}"


def cost_table(document: Mapping[str, Any], fmt: str = "text") -> str:
    """What each test costs besides time, and how close it comes to the device's own speed."""
    headers = ["test", "save CPU s", "load CPU s", "save RSS anon/file GB", "load RSS anon/file GB",
               "save % of ceiling", "load % of ceiling"]
    rows = []
    for test in document["tests"]:
        s, ceiling = test["stats"], test.get("pct_of_ceiling", {})
        rows.append([test["name"], mean_pm(s.get("save_cpu_s", {})), mean_pm(s.get("load_cpu_s", {})),
                     _anon_file(s, "save"), _anon_file(s, "load"),
                     *(NA if ceiling.get(m) is None else f"{ceiling[m]:.0f}%" for m in ("save_gbps", "load_gbps"))])
    return table(headers, rows, fmt)


def _anon_file(stats: Mapping[str, Any], op: str) -> str:
    """Peak anonymous / file-backed resident GB of the process during an operation (the runs' largest); run by
    several processes, the anonymous GB of every process of this host that took part."""
    anon, file = (stats.get(f"{op}_rss_{kind}_bytes") or {} for kind in ("anon", "file"))
    anon = stats.get(f"{op}_host_rss_anon_bytes") or anon
    if anon.get("max") is None:
        return NA
    return f"{anon['max'] / 1e9:.2f} / {file['max'] / 1e9:.2f}"


def _ceiling(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """The device ceiling's patterns (its row's `ceiling`), or {} without one."""
    return next((t.get("ceiling") or {} for t in document["tests"] if t["name"] == CEILING), {})


def ceiling_table(document: Mapping[str, Any], fmt: str = "text") -> str:
    """The device ceiling's access patterns: GB/s of each, the fastest marked."""
    patterns = _ceiling(document)
    if not patterns:
        return ""
    rows = []
    for op in ("save", "load"):
        for name, summary in patterns[op].items():
            mark = " (fastest most often)" if name == patterns.get(f"{op}_pattern") else ""
            rows.append([op, name + mark, mean_pm(summary), str(summary["n"])])
    return table(["operation", "pattern (streams x block)", "GB/s", "runs"], rows, fmt)


def ceiling_rounds_table(document: Mapping[str, Any], fmt: str = "text") -> str:
    """Each round's ceiling: the ceiling's own fastest pattern, and every row that beat it."""
    by_round = _ceiling(document).get("rounds") or {}
    rows = []
    for rate, op in (("save_gbps", "save"), ("load_gbps", "load")):
        for entry in by_round.get(rate, []):
            beaten = ", ".join(f"{name} {gbps:.3g}" for name, gbps in entry["beaten_by"].items()) or "-"
            rows.append([str(entry["round"]), op, f"{entry['ceiling_gbps']:.3g}", entry["ceiling_pattern"] or NA,
                         beaten])
    return table(["round", "operation", "ceiling GB/s", "its pattern", "rows faster (GB/s)"], rows, fmt) if rows else ""


def best_lines(document: Mapping[str, Any]) -> list[str]:
    """Which TensorStore test to use, per objective, and whether it beats the runner-up."""
    words = {"save": "best save", "load": "best load", "balanced": "best save + load", "size": "smallest on disk"}
    out = []
    for objective, entry in (document.get("best") or {}).items():
        unit, scale = ("MB", 1e6) if entry["metric"] == "size_bytes" else ("s", 1.0)
        text = f"{words[objective]}: {entry['test']} ({entry['mean'] / scale:.3g} {unit})"
        if entry.get("runner_up"):
            verdict = ("ahead of" if entry["distinguishable"] else "not distinguishable from")
            text += f", {verdict} {entry['runner_up']} ({entry['runner_up_mean'] / scale:.3g} {unit})"
        out.append(text)
    return out


def significance_table(document: Mapping[str, Any], fmt: str = "text") -> str:
    """Each non-baseline test and metric: change, 95% interval, p-value and verdict."""
    headers = ["test", "metric", "change %", "95% CI of change %", "ratio [95% CI]", "p", "verdict"]
    rows = []
    baseline = next((t for t in document["tests"] if t["name"] == document["baseline"]), None)
    for test in document["tests"]:
        for metric, comparison in test["vs_baseline"].items():
            p = comparison.get("p_value")
            rows.append([test["name"], metric,
                         NA if comparison.get("change_pct") is None else f"{comparison['change_pct']:+.1f}",
                         ci_pct(comparison), ratio_ci(comparison), NA if p is None else f"{p:.3g}",
                         verdict(comparison, _fewest_runs(test, baseline, metric))])
    return table(headers, rows, fmt) if rows else ""


def _fewest_runs(test: Mapping[str, Any], baseline: Mapping[str, Any] | None, metric: str) -> int | None:
    """Runs on the weaker side of a comparison (the t-test is only as strong as that side)."""
    counts = [t["stats"][metric]["n"] for t in (test, baseline) if t is not None and metric in t["stats"]]
    return min(counts) if counts else None


def claims_table(document: Mapping[str, Any], fmt: str = "text") -> str:
    """The summary's expected results against what was measured."""
    headers = ["test", "metric", "claimed %", "judged against %", "measured %", "95% CI %", "outcome"]
    rows = []
    for test in document["tests"]:
        for claim in test["claims"]:
            lo, hi = claim["claimed_pct"]
            band = claim.get("band_pct") or claim["claimed_pct"]
            ci = claim["ci_pct"]
            rows.append([test["name"], claim["metric"], f"{lo:+.0f} .. {hi:+.0f}", f"{band[0]:+.0f} .. {band[1]:+.0f}",
                         NA if claim["measured_pct"] is None else f"{claim['measured_pct']:+.1f}",
                         (analysis.TOO_FEW if claim["reason"].startswith(analysis.TOO_FEW) else NA) if ci is None
                         else f"{ci[0]:+.1f} .. {ci[1]:+.1f}", claim["outcome"]])
    return table(headers, rows, fmt) if rows else ""


def headline(document: Mapping[str, Any]) -> str:
    """Two lines: what was measured, on what, how; and the scale that decides whether it carries over."""
    w, p, scale = document["weights"], document["protocol"], document.get("scale") or {}
    source = weights_name(w)
    first = (f"{source}: {w['n_params'] / 1e6:.0f}M params, {w['dtype']}, {w['size_bytes'] / 1e9:.2f} GB, values "
             f"{w.get('values', '?')}; {p['num_runs']} runs/test, {p.get('order', 'interleaved')} order, loads "
             f"{p['load_cache']} ({', '.join(p['cache_eviction_used'])}){_destination(document)}, seed {p['seed']}")
    return first + "\n" + scale_line(scale)


def _destination(document: Mapping[str, Any]) -> str:
    """' into preallocated arrays (every row but x)': where the loads put what they read (none in older files)."""
    load_into = document["config"].get("load_into")
    if load_into is None:
        return ""
    others = [t["name"] for t in elsewhere(document)]
    return f" into {load_into} arrays" + (f" (every row but {', '.join(others)})" if others else "")


def scale_line(scale: Mapping[str, Any]) -> str:
    if not scale.get("ram_bytes"):
        return "scale: unknown (no /proc/meminfo)"
    fits = "fits" if scale["fits_in_page_cache"] else "does not fit"
    text = (f"scale: the checkpoint is {scale['model_pct_of_ram']:.1f}% of RAM ({scale['ram_bytes'] / 1e9:.1f} GB) "
            f"and {fits} in the page cache")
    if scale.get("ceiling_save_pattern"):  # a tp row's readers time one share each: no read pattern of its own
        reads = scale.get("ceiling_load_pattern") or "by the tp readers"
        text += f"; device ceiling: writes {scale['ceiling_save_pattern']}, reads {reads} (streams x block)"
    return text


def full_report(document: Mapping[str, Any], fmt: str = "text") -> str:
    """Everything (`--details`): the header, the answer, the table, then every other table and every warning."""
    # Some markdown renderers only start a table after a blank line; GitHub accepts both.
    gap = [""] if fmt == "markdown" else []
    bullet = "- " if fmt == "markdown" else "  "
    fio = (document.get("environment") or {}).get("fio")
    tools = (f"{fio}'s io_uring pattern among them" if fio else
             "fio was not on PATH: the harness's own threads' patterns only, listed here")
    sections = [
        ("Per test (mean +- std over the runs; changes versus the baseline; busy ops: timed operations during which "
         "other processes kept the machine busy, of those timed):", summary_table(document, fmt)),
        ("Which layout to use (TensorStore tests; 'ahead of' means the runner-up is significantly slower):",
         "\n".join(bullet + line for line in best_lines(document))),
        ("Cost (CPU over all threads; peak resident GB of the whole process, anonymous / file-backed, the anonymous "
         "of every process of this host for a run by several; % of the device ceiling's GB/s):",
         cost_table(document, fmt)),
        (f"Device ceiling, per access pattern ({tools}):", ceiling_table(document, fmt)),
        ("Device ceiling, per round (% of ceiling is of each round's fastest figure; a row faster than the ceiling's "
         "own patterns is named):", ceiling_rounds_table(document, fmt)),
        ("Versus baseline (ratio of means on the log scale, Welch-Satterthwaite t, alpha 0.05; changes under "
         f"{document['protocol']['noise_pct']:g}% are within noise; weak: under 5 runs; no interval with 2 runs or "
         "fewer):", significance_table(document, fmt)),
        ("Claims check (the Phase 4 summary's expected results; times are judged against the claimed range widened "
         "by the noise threshold):", claims_table(document, fmt)),
    ]
    parts = _head(document, fmt)
    for heading, body in sections:
        if body:
            parts += ["", heading, *gap, body]
    if document["warnings"]:
        mark = "- " if fmt == "markdown" else "  ! "
        parts += ["", "Warnings:", *gap] + [mark + w for w in document["warnings"]]
    return "\n".join(parts)
