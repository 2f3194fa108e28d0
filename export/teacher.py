"""The teacher in ONNX Runtime: the baseline users compare students with.

`export_teacher_onnx` converts any `TeacherModel` (a fine-tuned teacher folder, or a randomly
initialised one of a given shape for latency) through the bounded-memory tf2onnx path in
`onnx/convert.py`. Measured here, BERT-base-sized (12 layers, 768 wide, 30,522 pieces): plain
`tf2onnx.convert.from_function` peaked at 19.7 GB RSS (10.1 GB with its ONNX optimizers off); this
path peaks at 3.6 GB, and 5.5 GB for mBERT's shape (119,547 pieces).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import xtremedistil  # noqa: F401
import tensorflow as tf

from xtremedistil.errors import XtremeDistilError
from xtremedistil.export.base import Quantization
from xtremedistil.export.inference import logits_function
from xtremedistil.export.onnx.convert import convert_function, op_counts, quantize_dynamic

TEACHER_QUANTIZATIONS = (Quantization.FP32, Quantization.DYNAMIC)
FP32_MAX_DELTA = 1e-3   # 12 layers of float32 accumulate ~1e-6..1e-5 here; 1e-3 still catches a broken graph


def erf_gelu(model) -> int:
    """Swaps exact GELU (`tf.nn.gelu`, which lowers to `Erfc`: no ONNX/TFLite kernel) for the same
    function written with `Erf` (transformers' `_gelu`) in every feed-forward block; returns the count.

    Same formula, 0.5·x·(1 + erf(x/√2)), so outputs agree to float rounding (~1e-7)."""
    from transformers import activations_tf

    exact = {tf.nn.gelu, tf.keras.activations.gelu, activations_tf.ACT2FN["gelu"]}
    swapped = 0
    for module in model.submodules:
        for attribute in ("intermediate_act_fn", "activation"):
            if getattr(module, attribute, None) in exact:
                setattr(module, attribute, activations_tf._gelu)
                swapped += 1
    return swapped


def sample_ids(vocab_size: int, pad_id: int, rows: int, seq_len: int, seed: int = 0) -> np.ndarray:
    """Random ids with trailing padding of random length (what real batches look like)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, (rows, seq_len)).astype(np.int32)
    ids[ids == pad_id] = (pad_id + 1) % vocab_size
    for row, length in zip(ids, rng.integers(max(1, seq_len // 4), seq_len + 1, rows)):
        row[length:] = pad_id
    return ids


def export_teacher_onnx(model, pad_id: int, vocab_size: int, folder: str | Path, seq_len: int = 32,
                        quantizations=TEACHER_QUANTIZATIONS, check_rows: int = 16) -> list[dict]:
    """Writes `folder/teacher-onnx-<q>.onnx` per quantization; returns one manifest row each.

    fp32 must match TensorFlow within FP32_MAX_DELTA on sample ids; int8 rows record the figures.
    """
    folder = Path(folder)
    erf_gelu(model)
    function = logits_function(model, pad_id=pad_id)
    ids = sample_ids(vocab_size, pad_id, check_rows, seq_len)
    reference = function(ids)["logits"].numpy()
    base = folder / "teacher-onnx-fp32.onnx"
    rows = []
    started = time.time()
    graph = convert_function(function, [], base, optimize=False)
    counts = op_counts(graph)
    del graph
    for quantization in quantizations:
        target = folder / f"teacher-onnx-{quantization.value}.onnx"
        if quantization is Quantization.DYNAMIC:
            quantize_dynamic(base, target)
        elif quantization is not Quantization.FP32:
            raise XtremeDistilError(f"teacher ONNX export supports fp32 and dynamic, not {quantization.value}")
        from xtremedistil.export.onnx.predictor import OnnxPredictor

        logits = OnnxPredictor(target).predict(ids)
        delta = float(np.abs(logits - reference).max())
        agreement = float((logits.argmax(-1) == reference.argmax(-1)).mean())
        row = {"name": target.stem, "format": "onnx", "quantization": quantization.value,
               "path": str(target), "size_bytes": target.stat().st_size,
               "parity": {"max_abs_logit_delta": delta, "argmax_agreement": agreement, "compared": len(ids)},
               "seconds": round(time.time() - started, 1), "details": {"op_counts": counts if quantization is Quantization.FP32 else None}}
        if quantization is Quantization.FP32 and not delta <= FP32_MAX_DELTA:
            raise XtremeDistilError(f"{target}: teacher ONNX logits differ from TensorFlow by {delta:.3g} "
                                    f"(> {FP32_MAX_DELTA:g}); the conversion is broken")
        rows.append(row)
        started = time.time()
    if Quantization.FP32 not in quantizations:
        base.unlink()
    return rows
