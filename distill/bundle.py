"""The student bundle: the output of `distill` and the input of `export`.

    config.json           task kind, labels, seq_len, student config, teacher checkpoint and layer
    tokenizer/            the teacher's tokenizer files (the student reads the same ids)
    student.weights.h5    Keras weights, id-remap table included
    id_remap.npy          teacher id -> student row (also inside the weights), for inspection
    metrics.json          teacher and student, dev and test, per language; parameters, compression

`load_bundle(path)` rebuilds the student; `.predict(["text", ...])` returns labels, or
word-level tags (words split on whitespace) for tagging.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from xtremedistil.distill.decoding import DECODINGS, recorded_decoding, tags_from_piece_logits
from xtremedistil.distill.files import atomic_directory, read_json, save_keras_weights, write_json_atomic
from xtremedistil.distill.students import StudentConfig, build_student
from xtremedistil.distill.tokenization import encode_sentences, load_tokenizer, save_tokenizer
from xtremedistil.errors import XtremeDistilError
from xtremedistil.layout import BundleLayout

CONFIG_FILE = BundleLayout.CONFIG
WEIGHTS_FILE = BundleLayout.WEIGHTS
REMAP_FILE = BundleLayout.ID_REMAP
METRICS_FILE = BundleLayout.METRICS
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1


def write_bundle(folder: str | Path, model, student_config: StudentConfig, tokenizer, labels: list[str],
                 metrics: dict, teacher: dict, extra: dict | None = None, decoding: str = "argmax") -> Path:
    """Writes the bundle folder atomically (a crash leaves any previous bundle intact). `decoding`: how its
    tagging predictions read word tags (config.json `task.decoding`; export, bench and serving follow it).

    When the folder already holds this very student (byte-identical weights: a resumed `distill` rerun),
    the exported `artifacts/` and `manifest.json` are carried over; for a different student they would be
    stale, so they go (a warning says so)."""
    folder = Path(folder)
    with atomic_directory(folder) as temp:
        save_keras_weights(model, temp / WEIGHTS_FILE)
        _carry_over_exports(folder, temp)
        np.save(temp / REMAP_FILE, model.get_layer("id_remap").get_weights()[0])
        save_tokenizer(tokenizer, temp / TOKENIZER_DIR)
        write_json_atomic(temp / CONFIG_FILE, {
            "format_version": FORMAT_VERSION,
            "task": {"kind": "tagging" if student_config.tagging else "classification",
                     "labels": labels, "seq_len": student_config.seq_len, "decoding": decoding},
            "student": student_config.to_dict(),
            "teacher": teacher,
            **(extra or {}),
        })
        write_json_atomic(temp / METRICS_FILE, metrics)
    return folder


EXPORTS = (BundleLayout.ARTIFACTS, BundleLayout.MANIFEST)


def _carry_over_exports(old: Path, new: Path) -> None:
    import logging
    import shutil

    if not BundleLayout(old).manifest.exists():
        return
    same = (old / WEIGHTS_FILE).exists() and (old / WEIGHTS_FILE).read_bytes() == (new / WEIGHTS_FILE).read_bytes()
    if not same:
        logging.getLogger(__name__).warning("%s: the student changed; its exported artifacts are removed "
                                            "(run `xtremedistil export` again)", old)
        return
    for name in EXPORTS:
        if (old / name).is_dir():
            shutil.copytree(old / name, new / name)
        elif (old / name).exists():
            shutil.copy2(old / name, new / name)


class Bundle:
    """A loaded student bundle."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        if not BundleLayout(self.folder).is_bundle():
            raise XtremeDistilError(
                f"{self.folder}: not a student bundle ({CONFIG_FILE} and {WEIGHTS_FILE} expected); "
                "pass the bundle folder written by `xtremedistil distill`")
        fix = "rerun `xtremedistil distill` for it, or restore the bundle from a copy"
        self.config = read_json(self.folder / CONFIG_FILE, fix)
        self.student_config, self.labels, self.seq_len = _check_config(self.config, self.folder / CONFIG_FILE, fix)
        self.tagging: bool = self.student_config.tagging
        self.decoding: str = recorded_decoding(self.config["task"])
        self.model = build_student(self.student_config)
        try:
            self.model.load_weights(str(self.folder / WEIGHTS_FILE))
        except (OSError, ValueError) as err:           # h5py: truncated/garbled file; Keras: other layers
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise XtremeDistilError(f"{self.folder / WEIGHTS_FILE}: damaged or not this student's weights "
                                    f"({reason}); {fix}") from None
        tokenizer_dir = self.folder / TOKENIZER_DIR
        try:
            self.tokenizer = load_tokenizer(str(tokenizer_dir))
        except XtremeDistilError:
            raise
        except Exception as err:  # noqa: BLE001 - transformers raises many types for a broken tokenizer folder
            files = sorted(p.name for p in tokenizer_dir.iterdir()) if tokenizer_dir.is_dir() else []
            raise XtremeDistilError(f"{tokenizer_dir}: the tokenizer cannot be loaded ({type(err).__name__}; files: "
                                    f"{', '.join(files) or 'none'}); {fix}") from None
        self._forward = None

    @property
    def metrics(self) -> dict:
        return read_json(self.folder / METRICS_FILE)

    def encode(self, texts):
        return encode_sentences(self.tokenizer, texts, self.seq_len, self.tagging)

    def predict_logits(self, input_ids: np.ndarray, batch_size: int = 256) -> np.ndarray:
        import tensorflow as tf

        if self._forward is None:
            self._forward = tf.function(lambda ids: self.model(ids, training=False)["logits"],
                                        reduce_retracing=True)
        input_ids = np.asarray(input_ids, dtype=np.int32)
        return np.concatenate([self._forward(input_ids[i:i + batch_size]).numpy()
                               for i in range(0, len(input_ids), batch_size)])

    def predict(self, texts: list[str], decoding: str | None = None) -> list:
        """Labels for classification; lists of word-level tags for tagging, each word's argmax or, with
        `decoding="bio"`, the best IOB2-valid sequence (`xtremedistil.distill.decoding`; default: the bundle's)."""
        if isinstance(texts, str):
            raise XtremeDistilError("predict takes a list of texts, not one string")
        if not texts:
            return []
        encoded = self.encode(list(texts))
        logits = self.predict_logits(encoded.input_ids)
        if self.tagging:
            return tags_from_piece_logits(logits, encoded.word_index, encoded.n_words, self.labels,
                                          decoding or self.decoding)
        return [self.labels[int(i)] for i in np.argmax(logits, axis=-1)]


def _check_config(config, path: Path, fix: str):
    """(StudentConfig, labels, seq_len) from a bundle's config.json; a missing or ill-typed field is one line."""
    def bad(what):
        return XtremeDistilError(f"{path}: {what}; {fix}")

    if not isinstance(config, dict) or not isinstance(config.get("student"), dict) \
            or not isinstance(config.get("task"), dict):
        raise bad("'student' and 'task' sections expected")
    try:
        student = StudentConfig(**config["student"])
    except TypeError as err:
        raise bad(f"the 'student' section does not describe a student ({err})") from None
    labels, seq_len = config["task"].get("labels"), config["task"].get("seq_len")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise bad("task.labels must be a non-empty list of label names")
    if len(labels) != student.num_labels:
        raise bad(f"task.labels has {len(labels)} labels, the student predicts {student.num_labels}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise bad(f"task.seq_len must be a whole number >= 2, not {seq_len!r}")
    if recorded_decoding(config["task"]) not in DECODINGS:
        raise bad(f"task.decoding must be one of {', '.join(DECODINGS)}, not {config['task']['decoding']!r}")
    return student, labels, seq_len


def load_bundle(path: str | Path) -> Bundle:
    """Rebuilds the student of a bundle folder."""
    return Bundle(Path(path))
