"""`xtremedistil bench`: latency × accuracy × size of a teacher and its students, in one run.

Flow: read the bundles (and their manifest.json) -> prepare the teacher's artifacts in a child
process (`OUT/teacher/`, reused on rerun) -> plan one measurement per (model, runtime, precision,
batch size, thread count) -> run each artifact in its own process, per thread count, appending
every result to `OUT/measurements.jsonl` as it arrives (a rerun skips what is there) -> ratios
against the teacher from this same run -> `report.json`, then `report.md` and the PNG plots from it.
"""
from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from xtremedistil import module_command
from xtremedistil.distill.decoding import recorded_decoding
from xtremedistil.distill.files import append_line, read_json, write_json_atomic
from xtremedistil.distill.machine import CpuWatch, cpu_info, is_shared, worst_share
from xtremedistil.errors import XtremeDistilError, is_disk_full
from xtremedistil.export import base as export_formats
from xtremedistil.layout import TEACHER_ENCODER_DIR, TEACHER_HEAD_FILE, BundleLayout

# The Keras student, then each registered export format's runtime (export/<format>/config.py): a new format
# is benched without a change here.
RUNTIMES = export_formats.runtimes()
FORMAT_RUNTIME = {name: fmt.runtime for name, fmt in export_formats.formats().items()}
REPORT_SCHEMA = 1
MEASUREMENTS = "measurements.jsonl"

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class BenchOptions:
    bundles: list[str]
    out: str
    teacher: str | None = None
    runtimes: str = ",".join(RUNTIMES)
    batch_sizes: str = "1,32"
    seq_len: int | None = None     # None: the students' own (every bundle records it)
    threads: str = "1,2"
    queries: int = 1000
    repeats: int = 1
    rounds: int = 1
    warmup: int = 5
    names: str | None = None
    task: str | None = None
    eval_limit: int | None = None
    timeout: int = 3600
    fresh: bool = False
    remeasure_shared: bool = False  # measure again what an earlier run measured beside other work (others > 10%)
    command: str | None = None      # how the run was started, recorded in the report


@dataclasses.dataclass
class Model:
    name: str
    role: str                       # "teacher" | "student"
    parameters: int
    labels: list[str]
    tagging: bool
    tokenizer: str | None           # tokenizer folder (None: a preset, no text)
    description: str = ""
    bundle: str | None = None
    decoding: str = "argmax"        # tagging: how word tags are read from the logits (the bundle's --tag_decoding)


@dataclasses.dataclass
class Target:
    """One artifact of one model in one runtime, measured at `batch_sizes`."""

    model: str
    role: str
    runtime: str
    quantization: str
    artifact: str
    path: str
    size_bytes: int
    static_batch: int | None
    batch_sizes: list[int] = dataclasses.field(default_factory=list)
    sliced: list[int] = dataclasses.field(default_factory=list)   # batches fed to a smaller static batch


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise XtremeDistilError(f"{flag} {text!r}: give comma-separated positive integers, e.g. 1,32")
    return sorted(set(values))


def _runtimes(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [r for r in chosen if r not in RUNTIMES]
    if unknown or not chosen:
        raise XtremeDistilError(f"--runtimes {text!r}: unknown {', '.join(unknown) or 'empty list'}; "
                                f"choose from {','.join(RUNTIMES)}")
    return [r for r in RUNTIMES if r in chosen]


def _student_name(bundle: Path, taken: set[str]) -> str:
    base = bundle.parent.name if bundle.name == "bundle" else bundle.name
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def _describe_student(config: dict) -> str:
    from xtremedistil.distill.students.base import describe_student

    return describe_student(config["student"])


def _read_students(options: BenchOptions, seq_len: int, runtimes: list[str]):
    from xtremedistil.distill.bundle import CONFIG_FILE, METRICS_FILE, TOKENIZER_DIR, WEIGHTS_FILE

    names = [n.strip() for n in options.names.split(",")] if options.names else []
    if names and len(names) != len(options.bundles):
        raise XtremeDistilError(f"--names gives {len(names)} names for {len(options.bundles)} bundles")
    students, targets, left_out, taken = [], [], [], set()
    for index, raw in enumerate(options.bundles):
        folder = Path(raw)
        if not BundleLayout(folder).is_bundle():
            raise XtremeDistilError(f"{folder}: not a student bundle ({CONFIG_FILE} and {WEIGHTS_FILE} expected); "
                                    "pass MODEL_DIR/bundle written by `xtremedistil distill`")
        config = read_json(folder / CONFIG_FILE)
        if config["task"]["seq_len"] != seq_len:
            raise XtremeDistilError(
                f"{folder}: the student was distilled with seq_len {config['task']['seq_len']} but --seq-len is "
                f"{seq_len}; one report needs one protocol: pass --seq-len {config['task']['seq_len']}")
        metrics = read_json(folder / METRICS_FILE) if (folder / METRICS_FILE).exists() else {}
        name = names[index] if names else _student_name(folder, taken)
        if name in taken:
            raise XtremeDistilError(f"--names: {name!r} is given twice")
        taken.add(name)
        parameters = metrics.get("student", {}).get("parameters") or 0
        model = Model(name, "student", int(parameters), config["task"]["labels"], config["task"]["kind"] == "tagging",
                      str(folder / TOKENIZER_DIR), _describe_student(config), str(folder.resolve()),
                      recorded_decoding(config["task"]))
        students.append(model)
        if "keras" in runtimes:
            targets.append(Target(name, "student", "keras", "fp32", "keras", str(folder),
                                  (folder / WEIGHTS_FILE).stat().st_size, None))
        exported = [r for r in runtimes if r != "keras"]
        if not exported:
            continue
        manifest_path = BundleLayout(folder).manifest
        if not manifest_path.exists():
            raise XtremeDistilError(f"{folder}: no manifest.json, so no artifacts for --runtimes "
                                    f"{','.join(exported)}; run `xtremedistil export {folder}` first "
                                    "or bench with --runtimes keras")
        for row in read_json(manifest_path).get("artifacts", []):
            runtime = FORMAT_RUNTIME.get(row["format"])
            if runtime not in exported:
                continue
            if not row.get("passed", True):      # never benched: the report says which and why
                left_out.append({"model": name, "role": "student", "artifact": row["name"], "threads": None,
                                 "error": "left out: failed parity at export (" + "; ".join(row.get("failures", []))
                                          + ("; dropped" if row.get("dropped") else "") + ")"})
                continue
            path = folder / row["path"]
            if path.exists():
                targets.append(Target(name, "student", runtime, row["quantization"], row["name"], str(path),
                                      int(row["size_bytes"]), row.get("batch_size")))
    return students, targets, left_out


def assign_batches(targets: list[Target], batch_sizes: list[int]) -> list[Target]:
    """Each (model, runtime, precision, batch) gets one artifact: the one compiled for that batch, else a
    dynamic-batch one, else the largest smaller static one fed in slices (recorded as `sliced`)."""
    families: dict[tuple, list[Target]] = {}
    for target in targets:
        families.setdefault((target.model, target.runtime, target.quantization), []).append(target)
    for members in families.values():
        for batch in batch_sizes:
            exact = [t for t in members if t.static_batch == batch]
            dynamic = [t for t in members if t.static_batch is None]
            smaller = sorted((t for t in members if t.static_batch and t.static_batch < batch),
                             key=lambda t: t.static_batch)
            chosen = (exact or dynamic or smaller[-1:] or [None])[0]
            if chosen is None:
                continue
            chosen.batch_sizes.append(batch)
            if chosen.static_batch and chosen.static_batch != batch:
                chosen.sliced.append(batch)
    return [t for t in targets if t.batch_sizes]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(threads: list[int]) -> dict:
    import platform

    from xtremedistil.export.pipeline import versions

    model, all_flags = cpu_info()
    cpu = model or platform.processor() or "unknown"
    flags, affinity = _kernel_units(all_flags), _cores()
    return {"cpu": cpu, "cpu_flags": flags, "cores": affinity, "threads": threads, "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions(), "git_commit": _git_commit()}


@functools.lru_cache(maxsize=None)
def machine_fingerprint() -> str:
    """The CPU model, the instruction sets latency depends on, and the cores this process may use: a
    measurement taken under another fingerprint is not one this machine would give."""
    model, flags = cpu_info()
    return f"{model or 'unknown'} | {_cores()} cores | {' '.join(_kernel_units(flags))}"


def _kernel_units(flags) -> list[str]:
    """The instruction sets int8/fp16 kernels depend on (AMX and VNNI change int8 speed several-fold)."""
    return sorted(f for f in flags or () if f.startswith(("avx", "amx", "fma")))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class WorkerPool:
    """Runs worker processes; results are appended to measurements.jsonl and reused by key.

    Each latency measurement records the machine it was taken on, when, and by which bench run. A rerun
    reuses only this machine's (a runs folder carried to another CPU, or one written by a version that did not
    record it, is measured again: a ratio mixing two machines means nothing); the report says when its
    figures come from more than one bench run."""

    def __init__(self, out: Path, timeout: int, fresh: bool, remeasure_shared: bool = False):
        self.out = out
        self.timeout = timeout
        self.remeasure_shared = remeasure_shared
        self.path = out / MEASUREMENTS
        self.done: dict[str, dict] = {}
        self.started = round(time.time(), 1)            # names this bench run in the records it writes
        for stale in out.glob(".tmp-spec-*.json"):     # a worker's spec left by a killed run: never read
            stale.unlink()
        if self.path.exists() and not fresh:
            elsewhere = 0
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    key = record["key"]
                except (ValueError, KeyError):
                    continue   # a line cut by a crash: measured again
                if "latency" in record and record.get("machine") != machine_fingerprint():
                    elsewhere += 1
                    continue
                self.done[key] = record
            if elsewhere:
                logger.warning("%s: %d measurement(s) were taken on another machine (or recorded none): measured "
                               "again here", self.path, elsewhere)
        elif self.path.exists():
            self.path.unlink()

    def run(self, mode: str, spec: dict, key: str, threads: int | None = None) -> dict:
        done = self.done.get(key)
        shared = mode == "measure" and done is not None and is_shared(done.get("others_cpu_share"))
        if done is not None and "error" not in done and not (shared and self.remeasure_shared):
            return done
        env = dict(os.environ)
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), TF_NUM_INTRAOP_THREADS=str(threads))
        with tempfile.NamedTemporaryFile("w", prefix=".tmp-spec-", suffix=".json", dir=self.out, delete=False) as handle:
            json.dump(spec, handle)
        started, cpu = time.time(), CpuWatch()
        try:
            out = subprocess.run(module_command("xtremedistil.bench.worker", mode, handle.name),
                                 capture_output=True, text=True, timeout=self.timeout, env=env)
            if out.returncode == 0:
                record = {"key": key, **json.loads(out.stdout.strip().splitlines()[-1])}
            else:
                lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
                reason = "killed (out of memory?)" if out.returncode in (-9, 137) else (lines[-1] if lines else "")
                record = {"key": key, "error": f"exit {out.returncode}: {reason}"[:500]}
        except subprocess.TimeoutExpired:
            record = {"key": key, "error": f"timed out after {self.timeout} s (--timeout)"}
        finally:
            os.unlink(handle.name)
        record["wall_seconds"] = round(time.time() - started, 1)
        record["others_cpu_share"] = cpu.others_share()    # the worker is waited for: its CPU is ours, not others'
        if "latency" in record:
            record.update(machine=machine_fingerprint(), measured_at=round(started, 1), bench_run=self.started)
        if "error" in record and is_disk_full(RuntimeError(record["error"])):
            # the worker ran out of space: not a result to record, the CLI's disk-full line (exit 3), resumable
            raise OSError(errno.ENOSPC, f"a bench worker: {record['error']}")
        append_line(self.path, json.dumps(record), "bench:measurement")
        self.done[key] = record
        return record


@functools.lru_cache(maxsize=None)
def _stamp(path: str) -> list | None:
    """Size and content hash of what a measurement loads: a rerun after a new export measures again, a
    rewrite of identical bytes (a resumed distill rewrites the bundle) does not."""
    target = Path(path)
    if target.is_dir():
        from xtremedistil.distill.bundle import WEIGHTS_FILE

        if (target / WEIGHTS_FILE).exists():           # a bundle: its Keras weights
            files = [target / WEIGHTS_FILE]
        elif (target / "head.npz").exists():           # a teacher folder: its weights (metrics.json is rewritten on reuse)
            files = [target / TEACHER_HEAD_FILE, *(p for p in (target / TEACHER_ENCODER_DIR).glob("*") if p.suffix in (".h5", ".safetensors"))]
        else:                                          # a SavedModel
            files = [p for p in target.rglob("*") if p.is_file()]
    elif target.is_file():
        files = [target]
    else:
        return None   # a shape preset
    digest = hashlib.sha1()
    for file in sorted(files):
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return [sum(f.stat().st_size for f in files), digest.hexdigest()]


def _latency_inputs(model: Model, out: Path, seq_len: int, task, teacher_manifest: dict | None) -> Path:
    """Token ids the model is timed on: the test split's sentences (a preset: random full-length ids)."""
    path = out / "inputs" / f"{model.role}-{model.name}.npy"
    path.parent.mkdir(exist_ok=True)
    if model.tokenizer and task is not None:
        from xtremedistil.distill.tokenization import encode_examples, load_tokenizer

        examples = task.splits["test"][:1024]
        ids = encode_examples(load_tokenizer(model.tokenizer), examples, model.labels, seq_len, model.tagging).input_ids
    else:
        rng = np.random.default_rng(0)
        vocab = teacher_manifest["vocab_size"]
        ids = rng.integers(min(1000, vocab // 2), vocab, (1024, seq_len)).astype(np.int32)
    np.save(path, ids)
    return path


def _metric_of(record: dict) -> tuple[float | None, dict | None]:
    from xtremedistil.distill.metrics import headline

    metrics = record.get("metrics")
    return (headline(metrics), metrics) if metrics else (None, None)


def compute_ratios(rows: list[dict], teacher_metric: float | None, teacher_parameters: int) -> None:
    """Adds speedups, compression and retention to every row, from teacher rows of the same report."""
    teacher_rows = [r for r in rows if r["role"] == "teacher" and r.get("p50_ms")]
    teacher_sizes = [r["size_bytes"] for r in teacher_rows if r.get("size_bytes")]
    for row in rows:
        if not row.get("p50_ms"):
            continue
        peers = [t for t in teacher_rows if t["batch_size"] == row["batch_size"] and t["threads"] == row["threads"]]
        same = next((t for t in peers if t["runtime"] == row["runtime"] and t["quantization"] == "fp32"), None)
        best = min(peers, key=lambda t: t["p50_ms"], default=None)
        row["teacher_same_runtime"] = same["artifact"] if same else None
        row["teacher_best"] = best["artifact"] if best else None
        row["speedup_same_runtime"] = same["p50_ms"] / row["p50_ms"] if same else None
        row["speedup_best"] = best["p50_ms"] / row["p50_ms"] if best else None
        row["compression_params"] = teacher_parameters / row["parameters"] if row["parameters"] else None
        row["size_ratio_same_runtime"] = same["size_bytes"] / row["size_bytes"] if same and row["size_bytes"] else None
        row["size_ratio_smallest"] = min(teacher_sizes) / row["size_bytes"] if teacher_sizes and row["size_bytes"] else None
        row["retention"] = row["metric"] / teacher_metric if row.get("metric") is not None and teacher_metric else None


def combine_rounds(records: list[dict]) -> dict:
    """One artifact's measurements over the rounds -> one record: every latency figure the median over
    the rounds (p50 of each round's p50, ...), the rounds' p50s kept; the first error if any round failed."""
    failed = next((r for r in records if "error" in r), None)
    if failed is not None or len(records) == 1:
        return failed or records[0]
    first = records[0]
    latency = []
    for position, row in enumerate(first["latency"]):
        rounds = [r["latency"][position] for r in records]
        median = {key: float(np.median([r[key] for r in rounds])) for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}
        batch = row["batch_size"]
        latency.append({**row, **median, "timed_batches": sum(r["timed_batches"] for r in rounds),
                        "sentences": sum(r["sentences"] for r in rounds), "ms_per_sentence": median["p50_ms"] / batch,
                        "sentences_per_s": batch / (median["p50_ms"] / 1000),
                        "rounds_p50_ms": [r["p50_ms"] for r in rounds]})
    return {**first, "latency": latency, "peak_rss_mb": max(r["peak_rss_mb"] for r in records),
            "load_seconds": float(np.median([r["load_seconds"] for r in records])),
            "others_cpu_share": worst_share(r.get("others_cpu_share") for r in records)}


def run_bench(options: BenchOptions, progress: bool = True) -> dict:
    from tqdm import tqdm

    from xtremedistil.bench.teachers import resolve_teacher

    runtimes = _runtimes(options.runtimes)
    batch_sizes = _int_list(options.batch_sizes, "--batch-sizes")
    threads_list = _int_list(options.threads, "--threads")
    if not options.bundles:
        raise XtremeDistilError("give at least one student bundle (MODEL_DIR/bundle)")
    if options.seq_len is None:        # the first student's; every other must have the same (checked below)
        config = BundleLayout(options.bundles[0]).config
        seq_len = read_json(config).get("task", {}).get("seq_len") if config.exists() else None
        options = dataclasses.replace(options, seq_len=seq_len if isinstance(seq_len, int) else 32)
    for flag, value in (("--queries", options.queries), ("--repeats", options.repeats), ("--rounds", options.rounds),
                        ("--seq-len", options.seq_len)):
        if value < 1:
            raise XtremeDistilError(f"{flag} {value}: must be at least 1")
    if options.warmup < 0:
        raise XtremeDistilError(f"--warmup {options.warmup}: must be 0 or more")
    if not options.bundles:
        raise XtremeDistilError("give at least one student bundle (MODEL_DIR/bundle)")
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise XtremeDistilError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    students, targets, left_out = _read_students(options, options.seq_len, runtimes)
    first = students[0]
    mixed = [s.name for s in students if s.labels != first.labels or s.tagging != first.tagging]
    if mixed:
        raise XtremeDistilError(f"bundles {', '.join(mixed)} solve another task than {first.name}; "
                                "bench students of one task together")
    decoded = [s.name for s in students if s.decoding != first.decoding]
    if decoded:
        raise XtremeDistilError(f"bundles {', '.join(decoded)} read tags with another --tag_decoding than "
                                f"{first.name} ({first.decoding}); one report scores every model one way: distil "
                                "them with the same --tag_decoding")
    source = resolve_teacher(options.teacher, [Path(b) for b in options.bundles])
    task_folder = options.task or read_json(BundleLayout(options.bundles[0]).config).get("options", {}).get("task")
    task = None
    if task_folder:
        from xtremedistil.distill import data as data_lib

        if not Path(task_folder).is_dir():
            raise XtremeDistilError(f"task folder {task_folder} not found; pass --task with the folder the "
                                    "students were distilled on (accuracy is measured on its test split)")
        task = data_lib.load_task(task_folder, first.tagging)
    protocol = {"seq_len": options.seq_len, "batch_sizes": batch_sizes, "threads": threads_list,
                "queries": options.queries, "repeats": options.repeats, "rounds": options.rounds,
                "warmup": options.warmup, "runtimes": runtimes, "teacher": source.name if source.preset else "fine-tuned teacher",
                "eval_limit": options.eval_limit}
    workers = WorkerPool(out, options.timeout, options.fresh, options.remeasure_shared)

    # The teacher: converted once, in its own process.
    teacher_dir = out / "teacher"
    prepare_spec = {"teacher": dataclasses.asdict(source), "labels": first.labels, "tagging": first.tagging,
                    "folder": str(teacher_dir.resolve()), "runtimes": runtimes, "batch_sizes": batch_sizes,
                    "seq_len": options.seq_len, "stamp": _stamp(source.folder) if source.folder else None}
    key = "prepare:" + hashlib.sha1(json.dumps(prepare_spec, sort_keys=True).encode()).hexdigest()[:12]
    if progress:
        print(f"preparing teacher {source.name} for {', '.join(runtimes)} (first run converts it; minutes for "
              f"a BERT-sized model) ...", file=sys.stderr, flush=True)
    prepared = workers.run("prepare", prepare_spec, key)
    if "error" in prepared:
        raise XtremeDistilError(f"teacher {source.name}: preparation failed: {prepared['error']}")
    teacher_manifest = prepared["manifest"]
    teacher_tokenizer = None
    if source.folder:
        from xtremedistil.distill.teacher import ENCODER_DIR

        teacher_tokenizer = str(Path(source.folder) / ENCODER_DIR)
    teacher = Model(source.name, "teacher", int(teacher_manifest["parameters"]), first.labels, first.tagging,
                    teacher_tokenizer, source.preset or "fine-tuned", decoding=first.decoding)
    if "keras" in runtimes:
        targets.insert(0, Target(teacher.name, "teacher", "keras", "fp32", "teacher-keras",
                                 source.folder or source.preset, 4 * teacher.parameters, None))
    for position, row in enumerate(teacher_manifest["artifacts"]):
        if row["runtime"] in runtimes:
            targets.insert(position + 1, Target(teacher.name, "teacher", row["runtime"], row["quantization"],
                                                row["name"], str(teacher_dir / row["path"]), row["size_bytes"],
                                                row.get("batch_size")))
    targets = assign_batches(targets, batch_sizes)
    models = {m.name + m.role: m for m in [teacher] + students}
    inputs = {key: _latency_inputs(m, out, options.seq_len, task, teacher_manifest) for key, m in models.items()}

    # Round-robin: every artifact once per round, so a slow minute of a shared machine lands on teacher and
    # students alike instead of on whichever was measured then; each row is the median over the rounds.
    jobs = [(round_, target, threads) for round_ in range(options.rounds) for target in targets
            for threads in threads_list]
    bar = tqdm(jobs, desc="bench", unit="run", disable=not progress, file=sys.stderr)
    by_job: dict[tuple, list[dict]] = {}
    for round_, target, threads in bar:
        model = models[target.model + target.role]
        bar.set_postfix_str(f"{target.model}:{target.artifact} t{threads}"
                            + (f" round {round_ + 1}/{options.rounds}" if options.rounds > 1 else ""))
        spec = {"role": target.role, "runtime": target.runtime, "path": target.path, "threads": threads,
                "batch_sizes": target.batch_sizes, "queries": options.queries, "warmup": options.warmup,
                "repeats": options.repeats, "inputs": str(inputs[target.model + target.role]),
                "labels": model.labels, "tagging": model.tagging, "seq_len": options.seq_len,
                "teacher": dataclasses.asdict(source), "task": task_folder, "tokenizer": model.tokenizer,
                "eval_limit": options.eval_limit, "stamp": _stamp(target.path),
                # only when not argmax: the keys of measurements made before decodings existed stay the same
                **({"decoding": model.decoding} if model.decoding != "argmax" else {}),
                # accuracy depends neither on threads nor on the round: measured once per artifact
                "evaluate": bool(task is not None and model.tokenizer and threads == threads_list[0]
                                 and round_ == 0)}
        # the first round keeps the key a one-round bench used, so its measurements are reused
        keyed = {**spec, "protocol": {k: v for k, v in protocol.items() if k != "rounds"}}
        if round_:
            keyed["round"] = round_
        key = hashlib.sha1(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
        by_job.setdefault((id(target), threads), []).append(workers.run("measure", spec, key, threads))
    records = [(target, threads, combine_rounds(by_job[(id(target), threads)]))
               for target in targets for threads in threads_list]

    rows, metric_by_artifact = [], {}
    failures = [{"model": teacher.name, "role": "teacher", "artifact": name, "threads": None,
                 "error": f"conversion failed: {reason}"} for name, reason in teacher_manifest.get("failures", {}).items()]
    failures += left_out
    for target, threads, record in records:
        if "metrics" in record:
            metric_by_artifact[(target.model, target.role, target.artifact)] = _metric_of(record)
    for target, threads, record in records:
        model = models[target.model + target.role]
        metric, metrics = metric_by_artifact.get((target.model, target.role, target.artifact), (None, None))
        base = {"model": target.model, "role": target.role, "description": model.description,
                "runtime": target.runtime, "quantization": target.quantization, "artifact": target.artifact,
                "threads": threads, "size_bytes": target.size_bytes, "parameters": model.parameters,
                "metric": metric, "metrics": metrics}
        if "error" in record:
            failures.append({**base, "error": record["error"]})
            continue
        for latency in record["latency"]:
            rows.append({**base, **latency, "sliced": latency["batch_size"] in target.sliced,
                         "peak_rss_mb": record["peak_rss_mb"], "load_seconds": record["load_seconds"],
                         "others_cpu_share": record.get("others_cpu_share"),
                         "measured_at": record.get("measured_at"), "bench_run": record.get("bench_run")})
    teacher_metric = next((r["metric"] for r in rows if r["role"] == "teacher" and r["runtime"] == "keras"
                           and r["metric"] is not None), None)
    if teacher_metric is None:
        teacher_metric = next((r["metric"] for r in rows if r["role"] == "teacher" and r["quantization"] == "fp32"
                               and r["metric"] is not None), None)
    compute_ratios(rows, teacher_metric, teacher.parameters)
    metric_name = ("f1" if first.tagging else "accuracy") if task is not None else None
    report = {
        "schema": REPORT_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": options.command,
        "protocol": protocol,
        "environment": environment(threads_list),
        "task": {"folder": str(Path(task_folder).resolve()) if task_folder else None, "metric": metric_name,
                 "test_examples": len(task.splits["test"]) if task else None},
        "teacher": {"name": teacher.name, "preset": source.preset, "folder": source.folder,
                    "parameters": teacher.parameters, "metric": teacher_metric,
                    "artifacts": teacher_manifest["artifacts"]},
        "students": [{"name": s.name, "bundle": s.bundle, "description": s.description, "parameters": s.parameters}
                     for s in students],
        "rows": rows,
        "failures": failures,
    }
    write_json_atomic(out / "report.json", report)
    from xtremedistil.bench.report import render

    render(report, out)
    return report
