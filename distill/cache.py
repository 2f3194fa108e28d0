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

Donor caches: a sentence already scored by the same teacher with the same settings, in another complete
cache of the same folder (another transfer file: a 4x augmented set when an 8x one is scored, whose first
four variants of each sentence are the same lines), is copied from there instead of scored again — matched
by its token ids, so the row is what the teacher gave for exactly that input.
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
DONOR_FREE_KEYS = ("source_sha1", "chunk_size")   # signature keys a donor cache may differ in


def _read_or_none(path: Path, then: str = "scoring what it described again") -> dict | None:
    """A cache's JSON file, or None when it is missing or damaged (warned with `then`, what happens next)."""
    if not path.exists():
        return None
    try:
        return read_json(path)
    except XtremeDistilError as err:
        logger.warning("%s; %s", err, then)
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
        """Scoring throughput (summed over chunks, whichever run scored them; rows copied from donor caches
        are not counted)."""
        seconds = self.index.get("seconds")
        return round((len(self) - self.index.get("copied", 0)) / seconds, 1) if seconds else None

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


def donor_caches(root: Path, signature: dict, exclude: Path) -> list[TeacherCache]:
    """The complete caches in `root` (but `exclude`) whose signature is `signature` but for the source file
    and chunk size: the same teacher, layer, sequence length and task kind."""
    same = {k: v for k, v in signature.items() if k not in DONOR_FREE_KEYS}
    donors = []
    for folder in sorted(p for p in Path(root).glob("*") if p.is_dir()):
        if folder.resolve() == Path(exclude).resolve():
            continue
        index = _read_or_none(folder / INDEX_FILE, then="not copying rows from it")
        if (index is not None and index.get("complete") and isinstance(index.get("signature"), dict)
                and {k: v for k, v in index["signature"].items() if k not in DONOR_FREE_KEYS} == same):
            donors.append(TeacherCache(folder, index))
    return donors


class _Donors:
    """Teacher rows of donor caches by token ids (indexed on first use; damaged chunks are left out)."""

    def __init__(self, caches: list[TeacherCache]):
        self.caches, self._where, self._open = caches, None, {}

    def _index(self) -> dict[bytes, tuple[int, int, int]]:
        if self._where is None:
            self._where = {}
            for d, cache in enumerate(self.caches):
                for k, chunk in enumerate(cache.chunks):
                    if _intact_meta(cache.folder / chunk["name"]) is None:
                        continue
                    ids = np.asarray(cache.chunk(k)["input_ids"])
                    for row in range(ids.shape[0]):
                        self._where.setdefault(ids[row].tobytes(), (d, k, row))
            logger.info("donor caches: %d scored sentences in %s", len(self._where),
                        ", ".join(c.folder.name for c in self.caches))
        return self._where

    def find(self, input_ids: np.ndarray) -> list[tuple[int, int, int] | None]:
        where = self._index()
        return [where.get(row.tobytes()) for row in np.ascontiguousarray(input_ids, dtype=np.int32)]

    def arrays(self, d: int, k: int) -> dict[str, np.ndarray]:
        if (d, k) not in self._open:
            self._open = {(d, k): self.caches[d].chunk(k)}     # one donor chunk open at a time
        return self._open[(d, k)]


def _write_chunk(folder: Path, sentences: list[str], score: Callable, tokenizer, seq_len: int,
                 tagging: bool, batch_size: int, progress, donors: _Donors | None = None) -> tuple[int, int]:
    """Tokenizes and scores one chunk into `folder` (a temp folder), in length-bucketed batches, copying
    the rows `donors` hold; returns the truncated and the copied counts."""
    folder.mkdir(parents=True)
    n, arrays, truncated, copied = len(sentences), {}, 0, 0

    def open_arrays(tails: dict[str, tuple]):
        arrays["input_ids"] = np.lib.format.open_memmap(folder / "input_ids.npy", "w+", np.int32, (n, seq_len))
        for name in ("logits", "hidden"):
            arrays[name] = np.lib.format.open_memmap(folder / f"{name}.npy", "w+", np.float16, (n,) + tails[name])
        if tagging:
            arrays[WORD_START] = np.lib.format.open_memmap(folder / f"{WORD_START}.npy", "w+", np.uint8, (n, seq_len))

    def keep_ids(place, encoded, rows):
        arrays["input_ids"][place] = encoded.input_ids[rows]
        if tagging:
            arrays[WORD_START][place] = encoded.word_index[rows] >= 0

    for start in range(0, n, TOKENIZE_BATCH):
        encoded = encode_sentences(tokenizer, sentences[start:start + TOKENIZE_BATCH], seq_len, tagging)
        truncated += encoded.truncated
        hits = donors.find(encoded.input_ids) if donors is not None else [None] * len(encoded.input_ids)
        by_chunk: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for i, hit in enumerate(hits):
            if hit is not None:
                by_chunk.setdefault(hit[:2], []).append((i, hit[2]))
        for (d, k), pairs in sorted(by_chunk.items()):
            source = donors.arrays(d, k)
            if not arrays:
                open_arrays({name: tuple(source[name].shape[1:]) for name in ("logits", "hidden")})
            rows, donor_rows = (np.array(v) for v in zip(*pairs))
            keep_ids(start + rows, encoded, rows)
            for name in ("logits", "hidden"):
                arrays[name][start + rows] = source[name][donor_rows]
            copied += len(rows)
            progress.update(len(rows))
        fresh = np.array([i for i, hit in enumerate(hits) if hit is None], dtype=np.int64)
        row_lengths = encoded.attention_mask.sum(axis=1)
        for batch in batching.bucketed_batches(row_lengths[fresh], batch_size):
            rows = fresh[batch]
            w = batching.width(row_lengths[rows], seq_len)
            out = score(encoded.input_ids[rows, :w], encoded.attention_mask[rows, :w])
            kill_point("score:batch")
            if not arrays:
                open_arrays({name: (seq_len,) + tuple(out[name].shape[2:]) if out[name].ndim == 3
                             else tuple(out[name].shape[1:]) for name in ("logits", "hidden")})
            place = start + rows
            keep_ids(place, encoded, rows)
            for name in ("logits", "hidden"):
                batching.scatter_rows(arrays[name], place, out[name], arrays[name].shape[1:])
            progress.update(len(rows))
    for array in arrays.values():
        array.flush()
    del arrays
    return truncated, copied


def build_cache(folder: str | Path, sentences: Iterable[str], score: Callable, tokenizer, *, seq_len: int,
                tagging: bool, chunk_size: int, batch_size: int, signature: dict, total: int | None = None,
                description: str = "scoring", worker: int = 0, workers: int = 1,
                barrier: Callable[[str], None] | None = None, donor_root: str | Path | None = None) -> TeacherCache:
    """Scores `sentences` with `score(ids, mask) -> {"logits", "hidden"}` into `folder`, chunk by chunk.

    Complete chunks of a previous run with the same `signature` are reused (no scoring). With
    `donor_root`, rows of the other complete caches there with the same teacher and settings
    (`donor_caches`) are copied for sentences with the same token ids. With `workers` > 1 this worker
    scores only its shard and `barrier(what)` must return once every worker has scored its own.
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

    found = donor_caches(Path(donor_root), signature, folder) if donor_root is not None else []
    donors = _Donors(found) if found else None
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
            truncated, copied = _write_chunk(temp, batch, score, tokenizer, seq_len, tagging, batch_size, progress,
                                             donors)
            crcs = {p.name: file_crc32(p) for p in sorted(temp.glob("*.npy"))}
            meta = {"name": name, "rows": len(batch), "truncated": truncated, "signature": signature,
                    "seconds": round(time.time() - chunk_started, 2), "crc32": crcs, "copied": copied}
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
             "seconds": round(sum(meta.get("seconds", 0.0) for meta in chunks.values()), 1),
             "copied": sum(meta.get("copied", 0) for meta in chunks.values())}
    if index["copied"]:
        logger.info("%s: %d of %d sentences copied from donor caches (same teacher, same token ids), the rest "
                    "scored", description, index["copied"], index["rows"])
    if worker == 0:
        write_json_atomic(index_path, index)
    if index["truncated"]:
        logger.info("%s: %d of %d sentences are longer than seq_len=%d and were truncated",
                    description, index["truncated"], index["rows"], seq_len)
    return TeacherCache(folder, index)
