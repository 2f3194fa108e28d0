"""Loads a SavedModel artifact's `serving_default` signature."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from xtremedistil.export.predictor import Predictor


class SavedModelPredictor(Predictor):
    format = "savedmodel"

    def __init__(self, path: Path, threads: int | None = None):
        import xtremedistil  # noqa: F401
        import tensorflow as tf

        if threads:
            _set_tf_threads(tf, threads)
        super().__init__(path)
        self._loaded = tf.saved_model.load(str(path))
        self._signature = self._loaded.signatures["serving_default"]

    def _run(self, input_ids: np.ndarray) -> np.ndarray:
        return self._signature(input_ids=input_ids)["logits"].numpy()


def _set_tf_threads(tf, threads: int) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already initialised in this process: the first setting stays
