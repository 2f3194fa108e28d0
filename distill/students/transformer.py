"""A small Transformer encoder student (post-LN blocks, tanh-GELU feed-forward)."""
import dataclasses

import tensorflow as tf

from xtremedistil.distill.students.base import (
    StudentConfig, StudentOptions, gelu_tanh, option, register_student, student_inputs, student_outputs,
)
from xtremedistil.errors import XtremeDistilError


@dataclasses.dataclass
class TransformerOptions(StudentOptions):
    transformer_layers: int = option(2, "layers", minimum=1)
    transformer_heads: int = option(4, "attention heads", minimum=1)
    transformer_hidden: int = option(256, "hidden size (a multiple of --transformer_heads)", minimum=1)
    transformer_ffn: int = option(512, "feed-forward size", minimum=1)

    def check(self) -> None:
        if self.transformer_hidden % self.transformer_heads:
            raise XtremeDistilError("--transformer_hidden must be a multiple of --transformer_heads")


def _groups(config: StudentConfig):
    return ([["word_embedding", "position_embedding", "embedding_projection", "embedding_norm"]]
            + [[f"block_{i}_attention", f"block_{i}_attention_norm", f"block_{i}_ffn_in",
                f"block_{i}_ffn_out", f"block_{i}_ffn_norm"] for i in range(config.transformer_layers)]
            + [["projection"], ["logits"]])


@tf.keras.utils.register_keras_serializable(package="xtremedistil")
class PositionEmbedding(tf.keras.layers.Layer):
    def __init__(self, seq_len, dim, **kwargs):
        super().__init__(**kwargs)
        self.seq_len, self.dim = seq_len, dim
        self.table = self.add_weight(name="table", shape=(seq_len, dim),
                                     initializer=tf.keras.initializers.TruncatedNormal(stddev=0.02))

    def call(self, x):
        return x + self.table[tf.newaxis, : tf.shape(x)[1]]

    def get_config(self):
        return {**super().get_config(), "seq_len": self.seq_len, "dim": self.dim}


@register_student("transformer", _groups, lambda c: f"transformer {c.transformer_layers}x{c.transformer_hidden}",
                  TransformerOptions)
def build_transformer(config: StudentConfig, batch_size: int | None = None, unroll: bool = False) -> tf.keras.Model:
    ids, rows = student_inputs(config, batch_size)
    hidden, drop = config.transformer_hidden, config.dropout_rate
    padding = tf.keras.layers.Lambda(lambda r: tf.not_equal(r, config.pad_row), name="padding_mask")(rows)
    mask = tf.keras.layers.Lambda(lambda m: m[:, tf.newaxis, :], name="attention_mask")(padding)
    x = tf.keras.layers.Embedding(config.vocab_size, config.word_emb_dim, name="word_embedding")(rows)
    x = tf.keras.layers.Dense(hidden, name="embedding_projection")(x)
    x = PositionEmbedding(config.seq_len, hidden, name="position_embedding")(x)
    x = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="embedding_norm")(x)
    x = tf.keras.layers.Dropout(drop)(x)
    for i in range(config.transformer_layers):
        attended = tf.keras.layers.MultiHeadAttention(
            config.transformer_heads, hidden // config.transformer_heads, dropout=drop,
            name=f"block_{i}_attention")(x, x, attention_mask=mask)
        x = tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"block_{i}_attention_norm")(
            x + tf.keras.layers.Dropout(drop)(attended))
        ffn = tf.keras.layers.Dense(config.transformer_ffn, activation=gelu_tanh, name=f"block_{i}_ffn_in")(x)
        ffn = tf.keras.layers.Dense(hidden, name=f"block_{i}_ffn_out")(ffn)
        x = tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"block_{i}_ffn_norm")(
            x + tf.keras.layers.Dropout(drop)(ffn))
    features = x if config.tagging else tf.keras.layers.Lambda(lambda t: t[:, 0], name="first_token")(x)
    return tf.keras.Model(ids, student_outputs(config, features), name="transformer_student")
