"""Shared test helpers: tiny task folders and tiny pre-trained-style model folders built from
config and `save_pretrained` (no downloads), loaded back through the users' loading path."""
from __future__ import annotations

from pathlib import Path

import xtremedistil  # noqa: F401

# Words in several scripts: Latin, Cyrillic, Arabic, Greek, CJK (BERT splits CJK per character).
WORDS = [
    "the", "a", "in", "of", "and", "visited", "lives", "works", "good", "bad", "movie", "film",
    "great", "awful", "is", "was", "very", "not", "paris", "london", "john", "smith", "google",
    "берлин", "москва", "иван", "в", "живет", "القاهرة", "محمد", "في", "يعيش", "αθήνα", "στην",
    "北", "京", "东", "大", "学", "在", "住", ".", ",",
]
PIECES = ["##s", "##ed", "##ing", "##a", "##o", "##er", "##ом", "##ة", "##ον"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

TAGGING_LABELS = ["B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O"]


def write_vocab(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(SPECIALS + WORDS + PIECES) + "\n", encoding="utf-8")
    return path


def bert_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab_file=str(write_vocab(folder)), do_lower_case=True)


def _training_corpus():
    return [" ".join(WORDS), "the movie was very good .", "john smith lives in paris .",
            "иван живет в москва .", "محمد يعيش في القاهرة", "北京 大学"] * 20


def roberta_tokenizer(folder: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    raw = ByteLevelBPETokenizer()
    raw.train_from_iterator(_training_corpus(), vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    folder.mkdir(parents=True, exist_ok=True)
    raw.save_model(str(folder))
    return RobertaTokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))


def xlmr_tokenizer(folder: Path):
    from tokenizers import SentencePieceUnigramTokenizer, processors
    from transformers import XLMRobertaTokenizerFast

    raw = SentencePieceUnigramTokenizer()
    raw.train_from_iterator(_training_corpus(), vocab_size=120,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk_token="<unk>")
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", raw.token_to_id("<s>")), ("</s>", raw.token_to_id("</s>"))])
    return XLMRobertaTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   cls_token="<s>", sep_token="</s>")


TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=64)


def _config(kind: str, vocab_size: int):
    import transformers as tr

    if kind == "bert":
        return tr.BertConfig(vocab_size=vocab_size, **TINY)
    if kind == "distilbert":
        return tr.DistilBertConfig(vocab_size=vocab_size, dim=16, n_layers=2, n_heads=2, hidden_dim=32,
                                   max_position_embeddings=64)
    if kind == "electra":
        return tr.ElectraConfig(vocab_size=vocab_size, embedding_size=8, **TINY)
    if kind == "roberta":
        return tr.RobertaConfig(vocab_size=vocab_size, pad_token_id=1, **{**TINY, "max_position_embeddings": 70})
    if kind == "xlm-roberta":
        return tr.XLMRobertaConfig(vocab_size=vocab_size, pad_token_id=1, **{**TINY, "max_position_embeddings": 70})
    raise ValueError(kind)


def save_tiny_model(folder: Path, kind: str = "bert", seed: int = 0) -> Path:
    """A tiny random encoder + fast tokenizer saved like a hub checkpoint in `folder`."""
    import tensorflow as tf
    from transformers import TFAutoModel

    tokenizer = {"roberta": roberta_tokenizer, "xlm-roberta": xlmr_tokenizer}.get(kind, bert_tokenizer)(
        folder / "_tok")
    tf.keras.utils.set_random_seed(seed)
    model = TFAutoModel.from_config(_config(kind, len(tokenizer)))
    model(model.dummy_inputs)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_task(folder: Path, train, dev=None, test=None, labels=None, transfer=None) -> Path:
    """Writes a task folder; each split is a list of raw lines (without the newline)."""
    folder.mkdir(parents=True, exist_ok=True)
    dev = train if dev is None else dev
    test = dev if test is None else test
    for name, rows in (("train", train), ("dev", dev), ("test", test)):
        (folder / f"{name}.tsv").write_text("".join(f"{r}\n" for r in rows), encoding="utf-8")
    if labels is not None:
        (folder / "labels.tsv").write_text("".join(f"{l}\n" for l in labels), encoding="utf-8")
    if transfer is not None:
        (folder / "transfer.txt").write_text("".join(f"{t}\n" for t in transfer), encoding="utf-8")
    return folder


CLASSIFICATION_ROWS = [
    "the movie was very good .\t1", "a great film .\t1", "the film is good\t1", "very good movie\t1",
    "the movie was awful .\t0", "a bad film .\t0", "the film is not good\t0", "very bad movie\t0",
]
TAGGING_ROWS = [
    "john smith lives in paris .\ten:B-PER en:I-PER en:O en:O en:B-LOC en:O",
    "иван живет в москва .\tru:B-PER ru:O ru:O ru:B-LOC ru:O",
    "محمد يعيش في القاهرة\tar:B-PER ar:O ar:O ar:B-LOC",
    "john works in google .\ten:B-PER en:O en:O en:B-ORG en:O",
]


def classification_task(folder: Path) -> Path:
    return write_task(folder, CLASSIFICATION_ROWS, labels=["0", "1"],
                      transfer=[r.split("\t")[0] for r in CLASSIFICATION_ROWS])


def tagging_task(folder: Path) -> Path:
    return write_task(folder, TAGGING_ROWS, labels=TAGGING_LABELS,
                      transfer=[r.split("\t")[0] for r in TAGGING_ROWS])


def tiny_bundle(root: Path, checkpoint: Path, tagging: bool, kind: str = "bilstm", seed: int = 0,
                seq_len: int = 16) -> Path:
    """A student bundle built directly (random weights, identity id-remap) with its task folder."""
    import numpy as np
    import tensorflow as tf

    from xtremedistil.distill.bundle import write_bundle
    from xtremedistil.distill.students import StudentConfig, build_student
    from xtremedistil.distill.tokenization import load_tokenizer

    task = (tagging_task if tagging else classification_task)(root / "task")
    tokenizer = load_tokenizer(str(checkpoint))
    labels = TAGGING_LABELS if tagging else ["0", "1"]
    config = StudentConfig(kind=kind, tagging=tagging, num_labels=len(labels), seq_len=seq_len,
                           teacher_vocab_size=len(tokenizer), vocab_size=len(tokenizer), teacher_hidden_size=16,
                           word_emb_dim=8, bilstm_hidden_size=8, transformer_layers=1, transformer_heads=2,
                           transformer_hidden=8, transformer_ffn=16)
    tf.keras.utils.set_random_seed(seed)
    model = build_student(config)
    model.get_layer("id_remap").set_weights([np.arange(len(tokenizer), dtype=np.int32)])
    # Larger logits weights: decisive predictions, so parity tests are not decided by near-ties.
    kernel, bias = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([kernel * 8, bias])
    write_bundle(root / "bundle", model, config, tokenizer, labels,
                 metrics={"student": {"parameters": int(model.count_params())}}, teacher={},
                 extra={"options": {"task": str(task), "transfer_file": None}})
    return root / "bundle"


def tiny_teacher(root: Path, checkpoint: Path, tagging: bool, seq_len: int = 16, seed: int = 0) -> Path:
    """An (unfine-tuned) teacher folder at root/teacher, as `distill` writes it beside root/bundle."""
    import tensorflow as tf

    from xtremedistil.distill import teacher as teacher_lib
    from xtremedistil.distill.tokenization import load_tokenizer

    labels = TAGGING_LABELS if tagging else ["0", "1"]
    spec = teacher_lib.TeacherSpec(str(checkpoint), tagging, labels, seq_len)
    tf.keras.utils.set_random_seed(seed)
    model = teacher_lib.build_teacher(spec)
    teacher_lib.save_teacher(model, load_tokenizer(str(checkpoint)), spec, root / "teacher", {})
    return root / "teacher"
