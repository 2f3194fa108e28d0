"""Export stage: bundle artifacts (SavedModel, TFLite/LiteRT, ONNX), quantization, parity.

Public API: `run_export(ExportOptions(...))`, `load_predictor(path)`, `parse_formats(spec)`, and
`serving.TextPipeline(bundle, artifact)` (text in, labels/entities out; used by serve_examples/).
"""
import xtremedistil  # noqa: F401  (Keras 2 guard before TensorFlow)


def load_predictor(path, threads=None):
    """Any artifact (or a bundle's Keras student) behind `predict(input_ids) -> logits`."""
    from xtremedistil.export.predictor import load_predictor as _load

    return _load(path, threads)
