"""TFLite / LiteRT: fp32, fp16, dynamic-range int8 and full-integer int8, run with ai-edge-litert."""
from xtremedistil.export.base import EXACT, QUANTIZED, FormatConfig, Quantization, TeacherExport, by_suffix, register_format

TFLITE = register_format(FormatConfig(
    name="tflite",
    tolerances={Quantization.FP32: EXACT, Quantization.FP16: QUANTIZED, Quantization.DYNAMIC: QUANTIZED,
                Quantization.INT8: QUANTIZED},
    unsupported={
        "static": "in TFLite the calibrated int8 variant is called tflite:int8 (full integer)",
    },
    converter="xtremedistil.export.tflite.convert:convert",
    predictor="xtremedistil.export.tflite.predictor:LiteRTPredictor",
    runtime="litert",
    recognise=by_suffix(".tflite"),
    describe=".tflite",
    bench_rank=2,
    marker="^",
    # One flatbuffer per batch size (fixed shapes); the teacher's full-integer variant is not offered
    teacher=TeacherExport((Quantization.FP32, Quantization.DYNAMIC), "xtremedistil.export.tflite.teacher:export_teacher",
                          "{name}.tflite", per_batch_size=True),
))
