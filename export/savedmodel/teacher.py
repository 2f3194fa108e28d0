"""A teacher as a SavedModel (TF Serving layout): signature `serving_default(input_ids) -> logits`."""
from __future__ import annotations

from pathlib import Path

import xtremedistil  # noqa: F401
import tensorflow as tf


def export_teacher(job, temp: Path) -> None:
    module = tf.Module()
    module.model, module.serve = job.model, job.function
    tf.saved_model.save(module, str(temp), signatures={"serving_default": job.function.get_concrete_function()})
