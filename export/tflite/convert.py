"""Keras student -> TFLite flatbuffers (fp32, fp16, dynamic-range int8, full-integer int8).

Why static batch: converting the dynamic-batch graph leaves the LSTM as a `While` loop of unfused
ops (slow, logits off by ~1e-2, and dynamic-range quantization crashed on it). Rebuilding the
student with a fixed batch (`Input(batch_size=B)`) and converting with `from_keras_model` lets the
converter emit the fused `UNIDIRECTIONAL_SEQUENCE_LSTM` kernel (a bidirectional layer becomes two),
which matches Keras to ~1e-8 and quantizes cleanly. One artifact per requested batch size.

Why unrolled above batch 1: the fused LSTM kernel scales linearly with the batch on x86 (measured,
300/600 BiLSTM, seq 32, 2 threads: 20 ms at batch 1, 617 ms at batch 32). Unrolling the LSTM over
the static sequence gives per-step FULLY_CONNECTED ops that XNNPACK runs as real matrix products:
81 ms at batch 32, same weights, same logits (~1e-8); at batch 1 the fused kernel stays (20 vs 22 ms).
"""
from __future__ import annotations



import xtremedistil  # noqa: F401
import tensorflow as tf

from xtremedistil.distill.students import build_student, copy_student_weights
from xtremedistil.errors import XtremeDistilError
from xtremedistil.export.base import Artifact, ExportContext, Quantization
from xtremedistil.distill.files import written_in_place

CALIBRATION_EXAMPLES = 512


def static_logits_model(ctx: ExportContext, batch_size: int) -> tf.keras.Model:
    """A copy of the student with a fixed batch size (LSTM unrolled above batch 1), logits only."""
    static = copy_student_weights(ctx.model, build_student(ctx.student_config, batch_size=batch_size,
                                                           unroll=batch_size > 1))
    return tf.keras.Model(static.input, static.output["logits"], name=f"{static.name}_b{batch_size}")


def _converter(model, quantization: Quantization, representative, batch_size: int, strict_int8: bool = True):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization is Quantization.FP16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization is Quantization.DYNAMIC:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization is Quantization.INT8:
        ids = representative[:CALIBRATION_EXAMPLES]

        def dataset():
            for start in range(0, len(ids) - batch_size + 1, batch_size):
                yield [ids[start:start + batch_size]]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = (
            [tf.lite.OpsSet.TFLITE_BUILTINS_INT8] if strict_int8
            else [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS])
    return converter


def convert(ctx: ExportContext, quantization: Quantization) -> list[Artifact]:
    representative = None
    if quantization is Quantization.INT8:
        representative = ctx.representative("tflite:int8")
        if len(representative) < max(ctx.tflite_batch_sizes):
            raise XtremeDistilError(
                f"tflite:int8 needs at least {max(ctx.tflite_batch_sizes)} representative sentences "
                f"(one calibration batch), got {len(representative)}")
    artifacts = []
    for batch_size in ctx.tflite_batch_sizes:
        model = static_logits_model(ctx, batch_size)
        details = {"batch_size": batch_size, "seq_len": ctx.student_config.seq_len, "lstm": "unrolled" if batch_size > 1 else "fused"}
        try:
            flatbuffer = _converter(model, quantization, representative, batch_size).convert()
        except Exception as err:  # noqa: BLE001 - the converter raises many types; retry is the fix
            if quantization is not Quantization.INT8:
                raise XtremeDistilError(f"tflite:{quantization.value} conversion failed: {err}") from err
            # Some kernels have no int8 version; keep them in float (recorded in the manifest).
            flatbuffer = _converter(model, quantization, representative, batch_size, strict_int8=False).convert()
            details["float_fallback"] = f"strict int8 failed ({type(err).__name__}); float kernels allowed"
        if quantization is Quantization.INT8:
            details["calibration_examples"] = int(min(len(representative), CALIBRATION_EXAMPLES)
                                                  // batch_size * batch_size)
        details["op_counts"] = op_counts(flatbuffer)
        name = f"tflite-{quantization.value}-b{batch_size}"
        target = ctx.artifacts_dir / f"{name}.tflite"
        with written_in_place(target, "file:tflite") as temp:
            temp.write_bytes(flatbuffer)
        artifacts.append(Artifact(name, "tflite", quantization, target, batch_size=batch_size, details=details))
    return artifacts


def op_counts(flatbuffer: bytes) -> dict[str, int]:
    """Builtin op names of a TFLite model, with counts (golden checks: the fused LSTM must be there)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    counts: dict[str, int] = {}
    for subgraph in model.subgraphs:
        for operator in subgraph.operators:
            code = model.operatorCodes[operator.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            name = names.get(builtin, str(builtin))
            if name == "CUSTOM":
                name = f"CUSTOM:{code.customCode.decode() if code.customCode else '?'}"
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
