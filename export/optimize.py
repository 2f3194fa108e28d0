"""tensorflow-model-optimization before conversion: magnitude pruning and weight clustering.

Both wrap the student's Embedding, LSTM (or Bidirectional) and Dense layers, fine-tune briefly on
transfer sentences against target logits (the teacher's cached logits when the bundle's model
folder still has them, else the unoptimized student's own logits), then strip the wrappers so the
result is a plain Keras student that every exporter converts as usual.

Not applied, and why:
- QAT (`quantize_model`) has no quantize config for LSTM / Bidirectional, so it cannot wrap the
  BiLSTM student; its int8 artifacts use post-training quantization (tflite:int8 calibrated on
  transfer data, onnx:static) instead.
- Pruning and clustering make weights sparse or shared but the converters still store them densely:
  size gains show after compression (zip/gzip of the artifact), speed gains need sparse kernels.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

import xtremedistil  # noqa: F401
import tensorflow as tf

from xtremedistil.distill.students import build_student, copy_student_weights
from xtremedistil.errors import XtremeDistilError

logger = logging.getLogger(__name__)

WRAPPED_LAYERS = (tf.keras.layers.Embedding, tf.keras.layers.Dense, tf.keras.layers.Bidirectional,
                  tf.keras.layers.LSTM)


@dataclasses.dataclass
class OptimizeOptions:
    prune: float | None = None     # final sparsity in (0, 1)
    cluster: int | None = None     # number of clusters per weight
    steps: int = 200               # fine-tune steps
    batch_size: int = 32
    learning_rate: float = 1e-4

    def __post_init__(self):
        if self.prune is not None and not 0 < self.prune < 1:
            raise XtremeDistilError(f"--prune must be a sparsity in (0, 1), e.g. 0.5; got {self.prune}")
        if self.cluster is not None and self.cluster < 2:
            raise XtremeDistilError(f"--cluster must be at least 2 clusters; got {self.cluster}")
        if self.steps < 1 or self.batch_size < 1:
            raise XtremeDistilError("--optimize_steps and --optimize_batch_size must be at least 1")

    @property
    def active(self) -> bool:
        return self.prune is not None or self.cluster is not None


def copy_model(model, config) -> tf.keras.Model:
    """A fresh student with `model`'s weights, copied layer by layer by name."""
    return copy_student_weights(model, build_student(config))


def _wrap(model, wrap_layer):
    def clone(layer):
        return wrap_layer(layer) if isinstance(layer, WRAPPED_LAYERS) else layer
    return tf.keras.models.clone_model(model, clone_function=clone)


def _fine_tune(model, input_ids: np.ndarray, targets: np.ndarray, options: OptimizeOptions, callbacks, label: str):
    model.compile(optimizer=tf.keras.optimizers.Adam(options.learning_rate), loss={"logits": "mse"})
    dataset = (tf.data.Dataset.from_tensor_slices((input_ids, {"logits": targets}))
               .shuffle(len(input_ids), seed=0, reshuffle_each_iteration=True).repeat()
               .batch(options.batch_size))
    logger.info("%s: fine-tuning %d steps on %d transfer sentences", label, options.steps, len(input_ids))
    history = model.fit(dataset, steps_per_epoch=options.steps, epochs=1, callbacks=callbacks, verbose=1)
    return float(history.history["loss"][-1])


def prune(model, config, input_ids, targets, options: OptimizeOptions) -> tuple[tf.keras.Model, dict]:
    import tensorflow_model_optimization as tfmot

    sparsity = tfmot.sparsity.keras
    schedule = sparsity.PolynomialDecay(initial_sparsity=0.0, final_sparsity=options.prune, begin_step=0,
                                        end_step=max(1, int(options.steps * 0.8)), frequency=max(1, options.steps // 20))
    def wrap(layer):
        if isinstance(layer, tf.keras.layers.Bidirectional):
            # tfmot's prune registry knows LSTM but not the Bidirectional wrapper: name its kernels.
            cells = (layer.forward_layer.cell, layer.backward_layer.cell)
            layer.get_prunable_weights = lambda: [w for c in cells for w in (c.kernel, c.recurrent_kernel)]
        return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule)
    wrapped = _wrap(copy_model(model, config), wrap)
    loss = _fine_tune(wrapped, input_ids, targets, options, [sparsity.UpdatePruningStep()], f"prune {options.prune:.0%}")
    stripped = sparsity.strip_pruning(wrapped)
    return copy_model(stripped, config), {"prune": {"final_sparsity": options.prune, "measured_sparsity": sparsity_of(stripped),
                                                    "fine_tune_loss": loss}}


def cluster(model, config, input_ids, targets, options: OptimizeOptions) -> tuple[tf.keras.Model, dict]:
    import tensorflow_model_optimization as tfmot

    clustering = tfmot.clustering.keras
    centroids = clustering.CentroidInitialization.KMEANS_PLUS_PLUS
    wrapped = _wrap(copy_model(model, config), lambda layer: clustering.cluster_weights(
        layer, number_of_clusters=options.cluster, cluster_centroids_init=centroids))
    loss = _fine_tune(wrapped, input_ids, targets, options, [], f"cluster {options.cluster}")
    stripped = clustering.strip_clustering(wrapped)
    return copy_model(stripped, config), {"cluster": {"clusters": options.cluster, "fine_tune_loss": loss,
                                                      "max_unique_values": max_unique_values(stripped)}}


def sparsity_of(model) -> float:
    """Fraction of exact zeros over the kernels/embeddings (biases excluded)."""
    zeros = total = 0
    for weight in model.weights:
        if "bias" in weight.name or weight.dtype != tf.float32 or len(weight.shape) < 2:
            continue
        values = weight.numpy()
        zeros += int((values == 0).sum())
        total += values.size
    return zeros / total if total else 0.0


def max_unique_values(model) -> int:
    return max((len(np.unique(w.numpy())) for w in model.weights
                if "bias" not in w.name and w.dtype == tf.float32 and len(w.shape) >= 2), default=0)


def find_teacher_logits(bundle_folder: Path, input_ids: np.ndarray) -> np.ndarray | None:
    """Teacher logits for `input_ids` from the distillation cache beside the bundle, if it is there."""
    from xtremedistil.distill.cache import TeacherCache
    from xtremedistil.layout import RunLayout

    for folder in sorted(RunLayout(Path(bundle_folder).parent).cache.glob("transfer-*")):
        try:
            cache = TeacherCache(folder)
        except Exception:  # noqa: BLE001 - an incomplete cache is simply not used
            continue
        ids, logits = [], []
        for k in range(len(cache.chunks)):
            chunk = cache.chunk(k)
            ids.append(np.asarray(chunk["input_ids"]))
            logits.append(np.asarray(chunk["logits"], dtype=np.float32))
            if sum(len(i) for i in ids) >= len(input_ids):
                break
        ids, logits = np.concatenate(ids)[:len(input_ids)], np.concatenate(logits)[:len(input_ids)]
        if ids.shape == input_ids.shape and np.array_equal(ids, input_ids):
            return logits
    return None


def optimize(model, config, bundle_folder: Path, input_ids: np.ndarray, options: OptimizeOptions):
    """Applies pruning and/or clustering; returns (plain Keras student, manifest details)."""
    if not options.active:
        return model, {}
    if input_ids is None or len(input_ids) == 0:
        raise XtremeDistilError("--prune/--cluster fine-tune on transfer sentences and none were found: "
                                "pass --representative_file")
    targets = find_teacher_logits(bundle_folder, input_ids)
    source = "teacher (distillation cache)"
    if targets is None:
        targets = model.predict(input_ids, batch_size=options.batch_size, verbose=0)["logits"]
        source = "unoptimized student (no teacher cache beside the bundle)"
    logger.info("pruning/clustering targets: %s", source)
    details = {"fine_tune_targets": source, "fine_tune_sentences": int(len(input_ids)), "steps": options.steps}
    if options.prune is not None:
        model, extra = prune(model, config, input_ids, targets, options)
        details.update(extra)
    if options.cluster is not None:
        model, extra = cluster(model, config, input_ids, targets, options)
        details.update(extra)
    return model, details
