"""The paper's student: word embedding -> dropout -> BiLSTM -> dropout -> projection -> logits."""
import tensorflow as tf

from xtremedistil.distill.students.base import StudentConfig, register_student, student_inputs, student_outputs


def _groups(config: StudentConfig):
    return [["word_embedding"], ["bilstm"], ["projection"], ["logits"]]


@register_student("bilstm", _groups)
def build_bilstm(config: StudentConfig, batch_size: int | None = None, unroll: bool = False) -> tf.keras.Model:
    """BiLSTM student; sequence output for tagging, final states for classification.

    `recurrent_dropout` is 0 by default: any other value disables the fused LSTM kernels.
    """
    ids, rows = student_inputs(config, batch_size)
    x = tf.keras.layers.Embedding(config.vocab_size, config.word_emb_dim, name="word_embedding")(rows)
    x = tf.keras.layers.Dropout(config.dropout_rate, name="embedding_dropout")(x)
    lstm = tf.keras.layers.LSTM(config.bilstm_hidden_size, return_sequences=config.tagging,
                                recurrent_dropout=config.recurrent_dropout, unroll=unroll)
    x = tf.keras.layers.Bidirectional(lstm, name="bilstm")(x)
    x = tf.keras.layers.Dropout(config.dropout_rate, name="bilstm_dropout")(x)
    return tf.keras.Model(ids, student_outputs(config, x), name="bilstm_student")
