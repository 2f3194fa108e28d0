"""The kill battery: SIGKILL distill, export and bench at many points, rerun, and prove nothing was lost.

    python -m xtremedistil.kill_battery --workdir /tmp/kb --pt_teacher_checkpoint TEACHER --task TASK

1. Reference: `distill`, `export` and `bench` run once, uninterrupted, in WORKDIR/reference.
2. Chain: in WORKDIR/killed the same commands run with `XD_KILL_AT=POINT` (see `xtremedistil.faults`), one
   point after another in pipeline order; each run must die by SIGKILL at its point (else the point was
   never reached: a failure). After a command's last point it runs once more without a kill and must finish.
3. Compare: every weight array (Keras .h5, .npz, .npy), every JSON result (volatile fields - wall times,
   throughput, memory, dates, latencies - left out, run folders normalised) and every exported artifact
   (bytes; ONNX files by their outputs, as two conversions name nodes differently) must equal the reference's; temp files left by the kills must not be what a result was read from
   (they are listed; the identical results show none was trusted).

With `--fault disk-full` the same chain fails each kind of write with a simulated full disk instead
(`XD_DISK_FULL_AT`: the temp file being written is cut to half and ENOSPC raised, as a real full disk leaves
it): each run must end with exit 3 and one line ("no space left ... rerun the same command"), no traceback; every
file left in place must still load (JSON, arrays, ONNX, TFLite) and no temp file may be left; the next run
(space freed) resumes, and the final results must equal the uninterrupted run's.

Exit status 0 when every point killed and every file matches; 1 otherwise. The test
`tests/cli/test_kill_points.py` runs a short chain in `make test` and the whole battery under `-m slow`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from xtremedistil import module_command

# Volatile JSON keys: measured, not computed, so a resumed run legitimately differs in them.
VOLATILE = {"seconds", "seconds_earlier_runs", "substage_seconds", "created", "wall_seconds", "peak_rss_mb",
            "sentences_per_second", "train_sentences_per_second", "others_cpu_share", "stages_others_cpu_share",
            "environment", "versions", "git_commit", "started", "finished", "duration_s", "p50_ms", "p90_ms", "p99_ms",
            "mean_ms", "min_ms", "max_ms", "std_ms", "sentences_per_s", "ms_per_sentence", "speedup_same_runtime",
            "speedup_best", "latency", "timings", "load_seconds", "convert_seconds", "rss_mb", "throughput",
            "teacher_best",                                     # which teacher artifact was fastest this time
            # Two tf2onnx conversions of the same model differ in node names (so in size and CRC), not in outputs:
            # .onnx files are compared by their outputs instead, and these byte-level figures are left out.
            "size_bytes", "crc32", "size_ratio_same_runtime", "size_ratio_smallest"}
TEMP_MARKERS = (".tmp", ".tmp-")

# (command, point) in the order a run passes them. `@N`: the N-th pass.
DISTILL_POINTS = [
    "teacher:batch@3", "teacher:checkpoint", "json:state.json", "dir:teacher", "file:augmented",
    "score:batch@2", "dir:chunk@2", "json:index.json", "weights:checkpoint", "stage:batch@5", "npz:epoch",
    "json:state.json@4", "stage:batch@40", "weights:checkpoint@4", "dir:bundle", "json:metrics.json",
]
EXPORT_POINTS = ["export:artifact@2", "file:onnx", "file:onnx-int8", "json:manifest.json@2", "file:tflite"]
BENCH_POINTS = ["file:teacher-artifact", "bench:measurement@2", "bench:measurement@4", "json:report.json"]
# Every kind of write, failed by a full disk: JSON, a TF checkpoint, the teacher/bundle folders, the augmented
# text, a cache chunk, Keras weights, an epoch's .npz, a SavedModel, ONNX fp32/int8, a flatbuffer, the teacher's
# bench artifacts and an appended measurement line.
DISK_FULL_POINTS = {
    "distill": ["teacher:checkpoint", "json:state.json", "dir:teacher", "file:augmented", "dir:chunk@2",
                "json:index.json", "weights:checkpoint", "npz:epoch", "json:state.json@4", "weights:checkpoint@4",
                "dir:bundle", "json:metrics.json"],
    "export": ["dir:savedmodel", "file:onnx", "file:onnx-int8", "json:manifest.json@2", "file:tflite"],
    "bench": ["file:teacher-artifact", "bench:measurement@2", "json:report.json"],
}
DISK_FULL_EXIT = 3
# The short chain of `make test` (~1.5 min): stage 2 only, one teacher epoch, killed while an epoch's save is
# renamed into place; the other 24 points run under `-m slow`.
FAST_POINTS = {"distill": ["npz:epoch"]}


@dataclass
class Plan:
    workdir: Path
    checkpoint: str
    task: str
    tagging: bool = False
    quick: bool = False          # stage 2 only and one teacher epoch (the short chain of `make test`)
    fault: str = "kill"          # or "disk-full"
    points: dict[str, list[str]] = field(default_factory=lambda: {
        "distill": DISTILL_POINTS, "export": EXPORT_POINTS, "bench": BENCH_POINTS})

    def command(self, name: str, root: Path) -> list[str]:
        model_dir = root / "run"
        if name == "distill":
            return ["distill", "--task", self.task, "--model_dir", str(model_dir), "--pt_teacher_checkpoint",
                    self.checkpoint, *(["--do_NER"] if self.tagging else []), "--seq_len", "16", "--ft_epochs", "2",
                    "--ft_batch_size", "4", "--word_emb_dim", "8", "--bilstm_hidden_size", "8", "--teacher_layer",
                    "1", "--distil_epochs", "2", "--distil_batch_size", "4", "--distil_chunk_size", "8",
                    "--distil_patience", "2", "--augment_multiplier", "2", "--seed", "3", "--quiet",
                    *(["--stages", "2", "--ft_epochs", "1"] if self.quick else [])]
        if name == "export":
            return ["export", str(model_dir / "bundle"), "--formats",
                    "savedmodel,onnx:fp32,onnx:dynamic,tflite:fp32", "--tflite_batch_sizes", "4",
                    "--max_metric_drop", "100", "--quiet"]
        if name == "bench":
            return ["bench", str(model_dir / "bundle"), "--out", str(root / "bench"), "--runtimes",
                    "keras,onnxruntime,litert", "--batch-sizes", "1,4", "--seq-len", "16", "--threads", "1",
                    "--queries", "8", "--warmup", "1", "--quiet"]
        raise ValueError(name)


def _run(args: list[str], point: str | None, log, fault: str = "kill") -> subprocess.CompletedProcess:
    # A fixed hash seed: tf2onnx orders nodes and names constants by Python set order, so two conversions of
    # the same model differ in bytes (not in outputs) unless both processes hash alike.
    env = {**{k: v for k, v in os.environ.items() if k not in ("XD_KILL_AT", "XD_DISK_FULL_AT")},
           "PYTHONHASHSEED": "0"}
    if point and fault == "kill":
        env.update(XD_KILL_AT=point, XD_KILL_GROUP="1")
    elif point:
        env.update(XD_DISK_FULL_AT=point)
    started = time.time()
    done = subprocess.run(module_command("xtremedistil", *args), env=env, capture_output=True, text=True,
                          start_new_session=True)     # its own process group: a kill point kills only it
    what = (f"{'kill' if fault == 'kill' else 'disk full'} at {point}") if point else "uninterrupted"
    log(f"  {args[0]:8s} {what:40s} -> exit {done.returncode} ({time.time() - started:.0f} s)")
    if done.returncode not in (0, -9, DISK_FULL_EXIT):
        log("    " + "\n    ".join(done.stderr.strip().splitlines()[-5:]))
    return done


def _one_disk_full_line(command: str, stderr: str) -> bool:
    """The run ended as a full disk should: no traceback, one error line saying to free space and rerun."""
    lines = [line for line in stderr.splitlines() if line.startswith(f"xtremedistil {command}: error:")]
    return ("Traceback" not in stderr and len(lines) == 1
            and lines[0].startswith(f"xtremedistil {command}: error: no space left on the device")
            and "rerun the same command to resume" in lines[0])


def damaged_files(root: Path) -> list[str]:
    """Files in place (not temp) under `root` that do not load: what a failed write must never leave."""
    import onnx

    damaged = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not _is_temp(p, root)):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix in (".h5", ".npz", ".npy"):
                _arrays(path)
            elif path.suffix == ".onnx":
                onnx.load(str(path))
            elif path.suffix == ".tflite" and path.read_bytes()[4:8] != b"TFL3":
                raise ValueError("not a flatbuffer")
            elif path.name == "measurements.jsonl":
                lines = path.read_text(encoding="utf-8").splitlines()
                [json.loads(line) for line in lines[:-1]]      # only a last line may be cut (it is measured again)
        except Exception as err:  # noqa: BLE001 - any failure to load is the finding
            damaged.append(f"{path.relative_to(root)}: {type(err).__name__}")
    return damaged


def _normalise(value, roots: tuple[str, ...]):
    if isinstance(value, dict):
        return {k: _normalise(v, roots) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_normalise(v, roots) for v in value]
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, "<RUN>")
        return value
    return value


def _arrays(path: Path) -> dict:
    import numpy as np

    if path.suffix == ".h5":
        import h5py

        out = {}
        with h5py.File(path, "r") as handle:
            handle.visititems(lambda name, item: out.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
        return out
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    return {"": np.load(path)}


def _same_onnx_outputs(a: Path, b: Path) -> bool:
    """Both models give bit-equal outputs on the same fixed inputs (ids 1..50, batch 2)."""
    import numpy as np
    import onnxruntime as ort

    outputs = []
    for path in (a, b):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {}
        for node in session.get_inputs():
            shape = [2 if i == 0 else (d if isinstance(d, int) else 16) for i, d in enumerate(node.shape)]
            dtype = np.int64 if "int64" in node.type else np.int32 if "int32" in node.type else np.float32
            feeds[node.name] = (np.arange(np.prod(shape)) % 50 + 1).reshape(shape).astype(dtype)
        outputs.append(session.run(None, feeds))
    return len(outputs[0]) == len(outputs[1]) and all(np.array_equal(x, y) for x, y in zip(*outputs))


def _is_temp(path: Path, root: Path) -> bool:
    return any(part.startswith(".") and (part.endswith(".tmp") or part.startswith(".tmp-") or part.endswith(".old"))
               for part in path.relative_to(root).parts)


def compare(reference: Path, killed: Path) -> tuple[list[str], list[str], int]:
    """(differences, leftover temp files, files compared) between two run roots."""
    import numpy as np

    differences, leftovers, compared = [], [], 0
    roots = (str(reference.resolve()), str(reference), str(killed.resolve()), str(killed))
    ref_files = {p.relative_to(reference) for p in reference.rglob("*") if p.is_file() and not _is_temp(p, reference)}
    for path in sorted(p for p in killed.rglob("*") if p.is_file()):
        if _is_temp(path, killed):
            leftovers.append(str(path.relative_to(killed)))
    killed_files = {p.relative_to(killed) for p in killed.rglob("*") if p.is_file() and not _is_temp(p, killed)}
    ignored = {"measurements.jsonl", "bench.log", "done"}   # a bench resumes by appending; its lines hold latencies
    for rel in sorted(ref_files ^ killed_files):
        if rel.name not in ignored and "teacher-training" not in rel.parts:
            differences.append(f"{rel}: only in {'reference' if rel in ref_files else 'the killed run'}")
    for rel in sorted(ref_files & killed_files):
        a, b = reference / rel, killed / rel
        if rel.name in ignored or rel.suffix in (".png", ".svg", ".md", ".log", ".txt") and "bench" in rel.parts:
            continue
        compared += 1
        if rel.suffix == ".json":
            if _normalise(json.loads(a.read_text()), roots) != _normalise(json.loads(b.read_text()), roots):
                differences.append(f"{rel}: JSON differs")
        elif rel.suffix in (".h5", ".npz", ".npy"):
            x, y = _arrays(a), _arrays(b)
            if x.keys() != y.keys() or any(not np.array_equal(x[k], y[k]) for k in x):
                differences.append(f"{rel}: arrays differ")
        elif rel.suffix == ".onnx":
            if not _same_onnx_outputs(a, b):
                differences.append(f"{rel}: outputs differ")
        elif "teacher-training" in rel.parts or rel.suffix == ".pb" or "variables" in rel.parts:
            continue        # TF checkpoints and SavedModel protos embed object ids; their values are checked via parity
        elif a.read_bytes() != b.read_bytes():
            differences.append(f"{rel}: bytes differ")
    return differences, leftovers, compared


def run_battery(plan: Plan, log=print, fresh: bool = True) -> dict:
    reference, killed = plan.workdir / "reference", plan.workdir / "killed"
    if fresh:
        shutil.rmtree(killed, ignore_errors=True)
    steps = [name for name in ("distill", "export", "bench") if name in plan.points]
    if not (reference / "done").exists():
        shutil.rmtree(reference, ignore_errors=True)
        reference.mkdir(parents=True)
        log("reference (uninterrupted):")
        for name in steps:
            if _run(plan.command(name, reference), None, log).returncode != 0:
                raise SystemExit(f"the uninterrupted {name} failed; fix that first")
        (reference / "done").write_text("ok\n")
    killed.mkdir(parents=True, exist_ok=True)
    results, damaged = [], []
    disk_full = plan.fault == "disk-full"
    log("failed by a full disk at each write, then rerun:" if disk_full else "killed at each point, then rerun:")
    for name in steps:
        for point in plan.points[name]:
            done = _run(plan.command(name, killed), point, log, plan.fault)
            if disk_full:
                ok = done.returncode == DISK_FULL_EXIT and _one_disk_full_line(name, done.stderr)
                found = damaged_files(killed)
                damaged += [f"after {point}: {d}" for d in found]
                results.append({"command": name, "point": point, "killed": ok, "exit": done.returncode,
                                "line": (done.stderr.strip().splitlines() or [""])[-1][:300]})
            else:
                results.append({"command": name, "point": point, "killed": done.returncode == -9,
                                "exit": done.returncode})
        final = _run(plan.command(name, killed), None, log)
        results.append({"command": name, "point": None, "killed": False, "exit": final.returncode})
        if final.returncode != 0:
            break
    differences, leftovers, compared = compare(reference, killed)
    not_killed = [r for r in results if r["point"] and not r["killed"]]
    failed = [r for r in results if not r["point"] and r["exit"] != 0]
    summary = {"fault": plan.fault, "points": sum(1 for r in results if r["point"]),
               "killed": sum(1 for r in results if r["killed"]),
               "not_reached": [f"{r['command']} {r['point']} (exit {r['exit']})" for r in not_killed],
               "reruns_failed": [r["command"] for r in failed], "files_compared": compared,
               "differences": differences, "temp_files_left": leftovers, "damaged_files": damaged,
               "results": results}
    summary["passed"] = not (not_killed or failed or differences or damaged or (disk_full and leftovers))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xtremedistil.kill_battery", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--workdir", required=True, help="folder for the reference and killed runs (created)")
    parser.add_argument("--pt_teacher_checkpoint", required=True, help="teacher: hub id, local folder or pip:MODULE")
    parser.add_argument("--task", required=True, help="task folder (a small one: every command runs ~25 times)")
    parser.add_argument("--do_NER", action="store_true", help="the task is tagging")
    parser.add_argument("--commands", default="distill,export,bench", help="which commands to kill (default: all)")
    parser.add_argument("--keep", action="store_true", help="reuse WORKDIR/reference from an earlier battery")
    parser.add_argument("--fault", choices=("kill", "disk-full"), default="kill",
                        help="SIGKILL at each point (default), or fail each kind of write with a full disk")
    args = parser.parse_args(argv)
    commands = [c.strip() for c in args.commands.split(",") if c.strip()]
    plan = Plan(Path(args.workdir), args.pt_teacher_checkpoint, args.task, args.do_NER, fault=args.fault)
    if args.fault == "disk-full":
        plan.points = dict(DISK_FULL_POINTS)
    unknown = set(commands) - set(plan.points)
    if unknown:
        parser.error(f"--commands: unknown {', '.join(sorted(unknown))} (choose from distill, export, bench)")
    plan.points = {c: plan.points[c] for c in commands}
    if not args.keep:
        shutil.rmtree(plan.workdir / "reference", ignore_errors=True)
    summary = run_battery(plan)
    (plan.workdir / f"battery-{args.fault}.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.fault == "disk-full":
        print(f"{summary['killed']} of {summary['points']} writes failed by a full disk ended in one line (exit 3); "
              f"{len(summary['damaged_files'])} damaged files left in place; {summary['files_compared']} files "
              f"compared with the uninterrupted run after resuming: {len(summary['differences'])} differ; "
              f"{len(summary['temp_files_left'])} temp files left behind")
    else:
        print(f"{summary['killed']} of {summary['points']} kill points killed the run; {summary['files_compared']} "
              f"files compared with the uninterrupted run: {len(summary['differences'])} differ; "
              f"{len(summary['temp_files_left'])} temp files left behind (none read)")
    for line in summary["not_reached"] + summary["differences"] + summary["damaged_files"]:
        print("  " + line)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
