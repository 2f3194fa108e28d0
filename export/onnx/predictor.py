"""Runs an ONNX artifact with ONNX Runtime (CPU)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from xtremedistil.errors import XtremeDistilError
from xtremedistil.export.predictor import Predictor


class OnnxPredictor(Predictor):
    format = "onnx"

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        super().__init__(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own exception types; name the file and keep the cause
            raise XtremeDistilError(f"{path}: ONNX Runtime cannot load this model: {err}") from err
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        self.input_type = np.int64 if "int64" in inputs[0].type else np.int32
        batch = inputs[0].shape[0]
        self.batch_size = batch if isinstance(batch, int) else None
        self.output_name = self.session.get_outputs()[0].name

    def _run(self, input_ids: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: input_ids.astype(self.input_type)})[0]
