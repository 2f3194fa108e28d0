"""Tokenization with the teacher's fast tokenizer, and word-piece ↔ word label alignment.

Tagging labels are word-level: each word's tag goes on its first word piece; continuation
pieces, special tokens and padding get `IGNORE_INDEX` and are left out of the loss and of the
metrics. Predictions are read back from first pieces onto words, so metrics are word-level and
comparable with published word-level F1. Words cut off by `seq_len` count as predicted "O".
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from xtremedistil.errors import XtremeDistilError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
OUTSIDE_TAG = "O"
NO_WORD = -1


def save_tokenizer(tokenizer, folder) -> None:
    """Saves a fast tokenizer without the truncation/padding state its last call left in `tokenizer.json`
    (every call sets its own); saved with it, a reload would write that state into `tokenizer_config.json`,
    so the same teacher's files would depend on what the process did before saving them."""
    backend = tokenizer.backend_tokenizer
    truncation, padding = backend.truncation, backend.padding
    backend.no_truncation()
    backend.no_padding()
    try:
        tokenizer.save_pretrained(folder)
    finally:
        if truncation:
            backend.enable_truncation(**{k: v for k, v in truncation.items() if k != "direction"},
                                      direction=truncation.get("direction", "right"))
        if padding:
            backend.enable_padding(**{k: v for k, v in padding.items() if k in (
                "direction", "pad_id", "pad_type_id", "pad_token", "length", "pad_to_multiple_of")})


def load_tokenizer(name_or_path: str):
    """The teacher's fast tokenizer from a local folder, a hub id or `pip:NAME` (see `sources`).

    Byte-level BPE tokenizers (RoBERTa family) need `add_prefix_space=True` to take
    pre-split words; it is set when the tokenizer requires it.
    """
    from transformers import AutoTokenizer

    from xtremedistil.distill.sources import resolve_checkpoint

    name_or_path = resolve_checkpoint(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, use_fast=True)
    except (OSError, ValueError) as err:
        raise XtremeDistilError(
            f"cannot load a tokenizer from '{name_or_path}': {str(err).splitlines()[0]} "
            "(pass a local folder with tokenizer files or a hub id)"
        ) from err
    if not tokenizer.is_fast:
        raise XtremeDistilError(
            f"'{name_or_path}' has no fast tokenizer; word alignment needs one (add tokenizer.json)"
        )
    try:
        tokenizer([["probe"]], is_split_into_words=True)
    except (AssertionError, ValueError):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, use_fast=True, add_prefix_space=True)
    return tokenizer


@dataclasses.dataclass
class Encoded:
    """Fixed-length token ids, ready for a model; `word_index` maps first pieces to words."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray | None = None
    word_index: np.ndarray | None = None
    n_words: np.ndarray | None = None
    truncated: int = 0

    def __len__(self):
        return len(self.input_ids)


def _first_rows(encoding) -> tuple[list[int], int]:
    """Row of each input in an encoding made with overflow rows, and how many inputs overflowed."""
    mapping = np.asarray(encoding["overflow_to_sample_mapping"])
    rows = np.nonzero(np.r_[True, mapping[1:] != mapping[:-1]])[0]
    return rows, int((np.bincount(mapping) > 1).sum())


def encode_texts(tokenizer, texts: Sequence[str], seq_len: int) -> Encoded:
    """Token ids for raw sentences (classification, or unlabeled transfer text)."""
    encoding = tokenizer(
        list(texts), truncation=True, max_length=seq_len, padding="max_length",
        return_overflowing_tokens=True,
    )
    rows, truncated = _first_rows(encoding)
    ids = np.asarray(encoding["input_ids"], dtype=np.int32)[rows]
    mask = np.asarray(encoding["attention_mask"], dtype=np.int32)[rows]
    return Encoded(ids, mask, truncated=truncated)


def encode_words(
    tokenizer, sentences: Sequence[Sequence[str]], seq_len: int,
    tags: Sequence[Sequence[str]] | None = None, label_to_id: dict[str, int] | None = None,
) -> Encoded:
    """Token ids for pre-split words, with each word's tag on its first piece."""
    encoding = tokenizer(
        [list(words) for words in sentences], is_split_into_words=True, truncation=True,
        max_length=seq_len, padding="max_length", return_overflowing_tokens=True,
    )
    rows, truncated = _first_rows(encoding)
    n = len(sentences)
    word_index = np.full((n, seq_len), NO_WORD, dtype=np.int32)
    labels = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int32) if tags is not None else None
    for i, row in enumerate(rows):
        previous = None
        for position, word in enumerate(encoding.word_ids(row)):
            if word is not None and word != previous:
                word_index[i, position] = word
                if labels is not None:
                    labels[i, position] = label_to_id[tags[i][word]]
            previous = word
    ids = np.asarray(encoding["input_ids"], dtype=np.int32)[rows]
    mask = np.asarray(encoding["attention_mask"], dtype=np.int32)[rows]
    n_words = np.asarray([len(words) for words in sentences], dtype=np.int32)
    return Encoded(ids, mask, labels, word_index, n_words, truncated)


def encode_sentences(tokenizer, sentences: Sequence[str], seq_len: int, tagging: bool) -> Encoded:
    """Unlabeled sentences -> ids; for tagging, words split on whitespace (as at prediction time)."""
    if tagging:
        return encode_words(tokenizer, [s.split() for s in sentences], seq_len)
    return encode_texts(tokenizer, sentences, seq_len)


def encode_examples(tokenizer, examples, labels: list[str], seq_len: int, tagging: bool,
                    split_name: str = "") -> Encoded:
    """Encodes a task split (see `xtremedistil.distill.data`) and logs truncation."""
    label_to_id = {label: i for i, label in enumerate(labels)}
    if tagging:
        encoded = encode_words(
            tokenizer, [ex.words for ex in examples], seq_len,
            [ex.label for ex in examples], label_to_id,
        )
    else:
        encoded = encode_texts(tokenizer, [ex.text for ex in examples], seq_len)
        encoded.labels = np.asarray([label_to_id[ex.label] for ex in examples], dtype=np.int32)
    if encoded.truncated:
        unit = "words are cut off and scored as 'O'" if tagging else "text is cut off"
        logger.info(
            "%s: %d of %d sentences are longer than seq_len=%d word pieces; their %s",
            split_name or "data", encoded.truncated, len(examples), seq_len, unit,
        )
    return encoded


def tags_from_piece_predictions(
    predicted_ids: np.ndarray, word_index: np.ndarray, n_words: np.ndarray, labels: list[str],
) -> list[list[str]]:
    """Word-level tags from per-piece label ids; words with no first piece become 'O'."""
    sentences = []
    for pred_row, word_row, count in zip(predicted_ids, word_index, n_words):
        tags = [OUTSIDE_TAG] * int(count)
        for position in np.nonzero(word_row >= 0)[0]:
            tags[word_row[position]] = labels[int(pred_row[position])]
        sentences.append(tags)
    return sentences
