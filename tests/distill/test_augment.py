"""Transfer-set augmentation: Tang et al.'s rules, seeded, deduplicated, screened, streamed."""
import random

import numpy as np
import pytest

from helpers import SOURCES, TAGGING_ROWS, bert_tokenizer, roberta_tokenizer, write_task
from xtremedistil.cli import main
from xtremedistil.distill.augment import (AugmentConfig, _key, augment_file, augment_stream, joined, nearest_words,
                                          teacher_words, variant)
from xtremedistil.errors import XtremeDistilError

SCREEN = ["a great film .", "very bad movie . ."]
LABELS = ["B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O"]


@pytest.fixture()
def tokenizer(tmp_path):
    return bert_tokenizer(tmp_path / "tok")


def _embedding(tokenizer, seed=0):
    return np.random.default_rng(seed).normal(size=(len(tokenizer), 8)).astype(np.float32)


def _augment(tmp_path, tokenizer, name="out.txt", **config):
    source = tmp_path / "source.txt"
    source.write_text("".join(s + "\n" for s in SOURCES), encoding="utf-8")
    out = tmp_path / name
    stats = augment_file(source, out, AugmentConfig(**{"multiplier": 8, **config}), mask_token="[MASK]",
                         embedding=_embedding(tokenizer), tokenizer=tokenizer, screen=SCREEN)
    return out.read_text(encoding="utf-8").splitlines(), stats


def test_output_is_seeded_deduplicated_and_screened(tmp_path, tokenizer):
    lines, stats = _augment(tmp_path, tokenizer)
    again, _ = _augment(tmp_path, tokenizer, "again.txt")
    other, _ = _augment(tmp_path, tokenizer, "other.txt", seed=7)
    assert lines == again and lines != other
    assert len(lines) == len(set(lines)) == stats["written"]
    assert not {" ".join(s.split()) for s in SCREEN} & set(lines)     # a test sentence never enters
    assert [s for s in SOURCES if s not in SCREEN] == [l for l in lines if l in SOURCES]   # sources kept, in order
    assert stats["sources"] == len(SOURCES) and len(SOURCES) < stats["written"] <= len(SOURCES) * 9
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_larger_multiplier_keeps_every_line_of_a_smaller_one(tmp_path, tokenizer):
    """Each sentence's variants come from its own seeded stream, so the 8x file holds the 4x file's lines:
    scoring it copies their teacher outputs from the 4x cache (donor caches) and scores only the rest."""
    eight, _ = _augment(tmp_path, tokenizer, "eight.txt")
    four, _ = _augment(tmp_path, tokenizer, "four.txt", multiplier=4)
    assert set(four) < set(eight) and len(four) < len(eight)


def test_variants_keep_word_boundaries_and_follow_each_rule(tokenizer):
    words = "john smith lives in paris .".split()
    neighbours = {"paris": ["london"], "john": ["ivan"]}
    rng = random.Random(0)
    masked = variant(words, rng, AugmentConfig(p_mask=1.0, p_replace=0.0, p_ngram=0.0), "[MASK]", neighbours)
    assert masked == ["[MASK]"] * len(words)
    replaced = variant(words, rng, AugmentConfig(p_mask=0.0, p_replace=1.0, p_ngram=0.0), "[MASK]", neighbours)
    assert replaced == ["ivan", "smith", "lives", "in", "london", "."]     # words without neighbours stay
    for _ in range(50):
        gram = variant(words, rng, AugmentConfig(p_mask=0.0, p_replace=0.0, p_ngram=1.0, max_ngram=3), "[MASK]", {})
        assert 1 <= len(gram) <= 3 and " ".join(gram) in " ".join(words)   # a contiguous n-gram
    kept = variant(words, rng, AugmentConfig(p_mask=0.0, p_replace=0.0, p_ngram=0.0), "[MASK]", neighbours)
    assert kept == words


def test_word_allocation_gives_long_sentences_more_variants_at_the_same_total():
    """allocation='word': variants in proportion to words (the mean length gets `multiplier`), so a long sentence
    gets more variants than a short one while the expected number of lines stays `multiplier` per source."""
    config = dict(multiplier=5, p_mask=0.5, p_replace=0.0, p_ngram=0.0)
    sources = [" ".join(f"s{i}w{j}" for j in range(2 if i % 2 == 0 else 18)) for i in range(200)]   # mean 10 words

    def lines_per_length(allocation):
        per_length = {2: 0, 18: 0}
        for text in augment_stream(iter(sources), AugmentConfig(allocation=allocation, **config), "[M]", {}, set(),
                                   mean_words=10.0):
            per_length[len(text.split())] += 1
        return per_length

    by_sentence, by_word = lines_per_length("sentence"), lines_per_length("word")
    assert by_sentence[18] == 100 * 6                        # each: itself and 5 distinct variants
    assert 100 * (1 + 8) <= by_word[18] <= 100 * (1 + 9)     # 5 * 18/10 = 9 variants (8 or 9 when rounded)
    assert by_word[2] < 100 * 2.1 < by_sentence[2]           # 5 * 2/10 = 1 variant, not 5 (dedup aside)
    with pytest.raises(XtremeDistilError, match="--augment_allocation 'words' is not one of sentence, word"):
        AugmentConfig(allocation="words")


def test_nearest_words_come_from_the_teacher_embedding_space(tokenizer):
    embedding = np.zeros((len(tokenizer), 4), np.float32)
    ids = tokenizer.convert_tokens_to_ids(["good", "great", "bad", "awful"])
    embedding[ids] = [[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 1, 0], [0, 0, 0.9, 0.1]]
    table = nearest_words(["good", "great", "bad", "awful"], embedding, tokenizer, k=1)
    assert table == [["great"], ["good"], ["awful"], ["bad"]]


def test_neighbours_can_come_from_the_teachers_whole_word_pieces(tokenizer, tmp_path):
    """With a pool, a task word's neighbours are drawn from the task words and the pool; pool words get no list of
    their own. The pool is the teacher's one-piece words: no continuation, special, one-letter or task word."""
    embedding = np.zeros((len(tokenizer), 4), np.float32)
    ids = tokenizer.convert_tokens_to_ids(["good", "great", "bad", "awful"])
    embedding[ids] = [[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1, 0], [0, 0, 0.9, 0.1]]
    pool = teacher_words(tokenizer, exclude=["good", "GREAT", "bad"])
    vocab = tokenizer.get_vocab()
    assert pool and "awful" in pool and not {"good", "great", "bad"} & set(pool)
    assert all(len(w) > 1 and w.isalpha() and not w.startswith("##") and w not in tokenizer.all_special_tokens
               and tokenizer(w, add_special_tokens=False)["input_ids"] == [vocab[w]] for w in pool)
    assert "αθήνα" in vocab and "αθήνα" not in pool                      # read as UNK once its accent is stripped
    assert {w for w in vocab if w.startswith("##") and w[2:].isalpha()} - set(pool)      # continuations left out
    embedding[tokenizer.convert_tokens_to_ids("awful")] = [0.95, 0.05, 0, 0]             # nearer good than great is
    table = nearest_words(["good", "great", "bad"], embedding, tokenizer, k=1, pool=pool, block=2)
    assert table[0] == ["awful"] and len(table) == 3
    assert nearest_words(["good", "great", "bad"], embedding, tokenizer, k=1)[0] == ["great"]     # no pool
    bpe = roberta_tokenizer(tmp_path / "bpe")
    words = teacher_words(bpe)
    assert words and not any(w[0] in "\u0120\u2581" for w in words)
    assert all(len(bpe(" " + w, add_special_tokens=False)["input_ids"]) == 1 or
               len(bpe(w, add_special_tokens=False)["input_ids"]) == 1 for w in words)


def test_replacing_from_the_teacher_puts_new_words_in_the_transfer_set(tmp_path, tokenizer):
    task_words = {w for s in SOURCES for w in s.split()}
    plain, _ = _augment(tmp_path, tokenizer, "plain.txt", p_mask=0, p_replace=0.5)
    wider, _ = _augment(tmp_path, tokenizer, "wider.txt", p_mask=0, p_replace=0.5, replace_from="teacher")
    assert {w for line in plain for w in line.split()} <= task_words
    assert {w for line in wider for w in line.split()} - task_words
    assert "replace_from" not in AugmentConfig(multiplier=2).signature()      # earlier files keep their names
    assert AugmentConfig(multiplier=2, replace_from="teacher").signature()["replace_from"] == "teacher"


def test_joins_put_a_sentence_and_an_earlier_one_around_a_connective():
    """Each join line is the source and an earlier source (either order) around one of the connectives; the first
    source has no earlier one; the file without joins is a subset of the file with them (same rule variants)."""
    config = AugmentConfig(multiplier=2, joins=3, join_with="but ;")
    lines = list(augment_stream(iter(SOURCES), config, "[MASK]", {}, set()))
    assert lines == list(augment_stream(iter(SOURCES), config, "[MASK]", {}, set()))                # seeded
    plain = list(augment_stream(iter(SOURCES), AugmentConfig(multiplier=2), "[MASK]", {}, set()))
    assert set(plain) < set(lines)
    extra = [line for line in lines if line not in plain]
    allowed = {f"{x} {c} {y}" for i, a in enumerate(SOURCES) for b in SOURCES[:i] for c in ("but", ";")
               for x, y in ((a, b), (b, a))}
    assert extra and set(extra) <= allowed and len(extra) <= 3 * (len(SOURCES) - 1)
    assert set(lines[:lines.index(SOURCES[1])]) <= set(plain)          # nothing earlier to join the first source to
    screened = list(augment_stream(iter(SOURCES), config, "[MASK]", {}, {_key(SOURCES[1])}))
    assert not any(SOURCES[1] in line for line in screened)            # a dev/test sentence is never a half
    # Every earlier source and both orders turn up over many draws; only the given connectives
    rng, pool = random.Random(0), [["a"], ["b"], ["c"]]
    drawn = {" ".join(joined(["x"], pool, rng, [","])) for _ in range(200)}
    assert drawn == {"x , a", "x , b", "x , c", "a , x", "b , x", "c , x"}
    assert "joins" not in AugmentConfig(multiplier=2).signature() and AugmentConfig(joins=1).active
    assert AugmentConfig(multiplier=2, joins=1).signature()["join_with"] == ", ; and but"


def test_bad_settings_are_one_line_errors():
    for bad, message in ((dict(multiplier=-1), "--augment_multiplier"), (dict(p_mask=1.5), "--augment_p_mask"),
                         (dict(p_mask=0.6, p_replace=0.6), "must not exceed 1"), (dict(max_ngram=0), "at least 1"),
                         (dict(joins=1, join_with=" "), "--augment_join_with is empty"),
                         (dict(joins=-1), "--augment_joins")):
        with pytest.raises(XtremeDistilError, match=message):
            AugmentConfig(**bad)


def test_cli_writes_the_file_and_reports_bad_input(tiny_models, tmp_path, capsys):
    rows = [f"{s}\t{i % 2}" for i, s in enumerate(SOURCES)]
    task = write_task(tmp_path / "task", rows, dev=rows[:2], test=rows[2:4], labels=["0", "1"], transfer=SOURCES)
    out = tmp_path / "aug.txt"
    code = main(["augment", "--task", str(task), "--pt_teacher_checkpoint", str(tiny_models("bert")),
                 "--out", str(out), "--augment_multiplier", "4", "--quiet"])
    assert code == 0 and f"{out}:" in capsys.readouterr().out
    lines = out.read_text(encoding="utf-8").splitlines()
    assert not set(SOURCES[:4]) & set(lines) and len(lines) > 2
    code = main(["augment", "--task", str(task), "--pt_teacher_checkpoint", str(tiny_models("bert")),
                 "--out", str(out), "--augment_p_ngram", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--augment_p_ngram must be in [0, 1]" in err and "Traceback" not in err
    assert out.read_text(encoding="utf-8").splitlines() == lines      # the earlier file is intact
    joins = tmp_path / "joins.txt"
    code = main(["augment", "--task", str(task), "--pt_teacher_checkpoint", str(tiny_models("bert")),
                 "--out", str(joins), "--augment_multiplier", "0", "--augment_joins", "2", "--augment_join_with", "but",
                 "--quiet"])
    assert code == 0 and any(" but " in line for line in joins.read_text(encoding="utf-8").splitlines())


def _tagged(text, tags, language="en", line=1):
    from xtremedistil.distill.data import Example
    words = tuple(text.split())
    return Example(text=text, label=tuple(tags.split()), language=language, line=line, words=words)


def test_entity_spans_follow_iob2():
    from xtremedistil.distill.augment import entity_spans
    assert entity_spans("B-PER I-PER O B-LOC B-LOC I-LOC O".split()) == [(0, 2, "PER"), (3, 4, "LOC"), (4, 6, "LOC")]
    assert entity_spans("O I-ORG I-ORG I-PER".split()) == [(1, 3, "ORG"), (3, 4, "PER")]    # stray I- starts one
    assert entity_spans(["O", "O"]) == []


def test_mention_replacement_swaps_entities_of_the_same_type_and_language():
    """Each variant keeps the sentence's other words, swaps at least one entity, and only for an entity of the
    same type and language from the train set; variants of train sentence i follow source line i."""
    labeled = [_tagged("John Smith lives in Paris .", "B-PER I-PER O O B-LOC O", line=1),
               _tagged("Mary visited New York City .", "B-PER O B-LOC I-LOC I-LOC O", line=2),
               _tagged("Ana vive en Lima", "B-PER O O B-LOC", language="es", line=3),
               _tagged("nothing here", "O O", line=4)]
    sources = [ex.text for ex in labeled]
    config = AugmentConfig(multiplier=0, mentions=6, p_mention=0.5)
    lines = list(augment_stream(iter(sources), config, "[MASK]", {}, set(), labeled=labeled))
    assert lines == list(augment_stream(iter(sources), config, "[MASK]", {}, set(), labeled=labeled))   # seeded
    english = {"John Smith lives in Paris .", "John Smith lives in New York City .", "Mary lives in Paris .",
               "Mary lives in New York City .", "Mary visited Paris .", "John Smith visited Paris .",
               "John Smith visited New York City .", "Mary visited New York City ."}
    first = lines.index(sources[0])
    second = lines.index(sources[1])
    third = lines.index(sources[2])
    assert set(lines[first:second]) <= english and len(lines[first:second]) == 4       # all 3 other mixes
    assert set(lines[second:third]) <= english and sources[0] not in lines[second + 1:third]
    assert lines[third:] == ["Ana vive en Lima", "nothing here"]    # the only es entities: nothing to swap for
    assert not set(lines) & {"John Smith vive en Lima", "Ana lives in Paris ."}      # never across languages


def test_mention_settings_leave_earlier_file_names_alone_and_need_tags(tmp_path, tokenizer):
    assert "mentions" not in AugmentConfig(multiplier=2).signature()        # a 2x file keeps its name and cache
    assert AugmentConfig(multiplier=2, mentions=1).signature()["mentions"] == 1
    assert AugmentConfig(mentions=1).active and not AugmentConfig().active
    from xtremedistil.distill.data import Example
    rows = [Example(text=s, label="1", language=None, line=i) for i, s in enumerate(SOURCES)]
    with pytest.raises(XtremeDistilError, match="--augment_mentions swaps the entities of a tagging task"):
        augment_file(tmp_path / "none.txt", tmp_path / "out.txt", AugmentConfig(mentions=2), mask_token="[MASK]",
            embedding=_embedding(tokenizer), tokenizer=tokenizer, screen=[], labeled=rows)


def test_cli_mention_replacement_on_a_tagging_task(tiny_models, tmp_path, capsys):
    rows = TAGGING_ROWS + ["mary smith lives in london .\ten:B-PER en:I-PER en:O en:O en:B-LOC en:O"]
    task = write_task(tmp_path / "task", rows, dev=rows[1:2], test=rows[2:3], labels=LABELS,
                      transfer=[r.split("\t")[0] for r in rows])
    out = tmp_path / "aug.txt"
    argv = ["augment", "--task", str(task), "--pt_teacher_checkpoint", str(tiny_models("bert")), "--out", str(out),
            "--augment_multiplier", "0", "--augment_mentions", "3", "--quiet"]
    assert main(argv + ["--do_NER"]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert {"mary smith lives in paris .", "john smith lives in london .", "john works in google ."} <= set(lines)
    assert {"john lives in paris .", "mary smith works in google ."} & set(lines)      # PER swapped in a 2nd sentence
    assert not {rows[1].split("\t")[0], rows[2].split("\t")[0]} & set(lines)          # dev/test screened
    code = main(argv)                                                                  # without --do_NER
    err = capsys.readouterr().err
    assert code != 0 and "--augment_mentions swaps the entities of a tagging task" in err and "Traceback" not in err
    code = main(["distill", "--task", str(task), "--pt_teacher_checkpoint", str(tiny_models("bert")),
                 "--model_dir", str(tmp_path / "run"), "--augment_mentions", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--augment_mentions swaps the entities" in err and not (tmp_path / "run").exists()


def test_language_multipliers_give_the_named_languages_more_variants():
    """A train sentence of a named language gets that many variants; other languages and lines the train set does
    not have keep --augment_multiplier; the larger file keeps every line of the file without it."""
    words = [f"w{i}" for i in range(12)]
    labeled = [_tagged(" ".join(["en", *words]), " ".join(["O"] * 13), line=1),
               _tagged(" ".join(["es", *words]), " ".join(["O"] * 13), language="es", line=2)]
    sources = [ex.text for ex in labeled] + [" ".join(["xx", *words])]       # the last is no train sentence

    def variants(**config):
        config = AugmentConfig(**{"multiplier": 2, "p_mask": 0.5, "p_replace": 0.0, "p_ngram": 0.0, **config})
        lines = list(augment_stream(iter(sources), config, "[MASK]", {}, set(), labeled=labeled))
        starts = [lines.index(s) for s in sources] + [len(lines)]
        return lines, [starts[i + 1] - starts[i] - 1 for i in range(len(sources))]

    base, counts = variants()
    assert counts == [2, 2, 2]
    more, counts = variants(language_multipliers="en=6")
    assert counts == [6, 2, 2] and set(base) < set(more)
    assert variants(language_multipliers="en=6, es=0")[1] == [6, 0, 2]
    assert variants(multiplier=0, language_multipliers="es=3")[1] == [0, 3, 0]


def test_language_multiplier_settings_are_checked_and_name_the_file():
    assert "language_multipliers" not in AugmentConfig(multiplier=8).signature()     # earlier files keep their names
    assert AugmentConfig(multiplier=8, language_multipliers="en=16").signature()["language_multipliers"] == {"en": 16}
    assert AugmentConfig(language_multipliers="en=2").active and not AugmentConfig(language_multipliers="en=0").active
    for bad, message in (("en16", "'en16' is not LANGUAGE=N"), ("en=x", "'en=x' is not LANGUAGE=N"),
                         ("=3", "'=3' is not"), ("en=-1", "'en=-1' is not"), ("en=2,en=3", "'en' is given twice")):
        with pytest.raises(XtremeDistilError, match=message):
            AugmentConfig(multiplier=2, language_multipliers=bad)


def test_cli_language_multipliers_on_a_multilingual_task(tiny_models, tmp_path, capsys):
    rows = TAGGING_ROWS + ["mary smith lives in london .\ten:B-PER en:I-PER en:O en:O en:B-LOC en:O",
                           "пётр живет в киеве .\tru:B-PER ru:O ru:O ru:B-LOC ru:O"]
    sources = [r.split("\t")[0] for r in rows]
    task = write_task(tmp_path / "task", rows, dev=rows[3:4], test=rows[3:4], labels=LABELS, transfer=sources)
    argv = ["augment", "--task", str(task), "--pt_teacher_checkpoint", str(tiny_models("bert")), "--do_NER",
            "--augment_multiplier", "1", "--quiet", "--out"]
    plain, more = tmp_path / "plain.txt", tmp_path / "more.txt"
    assert main(argv + [str(plain)]) == 0
    assert main(argv + [str(more), "--augment_language_multipliers", "ru=0,en=5"]) == 0
    plain_lines, lines = (f.read_text(encoding="utf-8").splitlines() for f in (plain, more))
    russian = {sources[1], sources[5]}
    assert russian <= set(lines) and sources[3] not in lines                     # the test sentence
    after_ru = [lines[lines.index(s) + 1] if lines.index(s) + 1 < len(lines) else None for s in russian]
    assert all(line is None or line in sources for line in after_ru)           # ru=0: no variant follows
    assert len([l for l in lines if l not in sources]) > len([l for l in plain_lines if l not in sources])
    capsys.readouterr()
    bad = tmp_path / "bad.txt"
    code = main(argv + [str(bad), "--augment_language_multipliers", "de=4"])
    err = capsys.readouterr().err
    assert code == 2 and "--augment_language_multipliers: no train sentence in de" in err and "Traceback" not in err
    assert "(the task's train languages: ar, en, ru)" in err and not bad.exists()
