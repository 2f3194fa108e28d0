"""Loads a SavedModel artifact's `serving_default` signature."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from xtremedistil.export.predictor import Predictor, set_tf_threads


class SavedModelPredictor(Predictor):
    format = "savedmodel"

    def __init__(self, path: Path, threads: int | None = None):
        import xtremedistil  # noqa: F401
        import tensorflow as tf

        if threads:
            set_tf_threads(threads)
        super().__init__(path)
        self._loaded = tf.saved_model.load(str(path))
        self._signature = self._loaded.signatures["serving_default"]

    def _run(self, input_ids: np.ndarray) -> np.ndarray:
        return self._signature(input_ids=input_ids)["logits"].numpy()

