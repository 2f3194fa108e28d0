"""Student architectures, registered by name.

Every student takes the teacher tokenizer's ids (`input_ids`, int32 `[batch, seq_len]`),
maps them to its own vocabulary with a non-trainable `IdRemap`, and returns named outputs:
`projection` (the teacher's hidden size, matched in stage 1) and `logits`.
`layer_groups(model)` lists the layers bottom-up, one entry per unfreezing step.
"""
from xtremedistil.distill.students.base import (
    STUDENTS, IdRemap, StudentConfig, build_student, copy_student_weights, layer_groups, register_student,
)
from xtremedistil.distill.students import bilstm, cnn, transformer  # noqa: F401  (registration)

__all__ = ["STUDENTS", "IdRemap", "StudentConfig", "build_student", "copy_student_weights", "layer_groups", "register_student"]
