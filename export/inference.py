"""The one inference graph every artifact is converted from, student's and teacher's alike.

`logits_function(model, ...)`: a `tf.function` on `input_ids` int32 [batch, seq_len] -> {"logits"}.
A student takes the teacher tokenizer's ids as they are (its outputs do not depend on padding); a teacher
(`pad_id` given) gets its attention mask derived from the pad id inside the graph, so every runtime feeds
the same single input. Fixed `batch_size`/`seq_len` give the static shapes TFLite wants; leaving them
None keeps that dimension dynamic (ONNX, SavedModel, the TensorFlow teacher in bench).
"""
from __future__ import annotations

import xtremedistil  # noqa: F401
import tensorflow as tf

INPUT_NAME = "input_ids"


def logits_function(model, *, seq_len: int | None = None, batch_size: int | None = None,
                    pad_id: int | None = None):
    """`input_ids` [batch_size, seq_len] -> {"logits"}: a student's `logits` output, or (with `pad_id`) a
    teacher's logits with the attention mask computed from the ids."""
    spec = tf.TensorSpec([batch_size, seq_len], tf.int32, name=INPUT_NAME)
    if pad_id is None:
        @tf.function(input_signature=[spec])
        def logits(input_ids):
            return {"logits": model(input_ids, training=False)["logits"]}
    else:
        @tf.function(input_signature=[spec])
        def logits(input_ids):
            mask = tf.cast(tf.not_equal(input_ids, pad_id), tf.int32)
            return {"logits": model({"input_ids": input_ids, "attention_mask": mask}, training=False)}
    return logits
