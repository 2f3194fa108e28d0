"""Runs a .tflite artifact with ai-edge-litert (the LiteRT runtime; no TensorFlow import)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from xtremedistil.errors import XtremeDistilError
from xtremedistil.export.predictor import Predictor


class LiteRTPredictor(Predictor):
    format = "tflite"

    def __init__(self, path: Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        super().__init__(path)
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise XtremeDistilError(f"{path}: LiteRT cannot load this model: {err}") from err
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch_size = int(self.input["shape"][0])

    def _run(self, input_ids: np.ndarray) -> np.ndarray:
        # The fused LSTM kernel keeps its hidden and cell state in variable tensors that survive
        # `invoke()`: without this reset every batch after the first starts from the previous
        # batch's final state (measured: first batch exact, later ones off by ~1e-3).
        self.interpreter.reset_all_variables()
        self.interpreter.set_tensor(self.input["index"], input_ids.astype(self.input["dtype"]))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        scale, zero = self.output.get("quantization", (0.0, 0))
        if out.dtype != np.float32 and scale:
            out = (out.astype(np.float32) - zero) * scale
        return out
