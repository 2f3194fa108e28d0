"""The teacher: any Hugging Face TF encoder with a linear head, fine-tuned on the task.

- Loads through `TFAutoModel` (or the TF class named by `--pt_teacher`) from a hub id or a
  local folder, including folders holding only PyTorch `model.safetensors`.
- Head: linear on [CLS] (position 0) for classification, on every token for tagging.
- Fine-tuning: AdamW with linear warm-up and decay, early stopping on the dev metric.
- Saved to `MODEL_DIR/teacher/` (HF encoder folder + head + `teacher.json`), written
  atomically; a rerun with the same settings reloads it instead of training again.
- `teacher_outputs(...)` gives named outputs, `{"logits", "hidden"}`, for any `teacher_layer`
  (0 = embeddings, N = last layer).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

import xtremedistil  # noqa: F401  (Keras 2 guard before TensorFlow)
import tensorflow as tf

from tqdm.auto import tqdm

from xtremedistil.distill import batching
from xtremedistil.distill import losses as losses_lib
from xtremedistil.distill.options import FineTuneConfig  # noqa: F401  (re-exported: teacher_lib.FineTuneConfig)
from xtremedistil.distill import metrics as metrics_lib
from xtremedistil.distill.embeddings import word_embedding_variable
from xtremedistil.distill.files import atomic_directory, read_json, write_json_atomic
from xtremedistil.distill.machine import CpuWatch, shared_note
from xtremedistil.distill.sources import resolve_checkpoint
from xtremedistil.distill.tokenization import (
    IGNORE_INDEX, Encoded, load_tokenizer, save_tokenizer,
)
from xtremedistil.errors import XtremeDistilError
from xtremedistil.faults import kill_point
from xtremedistil.layout import (STATE_FILE, TEACHER_ENCODER_DIR, TEACHER_HEAD_FILE, TEACHER_METRICS_FILE,
                                 TEACHER_SPEC_FILE)

logger = logging.getLogger(__name__)

ENCODER_DIR = TEACHER_ENCODER_DIR
HEAD_FILE = TEACHER_HEAD_FILE
SPEC_FILE = TEACHER_SPEC_FILE
METRICS_FILE = TEACHER_METRICS_FILE


@dataclasses.dataclass
class TeacherSpec:
    """What identifies a fine-tuned teacher; a saved teacher is reused only if this matches."""

    checkpoint: str
    tagging: bool
    labels: list[str]
    seq_len: int
    model_class: str | None = None

    def __post_init__(self):
        if self.seq_len < 4:
            raise XtremeDistilError(f"--seq_len {self.seq_len} is too short; use at least 4 (the paper uses 32)")
        if not self.labels:
            raise XtremeDistilError("the teacher needs at least one label")


def _encoder_class(model_class: str | None):
    import transformers

    if model_class is None:
        return transformers.TFAutoModel
    cls = getattr(transformers, model_class, None)
    if cls is None or not model_class.startswith("TF"):
        raise XtremeDistilError(
            f"--pt_teacher '{model_class}' is not a TensorFlow model class of transformers; "
            "use e.g. TFBertModel, TFXLMRobertaModel, TFDistilBertModel, TFElectraModel, or omit it for TFAutoModel"
        )
    return cls


def load_encoder(checkpoint: str, model_class: str | None = None):
    """A pre-trained TF encoder from a hub id, a local folder (TF .h5 or PyTorch safetensors) or `pip:NAME`."""
    cls = _encoder_class(model_class)
    checkpoint = resolve_checkpoint(checkpoint)
    folder = Path(checkpoint)
    from_pt = (
        folder.is_dir() and not (folder / "tf_model.h5").exists()
        and not (folder / "model.safetensors").exists() and (folder / "pytorch_model.bin").exists()
    )
    try:
        return cls.from_pretrained(checkpoint, from_pt=from_pt)
    except (OSError, ValueError, ImportError) as err:
        raise XtremeDistilError(
            f"cannot load teacher '{checkpoint}': {str(err).splitlines()[0]} "
            "(give a local folder with config.json and weights, or a hub id)"
        ) from err


class TeacherModel(tf.keras.Model):
    """Encoder + dropout + linear head; call returns logits ([B, C] or [B, T, C])."""

    def __init__(self, encoder, num_labels: int, tagging: bool, dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.tagging = tagging
        self.num_labels = num_labels
        self.head_dropout = tf.keras.layers.Dropout(dropout)
        init = tf.keras.initializers.TruncatedNormal(stddev=getattr(encoder.config, "initializer_range", 0.02))
        self.head = tf.keras.layers.Dense(num_labels, kernel_initializer=init, name="head")

    @property
    def num_layers(self) -> int:
        config = self.encoder.config
        return getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers")

    def _encode(self, input_ids, attention_mask, training=False, hidden=False):
        return self.encoder(
            input_ids=input_ids, attention_mask=attention_mask,
            output_hidden_states=hidden, training=training, return_dict=True,
        )

    def _logits(self, sequence, training=False):
        features = sequence if self.tagging else sequence[:, 0]
        return self.head(self.head_dropout(features, training=training))

    def call(self, inputs, training=False):
        out = self._encode(inputs["input_ids"], inputs["attention_mask"], training=training)
        return self._logits(out.last_hidden_state, training=training)

    def teacher_outputs(self, input_ids, attention_mask, teacher_layer: int | None = None) -> dict:
        """{"logits", "hidden"}: hidden is layer `teacher_layer` ([CLS] vector for classification)."""
        want_hidden = teacher_layer is not None
        if want_hidden and not 0 <= teacher_layer <= self.num_layers:
            raise XtremeDistilError(
                f"--teacher_layer {teacher_layer} is out of range: this teacher has layers "
                f"0 (embeddings) to {self.num_layers}"
            )
        out = self._encode(input_ids, attention_mask, hidden=want_hidden)
        result = {"logits": self._logits(out.last_hidden_state)}
        if want_hidden:
            hidden = out.hidden_states[teacher_layer]
            result["hidden"] = hidden if self.tagging else hidden[:, 0]
        return result


def masked_token_loss(labels, logits):
    """Mean cross-entropy over tokens whose label is not IGNORE_INDEX (tagging): the stages'
    `cross_entropy` loss, weighted 1 on labeled tokens."""
    weight = tf.cast(tf.not_equal(tf.cast(labels, tf.int32), IGNORE_INDEX), tf.float32)
    return losses_lib.weighted_sum("cross_entropy", labels, logits, weight) / tf.maximum(tf.reduce_sum(weight), 1.0)


def predict_logits(model, encoded: Encoded, batch_size: int = 64) -> np.ndarray:
    """Logits for an encoded split, inference mode, in length-bucketed batches (rows in input order;
    tagging logits past a batch's width are zeros: those positions are padding)."""
    call = _inference_function(model)
    n, seq_len = encoded.input_ids.shape
    row_lengths = encoded.attention_mask.sum(axis=1)
    out = None
    for rows in batching.bucketed_batches(row_lengths, batch_size):
        w = batching.width(row_lengths[rows], seq_len)
        logits = call(encoded.input_ids[rows, :w], encoded.attention_mask[rows, :w]).numpy()
        if out is None:
            out = np.zeros((n, seq_len) + logits.shape[2:] if model.tagging else (n,) + logits.shape[1:], np.float32)
        batching.scatter_rows(out, rows, logits, out.shape[1:])
    return out if out is not None else np.zeros((0,), np.float32)


def _inference_function(model):
    if getattr(model, "_inference_fn", None) is None:
        spec = tf.TensorSpec([None, None], tf.int32)
        model._inference_fn = tf.function(
            lambda ids, mask: model({"input_ids": ids, "attention_mask": mask}, training=False),
            input_signature=[spec, spec],
        )
    return model._inference_fn


def evaluate(model, encoded: Encoded, examples, labels: list[str], tagging: bool, batch_size: int = 64,
             decoding: str = "argmax") -> dict:
    """Metrics dict (see `metrics`) of `model` on an encoded split; word-level for tagging, by `decoding`."""
    return metrics_lib.metrics_from_logits(predict_logits(model, encoded, batch_size), encoded, examples, labels,
                                           tagging, decoding)


def build_teacher(spec: TeacherSpec) -> TeacherModel:
    encoder = load_encoder(spec.checkpoint, spec.model_class)
    model = TeacherModel(encoder, len(spec.labels), spec.tagging)
    _build(model, spec.seq_len)
    return model


def _build(model: TeacherModel, seq_len: int) -> None:
    dummy = np.zeros((1, seq_len), dtype=np.int32)
    model({"input_ids": dummy, "attention_mask": np.ones_like(dummy)})


PROGRESS_STATE = STATE_FILE


def fine_tune(model: TeacherModel, train: Encoded, dev: Encoded, dev_examples, labels,
              config: FineTuneConfig, seed: int = 42, work_dir: str | Path | None = None) -> list[dict]:
    """Fine-tunes in place and keeps the weights of the best dev epoch; returns the epoch history.

    Batches are bucketed by length (a batch is as wide as its longest sentence). With `work_dir`,
    every epoch ends with a checkpoint of weights and optimizer state there and the best epoch's
    weights are kept there too, so a killed run resumes at its last finished epoch; the folder is
    the caller's to delete once the teacher is saved.
    """
    from transformers import create_optimizer

    n, seq_len = train.input_ids.shape
    row_lengths = train.attention_mask.sum(axis=1)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer, _ = create_optimizer(
        init_lr=config.learning_rate, num_train_steps=total_steps,
        num_warmup_steps=int(config.warmup_fraction * total_steps),
        weight_decay_rate=config.weight_decay,
    )
    frozen = word_embedding_variable(model.encoder) if config.freeze_word_embeddings else None
    variables = [v for v in model.trainable_variables if v is not frozen]
    label_spec = tf.TensorSpec([None, None] if model.tagging else [None], tf.int32)
    ids_spec = tf.TensorSpec([None, None], tf.int32)

    def loss_fn(y, logits):
        if model.tagging:
            return masked_token_loss(y, logits)
        return tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))

    @tf.function(input_signature=[ids_spec, ids_spec, label_spec])
    def train_step(ids, mask, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model({"input_ids": ids, "attention_mask": mask}, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    work = Path(work_dir) if work_dir is not None else None
    run = {"config": dataclasses.asdict(config), "seed": seed, "rows": int(n)}
    state = {"history": [], "best_score": -1.0, "best": None, "waited": 0, "last": None, **run}
    full = tf.train.Checkpoint(model=model, optimizer=optimizer)
    if work is not None and (work / PROGRESS_STATE).exists():
        saved = read_json(work / PROGRESS_STATE)
        if _same_run(saved, run) and saved.get("last"):
            full.read(str(work / saved["last"])).expect_partial()
            state = saved
            logger.info("teacher: resuming after epoch %d of %d from %s", len(state["history"]), config.epochs, work)
        elif _same_run(saved, run, but="epochs") and saved.get("best") and len(saved["history"]) >= config.epochs:
            # A run planned for more epochs, stopped early on purpose: keep its best finished epoch.
            logger.info("teacher: --ft_epochs %d <= the %d epochs already finished in %s (a run planned for %d, "
                        "whose learning rate decayed over %d); keeping its best epoch", config.epochs,
                        len(saved["history"]), work, saved["config"]["epochs"], saved["config"]["epochs"])
            tf.train.Checkpoint(model=model).read(str(work / saved["best"])).expect_partial()
            return saved["history"]
        else:
            logger.warning("%s holds a fine-tuning run with other settings; starting over", work)
    stopped = state["waited"] >= config.patience
    for epoch in range(len(state["history"]), config.epochs if not stopped else 0):
        started, cpu = time.time(), CpuWatch()
        tf.keras.utils.set_random_seed((seed * 1_000_003 + epoch) % (2 ** 31))
        rng = np.random.default_rng([seed, epoch])
        total, steps = 0.0, 0
        bar = tqdm(batching.bucketed_batches(row_lengths, config.batch_size, rng), unit="batch", leave=False,
                   desc=f"teacher epoch {epoch + 1}/{config.epochs}", mininterval=1.0, dynamic_ncols=True)
        for rows in bar:
            w = batching.width(row_lengths[rows], seq_len)
            y = train.labels[rows, :w] if model.tagging else train.labels[rows]
            total += float(train_step(train.input_ids[rows, :w], train.attention_mask[rows, :w], y))
            steps += 1
            kill_point("teacher:batch")
            if steps % 10 == 0:
                bar.set_postfix(loss=f"{total / steps:.4f}")
        bar.close()
        train_seconds, others = time.time() - started, cpu.others_share()
        dev_metrics = evaluate(model, dev, dev_examples, labels, model.tagging)
        score = metrics_lib.headline(dev_metrics)
        state["history"].append({
            "epoch": epoch + 1, "planned_epochs": config.epochs, "train_loss": total / max(steps, 1), "dev": score,
            "seconds": round(time.time() - started, 1), "train_sentences_per_second": round(n / train_seconds, 1),
            "others_cpu_share": others})
        logger.info("teacher epoch %d/%d: loss %.4f, dev %s %.4f, %.0f sentences/s%s", epoch + 1, config.epochs,
                    total / max(steps, 1), dev_metrics["metric"], score, n / train_seconds, shared_note(others))
        improved = score > state["best_score"]
        if improved:
            state.update(best_score=score, waited=0)
        else:
            state["waited"] += 1
        if work is not None:
            _checkpoint_epoch(work, state, epoch + 1, full, model, improved)
        elif improved:
            state["best_weights"] = model.get_weights()
        if state["waited"] >= config.patience:
            logger.info("early stopping: dev did not improve for %d epochs", state["waited"])
            break
    if work is not None:
        tf.train.Checkpoint(model=model).read(str(work / state["best"])).expect_partial()
    elif "best_weights" in state:
        model.set_weights(state["best_weights"])
    return state["history"]


def _same_run(saved: dict, run: dict, but: str | None = None) -> bool:
    """Whether a saved fine-tuning state is this run (ignoring config field `but`)."""
    def strip(value):
        value = dict(value)
        value["config"] = {k: v for k, v in (value.get("config") or {}).items() if k != but}
        return value
    return {k: strip(saved).get(k) for k in run} == strip(run)


def _checkpoint_epoch(work: Path, state: dict, epoch: int, full, model, improved: bool) -> None:
    """Writes epoch `epoch`'s checkpoint (and the best weights), then the state that points at them."""
    work.mkdir(parents=True, exist_ok=True)
    previous = dict(state)
    state["last"] = os.path.basename(full.write(str(work / f"epoch-{epoch}")))
    if improved:
        state["best"] = os.path.basename(tf.train.Checkpoint(model=model).write(str(work / f"best-epoch-{epoch}")))
    # the epoch's files written, the state not yet pointing at them (a simulated full disk cuts the data file)
    kill_point("teacher:checkpoint", work / f"{state['last']}.data-00000-of-00001")
    write_json_atomic(work / PROGRESS_STATE, state)
    for stale in {previous.get("last"), previous.get("best") if improved else None} - {None, state["last"], state["best"]}:
        for path in work.glob(f"{stale}.*"):
            path.unlink()


def save_teacher(model: TeacherModel, tokenizer, spec: TeacherSpec, folder: Path, extra: dict) -> None:
    """Writes the teacher folder atomically: HF encoder + tokenizer, head weights, spec."""
    kernel, bias = model.head.get_weights()
    digest = hashlib.sha1()
    for array in [*model.encoder.get_weights(), kernel, bias]:
        digest.update(np.ascontiguousarray(array).tobytes())
    with atomic_directory(folder) as temp:
        # safetensors, not HF's default tf_model.h5: HDF5 hitting a full disk can crash the process while it
        # closes the file (see files.save_keras_weights); a safetensors write fails as a plain error
        model.encoder.save_pretrained(temp / ENCODER_DIR, safe_serialization=True)
        save_tokenizer(tokenizer, temp / ENCODER_DIR)
        np.savez(temp / HEAD_FILE, kernel=kernel, bias=bias)
        # weights_sha1: what caches and augmented files derived from this teacher are keyed on (its content,
        # so the same teacher trained again bit-for-bit, e.g. after a kill, keeps them valid).
        write_json_atomic(temp / SPEC_FILE, {"spec": dataclasses.asdict(spec), "weights_sha1": digest.hexdigest(),
                                             **extra})


def teacher_stamp(folder: Path):
    """The identity of a saved teacher for cache signatures: its weights' SHA-1 (recorded when it was saved),
    or, for a teacher saved by an older version, the modification time of teacher.json (what those
    versions keyed their caches on, so their caches stay valid)."""
    recorded = read_json(folder / SPEC_FILE).get("weights_sha1")
    return recorded if recorded else (folder / SPEC_FILE).stat().st_mtime_ns


def load_teacher(folder: str | Path) -> tuple[TeacherModel, TeacherSpec, object]:
    """Reloads a saved teacher folder: (model, spec, tokenizer)."""
    folder = Path(folder)
    if not (folder / SPEC_FILE).exists():
        raise XtremeDistilError(f"{folder}: not a fine-tuned teacher folder ({SPEC_FILE} missing)")
    spec = TeacherSpec(**read_json(folder / SPEC_FILE)["spec"])
    encoder = load_encoder(str(folder / ENCODER_DIR), spec.model_class)
    model = TeacherModel(encoder, len(spec.labels), spec.tagging)
    _build(model, spec.seq_len)
    head = np.load(folder / HEAD_FILE)
    model.head.set_weights([head["kernel"], head["bias"]])
    return model, spec, load_tokenizer(str(folder / ENCODER_DIR))


def check_reusable(folder: Path, spec: TeacherSpec, fine_tune: FineTuneConfig | None = None) -> bool:
    """True if `folder` holds a teacher fine-tuned with `spec` (and, when given, the `fine_tune` settings);
    an error if it holds another one.

    The fine-tuning settings matter too: another --ft_epochs must not silently keep a teacher trained for
    fewer or more epochs. The seed is not compared (students of several seeds may share one teacher), and
    teachers saved before the settings were recorded in teacher.json are reused as they are."""
    if not (folder / SPEC_FILE).exists():
        return False
    record = read_json(folder / SPEC_FILE)
    saved, wanted = dict(record["spec"]), dataclasses.asdict(spec)
    differing = [key for key in wanted if saved.get(key) != wanted[key]]
    if fine_tune is not None and "fine_tune" in record:
        tuned = {f"--ft_{k}": v for k, v in record["fine_tune"].items()}
        asked = {f"--ft_{k}": v for k, v in dataclasses.asdict(fine_tune).items()}
        differing += [key for key in asked if key in tuned and tuned[key] != asked[key]]   # a newer field: absent
        saved.update(tuned)
        wanted.update(asked)
    if differing:
        details = ", ".join(f"{key}: saved {saved.get(key)!r} vs now {wanted[key]!r}" for key in differing)
        raise XtremeDistilError(
            f"{folder} holds a teacher fine-tuned with other settings ({details}); pass the saved values to "
            "reuse it, use another --model_dir, or delete that folder to fine-tune again"
        )
    return True
