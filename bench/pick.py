"""Which artifact to ship: the Pareto front of a bench report and the pick for a budget.

A candidate is one measured artifact (a student's or the teacher's, any runtime and precision) at one
batch size and thread count. The front holds the candidates no other one beats on both latency (p50 of
one batch call) and accuracy. The pick is the best candidate meeting every constraint given
(`max_latency_ms`, `min_retention`, `max_size_mb`) by the budget's `prefer`:

- `accuracy`: the most accurate (ties: the faster, then the smaller);
- `speed`: the fastest (ties: the more accurate, then the smaller);
- `auto` (default): `accuracy` when the budget bounds latency or bounds nothing, `speed` when it sets an
  accuracy floor without a latency bound ("at least 98% of the teacher: what is fastest?"). Preferring
  accuracy there would always answer with the teacher's most accurate artifact.

When none meets them all, the answer names each constraint no candidate meets and the nearest miss.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from xtremedistil.distill.files import read_json, write_json_atomic
from xtremedistil.distill.metrics import retention_percent
from xtremedistil.errors import XtremeDistilError

PICK_FILE = "pick.json"
PREFER = ("auto", "accuracy", "speed")


@dataclasses.dataclass(frozen=True)
class Budget:
    batch_size: int = 1
    threads: int | None = None            # None: the report's largest thread count
    max_latency_ms: float | None = None   # p50 of one batch call
    min_retention: float | None = None    # fraction of the teacher's metric, e.g. 0.98
    max_size_mb: float | None = None      # artifact size on disk
    prefer: str = "auto"                  # among those meeting the budget: accuracy, speed, or auto (see above)

    def __post_init__(self):
        for name, kind in (("batch_size", int), ("threads", int), ("max_latency_ms", float),
                           ("min_retention", float), ("max_size_mb", float)):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                object.__setattr__(self, name, kind(value))
            except (TypeError, ValueError):
                raise XtremeDistilError(f"--{name} must be a number (got {value!r})") from None
        for name in ("max_latency_ms", "max_size_mb"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise XtremeDistilError(f"--{name} must be positive (got {value})")
        if self.min_retention is not None and not 0 < self.min_retention <= 2:
            raise XtremeDistilError(f"--min_retention is a fraction of the teacher's metric, e.g. 0.98 "
                                    f"(got {self.min_retention})")
        if self.batch_size < 1:
            raise XtremeDistilError(f"--batch_size must be at least 1 (got {self.batch_size})")
        if self.prefer not in PREFER:
            raise XtremeDistilError(f"--prefer must be one of {', '.join(PREFER)} (got {self.prefer!r})")

    def objective(self) -> str:
        """What the pick maximises among the candidates meeting the budget: 'accuracy' or 'speed'."""
        if self.prefer != "auto":
            return self.prefer
        return "speed" if self.min_retention is not None and self.max_latency_ms is None else "accuracy"


def _summary(row: dict) -> dict:
    return {"model": row["model"], "role": row["role"], "artifact": row["artifact"], "runtime": row["runtime"],
            "precision": row["quantization"], "batch_size": row["batch_size"], "threads": row["threads"],
            "p50_ms": round(row["p50_ms"], 4), "ms_per_sentence": round(row["ms_per_sentence"], 4),
            "metric": row["metric"], "retention": row["retention"], "size_mb": round(row["size_bytes"] / 1e6, 3),
            "speedup_best": row.get("speedup_best")}


def candidates(report: dict, batch_size: int, threads: int | None) -> list[dict]:
    """Measured rows with an accuracy at this batch size and thread count."""
    rows = report.get("rows") or []
    if threads is None:
        threads = max((r["threads"] for r in rows), default=None)
    chosen = [r for r in rows if r["batch_size"] == batch_size and r["threads"] == threads and r["metric"] is not None]
    if not chosen:
        measured = sorted({(r["batch_size"], r["threads"]) for r in rows})
        raise XtremeDistilError(
            f"the report has no measurement with an accuracy at batch {batch_size}, {threads} threads; "
            f"it has (batch, threads) {measured or 'none'}: pass one of those, or rerun bench with them")
    return chosen


def front(rows: list[dict]) -> list[dict]:
    """Rows not dominated by a faster-and-at-least-as-accurate one, fastest first (the smaller of equals)."""
    from xtremedistil.bench.report import pareto_front

    by_point: dict[tuple[float, float], dict] = {}
    for row in sorted(rows, key=lambda r: r["size_bytes"]):
        by_point.setdefault((row["p50_ms"], row["metric"]), row)
    return [by_point[point] for point in pareto_front(list(by_point))]


def _violations(row: dict, budget: Budget) -> dict[str, float]:
    """Relative shortfall per failed constraint (0 = met)."""
    out = {}
    if budget.max_latency_ms is not None and row["p50_ms"] > budget.max_latency_ms:
        out["max_latency_ms"] = row["p50_ms"] / budget.max_latency_ms - 1
    if budget.min_retention is not None and (row["retention"] or 0.0) < budget.min_retention:
        out["min_retention"] = 1 - (row["retention"] or 0.0) / budget.min_retention
    if budget.max_size_mb is not None and row["size_bytes"] / 1e6 > budget.max_size_mb:
        out["max_size_mb"] = row["size_bytes"] / 1e6 / budget.max_size_mb - 1
    return out


def pick(report: dict, budget: Budget) -> dict:
    """The Pareto front at the budget's batch size and threads, and the pick (or why there is none)."""
    rows = candidates(report, budget.batch_size, budget.threads)
    threads = rows[0]["threads"]
    meeting = [r for r in rows if not _violations(r, budget)]
    objective = budget.objective()
    result = {"budget": {**dataclasses.asdict(budget), "threads": threads, "objective": objective},
              "front": [_summary(r) for r in front(rows)], "candidates": len(rows), "pick": None,
              "unmet": [], "nearest_miss": None}
    if meeting:
        if objective == "speed":
            best = min(meeting, key=lambda r: (r["p50_ms"], -r["metric"], r["size_bytes"]))
        else:
            best = max(meeting, key=lambda r: (r["metric"], -r["p50_ms"], -r["size_bytes"]))
        result["pick"] = _summary(best)
        return result
    for name in ("max_latency_ms", "min_retention", "max_size_mb"):
        if getattr(budget, name) is not None and all(name in _violations(r, budget) for r in rows):
            result["unmet"].append(name)
    nearest = min(rows, key=lambda r: (sum(_violations(r, budget).values()), -r["metric"]))
    result["nearest_miss"] = {**_summary(nearest), "misses": {k: round(v, 4) for k, v in _violations(nearest, budget).items()}}
    return result


def describe(result: dict) -> str:
    """One line for the terminal."""
    budget = result["budget"]
    where = f"batch {budget['batch_size']}, {budget['threads']} threads"
    if result["pick"]:
        p = result["pick"]
        which = {"speed": "fastest", "accuracy": "most accurate"}.get(budget.get("objective"))
        where += f", {which} within the budget" if which else ""
        return (f"pick ({where}): {p['model']} {p['artifact']} — p50 {p['p50_ms']:.3f} ms per call, "
                f"metric {p['metric']:.4f} ({retention_percent(p['retention'])} of the teacher), "
                f"{p['size_mb']:.1f} MB; "
                f"{len(result['front'])} of {result['candidates']} candidates on the Pareto front")
    m = result["nearest_miss"]
    unmet = ", ".join(f"--{name}" for name in result["unmet"]) or "no single constraint, only their combination"
    misses = ", ".join(f"--{k} by {v:.1%}" for k, v in m["misses"].items())
    return (f"no candidate at {where} meets the budget; unmet by every candidate: {unmet}. Nearest miss: "
            f"{m['model']} {m['artifact']} (p50 {m['p50_ms']:.3f} ms, metric {m['metric']:.4f}, "
            f"{retention_percent(m['retention'])} retained, {m['size_mb']:.1f} MB) misses {misses}")


def run_pick(report_path: str | Path, budget: Budget, out: str | Path | None = None) -> dict:
    """Reads a bench report (file or folder), picks, writes pick.json beside it (or to `out`)."""
    path = Path(report_path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise XtremeDistilError(f"{path}: no bench report here; run `xtremedistil bench` (or a recipe) first")
    report = read_json(path, fix="cannot read the bench report: rerun bench to write it again")
    if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
        raise XtremeDistilError(f"{path}: not a bench report (no 'rows'); pass the report.json bench wrote")
    result = pick(report, budget)
    write_json_atomic(Path(out) if out else path.parent / PICK_FILE, result)
    return result


def budgets_from_recipe(values, path) -> list[Budget]:
    """A recipe's `pick:` section: one budget (a mapping) or a list of them."""
    items = values if isinstance(values, list) else [values]
    keys = [f.name for f in dataclasses.fields(Budget)]
    budgets = []
    for item in items:
        if not isinstance(item, dict):
            raise XtremeDistilError(f"{path}: 'pick' must be a mapping (or a list of mappings) of {', '.join(keys)}")
        unknown = sorted(set(item) - set(keys))
        if unknown:
            raise XtremeDistilError(f"{path}: pick: unknown key(s) {', '.join(unknown)}; valid: {', '.join(keys)}")
        try:
            budgets.append(Budget(**item))
        except TypeError as err:
            raise XtremeDistilError(f"{path}: pick: {err}") from None
    return budgets
