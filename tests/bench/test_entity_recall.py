"""`python -m xtremedistil.bench.entity_recall`: where a tagging student loses its teacher's entities."""
import pytest

from xtremedistil.bench.entity_recall import joins_across, main, recall_by_kind

WORDS = [("Nowy", "Dwór", ",", "Gmina", "Somonino"), ("John", "Smith", "in", "Paris"), ("Google", "Inc")]
GOLD = [["B-LOC", "I-LOC", "I-LOC", "I-LOC", "I-LOC"], ["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG"]]
TEACHER = [list(g) for g in GOLD]
STUDENT = [["B-LOC", "I-LOC", "O", "B-LOC", "I-LOC"],        # splits the punctuated span: misses it
           ["B-PER", "I-PER", "O", "B-LOC"],
           ["B-ORG", "O"]]                                     # right start, wrong span: a miss too


def _cell(rows, language, group, kind):
    found = [r for r in rows if (r["language"], r["group"], r["kind"]) == (language, group, kind)]
    assert len(found) == 1, (language, group, kind)
    return found[0]


def test_recall_counts_exact_spans_per_language_type_length_and_punctuation():
    rows = recall_by_kind(GOLD, {"teacher": TEACHER, "student": STUDENT}, WORDS, ["pl", "en", "en"])
    assert _cell(rows, "pl", "punctuation", "yes") == {"language": "pl", "group": "punctuation", "kind": "yes",
                                                       "entities": 1, "teacher": 1.0, "student": 0.0}
    assert _cell(rows, "en", "type", "LOC")["student"] == 1.0
    assert _cell(rows, "en", "type", "ORG")["student"] == 0.0
    assert _cell(rows, "en", "words", "2") == {"language": "en", "group": "words", "kind": "2", "entities": 2,
                                               "teacher": 1.0, "student": 0.5}
    assert _cell(rows, "all", "words", "3+")["entities"] == 1
    everything = _cell(rows, "all", "punctuation", "no")
    assert everything["entities"] == 3 and everything["student"] == pytest.approx(2 / 3)
    for language in ("pl", "en", "all"):            # each grouping partitions the language's entities
        totals = {g: sum(r["entities"] for r in rows if r["language"] == language and r["group"] == g)
                  for g in ("type", "words", "punctuation")}
        assert len(set(totals.values())) == 1
    assert [r["language"] for r in rows][-1] == "all" and rows[0]["language"] == "en"


def test_joins_count_each_mark_between_two_entity_words_and_who_decides_as_gold():
    words = WORDS + [("Las", "Cruces", ",", "New", "Mexico", ",", "and", "Rome"), ("A", "(", "B", ")")]
    gold = GOLD + [["B-LOC", "I-LOC", "I-LOC", "I-LOC", "I-LOC", "O", "O", "B-LOC"], ["B-ORG", "O", "B-LOC", "O"]]
    teacher = TEACHER + [["B-LOC", "I-LOC", "O", "B-LOC", "I-LOC", "O", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG", "O"]]
    student = STUDENT + [list(gold[-2]), ["B-ORG", "O", "B-LOC", "O"]]
    rows = joins_across(gold, {"teacher": teacher, "student": student}, words, ["pl", "en", "en", "en", "de"])
    by = {(r["language"], r["mark"]): r for r in rows}
    # pl's comma and en's first comma are joined in gold; en's second comma has an O word after it: no case
    assert by[("pl", ",")] == {"language": "pl", "mark": ",", "cases": 1, "gold_joined": 1.0, "teacher": 1.0,
                               "student": 0.0}
    assert by[("en", ",")] == {"language": "en", "mark": ",", "cases": 1, "gold_joined": 1.0, "teacher": 0.0,
                               "student": 1.0}
    assert by[("de", "(")] == {"language": "de", "mark": "(", "cases": 1, "gold_joined": 0.0, "teacher": 0.0,
                               "student": 1.0}
    assert by[("all", ",")]["cases"] == 2 and by[("all", ",")]["teacher"] == 0.5
    assert set(by) == {("pl", ","), ("en", ","), ("de", "("), ("all", ","), ("all", "(")}
    assert rows[-1]["language"] == "all"


def test_sentences_without_a_language_count_once():
    rows = recall_by_kind(GOLD[1:], {"student": STUDENT[1:]}, WORDS[1:], [None, None])
    assert {r["language"] for r in rows} == {"all"}
    assert sum(r["entities"] for r in rows if r["group"] == "type") == 3


def test_the_command_matches_the_bundle_and_rejects_what_it_cannot_measure(tiny_models, tmp_path, capsys):
    from helpers import tiny_bundle, tiny_teacher
    from seqeval.metrics.sequence_labeling import get_entities

    from xtremedistil.bench.entity_recall import entity_recall
    from xtremedistil.distill import load_bundle
    from xtremedistil.distill.data import load_task

    bundle = tiny_bundle(tmp_path, tiny_models("bert"), tagging=True)
    tiny_teacher(tmp_path, tiny_models("bert"), tagging=True)
    rows = entity_recall(str(bundle))
    test = load_task(tmp_path / "task", True).splits["test"]
    predicted = load_bundle(bundle).predict([" ".join(ex.words) for ex in test])
    gold = [set(get_entities(list(ex.label))) for ex in test]
    expected = sum(len(g & set(get_entities(p))) for g, p in zip(gold, predicted)) / sum(len(g) for g in gold)
    pooled = [r for r in rows if r["language"] == "all" and r["group"] == "type"]
    assert sum(r["entities"] for r in pooled) == sum(len(g) for g in gold)
    assert sum(r["student"] * r["entities"] for r in pooled) / sum(len(g) for g in gold) == pytest.approx(expected)
    assert {r["language"] for r in entity_recall(str(bundle), languages=["ru"])} == {"ru", "all"}

    joins = []
    entity_recall(str(bundle), joins=joins)
    assert all(0 <= r["student"] <= 1 and r["cases"] > 0 for r in joins)
    assert main(["--bundle", str(bundle), "--languages", "en"]) == 0
    out = capsys.readouterr().out
    assert "| en | type | PER |" in out and "| language | mark | cases | gold joins |" in out
    bio = load_bundle(bundle).predict([" ".join(ex.words) for ex in test], "bio")
    expected = sum(len(g & set(get_entities(p))) for g, p in zip(gold, bio)) / sum(len(g) for g in gold)
    pooled = [r for r in entity_recall(str(bundle), decoding="bio") if r["language"] == "all" and r["group"] == "type"]
    assert sum(r["student"] * r["entities"] for r in pooled) / sum(len(g) for g in gold) == pytest.approx(expected)
    assert main(["--bundle", str(bundle), "--languages", "xx"]) == 2
    assert "--languages: xx not in the test split" in capsys.readouterr().err
    classification = tiny_bundle(tmp_path / "cls", tiny_models("bert"), tagging=False)
    assert main(["--bundle", str(classification)]) == 2
    assert "entity recall is for tagging bundles" in capsys.readouterr().err
