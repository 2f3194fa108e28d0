"""Registry, shared config, the id-remap layer and activations of the students."""
from __future__ import annotations

import dataclasses
from typing import Callable

import xtremedistil  # noqa: F401
import tensorflow as tf

from xtremedistil.errors import XtremeDistilError

STUDENTS: dict[str, Callable] = {}
GROUPS: dict[str, Callable] = {}
DESCRIPTIONS: dict[str, Callable] = {}


def register_student(name: str, groups: Callable, describe: Callable | None = None):
    """Registers a builder `fn(config) -> tf.keras.Model`, its bottom-up layer groups, and a short
    description of a config (reports name students by it, e.g. "BiLSTM 300/600")."""
    def wrap(builder):
        STUDENTS[name] = builder
        GROUPS[name] = groups
        DESCRIPTIONS[name] = describe or (lambda config: name)
        return builder
    return wrap


def describe_student(student: dict) -> str:
    """A bundle config's student section, in a few words ("BiLSTM 300/600", "cnn 3x256 k3")."""
    kind = student.get("kind", "bilstm")
    if kind not in DESCRIPTIONS:
        return kind
    fields = {f.name for f in dataclasses.fields(StudentConfig)}
    return DESCRIPTIONS[kind](StudentConfig(**{k: v for k, v in student.items() if k in fields}))


@tf.keras.utils.register_keras_serializable(package="xtremedistil")
def gelu_tanh(x):
    """GELU, tanh approximation: exports to ONNX (exact GELU lowers to Erfc, which tf2onnx lacks)."""
    return tf.keras.activations.gelu(x, approximate=True)


ACTIVATIONS = {"gelu_tanh": gelu_tanh, "gelu": "gelu", "tanh": "tanh", "relu": "relu", "linear": None}


@dataclasses.dataclass
class StudentConfig:
    """Everything needed to rebuild a student; mirrored in the bundle's config.json."""

    kind: str
    tagging: bool
    num_labels: int
    seq_len: int
    teacher_vocab_size: int
    vocab_size: int
    teacher_hidden_size: int
    pad_row: int = 0
    word_emb_dim: int = 300
    dropout_rate: float = 0.2
    dense_act_func: str = "gelu_tanh"
    bilstm_hidden_size: int = 600
    recurrent_dropout: float = 0.0
    transformer_layers: int = 2
    transformer_heads: int = 4
    transformer_hidden: int = 256
    transformer_ffn: int = 512
    cnn_layers: int = 3
    cnn_filters: int = 256
    cnn_kernel_size: int = 3

    def __post_init__(self):
        if self.kind not in STUDENTS:
            raise XtremeDistilError(
                f"unknown student '{self.kind}'; valid students: {', '.join(sorted(STUDENTS))}")
        if self.dense_act_func not in ACTIVATIONS:
            raise XtremeDistilError(
                f"--dense_act_func '{self.dense_act_func}' is not one of {', '.join(ACTIVATIONS)}")
        for name in ("word_emb_dim", "bilstm_hidden_size", "transformer_layers", "transformer_heads",
                     "transformer_hidden", "transformer_ffn", "cnn_layers", "cnn_filters", "cnn_kernel_size"):
            if getattr(self, name) < 1:
                raise XtremeDistilError(f"--{name} must be at least 1")
        if not 0.0 <= self.dropout_rate < 1.0 or not 0.0 <= self.recurrent_dropout < 1.0:
            raise XtremeDistilError("--dropout_rate and --recurrent_dropout must be in [0, 1)")
        if self.transformer_hidden % self.transformer_heads:
            raise XtremeDistilError("--transformer_hidden must be a multiple of --transformer_heads")

    @property
    def activation(self):
        return ACTIVATIONS[self.dense_act_func]


@tf.keras.utils.register_keras_serializable(package="xtremedistil")
class IdRemap(tf.keras.layers.Layer):
    """Maps teacher token ids to student vocabulary rows with a fixed (non-trainable) table."""

    def __init__(self, teacher_vocab_size: int, **kwargs):
        super().__init__(**kwargs)
        self.teacher_vocab_size = teacher_vocab_size
        self.table = self.add_weight(
            name="table", shape=(teacher_vocab_size,), dtype=tf.int32, trainable=False,
            initializer="zeros",
        )

    def call(self, input_ids):
        return tf.gather(self.table, input_ids)

    def get_config(self):
        return {**super().get_config(), "teacher_vocab_size": self.teacher_vocab_size}


class PadRowLayer(tf.keras.layers.Layer):
    """A layer that needs to know which student row is padding (saved in its config)."""

    def __init__(self, pad_row: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.pad_row = pad_row

    def get_config(self):
        return {**super().get_config(), "pad_row": self.pad_row}


def student_inputs(config: StudentConfig, batch_size: int | None = None):
    """`input_ids` [batch, width] and their student rows.

    Without `batch_size` the width is free (up to `seq_len`): length-bucketed batches are cut to their
    longest sentence. A fixed `batch_size` gives static shapes [batch_size, seq_len] (what TFLite
    needs to emit its fused LSTM kernel)."""
    width = config.seq_len if batch_size is not None else None
    ids = tf.keras.Input(shape=(width,), batch_size=batch_size, dtype=tf.int32, name="input_ids")
    return ids, IdRemap(config.teacher_vocab_size, name="id_remap")(ids)


def student_outputs(config: StudentConfig, features):
    projection = tf.keras.layers.Dense(config.teacher_hidden_size, activation=config.activation,
                                       name="projection")(features)
    logits = tf.keras.layers.Dense(config.num_labels, name="logits")(projection)
    return {"projection": projection, "logits": logits}


def build_student(config: StudentConfig, batch_size: int | None = None, unroll: bool = False) -> tf.keras.Model:
    """A fresh student; `batch_size` fixes the batch dimension and `unroll` unrolls recurrent layers
    over the (static) sequence; weights are the same shapes either way."""
    return STUDENTS[config.kind](config, batch_size=batch_size, unroll=unroll)


def copy_student_weights(source: tf.keras.Model, target: tf.keras.Model) -> tf.keras.Model:
    """Copies weights layer by layer, by name (the two may differ in batch size, unrolling or wrappers)."""
    for layer in target.layers:
        weights = source.get_layer(layer.name).get_weights()
        if weights:
            layer.set_weights(weights)
    return target


def layer_groups(model: tf.keras.Model, config: StudentConfig) -> list[list[tf.keras.layers.Layer]]:
    """Trainable layer groups bottom-up (embedding first, logits last)."""
    return [[model.get_layer(name) for name in group] for group in GROUPS[config.kind](config)]
