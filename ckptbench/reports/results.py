"""The console report of a results document: text or markdown tables; nothing is measured or computed here."""

from __future__ import annotations

from typing import Any, Mapping

from ckptbench.documents.store import weights_name
from ckptbench.reports.tables import NA, change, ci_pct, mean_pm, table, verdict


def summary_table(document: Mapping[str, Any], fmt: str = "text") -> str:
    """The per-test table: times, throughput, size, and change vs baseline."""
    headers = ["test", "runs", "save s", "load s", "save GB/s", "load GB/s", "size MB", "files",
               "save vs base", "load vs base", "size vs base"]
    rows = []
    for test in document["tests"]:
        s, vs = test["stats"], test["vs_baseline"]
        runs = f"{s['save_s']['n']}" + (f" ({test['failed_runs']} failed)" if test["failed_runs"] else "")
        ok_runs = [r for r in test["runs"] if r["error"] is None]
        rows.append([
            test["name"] + (" (baseline)" if test["name"] == document["baseline"] else "")
            + (" (reference)" if test.get("kind") == "reference" else "")
            + "".join(f" ({label})" for label in test.get("labels", [])),
            runs,
            mean_pm(s["save_s"]), mean_pm(s["load_s"]),
            mean_pm(s["save_gbps"]), mean_pm(s["load_gbps"]),
            mean_pm(s["size_bytes"], 1e6, 1),
            str(ok_runs[-1]["n_files"]) if ok_runs else NA,
            change(vs.get("save_s")), change(vs.get("load_s")), change(vs.get("size_bytes")),
        ])
    return table(headers, rows, fmt)


def cost_table(document: Mapping[str, Any], fmt: str = "text") -> str:
    """What each test costs besides time, and how close it comes to the device's own speed."""
    headers = ["test", "save CPU s", "load CPU s", "save RSS anon/file GB", "load RSS anon/file GB",
               "save % of ceiling", "load % of ceiling"]
    rows = []
    for test in document["tests"]:
        s, ceiling = test["stats"], test.get("pct_of_ceiling", {})
        rows.append([
            test["name"],
            mean_pm(s.get("save_cpu_s", {})), mean_pm(s.get("load_cpu_s", {})),
            _anon_file(s, "save"), _anon_file(s, "load"),
            *(NA if ceiling.get(m) is None else f"{ceiling[m]:.0f}%" for m in ("save_gbps", "load_gbps")),
        ])
    return table(headers, rows, fmt)


def _anon_file(stats: Mapping[str, Any], op: str) -> str:
    """Peak anonymous / file-backed resident GB of the process during an operation (the runs' largest)."""
    anon, file = (stats.get(f"{op}_rss_{kind}_bytes") or {} for kind in ("anon", "file"))
    if anon.get("max") is None:
        return NA
    return f"{anon['max'] / 1e9:.2f} / {file['max'] / 1e9:.2f}"


def ceiling_table(document: Mapping[str, Any], fmt: str = "text") -> str:
    """The device ceiling's access patterns: GB/s of each, the fastest marked."""
    ceiling = next((t for t in document["tests"] if t["name"] == "device_ceiling"), None)
    patterns = (ceiling or {}).get("ceiling")
    if not patterns:
        return ""
    rows = []
    for op in ("save", "load"):
        for name, summary in patterns[op].items():
            mark = " (fastest most often)" if name == patterns.get(f"{op}_pattern") else ""
            rows.append([op, name + mark, mean_pm(summary), str(summary["n"])])
    return table(["operation", "pattern (streams x block)", "GB/s", "runs"], rows, fmt)


def best_lines(document: Mapping[str, Any]) -> list[str]:
    """Which TensorStore test to use, per objective, and whether it beats the runner-up."""
    words = {"save": "fastest save", "load": "fastest load", "balanced": "fastest save + load",
             "size": "smallest on disk"}
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
    headers = ["test", "metric", "change %", "95% CI of change %", "ratio", "p (Welch)", "verdict"]
    rows = []
    baseline = next((t for t in document["tests"] if t["name"] == document["baseline"]), None)
    for test in document["tests"]:
        for metric, comparison in test["vs_baseline"].items():
            p = comparison.get("p_value")
            ratio, err = comparison.get("ratio"), comparison.get("ratio_err")
            rows.append([
                test["name"], metric,
                NA if comparison.get("change_pct") is None else f"{comparison['change_pct']:+.1f}",
                ci_pct(comparison),
                NA if ratio is None else (f"{ratio:.3f} +- {err:.3f}" if err is not None else f"{ratio:.3f}"),
                NA if p is None else f"{p:.3g}",
                verdict(comparison, _fewest_runs(test, baseline, metric)),
            ])
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
            rows.append([
                test["name"], claim["metric"], f"{lo:+.0f} .. {hi:+.0f}", f"{band[0]:+.0f} .. {band[1]:+.0f}",
                NA if claim["measured_pct"] is None else f"{claim['measured_pct']:+.1f}",
                NA if ci is None else f"{ci[0]:+.1f} .. {ci[1]:+.1f}",
                claim["outcome"],
            ])
    return table(headers, rows, fmt) if rows else ""


def headline(document: Mapping[str, Any]) -> str:
    """Two lines: what was measured, on what, how; and the scale that decides whether it carries over."""
    w, p, scale = document["weights"], document["protocol"], document.get("scale") or {}
    source = weights_name(w)
    first = (f"{source}: {w['n_params'] / 1e6:.0f}M params, {w['dtype']}, {w['size_bytes'] / 1e9:.2f} GB, values "
             f"{w.get('values', '?')}; {p['num_runs']} runs/test, {p.get('order', 'interleaved')} order, loads "
             f"{p['load_cache']} ({', '.join(p['cache_eviction_used'])}), seed {p['seed']}")
    return first + "\n" + scale_line(scale)


def scale_line(scale: Mapping[str, Any]) -> str:
    if not scale.get("ram_bytes"):
        return "scale: unknown (no /proc/meminfo)"
    fits = "fits" if scale["fits_in_page_cache"] else "does not fit"
    text = (f"scale: the checkpoint is {scale['model_pct_of_ram']:.1f}% of RAM ({scale['ram_bytes'] / 1e9:.1f} GB) "
            f"and {fits} in the page cache")
    if scale.get("ceiling_save_pattern"):
        text += (f"; device ceiling: writes {scale['ceiling_save_pattern']}, "
                 f"reads {scale['ceiling_load_pattern']} (streams x block)")
    return text


def full_report(document: Mapping[str, Any], fmt: str = "text") -> str:
    # Some markdown renderers only start a table after a blank line; GitHub accepts both.
    gap = [""] if fmt == "markdown" else []
    bullet = "- " if fmt == "markdown" else "  "
    parts = [headline(document), "", summary_table(document, fmt)]
    best = best_lines(document)
    if best:
        parts += ["", "Which layout to use (TensorStore tests; 'ahead of' means Welch's t-test separates the two):",
                  *gap, *(bullet + line for line in best)]
    parts += ["", "Cost (CPU over all threads; peak resident GB of the whole process, anonymous / file-backed; "
              "% of the device ceiling's GB/s):", *gap, cost_table(document, fmt)]
    ceiling = ceiling_table(document, fmt)
    if ceiling:
        parts += ["", "Device ceiling, per access pattern:", *gap, ceiling]
    significance = significance_table(document, fmt)
    if significance:
        parts += ["", "Versus baseline (Welch's t-test, alpha 0.05; changes under "
                  f"{document['protocol']['noise_pct']:g}% are within noise; weak: under 5 runs):",
                  *gap, significance]
    claims = claims_table(document, fmt)
    if claims:
        parts += ["", "Claims check (the Phase 4 summary's expected results; times are judged against the claimed "
                  "range widened by the noise threshold):", *gap, claims]
    if document["warnings"]:
        mark = "- " if fmt == "markdown" else "  ! "
        parts += ["", "Warnings:", *gap] + [mark + w for w in document["warnings"]]
    return "\n".join(parts)
