"""IOB2-constrained decoding of word-level tags (`xtremedistil.distill.decoding`) and the command that measures
what it buys (`python -m xtremedistil.bench.bio_decoding`)."""
import itertools

import numpy as np
import pytest

from xtremedistil.distill.decoding import (bio_constraints, invalid_share, tags_from_piece_logits, viterbi)
from xtremedistil.errors import XtremeDistilError

LABELS = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]


def _valid(tags):
    return invalid_share([list(tags)]) == 0.0


def _words(logits_per_word):
    """Logits [1, seq, L] with word i's first piece at position i + 1 (position 0: a special token)."""
    n = len(logits_per_word)
    logits = np.zeros((1, n + 2, len(LABELS)))
    logits[0, 1:n + 1] = np.log(np.asarray(logits_per_word))
    word_index = np.full((1, n + 2), -1)
    word_index[0, 1:n + 1] = np.arange(n)
    return logits, word_index, np.array([n])


def test_constraints_of_an_iob2_label_set_and_of_one_that_is_not():
    may_start, may_follow = bio_constraints(LABELS)
    assert may_start.tolist() == [True, True, False, False, True]
    i_loc, i_per = LABELS.index("I-LOC"), LABELS.index("I-PER")
    assert [LABELS[p] for p in np.nonzero(may_follow[:, i_per])[0]] == ["B-PER", "I-PER"]
    assert [LABELS[p] for p in np.nonzero(may_follow[:, i_loc])[0]] == ["B-LOC", "I-LOC"]
    assert may_follow[:, LABELS.index("O")].all() and may_follow[:, LABELS.index("B-PER")].all()
    assert bio_constraints(["positive", "negative"]) is None
    assert bio_constraints(["B-PER", "O", "E-PER"]) is None


def test_an_invalid_argmax_becomes_the_most_probable_valid_sequence():
    # word 1: O 0.6 > B-PER 0.4; word 2: I-PER 0.9. argmax "O I-PER" holds no entity in strict IOB2;
    # valid: B-PER I-PER 0.4 * 0.9 = 0.36 beats O O 0.6 * 0.05 and O B-PER 0.6 * 0.02.
    probs = [[0.0, 0.4, 0.0, 0.0, 0.6], [0.01, 0.02, 0.02, 0.9, 0.05]]
    logits, word_index, n_words = _words(np.asarray(probs) + 1e-12)
    assert tags_from_piece_logits(logits, word_index, n_words, LABELS) == [["O", "I-PER"]]
    assert tags_from_piece_logits(logits, word_index, n_words, LABELS, "bio") == [["B-PER", "I-PER"]]
    # the other way round: a confident O before a weak I-PER drops the I-PER instead
    probs = [[0.0, 0.05, 0.0, 0.0, 0.95], [0.01, 0.02, 0.02, 0.5, 0.45]]
    logits, word_index, n_words = _words(np.asarray(probs) + 1e-12)
    assert tags_from_piece_logits(logits, word_index, n_words, LABELS, "bio") == [["O", "O"]]


def test_viterbi_matches_exhaustive_search_with_ragged_lengths():
    rng = np.random.default_rng(0)
    may_start, may_follow = bio_constraints(LABELS)
    emissions = np.log(rng.dirichlet(np.ones(len(LABELS)) * 0.3, size=(40, 5)))
    lengths = rng.integers(1, 6, size=40)
    path = viterbi(emissions, lengths, may_start, may_follow)
    for row, length in enumerate(lengths):
        valid = [seq for seq in itertools.product(range(len(LABELS)), repeat=int(length))
                 if _valid([LABELS[i] for i in seq])]
        best = max(valid, key=lambda seq: sum(emissions[row, t, i] for t, i in enumerate(seq)))
        assert tuple(path[row, :length]) == best, row


def test_valid_argmax_tags_are_left_alone_and_cut_words_stay_o():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(300, 8, len(LABELS))) * 3
    word_index = np.tile(np.array([-1, 0, -1, 1, 2, 3, 4, -1]), (300, 1))    # word 1 has two pieces
    n_words = np.full(300, 7)                                                # words 5 and 6 were cut
    argmax = tags_from_piece_logits(logits, word_index, n_words, LABELS, "argmax")
    bio = tags_from_piece_logits(logits, word_index, n_words, LABELS, "bio")
    assert all(len(t) == 7 and t[5:] == ["O", "O"] for t in bio)
    assert all(_valid(t) for t in bio)
    broken = [i for i, t in enumerate(argmax) if not _valid(t)]
    assert 0 < len(broken) < 300
    assert all(bio[i] == argmax[i] for i in range(300) if i not in broken)
    assert invalid_share(argmax) == pytest.approx(len(broken) / 300)


def test_labels_that_are_not_iob2_decode_by_argmax_and_unknown_decodings_are_refused():
    logits = np.array([[[0.0, 2.0, 1.0]]])
    word_index, n_words = np.array([[0]]), np.array([1])
    assert tags_from_piece_logits(logits, word_index, n_words, ["a", "b", "c"], "bio") == [["b"]]
    with pytest.raises(XtremeDistilError, match="decoding 'crf': use one of argmax, bio"):
        tags_from_piece_logits(logits, word_index, n_words, ["a", "b", "c"], "crf")


def test_the_command_compares_both_decodings_for_teacher_and_student(tiny_models, tmp_path, capsys):
    from helpers import tiny_bundle, tiny_teacher

    from xtremedistil.bench.bio_decoding import compare, main
    from xtremedistil.distill import load_bundle
    from xtremedistil.distill.data import load_task
    from xtremedistil.distill.metrics import tagging_metrics

    bundle = tiny_bundle(tmp_path, tiny_models("bert"), tagging=True)
    teacher = tiny_teacher(tmp_path, tiny_models("bert"), tagging=True)
    rows = compare(str(bundle))
    assert [(r["model"], r["decoding"]) for r in rows] == [("teacher", "argmax"), ("teacher", "bio"),
                                                           ("student", "argmax"), ("student", "bio")]
    test = load_task(tmp_path / "task", True).splits["test"]
    predicted = load_bundle(bundle).predict([" ".join(ex.words) for ex in test])
    expected = tagging_metrics([list(ex.label) for ex in test], predicted, [ex.language for ex in test])
    assert rows[2]["metrics"] == expected and rows[2]["invalid"] == invalid_share(predicted)
    assert rows[1]["invalid"] == rows[3]["invalid"] == 0.0

    assert main(["--bundle", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "| teacher | argmax |" in out and "| student | bio | 0.0% |" in out
    assert main(["--teacher", str(teacher), "--task", str(tmp_path / "task")]) == 0
    assert "| student" not in capsys.readouterr().out
    assert main(["--teacher", str(teacher)]) == 2
    assert "without --bundle, give --teacher and --task" in capsys.readouterr().err
    classification = tiny_bundle(tmp_path / "cls", tiny_models("bert"), tagging=False)
    assert main(["--bundle", str(classification)]) == 2
    assert "constrained decoding is for tagging bundles" in capsys.readouterr().err


def test_the_table_gives_f1_per_language_and_the_retention_under_each_decoding():
    from xtremedistil.bench.bio_decoding import table

    def metrics(en, ru):
        return {"metric": "f1", "per_language": {"en": {"f1": en}, "ru": {"f1": ru}}, "macro": {"f1": (en + ru) / 2}}

    rows = [{"model": "teacher", "decoding": "argmax", "invalid": 0.05, "metrics": metrics(0.8, 0.6)},
            {"model": "teacher", "decoding": "bio", "invalid": 0.0, "metrics": metrics(0.82, 0.6)},
            {"model": "student", "decoding": "argmax", "invalid": 0.125, "metrics": metrics(0.6, 0.3)},
            {"model": "student", "decoding": "bio", "invalid": 0.0, "metrics": metrics(0.7, 0.3)}]
    lines = table(rows)
    assert lines[0] == "| model | decoding | invalid IOB2 sentences | en | ru | macro |"
    assert lines[4] == "| student | argmax | 12.5% | 60.00 | 30.00 | 45.00 |"
    assert lines[6] == "| retention | argmax | | 75.0% | 50.0% | 64.2% |"
    assert lines[7] == "| retention | bio | | 85.3% | 50.0% | 70.4% |"
