"""A convolutional student: fast at batch 1 on CPU, where a BiLSTM's sequential steps dominate.

word embedding -> dropout -> `cnn_layers` residual blocks of a 1-D convolution over word pieces
(kernel `cnn_kernel_size`, dilation doubling per block: 1, 2, 4, ...) -> dropout -> projection -> logits.
Classification pools each filter's maximum over the sentence's real positions; tagging keeps every position.

Padding-independent by construction: inputs are post-padded and every block's input is zeroed at padded
positions, so a real position's receptive field sees exactly the zeros it would see at the sequence edge,
whatever the batch's width; the pool ignores padded positions. Every runtime gets plain convolutions
(TFLite CONV_2D, ONNX Conv), no recurrence.
"""
import dataclasses

import tensorflow as tf

from xtremedistil.distill.students.base import (
    MaskedMaxPool, PositionMask, StudentConfig, StudentOptions, gelu_tanh, option, register_student,
    student_inputs, student_outputs,
)


@dataclasses.dataclass
class CNNOptions(StudentOptions):
    cnn_layers: int = option(3, "residual convolution blocks, dilation 1, 2, 4, ...", minimum=1)
    cnn_filters: int = option(256, "filters per block", minimum=1)
    cnn_kernel_size: int = option(3, "kernel width in word pieces", minimum=1)


def _blocks(config: StudentConfig):
    return [f"conv_{i}" for i in range(config.cnn_layers)]


def _groups(config: StudentConfig):
    return [["word_embedding"], ["conv_input", *_blocks(config)], ["projection"], ["logits"]]


@register_student("cnn", _groups,
                  lambda c: f"cnn {c.word_emb_dim}/{c.cnn_layers}x{c.cnn_filters} k{c.cnn_kernel_size}", CNNOptions)
def build_cnn(config: StudentConfig, batch_size: int | None = None, unroll: bool = False) -> tf.keras.Model:
    """Convolutional student; `unroll` does not apply (nothing recurrent)."""
    ids, rows = student_inputs(config, batch_size)
    mask = PositionMask(config.pad_row, name="position_mask")(rows)
    x = tf.keras.layers.Embedding(config.vocab_size, config.word_emb_dim, name="word_embedding")(rows)
    x = tf.keras.layers.Dropout(config.dropout_rate, name="embedding_dropout")(x)
    x = tf.keras.layers.Dense(config.cnn_filters, name="conv_input")(x)
    for i, name in enumerate(_blocks(config)):
        masked = tf.keras.layers.Multiply(name=f"{name}_mask")([x, mask])
        conv = tf.keras.layers.Conv1D(config.cnn_filters, config.cnn_kernel_size, padding="same",
                                      dilation_rate=2 ** i, activation=gelu_tanh, name=name)(masked)
        x = tf.keras.layers.Add(name=f"{name}_residual")([masked, conv])
    x = tf.keras.layers.Multiply(name="encoder_mask")([x, mask])
    if not config.tagging:
        x = MaskedMaxPool(name="max_pool")([x, mask])
    x = tf.keras.layers.Dropout(config.dropout_rate, name="encoder_dropout")(x)
    return tf.keras.Model(ids, student_outputs(config, x), name="cnn_student")
