"""Where a run folder stands: `xtremedistil status MODEL_DIR`.

A recipe's run spans sittings (WikiANN's 300/600 student: hours of stages), and every phase resumes where it
stopped; this reads what each phase recorded — the teacher's epochs, the scored transfer sets, each student's
finished sub-stages and the one in progress, the bundles and their exports — without loading a model or
TensorFlow (well under a second), so it can run beside a job. Nothing is written.
"""
from __future__ import annotations

import time
from pathlib import Path

from xtremedistil.distill.files import read_json
from xtremedistil.distill.machine import is_shared, worst_share
from xtremedistil.errors import XtremeDistilError
from xtremedistil.distill.metrics import best_on_dev, headline, retention_percent
from xtremedistil.layout import STATE_FILE, TEACHER_METRICS_FILE, TEACHER_SPEC_FILE, BundleLayout, RunLayout


def _headline(metrics: dict | None) -> float | None:
    """The metrics' headline figure; None where a record has none (a student without a test figure)."""
    return headline(metrics) if metrics else None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _ago(path: Path) -> str:
    return f"{_minutes(max(0.0, time.time() - path.stat().st_mtime))} ago"


def teacher_lines(layout: RunLayout) -> list[str]:
    spec_path, progress = layout.teacher / TEACHER_SPEC_FILE, layout.teacher_training / STATE_FILE
    if spec_path.exists():
        saved = read_json(spec_path)
        history = saved.get("history") or []
        line = (f"teacher: fine-tuned, {len(history)} epoch(s), dev " +
                " / ".join(_points(h.get("dev")) for h in history) +
                f" ({_minutes(sum(h.get('seconds', 0) for h in history))}{_shared(history)})")
        if (layout.teacher / TEACHER_METRICS_FILE).exists():
            metrics = read_json(layout.teacher / TEACHER_METRICS_FILE)
            line += f"; test {_points(_headline(metrics.get('test')))}"
        return [line]
    if progress.exists():
        state = read_json(progress)
        history, planned = state.get("history") or [], (state.get("config") or {}).get("epochs", "?")
        return [f"teacher: fine-tuning, {len(history)} of {planned} epoch(s) finished, dev " +
                (" / ".join(_points(h.get("dev")) for h in history) or "none yet") +
                f"; last saved {_ago(progress)}"]
    return ["teacher: not fine-tuned yet"]


def cache_lines(layout: RunLayout) -> list[str]:
    lines = []
    for index_path in sorted(layout.cache.glob("*/index.json")):
        index = read_json(index_path)
        copied = f", {index['copied']:,} of them copied from donor caches" if index.get("copied") else ""
        lines.append(f"teacher outputs: {index_path.parent.name}: {index.get('rows', 0):,} sentences scored "
                     f"({_minutes(index.get('seconds', 0))}{copied})")
    for folder in sorted(p for p in layout.cache.glob("*") if p.is_dir() and not (p / "index.json").exists()):
        chunks = [read_json(m) for m in folder.glob("chunk-*/meta.json")]
        lines.append(f"teacher outputs: {folder.name}: scoring; {len(chunks)} chunk(s) finished "
                     f"({sum(c.get('rows', 0) for c in chunks):,} sentences; a chunk counts once written whole)")
    for path in sorted(layout.augmented.glob("*.txt")) if layout.augmented.is_dir() else []:
        with open(path, "rb") as handle:
            lines.append(f"augmented transfer set: {path.name}: {sum(1 for _ in handle):,} lines"
                         + _augment_settings(path.with_suffix(".json")))
    return lines


def _augment_settings(stats_path: Path) -> str:
    """' (from 66,000 sentences: 2x per sentence, 2 mention copies, 1 join)' from the set's recorded statistics;
    '' without them."""
    try:
        stats = read_json(stats_path)
    except (OSError, XtremeDistilError):
        return ""
    parts = [f"{stats['multiplier']}x per {stats.get('allocation', 'sentence')}"] if stats.get("multiplier") else []
    if stats.get("mentions"):
        parts.append(f"{stats['mentions']} mention cop{'y' if stats['mentions'] == 1 else 'ies'}")
    if stats.get("joins"):
        parts.append(f"{stats['joins']} join{'' if stats['joins'] == 1 else 's'}")
    return f" (from {stats.get('sources', 0):,} sentences: {', '.join(parts)})" if parts else ""


def _shared(history: list[dict]) -> str:
    """", beside other work (others took up to 45% of the CPU in an epoch)" where an epoch's time is not clean."""
    worst = worst_share(h.get("others_cpu_share") for h in history)
    return "" if not is_shared(worst) else \
        f", beside other work (others took up to {100 * worst:.0f}% of the CPU in an epoch)"


def _pace(history: list[dict], epochs) -> str:
    """"; 13 min an epoch, at most 2.7 h to go" from the saved epochs' times (early stopping may end it sooner)."""
    seconds = [h["seconds"] for h in history if isinstance(h.get("seconds"), (int, float))]
    if not seconds or not isinstance(epochs, int):
        return ""
    each = sum(seconds) / len(seconds)
    return f"; {_minutes(each)} an epoch, at most {_minutes(each * max(0, epochs - len(history)))} to go"


def student_lines(folder: Path) -> list[str]:
    state = read_json(folder / STATE_FILE)
    completed = sorted((state.get("completed") or {}).items(), key=lambda kv: kv[1].get("index", 0))
    seconds = sum(record.get("seconds", 0) for _, record in completed)
    precision = ((state.get("settings") or {}).get("stages") or {}).get("precision", "float32")
    trained_in = f", {precision}" if precision != "float32" else ""
    lines = [f"{folder.name}: {len(completed)} sub-stage(s) done ({_minutes(seconds)}{trained_in})"]
    for name, record in completed:
        epochs = len(record.get("history") or [])
        lines.append(f"  {name}: dev {record.get('dev_metric_name', '')} {_points(record.get('dev_metric'))}, "
                     f"validation loss {record.get('val_loss', float('nan')):.4g}, {epochs} epoch(s), "
                     f"{_minutes(record.get('seconds', 0))}{_shared(record.get('history') or [])}")
    partial = state.get("partial")
    if partial:
        history = partial.get("history") or []
        losses = ", ".join(f"{h.get('val_loss', float('nan')):.4g}" for h in history[-4:])
        lines.append(f"  {partial.get('name')}: in progress, {len(history)} of {partial.get('epochs', '?')} "
                     f"epoch(s) saved (validation loss {losses or 'none yet'}; "
                     f"{partial.get('waited', 0)} without gain){_pace(history, partial.get('epochs'))}"
                     f"{_shared(history)}; "
                     f"last saved {_ago(folder / STATE_FILE)}")
    best = best_on_dev(dict(completed))    # the rule the bundle is chosen by
    if best is not None:
        lines.append(f"  best on dev so far: {best} ({_points(state['completed'][best].get('dev_metric'))})")
    return lines


def bundle_lines(folder: Path) -> list[str]:
    layout = BundleLayout(folder)
    metrics = read_json(layout.metrics) if layout.metrics.exists() else {}
    student, teacher = metrics.get("student") or {}, metrics.get("teacher") or {}
    line = f"{folder.name}: test {_points(_headline(student.get('test')))}"
    retention = (metrics.get("retention") or {}).get("test")
    if retention is not None:
        line += f" ({retention_percent(retention)} of the teacher's {_points(_headline(teacher.get('test')))})"
    if student.get("best_substage"):
        line += f", best sub-stage {student['best_substage']}"
    distillation = metrics.get("distillation") or {}
    if distillation.get("unseen_pieces") == "nearest":
        line += f", {distillation.get('pieces_sent_to_nearest', 0):,} unseen pieces read their nearest seen piece"
    elif metrics:
        line += ", unseen pieces read UNK"     # --unseen_pieces unk, or a bundle from before the setting
    if layout.manifest.exists():
        manifest = read_json(layout.manifest)
        artifacts = manifest.get("artifacts") if isinstance(manifest, dict) else None
        line += f"; exported: {len(artifacts) if isinstance(artifacts, (list, dict)) else '?'} artifact(s)"
    else:
        line += "; not exported"
    return [line]


def status(model_dir: str | Path) -> list[str]:
    layout = RunLayout(Path(model_dir))
    if not layout.model_dir.is_dir():
        raise XtremeDistilError(f"{layout.model_dir}: no such run folder (the --model_dir, or a recipe's model_dir)")
    lines = [f"run folder {layout.model_dir}", *teacher_lines(layout), *cache_lines(layout)]
    for folder in sorted(layout.model_dir.glob("student*")):
        if (folder / STATE_FILE).exists():
            lines += student_lines(folder)
    for folder in sorted(layout.model_dir.glob("bundle*")):
        if BundleLayout(folder).is_bundle():
            lines += bundle_lines(folder)
    reports = sorted(layout.model_dir.glob("bench*/report.json"))
    lines += [f"bench report: {p.relative_to(layout.model_dir)} (written {_ago(p)})" for p in reports]
    return lines
