"""Teacher outputs computed once and cached on disk.

A cache folder holds chunks of `distil_chunk_size` sentences. Each chunk is a folder of
`.npy` memmaps — `input_ids` (int32), `logits` and `hidden` (float16; [CLS] vector for
classification, every position for tagging) and, for tagging, `word_start` (uint8, 1 on the first
piece of each word: the positions the losses count) — written under a temp name and renamed when
complete (with its `meta.json`: rows, truncated count); `index.json` (written atomically) lists the
chunks once all are there. A rerun reuses every complete chunk without calling the teacher and
recomputes an incomplete one. Memory is bounded by the chunk (its sentences) and the scoring batch,
never by the whole set.

With several workers, chunk k is scored by worker k mod N (its shard); every worker reads the whole
stream (cheap) but tokenizes and scores only its own chunks, then waits at a barrier until all
shards are written, after which any worker reads any chunk.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from xtremedistil.distill import batching
from xtremedistil.distill.files import file_crc32, read_json, write_json_atomic, written_in_place
from xtremedistil.distill.tokenization import encode_sentences
from xtremedistil.errors import XtremeDistilError
from xtremedistil.faults import kill_point

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
META_FILE = "meta.json"
ARRAYS = ("input_ids", "logits", "hidden")
WORD_START = "word_start"
PER_POSITION = ("input_ids", WORD_START)   # arrays with a time axis whatever the task
TOKENIZE_BATCH = 1024


def _read_or_none(path: Path) -> dict | None:
    """A cache's JSON file, or None when it is missing or damaged (what it described is then recomputed)."""
    if not path.exists():
        return None
    try:
        return read_json(path)
    except XtremeDistilError as err:
        logger.warning("%s; scoring what it described again", err)
        return None


def _intact_meta(folder: Path) -> dict | None:
    """The meta.json of a chunk folder whose arrays have the recorded rows and CRC-32s, else None.

    Chunks written before CRCs were recorded are checked for a readable header and their row count only.
    """
    meta = _read_or_none(folder / META_FILE)
    if meta is None:
        return None
    try:
        for name in ARRAYS:
            array = np.load(folder / f"{name}.npy", mmap_mode="r")
            if array.shape[0] != meta["rows"]:
                raise ValueError(f"{name}.npy has {array.shape[0]} rows, not {meta['rows']}")
        for file, crc in (meta.get("crc32") or {}).items():
            if file_crc32(folder / file) != crc:
                raise ValueError(f"{file} differs from the CRC-32 recorded when it was written")
    except (OSError, ValueError, KeyError) as err:
        logger.warning("%s: damaged cache chunk (%s); scoring it again", folder, err)
        return None
    return meta


def signature_hash(signature: dict) -> str:
    return hashlib.sha1(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:10]


class TeacherCache:
    """Read access to a complete cache: `len(cache)`, `cache.chunks`, `cache.chunk(k)`."""

    def __init__(self, folder: Path, index: dict | None = None):
        self.folder = Path(folder)
        self.index = index if index is not None else read_json(self.folder / INDEX_FILE)
        if not self.index.get("complete"):
            raise XtremeDistilError(f"{self.folder}: teacher cache is incomplete; rerun to finish it")

    def __len__(self):
        return self.index["rows"]

    @property
    def sentences_per_second(self) -> float | None:
        """Scoring throughput (summed over chunks, whichever run scored them)."""
        seconds = self.index.get("seconds")
        return round(len(self) / seconds, 1) if seconds else None

    @property
    def chunks(self) -> list[dict]:
        return self.index["chunks"]

    def chunk(self, k: int) -> dict[str, np.ndarray]:
        folder = self.folder / self.chunks[k]["name"]
        return {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ARRAYS + (WORD_START,)
                if name in ARRAYS or (folder / f"{name}.npy").exists()}

    def all_input_ids(self) -> Iterator[np.ndarray]:
        for k in range(len(self.chunks)):
            yield self.chunk(k)["input_ids"]

    def batches(self, batch_size: int, rng: np.random.Generator | None = None, pad_id: int = 0) -> Iterator[dict]:
        """Length-bucketed batches of the chunk arrays, each cut to its longest sentence (see `batching`).

        With `rng`: chunks in random order, and random batches of similar length within a chunk.
        """
        order = rng.permutation(len(self.chunks)) if rng is not None else range(len(self.chunks))
        for k in order:
            arrays = self.chunk(int(k))
            ids = arrays["input_ids"]
            row_lengths = batching.lengths(ids, pad_id)
            for rows in batching.bucketed_batches(row_lengths, batch_size, rng):
                rows = np.sort(rows)
                w = batching.width(row_lengths[rows], ids.shape[1])
                yield {name: np.asarray(array[rows, :w] if name in PER_POSITION or array.ndim == 3 else array[rows])
                       for name, array in arrays.items()}


def _write_chunk(folder: Path, sentences: list[str], score: Callable, tokenizer, seq_len: int,
                 tagging: bool, batch_size: int, progress) -> int:
    """Tokenizes and scores one chunk into `folder` (a temp folder), in length-bucketed batches;
    returns the truncated count."""
    folder.mkdir(parents=True)
    n, arrays, truncated = len(sentences), {}, 0
    for start in range(0, n, TOKENIZE_BATCH):
        encoded = encode_sentences(tokenizer, sentences[start:start + TOKENIZE_BATCH], seq_len, tagging)
        truncated += encoded.truncated
        row_lengths = encoded.attention_mask.sum(axis=1)
        for rows in batching.bucketed_batches(row_lengths, batch_size):
            w = batching.width(row_lengths[rows], seq_len)
            out = score(encoded.input_ids[rows, :w], encoded.attention_mask[rows, :w])
            kill_point("score:batch")
            if not arrays:
                arrays["input_ids"] = np.lib.format.open_memmap(folder / "input_ids.npy", "w+", np.int32, (n, seq_len))
                for name in ("logits", "hidden"):
                    tail = tuple(out[name].shape[1:])
                    tail = (seq_len,) + tail[1:] if out[name].ndim == 3 else tail
                    arrays[name] = np.lib.format.open_memmap(folder / f"{name}.npy", "w+", np.float16, (n,) + tail)
                if tagging:
                    arrays[WORD_START] = np.lib.format.open_memmap(folder / f"{WORD_START}.npy", "w+", np.uint8, (n, seq_len))
            place = start + rows
            arrays["input_ids"][place] = encoded.input_ids[rows]
            if tagging:
                arrays[WORD_START][place] = encoded.word_index[rows] >= 0
            for name in ("logits", "hidden"):
                batching.scatter_rows(arrays[name], place, out[name], arrays[name].shape[1:])
            progress.update(len(rows))
    for array in arrays.values():
        array.flush()
    del arrays
    return truncated


def build_cache(folder: str | Path, sentences: Iterable[str], score: Callable, tokenizer, *, seq_len: int,
                tagging: bool, chunk_size: int, batch_size: int, signature: dict, total: int | None = None,
                description: str = "scoring", worker: int = 0, workers: int = 1,
                barrier: Callable[[str], None] | None = None) -> TeacherCache:
    """Scores `sentences` with `score(ids, mask) -> {"logits", "hidden"}` into `folder`, chunk by chunk.

    Complete chunks of a previous run with the same `signature` are reused (no scoring). With
    `workers` > 1 this worker scores only its shard and `barrier(what)` must return once every worker
    has scored its own.
    """
    if chunk_size < 1:
        raise XtremeDistilError("--distil_chunk_size must be at least 1")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / INDEX_FILE
    index = _read_or_none(index_path)
    if (index is not None and index["signature"] == signature and index["complete"]
            and all(_intact_meta(folder / c["name"]) is not None for c in index["chunks"])):
        logger.info("%s: reusing the complete teacher cache in %s (%d sentences)", description, folder, index["rows"])
        return TeacherCache(folder)
    listed = {c["name"]: c for c in index["chunks"]} if index is not None and index["signature"] == signature else {}

    known: dict[str, dict] = {}     # chunks checked or written by this worker: not read and hashed twice

    def finished(name: str) -> dict | None:
        if name not in known:
            meta = _intact_meta(folder / name)
            if meta is None:
                return None
            known[name] = meta if meta.get("signature") == signature else listed.get(name)
        return known[name]

    stream = iter(sentences)
    mine = "" if workers == 1 else f" (worker {worker} of {workers}: every {workers}th chunk)"
    progress = tqdm(total=total, desc=description + mine, unit="sent", dynamic_ncols=True, mininterval=1.0)
    names = []
    for k in itertools.count():
        batch = list(itertools.islice(stream, chunk_size))
        if not batch:
            break
        name = f"chunk-{k:05d}"
        names.append(name)
        if k % workers != worker or finished(name) is not None:
            progress.update(len(batch))
            continue
        temp = folder / f".{name}.tmp"
        shutil.rmtree(temp, ignore_errors=True)
        chunk_started = time.time()
        with written_in_place(folder / name, "dir:chunk", temp):
            truncated = _write_chunk(temp, batch, score, tokenizer, seq_len, tagging, batch_size, progress)
            crcs = {p.name: file_crc32(p) for p in sorted(temp.glob("*.npy"))}
            meta = {"name": name, "rows": len(batch), "truncated": truncated, "signature": signature,
                    "seconds": round(time.time() - chunk_started, 2), "crc32": crcs}
            write_json_atomic(temp / META_FILE, meta)
            shutil.rmtree(folder / name, ignore_errors=True)  # a chunk without meta.json is incomplete
        known[name] = meta
    progress.close()
    if not names:
        raise XtremeDistilError(f"{description}: no sentences to score")
    if barrier is not None:
        barrier(f"{description}: every worker's cache shard")
    chunks = {name: finished(name) for name in names}
    missing = [name for name, meta in chunks.items() if meta is None]
    if missing:
        raise XtremeDistilError(f"{folder}: cache chunk(s) {', '.join(missing[:5])} are missing after every worker "
                                "finished scoring; is the cache folder shared by all workers?")
    index = {"signature": signature, "complete": True,
             "chunks": [{"name": name, "rows": meta["rows"]} for name, meta in chunks.items()],
             "rows": sum(meta["rows"] for meta in chunks.values()),
             "truncated": sum(meta.get("truncated", 0) for meta in chunks.values()),
             "seconds": round(sum(meta.get("seconds", 0.0) for meta in chunks.values()), 1)}
    if worker == 0:
        write_json_atomic(index_path, index)
    if index["truncated"]:
        logger.info("%s: %d of %d sentences are longer than seq_len=%d and were truncated",
                    description, index["truncated"], index["rows"], seq_len)
    return TeacherCache(folder, index)
