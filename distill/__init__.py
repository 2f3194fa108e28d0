"""Distillation stage: task data, tokenization and label alignment, teacher, metrics."""
import xtremedistil  # noqa: F401  (Keras 2 guard before TensorFlow)


def load_bundle(path):
    """Rebuilds a distilled student from its bundle folder; `.predict(texts)` gives labels or tags."""
    from xtremedistil.distill.bundle import load_bundle as _load

    return _load(path)
