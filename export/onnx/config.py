"""ONNX: fp32, int8 dynamic and int8 static (QDQ), run with ONNX Runtime."""
from xtremedistil.export.base import EXACT, QUANTIZED, FormatConfig, Quantization, register_format
from xtremedistil.export.onnx.convert import convert


ONNX = register_format(FormatConfig(
    name="onnx",
    tolerances={Quantization.FP32: EXACT, Quantization.DYNAMIC: QUANTIZED, Quantization.STATIC: QUANTIZED},
    unsupported={
        "fp16": "ONNX Runtime's CPU provider has few float16 kernels, so an fp16 graph runs slower than fp32 "
                "here; use onnx:dynamic for a smaller, faster CPU model or tflite:fp16 for edge",
        "int8": "in ONNX the calibrated int8 variant is called onnx:static (QDQ)",
    },
    convert=convert,
))
