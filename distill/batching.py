"""Length-bucketed batches (dynamic padding): a batch is only as wide as its longest sentence.

Inputs are post-padded to `seq_len`, and on real data most positions are padding (SST-2's train
phrases have a median of 7 words; about 60% of the positions of a full-width batch are padding).
Sorting sentences by length before cutting batches, then cutting every batch to its longest
sentence (rounded up to a multiple of `WIDTH_MULTIPLE`, so a traced function sees at most
seq_len / 8 shapes), removes that compute. Models must not depend on trailing padding for this to
be exact (teachers use the attention mask; students mask or use real lengths).

Training order stays random: ties in length are broken by a seeded random key and the order of the
batches is shuffled, so each epoch differs and a seed reproduces it.
"""
from __future__ import annotations

import numpy as np

WIDTH_MULTIPLE = 8


def lengths(input_ids: np.ndarray, pad_id: int) -> np.ndarray:
    """Tokens before the trailing padding of each post-padded row (at least 1)."""
    not_pad = np.asarray(input_ids) != pad_id
    last = not_pad.shape[1] - np.argmax(not_pad[:, ::-1], axis=1)
    return np.where(not_pad.any(axis=1), last, 1).astype(np.int32)


def width(batch_lengths: np.ndarray, seq_len: int) -> int:
    """The padded width of a batch: its longest row rounded up to WIDTH_MULTIPLE, at most seq_len."""
    longest = int(np.max(batch_lengths)) if len(batch_lengths) else 1
    return min(seq_len, -(-longest // WIDTH_MULTIPLE) * WIDTH_MULTIPLE)


def bucketed_batches(row_lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Row indices per batch, rows of similar length together.

    With `rng`: ties broken at random and the batches in random order (training). Without: sorted by
    length, stable (inference; callers scatter results back by index).
    """
    row_lengths = np.asarray(row_lengths)
    if rng is None:
        order = np.argsort(row_lengths, kind="stable")
    else:
        order = np.lexsort((rng.random(len(row_lengths)), row_lengths))
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def scatter_rows(out: np.ndarray | None, rows: np.ndarray, values: np.ndarray, shape_tail: tuple) -> np.ndarray:
    """Writes `values` (possibly narrower along axis 1 than `shape_tail`) into `out[rows]`."""
    if values.ndim >= 2 and len(shape_tail) >= 1 and values.shape[1] < shape_tail[0]:
        pad = [(0, 0), (0, shape_tail[0] - values.shape[1])] + [(0, 0)] * (values.ndim - 2)
        values = np.pad(values, pad)
    out[rows] = values
    return out
