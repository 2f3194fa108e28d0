"""ONNX: fp32, int8 dynamic and int8 static (QDQ), run with ONNX Runtime."""
from xtremedistil.export.base import EXACT, QUANTIZED, FormatConfig, Quantization, TeacherExport, by_suffix, register_format

ONNX = register_format(FormatConfig(
    name="onnx",
    tolerances={Quantization.FP32: EXACT, Quantization.DYNAMIC: QUANTIZED, Quantization.STATIC: QUANTIZED},
    unsupported={
        "fp16": "ONNX Runtime's CPU provider has few float16 kernels, so an fp16 graph runs slower than fp32 "
                "here; use onnx:dynamic for a smaller, faster CPU model or tflite:fp16 for edge",
        "int8": "in ONNX the calibrated int8 variant is called onnx:static (QDQ)",
    },
    converter="xtremedistil.export.onnx.convert:convert",
    predictor="xtremedistil.export.onnx.predictor:OnnxPredictor",
    runtime="onnxruntime",
    recognise=by_suffix(".onnx"),
    describe=".onnx",
    bench_rank=3,
    marker="s",
    teacher=TeacherExport((Quantization.FP32, Quantization.DYNAMIC), "xtremedistil.export.onnx.teacher:export_teacher",
                          "{name}.onnx"),
))
