"""Teacher outputs computed once and cached on disk.

A cache folder holds chunks of `distil_chunk_size` sentences. Each chunk is a folder of
`.npy` memmaps — `input_ids` (int32), `logits` and `hidden` (float16; [CLS] vector for
classification, every position for tagging) — written under a temp name and renamed when
complete; `index.json` (written atomically) lists the complete chunks. A rerun reuses every
complete chunk without calling the teacher and recomputes an incomplete one. Memory is
bounded by the chunk (its sentences) and the scoring batch, never by the whole set.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from xtremedistil.distill.files import read_json, write_json_atomic
from xtremedistil.distill.tokenization import encode_sentences
from xtremedistil.errors import XtremeDistilError

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
ARRAYS = ("input_ids", "logits", "hidden")
TOKENIZE_BATCH = 1024


def signature_hash(signature: dict) -> str:
    return hashlib.sha1(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:10]


class TeacherCache:
    """Read access to a complete cache: `len(cache)`, `cache.chunks`, `cache.chunk(k)`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.index = read_json(self.folder / INDEX_FILE)
        if not self.index.get("complete"):
            raise XtremeDistilError(f"{self.folder}: teacher cache is incomplete; rerun to finish it")

    def __len__(self):
        return self.index["rows"]

    @property
    def chunks(self) -> list[dict]:
        return self.index["chunks"]

    def chunk(self, k: int) -> dict[str, np.ndarray]:
        folder = self.folder / self.chunks[k]["name"]
        return {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ARRAYS}

    def all_input_ids(self) -> Iterator[np.ndarray]:
        for k in range(len(self.chunks)):
            yield self.chunk(k)["input_ids"]

    def batches(self, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[dict]:
        """Batches of {"input_ids", "logits", "hidden"}; shuffled by chunk and within chunk if `rng`."""
        order = rng.permutation(len(self.chunks)) if rng is not None else range(len(self.chunks))
        for k in order:
            arrays = self.chunk(int(k))
            n = len(arrays["input_ids"])
            rows = rng.permutation(n) if rng is not None else np.arange(n)
            for start in range(0, n, batch_size):
                take = np.sort(rows[start:start + batch_size])
                yield {name: np.asarray(array[take]) for name, array in arrays.items()}


def _write_chunk(folder: Path, sentences: list[str], score: Callable, tokenizer, seq_len: int,
                 tagging: bool, batch_size: int, progress) -> int:
    """Tokenizes and scores one chunk into `folder` (a temp folder); returns truncated count."""
    folder.mkdir(parents=True)
    n, arrays, truncated = len(sentences), {}, 0
    for start in range(0, n, TOKENIZE_BATCH):
        encoded = encode_sentences(tokenizer, sentences[start:start + TOKENIZE_BATCH], seq_len, tagging)
        truncated += encoded.truncated
        for offset in range(0, len(encoded), batch_size):
            ids = encoded.input_ids[offset:offset + batch_size]
            out = score(ids, encoded.attention_mask[offset:offset + batch_size])
            if not arrays:
                arrays["input_ids"] = np.lib.format.open_memmap(folder / "input_ids.npy", "w+", np.int32, (n, seq_len))
                for name in ("logits", "hidden"):
                    arrays[name] = np.lib.format.open_memmap(
                        folder / f"{name}.npy", "w+", np.float16, (n,) + tuple(out[name].shape[1:]))
            row = start + offset
            arrays["input_ids"][row:row + len(ids)] = ids
            for name in ("logits", "hidden"):
                arrays[name][row:row + len(ids)] = out[name]
            progress.update(len(ids))
    for array in arrays.values():
        array.flush()
    del arrays
    return truncated


def build_cache(folder: str | Path, sentences: Iterable[str], score: Callable, tokenizer, *, seq_len: int,
                tagging: bool, chunk_size: int, batch_size: int, signature: dict, total: int | None = None,
                description: str = "scoring") -> TeacherCache:
    """Scores `sentences` with `score(ids, mask) -> {"logits", "hidden"}` into `folder`, chunk by chunk.

    Complete chunks of a previous run with the same `signature` are reused (no scoring).
    """
    if chunk_size < 1:
        raise XtremeDistilError("--distil_chunk_size must be at least 1")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / INDEX_FILE
    index = read_json(index_path) if index_path.exists() else None
    if index is None or index["signature"] != signature:
        index = {"signature": signature, "chunks": [], "rows": 0, "complete": False, "truncated": 0}
    if index["complete"]:
        logger.info("%s: reusing the complete teacher cache in %s (%d sentences)", description, folder, index["rows"])
        return TeacherCache(folder)

    done = {chunk["name"] for chunk in index["chunks"]}
    stream = iter(sentences)
    progress = tqdm(total=total, desc=description, unit="sent", dynamic_ncols=True, mininterval=1.0)
    for k in itertools.count():
        batch = list(itertools.islice(stream, chunk_size))
        if not batch:
            break
        name = f"chunk-{k:05d}"
        if name in done:
            progress.update(len(batch))
            continue
        temp = folder / f".{name}.tmp"
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(folder / name, ignore_errors=True)  # from a run killed between rename and index
        truncated = _write_chunk(temp, batch, score, tokenizer, seq_len, tagging, batch_size, progress)
        temp.rename(folder / name)
        index["chunks"].append({"name": name, "rows": len(batch)})
        index["rows"] += len(batch)
        index["truncated"] += truncated
        write_json_atomic(index_path, index)
    progress.close()
    if index["rows"] == 0:
        raise XtremeDistilError(f"{description}: no sentences to score")
    index["complete"] = True
    write_json_atomic(index_path, index)
    if index["truncated"]:
        logger.info("%s: %d of %d sentences are longer than seq_len=%d and were truncated",
                    description, index["truncated"], index["rows"], seq_len)
    return TeacherCache(folder)
