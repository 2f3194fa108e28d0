"""One seed for Python, NumPy and TensorFlow (from --seed, else PYTHONHASHSEED, else 42)."""
from __future__ import annotations

import os

DEFAULT_SEED = 42


def resolve_seed(seed: int | None) -> int:
    if seed is not None:
        return seed
    env = os.environ.get("PYTHONHASHSEED", "")
    return int(env) if env.isdigit() else DEFAULT_SEED


def seed_everything(seed: int) -> None:
    """Seeds Python's `random`, NumPy and TensorFlow, and asks TF for deterministic ops."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
