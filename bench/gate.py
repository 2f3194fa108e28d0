"""`xtremedistil bench gate REPORT --baseline BASELINE`: did a ratio or a metric regress?

Machines are noisy, so only ratios measured within one run are compared (speedups against the
teacher, compression), plus test metrics, which do not depend on the machine. Rows are matched by
(model, runtime, precision, batch size, threads). Two speedup tolerances: one per row (a single artifact
that got much slower) and one for the geometric mean over every student row (everything a little
slower); on a shared 2-core machine one row's speedup moves by up to ~30% between runs, their mean by
less. Compression (parameter counts) is exact: any drop beyond rounding is a regression. Exit codes: 0 nothing regressed beyond the
tolerances, 1 something did (a table says what), 2 unusable input (unreadable file, missing keys,
a baseline row absent from the report, or another protocol).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from xtremedistil.errors import XtremeDistilError

RATIOS = ("speedup_same_runtime", "speedup_best", "compression_params")
SPEEDUPS = ("speedup_same_runtime", "speedup_best")   # depend on the CPU (AVX-512/AMX vs AVX2 kernels)
PROTOCOL_KEYS = ("seq_len", "teacher", "queries", "repeats", "eval_limit")
DEFAULT_MAX_SPEEDUP_DROP = "10%"
COMPRESSION_TOLERANCE = 1e-6   # parameter counts are deterministic
DEFAULT_MAX_METRIC_DROP = 0.5   # points
REQUIRED_ROW_KEYS = ("model", "role", "runtime", "quantization", "batch_size", "threads", "metric") + RATIOS


class GateInputError(XtremeDistilError):
    exit_code = 2


class Regression(XtremeDistilError):
    exit_code = 1


def parse_fraction(text: str | float, flag: str) -> float:
    """'10%' or '0.1' -> 0.1."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise GateInputError(f"{flag} {text!r}: give a fraction like 0.1 or a percentage like 10%") from None
    if not 0 <= value < 1:
        raise GateInputError(f"{flag} {text!r}: must be between 0% and 100%")
    return value


def _load(path: str, what: str) -> dict:
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise GateInputError(f"{what} {path}: cannot read: {err.strerror}") from None
    except ValueError as err:
        raise GateInputError(f"{what} {path}: not JSON ({err})") from None
    if not isinstance(report, dict) or not isinstance(report.get("rows"), list) or not isinstance(
            report.get("protocol"), dict):
        raise GateInputError(f"{what} {path}: not a bench report (needs 'protocol' and 'rows'); "
                             "pass report.json written by `xtremedistil bench`")
    for number, row in enumerate(report["rows"], 1):
        missing = [key for key in REQUIRED_ROW_KEYS if not isinstance(row, dict) or key not in row]
        if missing:
            raise GateInputError(f"{what} {path}: row {number} lacks {', '.join(missing)}")
    return report


def row_key(row: dict) -> str:
    return f"{row['model']} {row['runtime']}:{row['quantization']} b{row['batch_size']} t{row['threads']}"


def cpu_of(report: dict) -> str:
    return str((report.get("environment") or {}).get("cpu") or "unknown")


def cpu_slug(cpu: str) -> str:
    return "-".join(part for part in "".join(c if c.isalnum() else " " for c in cpu.lower()).split())


def pick_baseline(path: str, report: dict) -> str:
    """A baseline file, or from a folder the `baseline-<cpu>.json` recorded on the report's CPU
    (else its `baseline.json`)."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    for name in (f"baseline-{cpu_slug(cpu_of(report))}.json", "baseline.json"):
        if (folder / name).exists():
            return str(folder / name)
    raise GateInputError(f"baseline folder {path}: no baseline-{cpu_slug(cpu_of(report))}.json nor baseline.json")


def same_cpu(report: dict, baseline: dict) -> bool:
    return cpu_of(report) == cpu_of(baseline)


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def compare(report: dict, baseline: dict, max_speedup_drop: float, max_metric_drop: float,
            max_mean_speedup_drop: float | None = None) -> list[dict]:
    """The regressions (empty when none). Raises GateInputError when the two cannot be compared.

    Speedups are compared only when both were measured on the same CPU model: kernels differ by
    instruction set (a teacher at batch 32 took 100 ms on the Xeon the first baseline was recorded on
    and 200 ms on an AVX2-only EPYC), so ratios across CPUs say nothing about the code. Compression
    and test metrics do not depend on the machine and are always compared. `max_mean_speedup_drop`
    (None: not checked) bounds the drop of each speedup's geometric mean over the student rows."""
    different = [f"{key}: baseline {baseline['protocol'].get(key)!r} vs report {report['protocol'].get(key)!r}"
                 for key in PROTOCOL_KEYS if baseline["protocol"].get(key) != report["protocol"].get(key)]
    if different:
        raise GateInputError("the report used another protocol than the baseline (" + "; ".join(different)
                             + "); rerun the bench with the baseline's settings or record a new baseline")
    current = {row_key(r): r for r in report["rows"]}
    missing = [key for key in (row_key(r) for r in baseline["rows"] if r["role"] == "student") if key not in current]
    if missing:
        raise GateInputError(f"the report has no row for {len(missing)} baseline row(s), e.g. {missing[0]}; "
                             "bench the same bundles, runtimes, batch sizes and threads")
    found = []
    ratios = RATIOS if same_cpu(report, baseline) else tuple(r for r in RATIOS if r not in SPEEDUPS)
    pairs: dict[str, list[tuple[float, float]]] = {field: [] for field in SPEEDUPS}
    for old in baseline["rows"]:
        if old["role"] != "student":
            continue
        new = current[row_key(old)]
        for field in ratios:
            before, now = old.get(field), new.get(field)
            if before is None:
                continue
            drop = max_speedup_drop if field in SPEEDUPS else COMPRESSION_TOLERANCE
            if now is None or now < before * (1 - drop):
                change = None if now is None else now / before - 1
                found.append({"row": row_key(old), "measure": field, "baseline": before, "now": now,
                              "change": change, "limit": f"-{drop:.0%}" if field in SPEEDUPS else "exact"})
            elif field in SPEEDUPS and before > 0 and now > 0:
                pairs[field].append((before, now))
        if old["metric"] is not None:
            now = new["metric"]
            if now is None or (old["metric"] - now) * 100 > max_metric_drop:
                found.append({"row": row_key(old), "measure": "metric", "baseline": old["metric"], "now": now,
                              "change": None if now is None else (now - old["metric"]) * 100,
                              "limit": f"-{max_metric_drop:g} points"})
    if max_mean_speedup_drop is not None:
        for field, values in pairs.items():
            if not values:
                continue
            before, now = _geomean([b for b, _ in values]), _geomean([n for _, n in values])
            if now < before * (1 - max_mean_speedup_drop):
                found.append({"row": f"geometric mean of {len(values)} student rows", "measure": field,
                              "baseline": before, "now": now, "change": now / before - 1,
                              "limit": f"-{max_mean_speedup_drop:.0%}"})
    return found


def format_regressions(found: list[dict]) -> str:
    lines = [f"{'row':<44} {'measure':<22} {'baseline':>10} {'now':>10} {'change':>10}  limit"]
    for item in found:
        now = "missing" if item["now"] is None else f"{item['now']:.4g}"
        if item["change"] is None:
            change = "–"
        elif item["measure"] == "metric":
            change = f"{item['change']:+.2f} pt"
        else:
            change = f"{item['change']:+.1%}"
        lines.append(f"{item['row']:<44} {item['measure']:<22} {item['baseline']:>10.4g} {now:>10} {change:>10}  "
                     f"{item['limit']}")
    return "\n".join(lines)


def run_gate(report_path: str, baseline_path: str, max_speedup_drop=DEFAULT_MAX_SPEEDUP_DROP,
             max_metric_drop: float = DEFAULT_MAX_METRIC_DROP, max_mean_speedup_drop=None) -> str:
    """A summary line when nothing regressed; raises Regression (exit 1) with the table otherwise."""
    speedup_drop = parse_fraction(max_speedup_drop, "--max-speedup-drop")
    mean_drop = (None if max_mean_speedup_drop is None
                 else parse_fraction(max_mean_speedup_drop, "--max-mean-speedup-drop"))
    if max_metric_drop < 0:
        raise GateInputError(f"--max-metric-drop {max_metric_drop}: must be 0 or more (points)")
    report = _load(report_path, "report")
    baseline_path = pick_baseline(baseline_path, report)
    baseline = _load(baseline_path, "baseline")
    found = compare(report, baseline, speedup_drop, max_metric_drop, mean_drop)
    checked = sum(1 for r in baseline["rows"] if r["role"] == "student")
    if found:
        raise Regression(f"{len(found)} regression(s) against {baseline_path}:\n" + format_regressions(found))
    if not same_cpu(report, baseline):
        return (f"gate passed against {baseline_path}: {checked} student rows within -{max_metric_drop:g} points on "
                f"the metric and exact on compression; speedups NOT compared: the baseline was "
                f"measured on '{cpu_of(baseline)}', this report on '{cpu_of(report)}' (record "
                f"baseline-{cpu_slug(cpu_of(report))}.json to gate them on this CPU)")
    mean = f", their geometric mean within -{mean_drop:.0%}" if mean_drop is not None else ""
    return (f"gate passed against {baseline_path}: {checked} student rows within -{speedup_drop:.0%} on "
            f"speedups{mean}, exact on compression and within -{max_metric_drop:g} points on the metric")
