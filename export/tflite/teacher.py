"""A teacher as a LiteRT flatbuffer of one batch size (static shapes): fp32 or dynamic-range int8."""
from __future__ import annotations

from pathlib import Path

import xtremedistil  # noqa: F401
import tensorflow as tf

from xtremedistil.export.base import Quantization
from xtremedistil.export.inference import logits_function


def export_teacher(job, temp: Path) -> None:
    fixed = logits_function(job.model, seq_len=job.seq_len, batch_size=job.batch_size, pad_id=job.pad_id)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fixed.get_concrete_function()], job.model)
    if job.quantization is Quantization.DYNAMIC:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    temp.write_bytes(converter.convert())   # a flatbuffer over 2 GB raises here (xlmr-large fp32)
