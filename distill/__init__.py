"""Distillation stage: task data, tokenization and label alignment, teacher, metrics."""
import xtremedistil  # noqa: F401  (Keras 2 guard before TensorFlow)
