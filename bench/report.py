"""report.json -> report.md (tables a person reads in ten seconds) and PNG plots (matplotlib, Agg).

Plots:
- `accuracy_vs_latency.png`: test metric against ms per sentence (log scale), one panel per batch
  size at the largest thread count; every artifact of every model, the Pareto front (no other point
  is both faster and more accurate) drawn as a line. A teacher without accuracy (a shape preset) is a
  vertical line at its latency per runtime.
- `speedup_by_batch.png`: speedup of each student artifact against the teacher in the same runtime
  and against the teacher's fastest runtime, per batch size (log scale).
"""
from __future__ import annotations

import time
from pathlib import Path

from xtremedistil.distill.machine import is_shared
from xtremedistil.distill.metrics import lowest_language, retention_percent
from xtremedistil.errors import XtremeDistilError

PLOTS = ("accuracy_vs_latency.png", "speedup_by_batch.png")


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _label(row: dict) -> str:
    precision = "" if row["runtime"] == "keras" else f" {row['quantization']}"
    return f"{row['model']} · {row['runtime']}{precision}"


def _int8_units(env: dict) -> str:
    flags = set(env.get("cpu_flags") or [])
    units = [name for flag, name in (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX512-VNNI"),
                                     ("avx_vnni", "AVX-VNNI")) if flag in flags]
    return f" ({', '.join(units)}: int8 kernels gain most here)" if units else ""


def _main_threads(report: dict) -> int:
    return max(report["protocol"]["threads"])


def headline_rows(report: dict) -> list[dict]:
    """Per batch size (largest thread count): the fastest artifact of each student."""
    threads = _main_threads(report)
    best = {}
    for row in report["rows"]:
        if row["role"] != "student" or row["threads"] != threads:
            continue
        key = (row["model"], row["batch_size"])
        if key not in best or row["p50_ms"] < best[key]["p50_ms"]:
            best[key] = row
    return sorted(best.values(), key=lambda r: (r["batch_size"], r["model"]))


def format_headline(report: dict) -> str:
    """The headline rows as console lines (the CLI and recipes print these)."""
    lines = []
    for row in headline_rows(report):
        retention = "" if row["retention"] is None else f", retention {retention_percent(row['retention'])}"
        lines.append(f"batch {row['batch_size']:>3}: {row['model']} fastest as {row['artifact']}: "
                     f"{row['ms_per_sentence']:.3f} ms/sentence, {_fmt(row['speedup_same_runtime'], '.1f', 'x')} vs "
                     f"teacher same runtime, {_fmt(row['speedup_best'], '.1f', 'x')} vs teacher's best{retention}")
    for line in (shared_cpu_line(report), sitting_line(report)):
        if line and line.startswith("**"):      # only the warnings: a clean bench needs no console line
            lines.append(line.replace("**", ""))
    return "\n".join(lines)


def shared_cpu_line(report: dict) -> str | None:
    """Whether every measurement had the machine to itself: other processes' share of the CPUs while each
    artifact was measured (the worker process, its load and its timing). None for reports made before it was
    recorded."""
    shares = {}
    for row in report["rows"]:
        if row.get("others_cpu_share") is not None:
            shares[(row["model"], row["artifact"], row["threads"])] = row["others_cpu_share"]
    if not shares:
        return None
    shared = sorted(((key, share) for key, share in shares.items() if is_shared(share)), key=lambda kv: -kv[1])
    if not shared:
        return (f"CPU: every measurement had the machine to itself (other processes took at most "
                f"{100 * max(shares.values()):.0f}% of it during one).")
    named = ", ".join(f"{model} {artifact} ({threads} thr, {100 * share:.0f}%)"
                      for (model, artifact, threads), share in shared[:8])
    more = f" and {len(shared) - 8} more" if len(shared) > 8 else ""
    return (f"**Not a clean bench: {len(shared)} of {len(shares)} measurements shared the CPU with other "
            f"processes** (share of the CPU they took): {named}{more}. Their latencies and speedups are not clean "
            f"figures: rerun the same command with `--remeasure-shared` on a quiet machine (only these are measured again).")


# Measurements further apart than this are not one sitting of the machine: a ratio between them compares two
# moments (another load, another thermal state, another kernel) rather than two models.
ONE_SITTING_SECONDS = 3600


def sitting_line(report: dict) -> str | None:
    """When the report's latencies were measured: one bench run, or several (a resumed run reuses what an
    earlier one measured). Bold, with the way out, when the measurements span more than an hour. None for
    reports made before measurements recorded it."""
    times = [(row["measured_at"], row.get("bench_run")) for row in report["rows"] if row.get("measured_at")]
    if not times:
        return None
    first, last = min(t for t, _ in times), max(t for t, _ in times)
    runs = {run for _, run in times}
    span = f"{_utc(first)} to {_utc(last)} UTC"
    if len(runs) == 1:
        return f"Measured in one bench run, {span}."
    latest = max(runs, key=lambda run: run or 0)
    reused = {(row["model"], row["artifact"], row["threads"]) for row in report["rows"]
              if row.get("measured_at") and row.get("bench_run") != latest}
    total = {(row["model"], row["artifact"], row["threads"]) for row in report["rows"] if row.get("measured_at")}
    if last - first <= ONE_SITTING_SECONDS:
        return f"Measured in {len(runs)} bench runs (a resumed run), {span}."
    return (f"**Not one sitting: {len(reused)} of {len(total)} measurements were reused from earlier bench runs** "
            f"({len(runs)} runs, {span}): a speedup between figures of two runs compares two moments of the machine, "
            f"not only two models. Rerun the same command with `--fresh` to measure everything in one run.")


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds))


def render_markdown(report: dict) -> str:
    protocol, env, teacher = report["protocol"], report["environment"], report["teacher"]
    metric_name = report["task"]["metric"] or "metric"
    lines = [
        "# Benchmark: teacher vs students",
        "",
        f"Teacher **{teacher['name']}** ({teacher['parameters']:,} parameters"
        + (f", test {metric_name} {teacher['metric']:.4f}" if teacher["metric"] is not None else ", random weights: latency only")
        + "). Students: " + "; ".join(f"**{s['name']}** ({s['description']}, {s['parameters']:,} parameters)"
                                      for s in report["students"]) + ".",
        "",
        f"Protocol: sequence length {protocol['seq_len']}, batch sizes {protocol['batch_sizes']}, threads "
        f"{protocol['threads']}, {protocol['queries']} sentences per measurement after {protocol['warmup']} warm-up "
        f"batches, x{protocol['repeats']}" + (f", median of {protocol['rounds']} round-robin rounds"
                                              if protocol.get("rounds", 1) > 1 else "")
        + f"; one process per artifact and thread count. Machine: {env['cpu']}, "
        f"{env['cores']} cores" + _int8_units(env) + f", commit {str(env.get('git_commit'))[:10]}.",
        "",
    ]
    if report.get("command"):
        lines += [f"Reproduce: `{report['command']}`", ""]
    for line in (shared_cpu_line(report), sitting_line(report)):
        if line:
            lines += [line, ""]
    threads = _main_threads(report)
    heads = headline_rows(report)
    if heads:
        lines += [f"## Headline ({threads} threads): each student's fastest artifact", "",
                  "| batch | student | artifact | ms/sentence | speedup vs teacher, same runtime | speedup vs teacher's "
                  "best runtime | size MB | compression (params) | " + metric_name + " | retention |",
                  "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for row in heads:
            lines.append(
                f"| {row['batch_size']} | {row['model']} | {row['artifact']} | {row['ms_per_sentence']:.3f} | "
                f"{_fmt(row['speedup_same_runtime'], '.1f', 'x')} ({row['teacher_same_runtime'] or 'n/a'}) | "
                f"{_fmt(row['speedup_best'], '.1f', 'x')} ({row['teacher_best']}) | {row['size_bytes'] / 1e6:.1f} | "
                f"{_fmt(row['compression_params'], '.1f', 'x')} | {_fmt(row['metric'], '.4f')} | "
                f"{retention_percent(row['retention'])} |")
        lines.append("")
    for batch in protocol["batch_sizes"]:
        for threads in sorted(protocol["threads"], reverse=True):
            subset = [r for r in report["rows"] if r["batch_size"] == batch and r["threads"] == threads]
            if not subset:
                continue
            lines += [f"## Batch {batch}, {threads} thread{'s' if threads > 1 else ''}", "",
                      "| model | runtime | precision | p50 ms | p90 ms | p99 ms | ms/sentence | sentences/s | "
                      "speedup same runtime | speedup vs best teacher | size MB | peak RSS MB | " + metric_name
                      + " | retention |",
                      "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for row in sorted(subset, key=lambda r: (r["role"] != "teacher", r["model"], r["p50_ms"])):
                sliced = " (sliced)" if row.get("sliced") else ""
                lines.append(
                    f"| {row['model']} | {row['runtime']} | {row['quantization']}{sliced} | {row['p50_ms']:.2f} | "
                    f"{row['p90_ms']:.2f} | {row['p99_ms']:.2f} | {row['ms_per_sentence']:.3f} | "
                    f"{row['sentences_per_s']:.0f} | {_fmt(row['speedup_same_runtime'], '.1f', 'x')} | "
                    f"{_fmt(row['speedup_best'], '.1f', 'x')} | {row['size_bytes'] / 1e6:.1f} | "
                    f"{row['peak_rss_mb']:.0f} | {_fmt(row['metric'], '.4f')} | "
                    f"{retention_percent(row['retention'])} |")
            lines.append("")
    lines += _front_and_picks(report, _main_threads(report))
    languages = _per_language(report)
    if languages:
        lines += languages
    if report["failures"]:
        lines += ["## Failed measurements and artifacts left out", ""]
        lines += [f"- {f['model']} {f['artifact']}" + (f" ({f['threads']} threads)" if f.get("threads") else "")
                  + f": {f['error']}" for f in report["failures"]]
        lines.append("")
    lines += ["Speedup = teacher p50 / student p50 at the same batch size and thread count, measured in this run. "
              "'Same runtime' compares with the teacher's fp32 artifact in that runtime; 'best' with the teacher's "
              "fastest artifact (any runtime or precision). Size of a Keras model is its weights file "
              "(for the teacher, 4 bytes per parameter). '(sliced)': a static-batch artifact fed in slices.",
              "", "![accuracy vs latency](accuracy_vs_latency.png)", "", "![speedup by batch](speedup_by_batch.png)", ""]
    return "\n".join(lines)


def _front_and_picks(report: dict, threads: int) -> list[str]:
    """The Pareto front per batch size (what is worth shipping) and any picks made for a budget."""
    from xtremedistil.bench.pick import candidates, describe, front

    lines = []
    for batch in report["protocol"]["batch_sizes"]:
        try:
            rows = front(candidates(report, batch, threads))
        except XtremeDistilError:
            continue
        lines += [f"## Pareto front, batch {batch}, {threads} threads", "",
                  "Nothing else measured is both faster (p50 of one call) and at least as accurate.", "",
                  "| model | artifact | p50 ms | ms/sentence | " + (report["task"]["metric"] or "metric")
                  + " | retention | size MB |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['model']} | {r['artifact']} | {r['p50_ms']:.3f} | {r['ms_per_sentence']:.4f} | "
                  f"{r['metric']:.4f} | {retention_percent(r['retention'])} | {r['size_bytes'] / 1e6:.1f} |"
                  for r in rows]
        lines.append("")
    if report.get("picks"):
        lines += ["## Pick for the budget", ""]
        lines += [f"- {describe(result)}" for result in report["picks"]]
        lines.append("")
    return lines


def _per_language(report: dict) -> list[str]:
    """Per-language test metric of each model's reference artifact, when the task has languages, and each
    student's retention of the teacher's figure per language (floored, like every retention here), with the
    language it keeps least of: the paper's multilingual claim is about the weakest language, not the mean."""
    seen = {}
    for row in report["rows"]:
        metrics = row.get("metrics") or {}
        if metrics.get("per_language") and (row["model"], row["role"]) not in seen and row["runtime"] == "keras":
            seen[(row["model"], row["role"])] = metrics
    if not seen:
        return []
    name = next(iter(seen.values()))["metric"]
    languages = sorted({lang for m in seen.values() for lang in m["per_language"]})
    teacher = next((seen[key] for key in seen if key[1] == "teacher"), None)
    models = list(seen)
    keys = languages + [None]                                      # None: the macro row

    def value(metrics: dict, lang: str | None) -> float | None:
        scores = (metrics.get("macro") or {}) if lang is None else metrics["per_language"].get(lang, {})
        return scores.get(name)

    shares = {}                          # each student's retention of the teacher, per language and macro
    for model in models:
        if teacher is not None and model[1] != "teacher":
            pairs = {lang: (value(seen[model], lang), value(teacher, lang)) for lang in keys}
            shares[model] = {lang: ours / theirs if ours is not None and theirs else None
                             for lang, (ours, theirs) in pairs.items()}

    header, rule = ["language"], ["---"]
    for model in models:
        header += [model[0]] + ([f"{model[0]} retention"] if model in shares else [])
        rule += ["---:"] * (2 if model in shares else 1)
    lines = ["## Test " + name + " per language (Keras / TensorFlow)", "",
             "| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    for lang in keys:
        cells = [lang or "macro"]
        for model in models:
            cells.append(_fmt(value(seen[model], lang), ".4f"))
            if model in shares:
                cells.append(retention_percent(shares[model][lang]))
        lines.append("| " + " | ".join(cells) + " |")
    lowest = []
    for model in shares:
        weakest = lowest_language(seen[model], teacher)
        if weakest:
            lowest.append(f"{model[0]} {weakest[0]} ({retention_percent(weakest[1])})")
    if lowest:
        lines += ["", "Lowest retention of a language: " + "; ".join(lowest) + "."]
    return lines + [""]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by a faster-and-at-least-as-accurate one, sorted by latency."""
    front, best = [], float("-inf")
    for latency, metric in sorted(points, key=lambda p: (p[0], -p[1])):
        if metric > best:
            front.append((latency, metric))
            best = metric
    return front


def plot(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = _main_threads(report)
    batches = report["protocol"]["batch_sizes"]
    paths = []

    figure, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 5), squeeze=False)
    models = list(dict.fromkeys(r["model"] for r in report["rows"]))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    from xtremedistil.export.base import formats

    markers = {"keras": "o", **{fmt.runtime: fmt.marker for fmt in formats().values()}}
    for axis, batch in zip(axes[0], batches):
        rows = [r for r in report["rows"] if r["batch_size"] == batch and r["threads"] == threads]
        measured = [r for r in rows if r["metric"] is not None]
        for row in rows:
            if row["metric"] is None and row["role"] == "teacher":
                axis.axvline(row["ms_per_sentence"], color="grey", linestyle=":", linewidth=1)
                axis.annotate(f"teacher {row['runtime']} {row['quantization']}", (row["ms_per_sentence"], 0.02),
                              xycoords=("data", "axes fraction"), rotation=90, fontsize=6, color="grey")
        for row in measured:
            axis.scatter(row["ms_per_sentence"], row["metric"], color=colours[row["model"]],
                         marker=markers.get(row["runtime"], "o"), s=28, alpha=0.85)
        front = pareto_front([(r["ms_per_sentence"], r["metric"]) for r in measured])
        if front:
            axis.plot([p[0] for p in front], [p[1] for p in front], color="tab:red", linewidth=1.2,
                      drawstyle="steps-post", zorder=0)
            for row in measured:
                if (row["ms_per_sentence"], row["metric"]) in front:
                    axis.scatter(row["ms_per_sentence"], row["metric"], s=110, facecolors="none",
                                 edgecolors="tab:red", linewidths=1.2)
                    axis.annotate(f"{row['model']} {row['artifact']}", (row["ms_per_sentence"], row["metric"]),
                                  fontsize=7, xytext=(6, -10), textcoords="offset points", color="tab:red")
        axis.set_xscale("log")
        axis.set_xlabel("ms per sentence (p50, log scale)")
        axis.set_ylabel(f"test {report['task']['metric'] or 'metric'}")
        axis.set_title(f"batch {batch}, {threads} threads (red: Pareto front)")
        axis.grid(True, which="both", alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[m], marker="o", linestyle="", label=m) for m in models]
    handles += [Line2D([], [], color="black", marker=k, linestyle="", label=r, markerfacecolor="none")
                for r, k in markers.items()]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    paths.append(out / PLOTS[0])
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    students = [r for r in report["rows"] if r["role"] == "student" and r["threads"] == threads]
    labels = sorted({_label(r) for r in students})
    figure, axes = plt.subplots(1, 2, figsize=(13, 5), squeeze=False)
    for axis, field, title in ((axes[0][0], "speedup_same_runtime", "vs teacher in the same runtime (fp32)"),
                               (axes[0][1], "speedup_best", "vs teacher in its fastest runtime")):
        width = 0.8 / max(1, len(labels))
        for i, label in enumerate(labels):
            values = [next((r[field] for r in students if _label(r) == label and r["batch_size"] == b
                            and r[field] is not None), 0) for b in batches]
            axis.bar([x + i * width for x in range(len(batches))], values, width, label=label)
        axis.axhline(1, color="black", linewidth=0.8)
        axis.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(batches))])
        axis.set_xticklabels([f"batch {b}" for b in batches])
        axis.set_yscale("log")
        axis.set_ylabel("speedup (teacher p50 / student p50)")
        axis.set_title(title)
        axis.grid(True, axis="y", which="both", alpha=0.3)
    axes[0][1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    paths.append(out / PLOTS[1])
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)
    return paths


def render(report: dict, out: str | Path) -> None:
    out = Path(out)
    text = render_markdown(report)
    temp = out / ".report.md.tmp"
    temp.write_text(text, encoding="utf-8")
    temp.replace(out / "report.md")
    plot(report, out)
