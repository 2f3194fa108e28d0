"""Keras student -> SavedModel with a `serving_default` signature on `input_ids`.

Layout `artifacts/savedmodel/NAME/1/`: TensorFlow Serving's `--model_base_path=.../savedmodel/NAME`
loads version 1 as is. Labels travel as an asset (`assets/labels.txt`, one per line, index order).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import xtremedistil  # noqa: F401
import tensorflow as tf

from xtremedistil.distill.files import put_in_place
from xtremedistil.export.base import Artifact, ExportContext, Quantization
from xtremedistil.export.inference import logits_function

VERSION = "1"
LABELS_ASSET = "labels.txt"


class _Serving(tf.Module):
    def __init__(self, model, labels_file: str, seq_len: int):
        super().__init__()
        self.model = model
        self.labels = tf.saved_model.Asset(labels_file)
        self.serve = logits_function(model, seq_len=seq_len)


def convert(ctx: ExportContext, quantization: Quantization) -> list[Artifact]:
    folder = ctx.artifacts_dir / "savedmodel" / ctx.model_name
    final = folder / VERSION
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f".{VERSION}.*.tmp"):     # left by a killed export: never read, only removed
        shutil.rmtree(stale, ignore_errors=True)
    temp = Path(tempfile.mkdtemp(prefix=".1.", suffix=".tmp", dir=folder))
    try:
        (temp / "labels").mkdir()
        labels_file = temp / "labels" / LABELS_ASSET
        labels_file.write_text("".join(f"{label}\n" for label in ctx.labels), encoding="utf-8")
        module = _Serving(ctx.model, str(labels_file), ctx.student_config.seq_len)
        tf.saved_model.save(module, str(temp / "model"), signatures={"serving_default": module.serve})
        shutil.rmtree(final, ignore_errors=True)
        put_in_place(temp / "model", final, "dir:savedmodel")
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return [Artifact(f"savedmodel-{quantization.value}", "savedmodel", quantization, final,
                     details={"signature": "serving_default", "input": "input_ids int32 [batch, seq_len]",
                              "output": "logits float32", "tf_serving_base_path": str(folder)})]
