"""The paper's student: word embedding -> dropout -> BiLSTM -> dropout -> projection -> logits.

Padding-independent by construction, with the fast fused LSTM kernels kept: inputs are
post-padded, so a forward LSTM's outputs at a sentence's real positions never see its padding.
The backward direction is a second forward LSTM over each sentence *reversed by its own length*
(real tokens first, padding after), and its outputs are reversed back the same way. For
classification each direction's feature is its output at the sentence's last real position (the
paper's; `--bilstm_pooling last`) or each unit's maximum over the sentence's real positions
(`--bilstm_pooling max`: every position reaches the classifier directly, not only through the
last step's state, which long sentences strain).
Nothing depends on how much padding follows a sentence, so length-bucketed batches and any
artifact (whatever its padded width) give a sentence the same logits. The reversal is a batched
gather (GATHER / GatherElements in TFLite and ONNX), not a mask, which the fused TFLite
and ONNX LSTM kernels could not take.
"""
import dataclasses

import tensorflow as tf

from xtremedistil.distill.students.base import (
    MaskedMaxPool, PadRowLayer, PositionMask, StudentConfig, StudentOptions, option, register_student,
    student_inputs, student_outputs,
)


@dataclasses.dataclass
class BiLSTMOptions(StudentOptions):
    bilstm_hidden_size: int = option(600, "BiLSTM units per direction", minimum=1)
    recurrent_dropout: float = option(0.0, "LSTM recurrent dropout (non-zero disables fused kernels)",
                                      minimum=0.0, below=1.0)
    bilstm_pooling: str = option("last", "classification feature of each direction: 'last' = its output at the "
                                 "sentence's last real position (the paper's), 'max' = each unit's maximum over "
                                 "the real positions", choices=("last", "max"))


def _groups(config: StudentConfig):
    return [["word_embedding"], ["bilstm_forward", "bilstm_backward"], ["projection"], ["logits"]]


@tf.keras.utils.register_keras_serializable(package="xtremedistil")
class SequenceLengths(PadRowLayer):
    """Real length of each post-padded row of student ids (at least 1)."""

    def call(self, rows):
        return tf.maximum(tf.reduce_sum(tf.cast(tf.not_equal(rows, self.pad_row), tf.int32), axis=1), 1)


def _reversed_positions(lengths, width):
    """[batch, width] source position of each position after reversing the first `length` steps."""
    positions = tf.range(width)[tf.newaxis, :]
    lengths = lengths[:, tf.newaxis]
    return tf.where(positions < lengths, lengths - 1 - positions, positions)


@tf.keras.utils.register_keras_serializable(package="xtremedistil")
class ReverseByLength(tf.keras.layers.Layer):
    """Reverses each row's first `length` time steps and leaves its padding in place."""

    def call(self, inputs):
        sequence, lengths = inputs
        return tf.gather(sequence, _reversed_positions(lengths, tf.shape(sequence)[1]), batch_dims=1)


@tf.keras.utils.register_keras_serializable(package="xtremedistil")
class LastStep(tf.keras.layers.Layer):
    """Each row's output at its last real position: [batch, time, dim] -> [batch, dim]."""

    def call(self, inputs):
        sequence, lengths = inputs
        return tf.gather(sequence, lengths - 1, batch_dims=1)


def _describe(config: StudentConfig) -> str:
    pooled = " max-pooled" if config.bilstm_pooling == "max" and not config.tagging else ""
    return f"BiLSTM {config.word_emb_dim}/{config.bilstm_hidden_size}{pooled}"


@register_student("bilstm", _groups, _describe, BiLSTMOptions)
def build_bilstm(config: StudentConfig, batch_size: int | None = None, unroll: bool = False) -> tf.keras.Model:
    """BiLSTM student; sequence output for tagging, each direction's last real step (or its maximum over the
    real steps) for classification.

    `recurrent_dropout` is 0 by default: any other value disables the fused LSTM kernels.
    """
    ids, rows = student_inputs(config, batch_size)
    lengths = SequenceLengths(config.pad_row, name="lengths")(rows)
    x = tf.keras.layers.Embedding(config.vocab_size, config.word_emb_dim, name="word_embedding")(rows)
    x = tf.keras.layers.Dropout(config.dropout_rate, name="embedding_dropout")(x)

    def lstm(name):
        return tf.keras.layers.LSTM(config.bilstm_hidden_size, return_sequences=True,
                                    recurrent_dropout=config.recurrent_dropout, unroll=unroll, name=name)

    forward = lstm("bilstm_forward")(x)
    backward = lstm("bilstm_backward")(ReverseByLength(name="reverse_input")([x, lengths]))
    if config.tagging:
        backward = ReverseByLength(name="reverse_output")([backward, lengths])
    elif config.bilstm_pooling == "max":     # the reversed backward outputs have their real steps first too
        mask = PositionMask(config.pad_row, name="position_mask")(rows)
        forward = MaskedMaxPool(name="forward_max")([forward, mask])
        backward = MaskedMaxPool(name="backward_max")([backward, mask])
    else:
        forward = LastStep(name="forward_last")([forward, lengths])
        backward = LastStep(name="backward_last")([backward, lengths])
    x = tf.keras.layers.Concatenate(name="bilstm")([forward, backward])
    x = tf.keras.layers.Dropout(config.dropout_rate, name="bilstm_dropout")(x)
    return tf.keras.Model(ids, student_outputs(config, x), name="bilstm_student")
