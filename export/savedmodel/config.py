"""SavedModel: float only, laid out for TensorFlow Serving (`savedmodel/NAME/1/`)."""
from pathlib import Path

from xtremedistil.export.base import EXACT, FormatConfig, Quantization, TeacherExport, register_format


def _recognise(path: Path) -> Path | None:
    """A SavedModel folder, or a TF Serving model folder (`NAME/` holding versions `1/`, `2/`: the newest)."""
    if not path.is_dir():
        return None
    versions = sorted((p for p in path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not (path / "saved_model.pb").exists() and versions:
        path = versions[-1]
    return path if (path / "saved_model.pb").exists() else None


SAVEDMODEL = register_format(FormatConfig(
    name="savedmodel",
    tolerances={Quantization.FP32: EXACT},
    unsupported={
        "fp16": "a SavedModel stores the Keras graph as is; for float16 weights export tflite:fp16",
        "dynamic": "TensorFlow has no int8 kernels for SavedModel serving; use tflite:dynamic or onnx:dynamic",
        "int8": "TensorFlow has no int8 kernels for SavedModel serving; use tflite:int8",
        "static": "TensorFlow has no int8 kernels for SavedModel serving; use onnx:static",
    },
    converter="xtremedistil.export.savedmodel.convert:convert",
    predictor="xtremedistil.export.savedmodel.predictor:SavedModelPredictor",
    runtime="savedmodel",
    recognise=_recognise,
    describe="SavedModel",
    bench_rank=1,
    marker="D",
    teacher=TeacherExport((Quantization.FP32,), "xtremedistil.export.savedmodel.teacher:export_teacher",
                          "{name}/1"),
))
