"""Export stage: bundle artifacts (SavedModel, TFLite/LiteRT, ONNX), quantization, parity."""
