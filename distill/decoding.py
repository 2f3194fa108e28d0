"""Word-level tags from per-piece logits: each word's argmax, or the best IOB2-valid sequence (Viterbi).

Entity F1 is scored in strict IOB2 mode (`metrics.py`), where a tag sequence such as `O I-PER` or
`B-ORG I-ORG I-PER` holds no entity or a cut one. Per-word argmax can produce such sequences; `bio` decoding
picks, per sentence, the sequence of highest summed log-probability (softmax of each word's first-piece
logits) among those where every `I-X` follows `B-X` or `I-X`. It needs no training and no change to the
model or its exported artifacts: it reads the same logits. Label sets that are not IOB2 (a label neither `O`
nor `B-`/`I-` prefixed) are decoded by argmax whatever is asked.
"""
from __future__ import annotations

import functools

import numpy as np

from xtremedistil.distill.tokenization import OUTSIDE_TAG, tags_from_piece_predictions
from xtremedistil.errors import XtremeDistilError

DECODINGS = ("argmax", "bio")


def recorded_decoding(record: dict) -> str:
    """The decoding a record states (a bundle config's `task`, the teacher's metrics.json, a sub-stage of
    state.json, a bench spec); records written before decodings existed used argmax."""
    return record.get("decoding", "argmax")


def bio_constraints(labels) -> tuple[np.ndarray, np.ndarray] | None:
    """(may_start[L], may_follow[L_prev, L]) of an IOB2 label set, or None when the labels are not IOB2."""
    return _constraints(tuple(labels))


@functools.lru_cache(maxsize=16)
def _constraints(labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    parts = []
    for label in labels:
        if label == OUTSIDE_TAG:
            parts.append(("O", ""))
        elif label[:2] in ("B-", "I-") and len(label) > 2:
            parts.append((label[0], label[2:]))
        else:
            return None
    inside = np.array([kind == "I" for kind, _ in parts])
    may_follow = np.array([[not (kind == "I" and (prev_kind == "O" or prev_type != kind_type))
                            for kind, kind_type in parts] for prev_kind, prev_type in parts])
    return ~inside, may_follow


def viterbi(emissions: np.ndarray, lengths: np.ndarray, may_start: np.ndarray, may_follow: np.ndarray) -> np.ndarray:
    """Best label ids [N, T] under the constraints, for emissions [N, T, L] (log-probabilities) of which the
    first `lengths[n]` steps count; ids past a sentence's length are meaningless."""
    n, steps, size = emissions.shape
    if steps == 0:
        return np.zeros((n, 0), dtype=np.int64)
    forbidden = -1e9    # finite: a sentence whose every path is forbidden still decodes (never, for IOB2)
    transition = np.where(may_follow, 0.0, forbidden)[None]          # [1, prev, next]
    score = emissions[:, 0] + np.where(may_start, 0.0, forbidden)
    back = np.empty((n, steps, size), dtype=np.int64)
    back[:, 0] = np.arange(size)
    ragged = bool((np.asarray(lengths) < steps).any())
    for t in range(1, steps):
        candidates = score[:, :, None] + transition                   # [N, prev, next]
        chosen = candidates.argmax(1)
        best = candidates.max(1) + emissions[:, t]
        if ragged:                      # a sentence that ended keeps its score; its pointer is the identity
            active = (t < lengths)[:, None]
            chosen = np.where(active, chosen, back[:, 0])
            best = np.where(active, best, score)
        back[:, t], score = chosen, best
    path = np.empty((n, steps), dtype=np.int64)
    path[:, -1] = score.argmax(-1)
    rows = np.arange(n)
    for t in range(steps - 1, 0, -1):
        path[:, t - 1] = back[rows, t, path[:, t]]
    return path


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def tags_from_piece_logits(logits: np.ndarray, word_index: np.ndarray, n_words: np.ndarray, labels: list[str],
                           decoding: str = "argmax") -> list[list[str]]:
    """Word-level tags of every sentence from logits [N, seq, L] read at each word's first piece; words with
    no first piece (cut at seq_len) are 'O', as with argmax."""
    if decoding not in DECODINGS:
        raise XtremeDistilError(f"decoding {decoding!r}: use one of {', '.join(DECODINGS)}")
    constraints = bio_constraints(labels) if decoding == "bio" else None
    if constraints is None:
        return tags_from_piece_predictions(np.argmax(logits, -1), word_index, n_words, labels)
    logits, word_index = np.asarray(logits), np.asarray(word_index)
    firsts = [np.nonzero(row >= 0)[0] for row in word_index]          # first-piece positions, in word order
    lengths = np.array([len(f) for f in firsts])
    emissions = np.zeros((len(firsts), max(lengths, default=0), logits.shape[-1]))
    for i, positions in enumerate(firsts):
        emissions[i, :len(positions)] = _log_softmax(logits[i, positions].astype(np.float64))
    path = viterbi(emissions, lengths, *constraints)
    sentences = []
    for i, (positions, count) in enumerate(zip(firsts, n_words)):
        tags = [OUTSIDE_TAG] * int(count)
        for step, position in enumerate(positions):
            tags[word_index[i, position]] = labels[int(path[i, step])]
        sentences.append(tags)
    return sentences


def invalid_share(tags: list[list[str]]) -> float:
    """Share of sentences whose tags break IOB2 (an I-X not after B-X or I-X)."""
    def broken(seq):
        prev = OUTSIDE_TAG
        for tag in seq:
            if tag.startswith("I-") and (prev == OUTSIDE_TAG or prev[2:] != tag[2:]):
                return True
            prev = tag
        return False
    return sum(map(broken, tags)) / len(tags) if tags else 0.0
