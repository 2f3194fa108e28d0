"""A teacher in every runtime: the baseline users compare students with, exported one way.

Each format that can hold a teacher says so in its `FormatConfig.teacher` (quantizations, one artifact per
batch size or not, its exporter); `teacher_plan` lists the artifacts wanted, `export_teacher` writes them.
Every artifact is written beside its final name, checked against TensorFlow on sample ids (fp32 must agree
within FP32_MAX_DELTA, quantized ones record their figures), then put in place, so a killed or failed export
never leaves a half-written artifact under its name. `xtremedistil export TEACHER_DIR` and bench's teacher
preparation (`bench/teachers.py`) both call it.

The ONNX path is the bounded-memory tf2onnx one of `onnx/convert.py`. Measured here, BERT-base-sized (12
layers, 768 wide, 30,522 pieces): plain `tf2onnx.convert.from_function` peaked at 19.7 GB RSS (10.1 GB with
its ONNX optimizers off); this path peaks at 3.6 GB, and 5.5 GB for mBERT's shape (119,547 pieces).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

import xtremedistil  # noqa: F401
import tensorflow as tf

from xtremedistil.distill.files import path_size, put_in_place, remove_path
from xtremedistil.errors import XtremeDistilError, is_disk_full
from xtremedistil.export.base import FormatConfig, Quantization, formats
from xtremedistil.export.inference import logits_function

FP32_MAX_DELTA = 1e-3   # 12 layers of float32 accumulate ~1e-6..1e-5 here; 1e-3 still catches a broken graph
CHECK_ROWS = 16
POINT = "file:teacher-artifact"


@dataclasses.dataclass
class TeacherJob:
    """One teacher artifact to write: what an exporter gets."""

    name: str
    fmt: FormatConfig
    quantization: Quantization
    batch_size: int | None          # fixed batch size (per_batch_size formats), else None
    model: object                   # the TeacherModel
    function: Callable              # input_ids -> {"logits"}, any batch and width (TensorFlow's reference)
    pad_id: int
    seq_len: int
    folder: Path                    # where finished artifacts live (an exporter may reuse a sibling)

    @property
    def target(self) -> Path:
        return self.folder / self.fmt.teacher.filename.format(name=self.name)


def teacher_formats() -> dict[str, FormatConfig]:
    """The registered formats that export teachers, in bench order."""
    return {name: fmt for name, fmt in sorted(formats().items(), key=lambda item: item[1].bench_rank)
            if fmt.teacher is not None}


def artifact_name(format_name: str, quantization: Quantization, batch_size: int | None = None) -> str:
    """`teacher-onnx-fp32`, `teacher-tflite-dynamic-b32`: a teacher artifact's name (and file stem)."""
    return f"teacher-{format_name}-{quantization.value}" + (f"-b{batch_size}" if batch_size is not None else "")


def teacher_plan(batch_sizes: list[int], wanted: dict[str, list[Quantization] | None] | None = None) -> list[tuple]:
    """[(name, format, quantization, batch_size)] for `wanted` ({format: quantizations or None for all};
    None: every teacher format). A quantization a format cannot export for a teacher is one clear error."""
    capable = teacher_formats()
    wanted = wanted if wanted is not None else {name: None for name in capable}
    plan = []
    for name, fmt in capable.items():
        if name not in wanted:
            continue
        quantizations = wanted[name] or list(fmt.teacher.quantizations)
        refused = [q.value for q in quantizations if q not in fmt.teacher.quantizations]
        if refused:
            offered = ", ".join(f"{name}:{q.value}" for q in fmt.teacher.quantizations)
            raise XtremeDistilError(f"a teacher exports to {offered} in {name}, not {', '.join(refused)}")
        for quantization in quantizations:
            for batch_size in (batch_sizes if fmt.teacher.per_batch_size else [None]):
                plan.append((artifact_name(name, quantization, batch_size), fmt, quantization, batch_size))
    unknown = sorted(set(wanted) - set(capable))
    if unknown:
        raise XtremeDistilError(f"{', '.join(unknown)}: no teacher export for this format; teachers export to "
                                f"{', '.join(capable)}")
    return plan


def export_teacher(model, pad_id: int, vocab_size: int, folder: str | Path, seq_len: int, plan: list[tuple],
                   done: set[str] = frozenset(), on_failure: Callable[[str, str], None] | None = None,
                   log: Callable[[str], None] = print) -> Iterator[dict]:
    """Writes each planned artifact not in `done` under `folder`; yields one manifest row per artifact:
    name, format, runtime, quantization, path (relative to `folder`), size_bytes, batch_size, parity, seconds.

    A failed conversion (say, a flatbuffer over 2 GB) raises, or with `on_failure(name, reason)` is reported and
    skipped; a full disk always raises (not the conversion's fault; the run resumes)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    function = logits_function(model, pad_id=pad_id)
    ids = sample_ids(vocab_size, pad_id, CHECK_ROWS, seq_len)
    reference = function(ids)["logits"].numpy()
    for name, fmt, quantization, batch_size in plan:
        if name in done:
            continue
        job = TeacherJob(name, fmt, quantization, batch_size, model, function, pad_id, seq_len, folder)
        started = time.time()
        final = folder / job.target.relative_to(folder).parts[0]   # the file, or a versioned folder as a whole
        temp = final.with_name(f".{final.name}.tmp")
        remove_path(temp)                                    # left by a killed run
        try:
            written = temp / job.target.relative_to(final)     # `temp` itself for a file
            written.parent.mkdir(parents=True, exist_ok=True)
            details = fmt.teacher.export(job, written)
            parity = _parity(fmt, written, ids, reference)
            if quantization is Quantization.FP32 and not parity["max_abs_logit_delta"] <= FP32_MAX_DELTA:
                raise XtremeDistilError(f"{name}: teacher logits differ from TensorFlow by "
                                        f"{parity['max_abs_logit_delta']:.3g} (> {FP32_MAX_DELTA:g}); the conversion "
                                        f"is broken")
        except Exception as err:  # noqa: BLE001 - reported per artifact by the caller's choice
            remove_path(temp)
            if is_disk_full(err) or on_failure is None:
                raise
            lines = str(err).strip().splitlines()
            on_failure(name, f"{type(err).__name__}: {lines[-1][:300] if lines else ''}")
            log(f"{name}: conversion failed, not measured")
            continue
        remove_path(final)                                   # a folder cannot be renamed over
        put_in_place(temp, final, POINT)
        row = {"name": name, "format": fmt.name, "runtime": fmt.runtime, "quantization": quantization.value,
               "path": str(job.target.relative_to(folder)), "size_bytes": path_size(final),
               "batch_size": batch_size, "parity": parity, "seconds": round(time.time() - started, 1)}
        if details:
            row["details"] = details
        log(f"{name} written in {row['seconds']:.0f} s ({row['size_bytes'] / 1e6:.1f} MB, max |Δlogit| vs TF "
            f"{parity['max_abs_logit_delta']:.2e})")
        yield row


def _parity(fmt: FormatConfig, path: Path, ids: np.ndarray, reference: np.ndarray) -> dict:
    logits = fmt.load_predictor(path).predict(ids)
    return {"max_abs_logit_delta": float(np.abs(logits - reference).max()),
            "argmax_agreement": float((logits.argmax(-1) == reference.argmax(-1)).mean()), "compared": len(ids)}


@contextlib.contextmanager
def erf_gelu(model):
    """Within the block, exact GELU (`tf.nn.gelu`, which lowers to `Erfc`: no ONNX kernel) is the same
    function written with `Erf` (transformers' `_gelu`) in every feed-forward block; restored after.

    Same formula, 0.5·x·(1 + erf(x/√2)), so outputs agree to float rounding (~1e-7). Restoring matters: TFLite
    fuses exact GELU into its own kernel, so a TFLite export after an ONNX one must see the original."""
    from transformers import activations_tf

    exact = {tf.nn.gelu, tf.keras.activations.gelu, activations_tf.ACT2FN["gelu"]}
    swapped = []
    for module in model.submodules:
        for attribute in ("intermediate_act_fn", "activation"):
            original = getattr(module, attribute, None)
            if original in exact:
                setattr(module, attribute, activations_tf._gelu)
                swapped.append((module, attribute, original))
    try:
        yield len(swapped)
    finally:
        for module, attribute, original in swapped:
            setattr(module, attribute, original)


def sample_ids(vocab_size: int, pad_id: int, rows: int, seq_len: int, seed: int = 0) -> np.ndarray:
    """Random ids with trailing padding of random length (what real batches look like)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, (rows, seq_len)).astype(np.int32)
    ids[ids == pad_id] = (pad_id + 1) % vocab_size
    for row, length in zip(ids, rng.integers(max(1, seq_len // 4), seq_len + 1, rows)):
        row[length:] = pad_id
    return ids
