"""Latency of one predictor on one batch size: warm-up, then timed batches; numbers stay numeric.

The paper's protocol: batches of `batch_size` sentences until `queries` sentences were answered,
after `warmup` untimed batches, the whole pass `repeats` times. Percentiles are over every timed
batch; throughput is derived from the median so that `sentences_per_s == batch / p50`.
"""
from __future__ import annotations

import time

import numpy as np


def time_predictor(predictor, input_ids: np.ndarray, batch_size: int, queries: int = 1000,
                   warmup: int = 5, repeats: int = 1) -> dict:
    """p50/p90/p99 ms per batch, ms per sentence and sentences/s for `predictor` at `batch_size`."""
    batches = max(1, -(-queries // batch_size))
    needed = batch_size * max(batches, warmup)
    rows = np.resize(np.asarray(input_ids, dtype=np.int32), (max(len(input_ids), needed), input_ids.shape[1]))
    for i in range(warmup):
        predictor.predict(rows[i * batch_size:(i + 1) * batch_size], batch_size=batch_size)
    times = []
    for _ in range(repeats):
        for i in range(batches):
            batch = rows[i * batch_size:(i + 1) * batch_size]
            started = time.perf_counter()
            predictor.predict(batch, batch_size=batch_size)
            times.append((time.perf_counter() - started) * 1000)
    times = np.asarray(times)
    p50 = float(np.percentile(times, 50))
    return {"batch_size": batch_size, "timed_batches": len(times), "sentences": int(len(times) * batch_size),
            "p50_ms": p50, "p90_ms": float(np.percentile(times, 90)), "p99_ms": float(np.percentile(times, 99)),
            "mean_ms": float(times.mean()), "ms_per_sentence": p50 / batch_size,
            "sentences_per_s": batch_size / (p50 / 1000)}
