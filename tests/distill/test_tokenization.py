import logging

import numpy as np
import pytest

from helpers import TAGGING_LABELS, bert_tokenizer
from xtremedistil.distill.data import Example
from xtremedistil.distill.tokenization import (
    IGNORE_INDEX, encode_examples, encode_sentences, encode_texts, encode_words, load_tokenizer, save_tokenizer,
    tags_from_piece_predictions,
)

L2I = {label: i for i, label in enumerate(TAGGING_LABELS)}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    bert_tokenizer(folder / "build").save_pretrained(folder)
    return load_tokenizer(str(folder))


def pieces_and_labels(tokenizer, encoded, row=0):
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids[row].tolist())
    return [(t, TAGGING_LABELS[l] if l != IGNORE_INDEX else None)
            for t, l, m in zip(tokens, encoded.labels[row], encoded.attention_mask[row]) if m]


def test_first_piece_alignment_across_scripts(tokenizer):
    words = ["john", "films", "москваом", "القاهرةة", "北京"]
    tags = ["B-PER", "O", "B-LOC", "B-LOC", "B-LOC"]
    encoded = encode_words(tokenizer, [words], 16, [tags], L2I)
    assert pieces_and_labels(tokenizer, encoded) == [
        ("[CLS]", None), ("john", "B-PER"), ("film", "O"), ("##s", None),
        ("москва", "B-LOC"), ("##ом", None),            # Cyrillic
        ("القاهرة", "B-LOC"), ("##ة", None),              # Arabic
        ("北", "B-LOC"), ("京", None),                     # CJK: one piece per character
        ("[SEP]", None),
    ]
    assert encoded.word_index[0, :11].tolist() == [-1, 0, 1, -1, 2, -1, 3, -1, 4, -1, -1]
    assert encoded.truncated == 0
    assert (encoded.labels[0][encoded.attention_mask[0] == 0] == IGNORE_INDEX).all()  # padding


def test_piece_predictions_map_back_to_word_tags(tokenizer):
    words = [["john", "smith", "visited", "北京"], ["иван", "живет", "в", "москва"]]
    tags = [["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "O", "O", "B-LOC"]]
    encoded = encode_words(tokenizer, words, 16, tags, L2I)
    predicted = np.where(encoded.labels == IGNORE_INDEX, L2I["B-ORG"], encoded.labels)  # noise off-word
    assert tags_from_piece_predictions(predicted, encoded.word_index, encoded.n_words, TAGGING_LABELS) == tags


def test_truncation_is_counted_logged_and_cut_words_score_as_outside(tokenizer, caplog):
    examples = [
        Example("john smith visited paris and london", ("B-PER", "I-PER", "O", "B-LOC", "O", "B-LOC"), None, 1,
                ("john", "smith", "visited", "paris", "and", "london")),
        Example("john", ("B-PER",), None, 2, ("john",)),
    ]
    with caplog.at_level(logging.INFO):
        encoded = encode_examples(tokenizer, examples, TAGGING_LABELS, 6, tagging=True, split_name="dev")
    assert encoded.truncated == 1
    assert "dev: 1 of 2 sentences are longer than seq_len=6" in caplog.text
    predicted = np.where(encoded.labels == IGNORE_INDEX, 0, encoded.labels)
    tags = tags_from_piece_predictions(predicted, encoded.word_index, encoded.n_words, TAGGING_LABELS)
    assert tags[0] == ["B-PER", "I-PER", "O", "B-LOC", "O", "O"]   # seq_len 6 keeps 4 words
    assert tags[1] == ["B-PER"]


def test_classification_encoding_and_truncation(tokenizer):
    encoded = encode_texts(tokenizer, ["the movie was very good .", "a film"], 6)
    assert encoded.input_ids.shape == (2, 6) and encoded.input_ids.dtype == np.int32
    assert encoded.truncated == 1
    assert tokenizer.convert_ids_to_tokens(encoded.input_ids[1].tolist()) == [
        "[CLS]", "a", "film", "[SEP]", "[PAD]", "[PAD]"]


@pytest.mark.parametrize("kind", ["xlm-roberta", "roberta"])
def test_sentencepiece_and_bpe_tokenizers_align_on_first_piece(tiny_models, kind):
    tokenizer = load_tokenizer(str(tiny_models(kind)))
    words, tags = ["john", "smith", "москва"], ["B-PER", "I-PER", "B-LOC"]
    encoded = encode_words(tokenizer, [words], 24, [tags], L2I)
    labelled = encoded.labels[0][encoded.labels[0] != IGNORE_INDEX]
    assert [TAGGING_LABELS[i] for i in labelled] == tags
    assert encoded.input_ids[0, 0] == tokenizer.cls_token_id


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    from xtremedistil.errors import XtremeDistilError

    with pytest.raises(XtremeDistilError, match="cannot load a tokenizer"):
        load_tokenizer(str(tmp_path))


def test_saved_tokenizer_files_do_not_depend_on_earlier_calls(tokenizer, tmp_path):
    # A call leaves truncation/padding state in the backend; saved with it, a reload would write it into
    # tokenizer_config.json, so a teacher saved after use and one saved after a reload would differ.
    save_tokenizer(tokenizer, tmp_path / "before")
    encoded = encode_sentences(tokenizer, ["a b c d e f g h"], 4, False).input_ids
    save_tokenizer(tokenizer, tmp_path / "after")
    reloaded = load_tokenizer(str(tmp_path / "after"))
    save_tokenizer(reloaded, tmp_path / "again")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        before = (tmp_path / "before" / name).read_text()
        assert (tmp_path / "after" / name).read_text() == before == (tmp_path / "again" / name).read_text(), name
    np.testing.assert_array_equal(encode_sentences(tokenizer, ["a b c d e f g h"], 4, False).input_ids, encoded)
    np.testing.assert_array_equal(encode_sentences(reloaded, ["a b c d e f g h"], 4, False).input_ids, encoded)
