"""A teacher in ONNX Runtime: fp32 through the bounded-memory tf2onnx path, dynamic int8 quantized from it."""
from __future__ import annotations

from pathlib import Path

from xtremedistil.export.base import Quantization
from xtremedistil.export.onnx.convert import convert_function, op_counts, quantize_dynamic


def _convert(job, path: Path):
    """The teacher's graph with GELU written with Erf (ONNX has no Erfc), traced afresh inside the swap: the
    job's function was traced with the exact GELU."""
    from xtremedistil.export.inference import logits_function
    from xtremedistil.export.teacher import erf_gelu

    with erf_gelu(job.model):
        return convert_function(logits_function(job.model, pad_id=job.pad_id), [], path, optimize=False)


def export_teacher(job, temp: Path) -> dict | None:
    from xtremedistil.export.teacher import artifact_name

    fp32 = job.folder / job.fmt.teacher.filename.format(name=artifact_name(job.fmt.name, Quantization.FP32))
    if job.quantization is Quantization.FP32:
        return {"op_counts": op_counts(_convert(job, temp))}
    source, scratch = fp32, None
    if not fp32.exists():       # dynamic asked without fp32: convert one beside it, then remove it
        scratch = temp.with_name(f"{temp.name}.fp32.onnx")
        _convert(job, scratch)
        source = scratch
    try:
        quantize_dynamic(source, temp)
    finally:
        if scratch is not None:
            scratch.unlink(missing_ok=True)
    return None
