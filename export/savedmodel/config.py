"""SavedModel: float only, laid out for TensorFlow Serving (`savedmodel/NAME/1/`)."""
from xtremedistil.export.base import EXACT, FormatConfig, Quantization, register_format
from xtremedistil.export.savedmodel.convert import convert

SAVEDMODEL = register_format(FormatConfig(
    name="savedmodel",
    tolerances={Quantization.FP32: EXACT},
    unsupported={
        "fp16": "a SavedModel stores the Keras graph as is; for float16 weights export tflite:fp16",
        "dynamic": "TensorFlow has no int8 kernels for SavedModel serving; use tflite:dynamic or onnx:dynamic",
        "int8": "TensorFlow has no int8 kernels for SavedModel serving; use tflite:int8",
        "static": "TensorFlow has no int8 kernels for SavedModel serving; use onnx:static",
    },
    convert=convert,
))
