"""Registry, shared config, the id-remap layer and activations of the students."""
from __future__ import annotations

import dataclasses
from typing import Callable

import xtremedistil  # noqa: F401
import tensorflow as tf

from xtremedistil.distill.options import StudentSettings
from xtremedistil.errors import XtremeDistilError
from xtremedistil.settings import Settings, setting

STUDENTS: dict[str, Callable] = {}
GROUPS: dict[str, Callable] = {}
DESCRIPTIONS: dict[str, Callable] = {}
OPTIONS: dict[str, type] = {}


def option(default, help: str, *, minimum=None, below=None, choices: tuple | None = None):
    """A field of a student's own settings: its flag `--NAME` (CLI, recipe key) says `help`; values under
    `minimum`, not under `below` or not among `choices` are one-line errors."""
    return setting(default, help, minimum=minimum, below=below, choices=choices)


@dataclasses.dataclass
class StudentOptions(Settings):
    """Base of a student's own settings. Field names are flag names, unique across students (the CLI and
    recipe keys are generated from them); `check()` adds checks across fields."""


def register_student(name: str, groups: Callable, describe: Callable | None = None,
                     options: type = StudentOptions):
    """Registers a builder `fn(config) -> tf.keras.Model`, its bottom-up layer groups, a short description of
    a config (reports name students by it, e.g. "BiLSTM 300/600") and its own settings (a `StudentOptions`
    dataclass: they become `--flags`, recipe keys and bundle config keys, read as `config.NAME`)."""
    common = {f.name for f in dataclasses.fields(CommonStudentSettings)}
    for field in dataclasses.fields(options):
        owner = next((kind for kind, cls in OPTIONS.items() if kind != name and
                      field.name in {f.name for f in dataclasses.fields(cls)}), None)
        if field.name in common or owner:
            raise ValueError(f"student '{name}': option '{field.name}' is already "
                             f"{'a setting of every student' if field.name in common else f'an option of {owner}'}")

    def wrap(builder):
        STUDENTS[name] = builder
        GROUPS[name] = groups
        DESCRIPTIONS[name] = describe or (lambda config: name)
        OPTIONS[name] = options
        return builder
    return wrap


def student_option_fields() -> list[tuple[str, dataclasses.Field]]:
    """(student kind, field) for every registered student's own settings, in registration order."""
    return [(kind, field) for kind, cls in OPTIONS.items() for field in dataclasses.fields(cls)]


def describe_student(student: dict) -> str:
    """A bundle config's student section, in a few words ("BiLSTM 300/600", "cnn 3x256 k3")."""
    kind = student.get("kind", "bilstm")
    if kind not in DESCRIPTIONS:
        return kind
    return DESCRIPTIONS[kind](StudentConfig(**{"kind": kind, **student}))


@tf.keras.utils.register_keras_serializable(package="xtremedistil")
def gelu_tanh(x):
    """GELU, tanh approximation: exports to ONNX (exact GELU lowers to Erfc, which tf2onnx lacks)."""
    return tf.keras.activations.gelu(x, approximate=True)


ACTIVATIONS = {"gelu_tanh": gelu_tanh, "gelu": "gelu", "tanh": "tanh", "relu": "relu", "linear": None}


@dataclasses.dataclass
class CommonStudentSettings:
    """What every student has: the task's and teacher's shapes, and the shared layers' settings."""

    kind: str
    tagging: bool
    num_labels: int
    seq_len: int
    teacher_vocab_size: int
    vocab_size: int
    teacher_hidden_size: int
    pad_row: int = 0
    word_emb_dim: int = StudentSettings.word_emb_dim         # declared (help, limits) in StudentSettings
    dropout_rate: float = StudentSettings.dropout_rate
    dense_act_func: str = StudentSettings.dense_act_func


_COMMON = [f.name for f in dataclasses.fields(CommonStudentSettings)]


class StudentConfig:
    """Everything needed to rebuild a student: the common settings and the kind's own options
    (`config.bilstm_hidden_size`, ...), kept flat in the bundle's config.json (`to_dict`).

    Options of other kinds are ignored (bundles written before options were per student carry every
    kind's); a name that is no student's option is an error."""

    def __init__(self, kind: str, tagging: bool, num_labels: int, seq_len: int, teacher_vocab_size: int,
                 vocab_size: int, teacher_hidden_size: int, **settings):
        if kind not in STUDENTS:
            raise XtremeDistilError(f"unknown student '{kind}'; valid students: {', '.join(sorted(STUDENTS))}")
        known = {field.name for _, field in student_option_fields()}
        unknown = sorted(set(settings) - known - set(_COMMON))
        if unknown:
            raise XtremeDistilError(f"unknown student setting(s) {', '.join(unknown)}")
        common = {k: settings[k] for k in _COMMON if k in settings}
        own = {f.name for f in dataclasses.fields(OPTIONS[kind])}
        self.common = CommonStudentSettings(kind, tagging, num_labels, seq_len, teacher_vocab_size, vocab_size,
                                            teacher_hidden_size, **common)
        self.options = OPTIONS[kind](**{k: v for k, v in settings.items() if k in own})
        StudentSettings(student=kind, word_emb_dim=self.word_emb_dim, dropout_rate=self.dropout_rate,
                        dense_act_func=self.dense_act_func, options=self.options)   # the declared limits

    def __getattr__(self, name):             # only for names not found the usual way
        for part in ("common", "options"):
            value = self.__dict__.get(part)
            if value is not None and name in {f.name for f in dataclasses.fields(value)}:
                return getattr(value, name)
        raise AttributeError(f"{type(self).__name__} of a '{self.__dict__.get('common') and self.common.kind}' "
                             f"student has no setting '{name}'")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self.common), **dataclasses.asdict(self.options)}

    def __eq__(self, other):
        return isinstance(other, StudentConfig) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"StudentConfig({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"

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


@tf.keras.utils.register_keras_serializable(package="xtremedistil")
class PositionMask(PadRowLayer):
    """[batch, width, 1] float: 1 at real positions, 0 at padding (student row `pad_row`)."""

    def call(self, rows):
        return tf.cast(tf.not_equal(rows, self.pad_row), tf.float32)[:, :, tf.newaxis]


@tf.keras.utils.register_keras_serializable(package="xtremedistil")
class MaskedMaxPool(tf.keras.layers.Layer):
    """Each feature's maximum over the real positions: [batch, width, dim] -> [batch, dim]."""

    def call(self, inputs):
        sequence, mask = inputs
        return tf.reduce_max(sequence + (mask - 1.0) * 1e4, axis=1)


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
    """Copies weights layer by layer, by name (the two may differ in batch size, unrolling or wrappers).

    Layers without weights are skipped: Keras names unnamed ones (dropout, operators) by a per-process
    counter, so a second build of the same student has other names for them (`dropout_13` for `dropout_10`)."""
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
    return target


def layer_groups(model: tf.keras.Model, config: StudentConfig) -> list[list[tf.keras.layers.Layer]]:
    """Trainable layer groups bottom-up (embedding first, logits last)."""
    return [[model.get_layer(name) for name in group] for group in GROUPS[config.kind](config)]
