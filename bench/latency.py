"""Latency of one predictor: warm-up, then timed batches; numbers stay numeric.

`python -m xtremedistil.bench.latency BUNDLE [--batch-sizes 1,32] [--queries 320] [--threads 2]` times
the Keras student and every artifact in BUNDLE/manifest.json on two fixed sentences padded to the
bundle's seq_len (the students' cost does not depend on the words), one subprocess per artifact so
runtimes do not share threads or memory, and prints a table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np


def time_predictor(predictor, input_ids: np.ndarray, batch_size: int, queries: int = 320, warmup: int = 3) -> dict:
    """p50/p90/p99 ms per batch of `batch_size`, ms per sentence and sentences/s over `queries` sentences."""
    batches = max(1, queries // batch_size)
    rows = np.resize(input_ids, (max(len(input_ids), batch_size * batches), input_ids.shape[1])).astype(np.int32)
    for i in range(warmup):
        predictor.predict(rows[i * batch_size:(i + 1) * batch_size], batch_size=batch_size)
    times = []
    for i in range(batches):
        batch = rows[i * batch_size:(i + 1) * batch_size]
        started = time.perf_counter()
        predictor.predict(batch, batch_size=batch_size)
        times.append((time.perf_counter() - started) * 1000)
    times = np.array(times)
    return {"batch_size": batch_size, "batches": batches, "p50_ms": float(np.percentile(times, 50)),
            "p90_ms": float(np.percentile(times, 90)), "p99_ms": float(np.percentile(times, 99)),
            "ms_per_sentence": float(np.median(times) / batch_size),
            "sentences_per_s": float(batch_size / (np.median(times) / 1000))}


def _measure_one(path: str, bundle: str, batch_sizes: list[int], queries: int, threads: int) -> list[dict]:
    from xtremedistil.distill.bundle import load_bundle
    from xtremedistil.export.predictor import load_predictor

    source = load_bundle(bundle)
    ids = source.encode([line for line in ["a short sentence .", "another one , a bit longer than the first ."] * 16]).input_ids
    predictor = load_predictor(path, threads)
    return [time_predictor(predictor, ids, b, queries) for b in batch_sizes]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xtremedistil.bench.latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--queries", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.one:
        print(json.dumps(_measure_one(args.one, args.bundle, batch_sizes, args.queries, args.threads)))
        return 0
    from pathlib import Path

    manifest = json.loads((Path(args.bundle) / "manifest.json").read_text())
    targets = [("keras", args.bundle)] + [(row["name"], str(Path(args.bundle) / row["path"])) for row in manifest["artifacts"]]
    results = {}
    for name, path in targets:
        out = subprocess.run([sys.executable, "-m", "xtremedistil.bench.latency", args.bundle, "--one", path,
                              "--batch-sizes", args.batch_sizes, "--queries", str(args.queries),
                              "--threads", str(args.threads)], capture_output=True, text=True)
        if out.returncode:
            print(f"{name}: failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    sizes = {row["name"]: row["size_bytes"] for row in manifest["artifacts"]}
    header = f"{'artifact':<20}{'size MB':>9}" + "".join(f"{f'b{b} p50 ms':>12}{f'vs keras':>10}" for b in batch_sizes)
    print(header)
    for name, rows in results.items():
        line = f"{name:<20}{sizes.get(name, 0) / 1e6:>9.2f}"
        for i, row in enumerate(rows):
            line += f"{row['p50_ms']:>12.2f}{results['keras'][i]['p50_ms'] / row['p50_ms']:>9.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
