"""TFLite / LiteRT: fp32, fp16, dynamic-range int8 and full-integer int8, run with ai-edge-litert."""
from xtremedistil.export.base import EXACT, QUANTIZED, FormatConfig, Quantization, register_format
from xtremedistil.export.tflite.convert import convert

TFLITE = register_format(FormatConfig(
    name="tflite",
    tolerances={Quantization.FP32: EXACT, Quantization.FP16: QUANTIZED, Quantization.DYNAMIC: QUANTIZED,
                Quantization.INT8: QUANTIZED},
    unsupported={
        "static": "in TFLite the calibrated int8 variant is called tflite:int8 (full integer)",
    },
    convert=convert,
))
