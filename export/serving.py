"""Text in, labels out: the one pipeline every server and script in `serve_examples/` uses.

`TextPipeline(bundle, artifact)` reads the bundle's config and tokenizer and loads one artifact
through `load_predictor` (ONNX Runtime, LiteRT or a SavedModel; TensorFlow is only imported for
the SavedModel). `predict(texts)` validates the request and returns, per text:

- classification: `{"label": "pos", "score": 0.93, "scores": {"neg": 0.07, "pos": 0.93}}`
- tagging: `{"tags": ["B-PER", "O", ...], "entities": [{"type": "PER", "text": "John Smith",
  "start": 0, "end": 10, "score": 0.88}]}` — words are split on whitespace, as in training;
  `start`/`end` are character offsets into the text (Python string indices), `score` the mean
  probability of the predicted tags over the entity's words. Word tags are read as the bundle's
  `--tag_decoding` says: each word's argmax, or the most probable IOB2-valid sequence.

Labels equal `load_bundle(bundle).predict(texts)` for an fp32 artifact: same tokenizer, same
encoding, same decoding.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from xtremedistil.distill.decoding import recorded_decoding
from xtremedistil.distill.files import file_crc32, read_json
from xtremedistil.errors import XtremeDistilError
from xtremedistil.layout import BundleLayout

PREFERENCE = {"dynamic": 0, "int8": 1, "static": 2, "fp16": 3, "fp32": 4}   # default artifact: int8 first
WORD = re.compile(r"\S+")


class RequestError(XtremeDistilError):
    """A request the pipeline refuses: malformed, or `too_large` (over one of `Limits`). How that reaches a
    client (an HTTP status, an error line) is the server's or script's business (`serve_examples/`)."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


@dataclasses.dataclass
class Limits:
    max_texts: int = 64            # texts per request
    max_chars: int = 2000          # characters per text


def validate_texts(texts, limits: Limits) -> list[str]:
    """The request's texts, or a RequestError saying exactly what is wrong."""
    if not isinstance(texts, list):
        raise RequestError(f"'texts' must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise RequestError("'texts' is empty; send at least one text")
    if len(texts) > limits.max_texts:
        raise RequestError(f"{len(texts)} texts in one request; at most {limits.max_texts} are allowed", True)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(f"texts[{i}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise RequestError(f"texts[{i}] is empty or only whitespace")
        if len(text) > limits.max_chars:
            raise RequestError(f"texts[{i}] has {len(text)} characters; at most {limits.max_chars} are allowed", True)
    return texts


def texts_from_payload(payload, limits: Limits) -> list[str]:
    """A decoded request `{"texts": [...]}` -> validated texts (RequestError otherwise)."""
    if not isinstance(payload, dict) or "texts" not in payload:
        raise RequestError('request body must be a JSON object {"texts": ["...", ...]}')
    return validate_texts(payload["texts"], limits)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)


def entities_from_tags(text: str, tags: list[str], word_scores: list[float]) -> list[dict]:
    """BIO word tags -> entity spans with character offsets (an I- tag after O or another type starts one)."""
    spans = [(m.start(), m.end()) for m in WORD.finditer(text)]
    entities, current = [], None
    for (start, end), tag, score in zip(spans, tags, word_scores):
        prefix, _, kind = tag.partition("-")
        if prefix == "I" and current is not None and current["type"] == kind:
            current["end"], current["scores"] = end, current["scores"] + [score]
            continue
        if current is not None:
            entities.append(current)
            current = None
        if prefix in ("B", "I") and kind:
            current = {"type": kind, "start": start, "end": end, "scores": [score]}
    if current is not None:
        entities.append(current)
    return [{"type": e["type"], "text": text[e["start"]:e["end"]], "start": e["start"], "end": e["end"],
             "score": float(np.mean(e["scores"]))} for e in entities]


def find_artifact(bundle: Path, name: str | None, formats: tuple[str, ...]) -> dict:
    """The manifest row of artifact `name`; by default the passing int8 one (smallest static batch)."""
    manifest_path = BundleLayout(bundle).manifest
    if not manifest_path.exists():
        raise XtremeDistilError(f"{bundle}: no manifest.json; run `xtremedistil export {bundle}` first")
    rows = [r for r in read_json(manifest_path)["artifacts"] if r["format"] in formats]
    by_name = {r["name"]: r for r in rows}
    if name is None:
        preferred = sorted((r for r in rows if r.get("passed", True)),
                           key=lambda r: (PREFERENCE.get(r["quantization"], 9), r.get("batch_size") or 0))
        if not preferred:
            raise XtremeDistilError(f"{bundle}: no {'/'.join(formats)} artifact in manifest.json; "
                                    f"export one with `xtremedistil export {bundle} --formats {formats[0]}`")
        return preferred[0]
    if name not in by_name:
        raise XtremeDistilError(f"{bundle}: no artifact named {name!r}; choose from {', '.join(sorted(by_name))}")
    return by_name[name]


class TextPipeline:
    """Tokenizer + one artifact of a bundle: `predict(texts)` -> one result dict per text."""

    def __init__(self, bundle: str | Path, artifact: str | None = None, formats=("onnx",), threads: int | None = None,
                 limits: Limits | None = None, predictor=None):
        """`predictor` replaces the artifact's runtime (e.g. a client of a remote model server)."""
        from xtremedistil.distill.tokenization import load_tokenizer
        from xtremedistil.export.predictor import load_predictor

        self.bundle = Path(bundle)
        config_path = BundleLayout(self.bundle).config
        if not config_path.exists():
            raise XtremeDistilError(f"{self.bundle}: not a student bundle (config.json missing); pass MODEL_DIR/bundle")
        self.config = read_json(config_path)
        self.labels: list[str] = self.config["task"]["labels"]
        self.seq_len: int = self.config["task"]["seq_len"]
        self.tagging: bool = self.config["task"]["kind"] == "tagging"
        self.decoding: str = recorded_decoding(self.config["task"])    # word tags: see --tag_decoding
        self.row = find_artifact(self.bundle, artifact, tuple(formats))
        path = self.bundle / self.row["path"]
        if predictor is None and path.is_file():
            fix = f"export it again with `xtremedistil export {self.bundle}`"
            if self.row.get("size_bytes") not in (None, path.stat().st_size):
                raise XtremeDistilError(f"{path}: {path.stat().st_size} bytes, but manifest.json recorded "
                                        f"{self.row['size_bytes']} (damaged or replaced); {fix}")
            if self.row.get("crc32") is not None and file_crc32(path) != self.row["crc32"]:
                raise XtremeDistilError(f"{path}: its bytes differ from what the export wrote (CRC-32 recorded in "
                                        f"manifest.json; damaged or replaced); {fix}")
        self.predictor = predictor or load_predictor(path, threads)
        self.tokenizer = load_tokenizer(str(self.bundle / "tokenizer"))
        self.limits = limits or Limits()

    def metadata(self) -> dict:
        return {"task": "tagging" if self.tagging else "classification", "labels": self.labels,
                "seq_len": self.seq_len, "decoding": self.decoding, "artifact": self.row["name"],
                "format": self.row["format"],
                "quantization": self.row["quantization"], "size_bytes": self.row["size_bytes"],
                "parity": self.row.get("parity"), "limits": dataclasses.asdict(self.limits)}

    def encode(self, texts: list[str]):
        from xtremedistil.distill.tokenization import encode_sentences

        return encode_sentences(self.tokenizer, texts, self.seq_len, self.tagging)

    def predict(self, texts: list[str], batch_size: int = 64, validate: bool = True) -> list[dict]:
        """One result per text (see the module docstring); `validate=False` for texts already checked."""
        if validate:
            texts = validate_texts(texts, self.limits)
        encoded = self.encode(texts)
        logits = self.predictor.predict(encoded.input_ids, batch_size=batch_size)
        probabilities = softmax(logits)
        if not self.tagging:
            predicted = probabilities.argmax(-1)
            return [{"label": self.labels[int(i)], "score": float(p[i]),
                     "scores": {label: float(v) for label, v in zip(self.labels, p)}}
                    for i, p in zip(predicted, probabilities)]
        from xtremedistil.distill.decoding import tags_from_piece_logits

        tags = tags_from_piece_logits(logits, encoded.word_index, encoded.n_words, self.labels, self.decoding)
        label_id = {label: i for i, label in enumerate(self.labels)}
        results = []
        for row, text, words in zip(range(len(texts)), texts, tags):
            scores = [0.0] * len(words)
            for position in np.nonzero(encoded.word_index[row] >= 0)[0]:
                word = encoded.word_index[row][position]
                scores[word] = float(probabilities[row, position, label_id[words[word]]])   # the chosen tag's
            results.append({"tags": words, "entities": entities_from_tags(text, words, scores)})
        return results
