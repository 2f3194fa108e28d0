import json
import shutil

import numpy as np
import pytest

from helpers import SENTENCES, CountingTeacher, bert_tokenizer, build_small_cache as build
from xtremedistil.distill.cache import INDEX_FILE, TeacherCache, build_cache




@pytest.fixture()
def tokenizer(tmp_path):
    return bert_tokenizer(tmp_path / "tok")


def test_cache_stores_chunks_and_is_reused_without_the_teacher(tmp_path, tokenizer):
    teacher = CountingTeacher()
    cache = build(tmp_path / "c", teacher, tokenizer)
    assert teacher.scored == 10 and len(cache) == 10
    assert [c["rows"] for c in cache.chunks] == [4, 4, 2]
    first = cache.chunk(0)
    assert first["hidden"].dtype == np.float16 and first["hidden"].shape == (4, 8, 2)
    np.testing.assert_allclose(first["logits"], first["input_ids"][:, :3] / 10.0, rtol=1e-3)
    again = CountingTeacher()
    build(tmp_path / "c", again, tokenizer)
    assert again.scored == 0  # the teacher is never called on a complete cache


def _rows(batch):
    return [tuple(row[row != 0]) for row in batch["input_ids"]]


def test_shuffled_batches_cover_every_row_once_in_a_seeded_order(tmp_path, tokenizer):
    cache = build(tmp_path / "c", CountingTeacher(), tokenizer)
    stored = sorted(_rows({"input_ids": np.concatenate(list(cache.all_input_ids()))}))
    epoch = list(cache.batches(3, np.random.default_rng(0)))
    assert sorted(r for b in epoch for r in _rows(b)) == stored                      # every row exactly once
    for batch in epoch:   # each row keeps its own teacher outputs
        np.testing.assert_allclose(batch["logits"], batch["input_ids"][:, :3] / 10.0, rtol=1e-3)
    order = [r for b in epoch for r in _rows(b)]
    same = [r for b in cache.batches(3, np.random.default_rng(0)) for r in _rows(b)]
    other = [r for b in cache.batches(3, np.random.default_rng(1)) for r in _rows(b)]
    unshuffled = [r for b in cache.batches(3) for r in _rows(b)]
    assert order == same and order != other and order != unshuffled


def _assert_same_as_a_clean_build(cache, tmp_path, tokenizer):
    reference = build(tmp_path / "ref", CountingTeacher(), tokenizer)
    for k in range(3):
        for name in ("input_ids", "logits", "hidden"):
            np.testing.assert_array_equal(cache.chunk(k)[name], reference.chunk(k)[name])


def test_incomplete_chunk_is_recomputed_and_complete_ones_kept(tmp_path, tokenizer):
    with pytest.raises(RuntimeError, match="killed"):
        build(tmp_path / "c", CountingTeacher(fail_after=6), tokenizer)  # dies inside chunk 2
    assert not (tmp_path / "c" / INDEX_FILE).exists()   # written once every chunk is there
    complete = sorted(p.parent.name for p in (tmp_path / "c").glob("chunk-*/meta.json"))
    assert complete == ["chunk-00000"] and not (tmp_path / "c" / "chunk-00001").exists()
    resumed_teacher = CountingTeacher()
    cache = build(tmp_path / "c", resumed_teacher, tokenizer)
    assert resumed_teacher.scored == 6  # chunks 2 and 3 only
    _assert_same_as_a_clean_build(cache, tmp_path, tokenizer)


def test_changed_signature_rebuilds(tmp_path, tokenizer):
    build(tmp_path / "c", CountingTeacher(), tokenizer)
    teacher = CountingTeacher()
    build_cache(tmp_path / "c", iter(SENTENCES), teacher, tokenizer, seq_len=8, tagging=True,
                chunk_size=4, batch_size=3, signature={"v": 2})
    assert teacher.scored == 10


def _garble(path, offset_from_end=3):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated array", "garbled array", "garbled header", "garbled meta",
                                    "missing array"])
def test_a_damaged_chunk_is_scored_again_and_only_it(tmp_path, tokenizer, damage):
    build(tmp_path / "c", CountingTeacher(), tokenizer)
    chunk = tmp_path / "c" / "chunk-00001"
    if damage == "truncated array":
        path = chunk / "hidden.npy"
        path.write_bytes(path.read_bytes()[:-7])
    elif damage == "garbled array":
        _garble(chunk / "logits.npy")                    # a flipped byte in the data, the header intact
    elif damage == "garbled header":
        path = chunk / "input_ids.npy"
        path.write_bytes(b"\x00" * 16 + path.read_bytes()[16:])
    elif damage == "garbled meta":
        (chunk / "meta.json").write_text('{"name": "chunk-00001", "rows": 4, "trunc')
    else:
        (chunk / "logits.npy").unlink()
    teacher = CountingTeacher()
    cache = build(tmp_path / "c", teacher, tokenizer)
    assert teacher.scored == 4                           # chunk 1 only
    _assert_same_as_a_clean_build(cache, tmp_path, tokenizer)


def test_a_damaged_index_is_rebuilt_from_the_intact_chunks_without_the_teacher(tmp_path, tokenizer):
    build(tmp_path / "c", CountingTeacher(), tokenizer)
    index = tmp_path / "c" / INDEX_FILE
    original = json.loads(index.read_text())
    index.write_text(index.read_text()[:40])
    teacher = CountingTeacher()
    cache = build(tmp_path / "c", teacher, tokenizer)
    assert teacher.scored == 0 and len(cache) == 10
    assert json.loads(index.read_text()) == original


def _distinct(n, offset=0):
    """n different sentences of the test vocabulary (some longer than seq_len 8, so truncated)."""
    words = ["good", "bad", "movie", "film", "great", "awful", "paris", "london"]
    return [f"the {words[i % 8]} {words[(i // 8) % 8]} " + "very " * (i % 7) + "." for i in range(offset, offset + n)]


def _donor_build(folder, sentences, teacher, tokenizer, source, chunk_size=4, root=None, settings=None):
    signature = {"source_sha1": source, "v": 1, "chunk_size": chunk_size, **(settings or {})}
    return build_cache(folder, iter(sentences), teacher, tokenizer, seq_len=8, tagging=True, chunk_size=chunk_size,
                       batch_size=3, signature=signature, total=len(sentences),
                       donor_root=root)


def test_rows_another_cache_of_the_same_teacher_scored_are_copied_not_scored(tmp_path, tokenizer):
    """An 8x set holding the 4x set's lines: only the new lines reach the teacher, and the cache is the one a
    full scoring writes (same rows, same order, same truncation count)."""
    root = tmp_path / "cache"
    old = _distinct(14)                                   # the earlier transfer set
    new = [s for pair in zip(old, _distinct(14, 30)) for s in pair] + _distinct(3, 50)  # interleaved + more
    _donor_build(root / "old", old, CountingTeacher(), tokenizer, "a", chunk_size=5)
    teacher = CountingTeacher()
    cache = _donor_build(root / "new", new, teacher, tokenizer, "b", root=root)
    assert teacher.scored == 17 and cache.index["copied"] == 14 and len(cache) == 31
    reference = _donor_build(tmp_path / "ref", new, CountingTeacher(), tokenizer, "b")
    assert cache.index["truncated"] == reference.index["truncated"] > 0
    assert [c["rows"] for c in cache.chunks] == [c["rows"] for c in reference.chunks]
    for k in range(len(cache.chunks)):
        for name in ("input_ids", "logits", "hidden", "word_start"):
            np.testing.assert_array_equal(cache.chunk(k)[name], reference.chunk(k)[name], err_msg=f"{k} {name}")
    # Throughput counts the 17 scored rows, not the 14 copied ones
    assert TeacherCache(cache.folder, {**cache.index, "seconds": 1.7}).sentences_per_second == 10.0
    # A chunk whose every sentence has a donor row is written without the teacher
    teacher = CountingTeacher()
    again = _donor_build(root / "subset", old[3:11], teacher, tokenizer, "c", root=root)
    assert teacher.scored == 0 and again.index["copied"] == 8


def test_donor_caches_need_the_same_teacher_and_settings_and_must_be_complete_and_intact(tmp_path, tokenizer,
                                                                                           caplog):
    root = tmp_path / "cache"
    sentences = _distinct(8)
    _donor_build(root / "other-teacher", sentences, CountingTeacher(), tokenizer, "a", settings={"v": 2})
    with pytest.raises(RuntimeError, match="killed"):
        _donor_build(root / "incomplete", sentences, CountingTeacher(fail_after=4), tokenizer, "a")
    teacher = CountingTeacher()
    _donor_build(root / "new", sentences, teacher, tokenizer, "b", root=root)
    assert teacher.scored == 8                        # neither is a donor
    # A damaged chunk of a donor is left out: its sentences are scored, the others copied
    _donor_build(root / "good", _distinct(8, 20), CountingTeacher(), tokenizer, "g")
    _garble(root / "good" / "chunk-00001" / "logits.npy")
    teacher = CountingTeacher()
    cache = _donor_build(root / "new2", _distinct(8, 20), teacher, tokenizer, "h", root=root)
    assert teacher.scored == 4 and cache.index["copied"] == 4
    reference = _donor_build(tmp_path / "ref", _distinct(8, 20), CountingTeacher(), tokenizer, "h")
    for k in range(2):
        np.testing.assert_array_equal(cache.chunk(k)["logits"], reference.chunk(k)["logits"])
    # A donor whose index.json is damaged is not used, and the warning says so (it is not rescored here)
    shutil.rmtree(root / "new2")
    (root / "good" / "index.json").write_text("{not json")
    teacher = CountingTeacher()
    with caplog.at_level("WARNING"):
        _donor_build(root / "new3", _distinct(8, 20), teacher, tokenizer, "k", root=root)
    assert "not copying rows from it" in caplog.text and "index.json" in caplog.text
    assert teacher.scored == 8                        # 4 while its index was intact
