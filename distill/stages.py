"""XtremeDistil's multi-stage schedule, declared as data and run with resumable checkpoints.

- Stage 1: the student's projection mimics teacher layer `teacher_layer` (MSE) on transfer data;
  every layer below the output layer trains.
- Stage 2: the student's logits mimic the teacher's (MSE, or KL with a temperature) on transfer
  data: first only the top layer group trains, then one more group per sub-stage, top-down.
- Stage 3: cross-entropy on the labeled train set with the same gradual unfreezing.

Each sub-stage: Adam with cosine decay from 1e-3 to 1e-8, early stopping on a validation loss
(teacher outputs on dev for stages 1-2, dev labels for stage 3), a checkpoint, and the dev metric.
Every sub-stage starts from the previous checkpoint *file* with an RNG seeded from
(seed, sub-stage, epoch), so a run killed at any point and rerun gives the same result as an
uninterrupted one. Within a sub-stage, every finished epoch is saved too (weights, optimizer state, the
best weights so far, the history: `NN-name.epoch.npz`, recorded in state.json under "partial"), so a run
killed in a long sub-stage loses at most the epoch it was in. The best sub-stage is chosen on the dev
metric, never on test.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from xtremedistil.distill import losses as losses_lib
from xtremedistil.distill import metrics as metrics_lib
from xtremedistil.distill.batching import bucketed_batches, width
from xtremedistil.distill.machine import CpuWatch, cpu_info, shared_note
from xtremedistil.distill.files import file_crc32, read_json, save_keras_weights, write_json_atomic, written_in_place
from xtremedistil.distill.decoding import recorded_decoding
from xtremedistil.distill.cluster import Cluster, lost_worker
from xtremedistil.distill.tokenization import IGNORE_INDEX, Encoded
from xtremedistil.distill.options import parse_stages
from xtremedistil.errors import XtremeDistilError
from xtremedistil.layout import STATE_FILE
from xtremedistil.faults import kill_point
from xtremedistil.settings import Settings, setting

logger = logging.getLogger(__name__)

HIDDEN, LOGITS, LABELS = "hidden", "logits", "labels"
INIT_CHECKPOINT = "00-init.weights.h5"
SUPERSEDED = "superseded"   # sub-stages a changed setting made stale, kept one generation
IDS_SPEC = tf.TensorSpec([None, None], tf.int32)
WEIGHT = "weight"    # per item: 1 where the loss counts (tagging: first piece of each word)
PRECISIONS = ("float32", "bf16")
KERAS_POLICIES = {"float32": "float32", "bf16": "mixed_bfloat16"}
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclasses.dataclass(frozen=True)
class SubStage:
    """One step of the schedule: which target, which top layer groups train."""

    index: int
    stage: int
    name: str
    target: str
    trainable_groups: int   # how many groups, counted from the top, train in this sub-stage
    loss: str = "mse"       # a name in `losses.LOSSES`

    @property
    def checkpoint(self) -> str:
        return f"{self.index:02d}-{self.name}.weights.h5"


def schedule(n_groups: int, stages=(1, 2, 3), distil_loss: str = "mse") -> list[SubStage]:
    """The XtremeDistil-v2 schedule for a student with `n_groups` layer groups (bottom-up).

    Losses per stage: 1 `mse` on the hidden target (always), 2 `distil_loss` on the teacher's
    logits, 3 `cross_entropy` on labels.
    """
    plan: list[SubStage] = []

    def add(stage, name, target, groups, loss):
        plan.append(SubStage(len(plan) + 1, stage, name, target, groups, loss))

    if 1 in stages:
        add(1, "stage1", HIDDEN, n_groups, "mse")   # all but the logits group: see _set_trainable
    for stage, target, loss in ((2, LOGITS, distil_loss), (3, LABELS, "cross_entropy")):
        if stage in stages:
            for k in range(1, n_groups + 1):
                add(stage, f"stage{stage}-top{k}", target, k, loss)
    return plan


@dataclasses.dataclass
class StageConfig(Settings):
    """The stages' training settings (the `distil_*` flags); every sub-stage's epochs are early-stopped on its
    validation loss, with Adam decaying from `learning_rate` to `final_learning_rate`."""

    epochs: int = setting(10, "maximum epochs per sub-stage, early-stopped on validation loss",
                          flag="distil_epochs", minimum=1)
    batch_size: int = setting(128, "student batch size in every stage", flag="distil_batch_size", minimum=1)
    learning_rate: float = setting(1e-3, flag=None, positive=True)
    final_learning_rate: float = setting(1e-8, flag=None, positive=True)
    patience: int = setting(2, "sub-stage early-stopping patience in epochs", flag="distil_patience", minimum=0)
    distil_loss: str = setting("mse", "stage-2 logit loss (stage 1 is always mse on the hidden target, stage 3 "
                                      "cross-entropy on labels)", choices=losses_lib.distil_losses)
    temperature: float = setting(1.0, "softmax temperature of the kl loss", positive=True)
    seed: int = setting(42, flag=None)
    precision: str = setting(
        "float32", "arithmetic of the stages' training steps: float32, or bf16 (Keras mixed_bfloat16: weights and "
                   "optimizer state stay float32, matmuls run in bfloat16; BiLSTM training measured 1.4x (300/600) "
                   "and 1.2x (50/200) faster on a CPU with AMX bf16 instructions, slower on one without them). "
                   "Dev and test metrics, checkpoints and the bundle are float32 either way",
        flag="distil_precision", choices=PRECISIONS)
    label_epochs: int | None = setting(
        None, "maximum epochs of the sub-stages on labeled data (stage 3, or the labels-only ablation) when they "
              "should differ from a large transfer set's; 0 or unset = --distil_epochs",
        flag="distil_label_epochs", minimum=0)
    final_epochs: int | None = setting(
        None, "maximum epochs of the last stage-2 sub-stage, the one where every layer learns the teacher's "
              "logits (where a time budget is best spent); 0 or unset = --distil_epochs",
        flag="distil_final_epochs", minimum=0)

    def epochs_for(self, sub: "SubStage", n_groups: int) -> int:
        """Maximum epochs of a sub-stage: `label_epochs` for the labeled set, `final_epochs` for the stage-2
        sub-stage that trains all `n_groups` groups, else `epochs`.

        Why the last stage-2 sub-stage apart: on SST-2 (BiLSTM 300/300, one epoch per sub-stage) it was still
        improving fast when it stopped (test 82.8 -> 85.4 in its one epoch, then 85.8 and 86.2 in two more),
        while the partly frozen sub-stages before it gain little; a budget is best spent there."""
        return _epochs_for(sub, n_groups, self.epochs, self.final_epochs, self.label_epochs)

    def check(self) -> None:
        # 0 = "the same as --distil_epochs", stored as None (run settings recorded in state.json compare it)
        self.label_epochs = self.label_epochs or None
        self.final_epochs = self.final_epochs or None


def plan_substages(stages: str, n_groups: int, distil_loss: str) -> list[SubStage]:
    """The sub-stages to run for `--stages`: XtremeDistil's (a subset of stages 1-3), or the labels-only
    ablation (one sub-stage, every layer on labels)."""
    if stages == "labels":
        return [SubStage(1, 3, "labels-only", LABELS, n_groups, "cross_entropy")]
    return schedule(n_groups, parse_stages(stages), distil_loss)


@contextlib.contextmanager
def keras_policy(precision: str):
    """Keras layers built inside compute in `precision` ("float32" or "bf16"); their weights are float32."""
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(KERAS_POLICIES[precision])
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def training_model(model: tf.keras.Model, build: Callable[[], tf.keras.Model], precision: str) -> tf.keras.Model:
    """The model the stages train: `model` itself in float32; for bf16, a twin made by `build()` under the mixed
    policy, starting from `model`'s weights. The twin's variables are float32 too, so its checkpoints load into
    `model` (which computes the dev metrics and becomes the bundle) and into every exporter unchanged."""
    if precision == "float32":
        return model
    _, flags = cpu_info()
    if flags is not None and not flags & set(BF16_CPU_FLAGS):
        logger.warning("--distil_precision %s: this CPU has neither %s; bfloat16 matmuls are emulated and "
                       "training will likely be slower than float32", precision, " nor ".join(BF16_CPU_FLAGS))
    with keras_policy(precision):
        twin = build()
    twin.set_weights(model.get_weights())
    return twin


@dataclasses.dataclass
class StageData:
    """Where each target's batches come from: dicts of `input_ids`, the target and `weight`, in
    length-bucketed batches cut to their longest sentence."""

    transfer: object          # TeacherCache
    dev_teacher: object       # TeacherCache over the dev sentences
    train: Encoded
    dev: Encoded
    dev_examples: list
    labels: list[str]
    tagging: bool
    pad_id: int = 0

    def batches(self, target: str, batch_size: int, rng=None, validation=False):
        if target == LABELS:
            encoded = self.dev if validation else self.train
            row_lengths = encoded.attention_mask.sum(axis=1)
            for rows in bucketed_batches(row_lengths, batch_size, rng):
                rows = np.sort(rows)
                w = width(row_lengths[rows], encoded.input_ids.shape[1])
                labels = encoded.labels[rows, :w] if self.tagging else encoded.labels[rows]
                weight = (labels != IGNORE_INDEX) if self.tagging else np.ones(len(rows), bool)
                yield {"input_ids": encoded.input_ids[rows, :w], LABELS: labels, WEIGHT: weight.astype(np.float32)}
        else:
            cache = self.dev_teacher if validation else self.transfer
            for batch in cache.batches(batch_size, rng, self.pad_id):
                if self.tagging:
                    weight = batch["word_start"].astype(np.float32)
                else:
                    weight = np.ones(len(batch["input_ids"]), np.float32)
                yield {"input_ids": batch["input_ids"], target: batch[target].astype(np.float32), WEIGHT: weight}

    def steps(self, target: str, batch_size: int) -> int:
        if target == LABELS:
            return math.ceil(len(self.train) / batch_size)
        return sum(math.ceil(c["rows"] / batch_size) for c in self.transfer.chunks)

    def spec(self, target: str) -> dict:
        """The `tf.TensorSpec` of one replica's batch for `target` (batch and width unknown)."""
        probe = next(self.batches(target, 1, validation=True))
        per_position = {"input_ids", WEIGHT} if self.tagging else {"input_ids"}
        if self.tagging:
            per_position.add(target)
        spec = {name: tf.TensorSpec((None, None) + array.shape[2:] if name in per_position else (None,) + array.shape[1:],
                                    tf.as_dtype(array.dtype)) for name, array in probe.items()}
        return {**spec, "count": tf.TensorSpec((), tf.float32)}


def replica_batches(batches, replicas: int, first: int, local: int):
    """Splits each global batch into `replicas` parts and yields the parts `first..first+local-1`.

    Each part carries the global batch's loss denominator (`count`, its total weight). A global
    batch with fewer rows than replicas (possible only for the last one) is skipped on every worker
    alike: a replica cannot run an empty batch through an LSTM.
    """
    for batch in batches:
        n = len(batch["input_ids"])
        if n < replicas:
            logger.debug("skipping a last batch of %d rows: fewer rows than the %d replicas", n, replicas)
            continue
        count = np.float32(batch[WEIGHT].sum())
        parts = np.array_split(np.arange(n), replicas)
        for replica in range(first, first + local):
            take = parts[replica]
            yield {**{name: array[take[0]:take[-1] + 1] for name, array in batch.items()}, "count": count}


def learning_rate_schedule(config: StageConfig, steps_per_epoch: int, epochs: int | None = None):
    """Cosine decay from `learning_rate` to `final_learning_rate` over every step of the sub-stage."""
    return tf.keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(1, steps_per_epoch * (epochs or config.epochs)),
        alpha=config.final_learning_rate / config.learning_rate)


def _set_trainable(groups, sub: SubStage) -> None:
    n = len(groups)
    if sub.target == HIDDEN:
        trainable = set(range(n - 1))              # everything below the logits layer
    else:
        trainable = set(range(n - sub.trainable_groups, n))
    for i, group in enumerate(groups):
        for layer in group:
            layer.trainable = i in trainable


def _save_weights(model, path: Path) -> int:
    """Writes a checkpoint atomically; returns its CRC-32 (recorded in state.json, checked on resume)."""
    # the temp keeps the suffix: it picks the Keras weights format
    with written_in_place(path, "weights:checkpoint", path.with_name(f".tmp-{path.name}")) as temp:
        save_keras_weights(model, temp)
        return file_crc32(temp)


def _save_arrays(path: Path, arrays: dict) -> int:
    """Writes an `.npz` atomically; returns its CRC-32."""
    with written_in_place(path, "npz:epoch", path.with_name(f".tmp-{path.name}")) as temp:
        with open(temp, "wb") as handle:
            np.savez(handle, **arrays)
        return file_crc32(temp)


def _intact(path: Path, crc: int | None) -> bool:
    """The checkpoint exists and, when its CRC-32 was recorded, still has it (not cut off or garbled)."""
    if not path.exists():
        return False
    if crc is not None and file_crc32(path) != crc:
        logger.warning("%s is damaged (its CRC-32 differs from the one recorded when it was written): "
                       "training that sub-stage again", path)
        return False
    return True


class StageRunner:
    """Runs the schedule on `model`, checkpointing into `folder`; resumable.

    Under a multi-worker `cluster` every worker runs the same schedule on its slice of each global
    batch; only the chief writes checkpoints and `state.json` and computes dev metrics.
    """

    def __init__(self, model, groups, data: StageData, config: StageConfig, folder: str | Path,
                 on_batch: Callable[[SubStage, int], None] | None = None, cluster: Cluster | None = None,
                 settings: dict | None = None, evaluate: Callable[[], dict] | None = None, decoding: str = "argmax",
                 inference: tf.keras.Model | None = None):
        self.model, self.groups, self.data, self.config = model, groups, data, config
        # The float32 model dev metrics are computed with when `model` trains in another precision (same weights).
        self.inference = inference
        self.decoding = decoding if data.tagging else "argmax"     # how tagging dev metrics read word tags
        self.evaluate = evaluate    # a run without dev labels passes its own (None: `dev_metrics_by_decoding`)
        self.settings = settings
        self.folder = Path(folder)
        self.cluster = cluster or Cluster(tf.distribute.get_strategy(), "default")
        if self.cluster.is_chief:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.on_batch = on_batch
        self.state_path = self.folder / STATE_FILE
        self.state = (read_json(self.state_path, fix="delete it to train every sub-stage again (checkpoints "
                                "without it are not trusted)") if self.state_path.exists() else {"completed": {}})

    def _check_settings(self, plan: list[SubStage]) -> None:
        """Keeps only the finished sub-stages whose weights this run's settings would reproduce.

        A sub-stage depends on the student, the transfer and dev sets, the stage options (its own epoch count
        among the three) and the sub-stages before it. When an edited recipe changes something only later
        sub-stages depend on (say `distil_final_epochs`), the sub-stages before the first affected one are
        kept and the rest trained again; what they replace is moved to `superseded/` (one generation), not
        deleted. When even the first sub-stage is affected nothing is reusable and nothing is touched: the
        run stops and says so, since reusing a student name for another experiment is the likelier cause."""
        recorded = self.state.get("settings")
        trained = self.state["completed"] or self.state.get("partial")
        if self.settings is not None and recorded is not None and trained:
            n_groups = len(self.groups)
            changed = next((sub for sub in plan if _differences(_sub_stage_settings(recorded, sub, n_groups),
                                                                _sub_stage_settings(self.settings, sub, n_groups))),
                           None)
            if changed is not None:
                differ = _differences(recorded, self.settings)
                if changed is plan[0]:
                    raise XtremeDistilError(
                        f"{self.folder}: its sub-stages were trained with other settings ({', '.join(differ)} "
                        f"differ); give this run its own --student_name, or move that folder away to train it again")
                self._supersede(plan[plan.index(changed):], differ)
        elif self.settings is not None and recorded is None and trained:
            logger.warning("%s: no settings recorded by the run that trained it (an older version); resuming it "
                           "as it is and recording this run's settings", self.folder)
        if self.settings is not None:
            self.state["settings"] = self.settings

    def _supersede(self, affected: list[SubStage], differ: list[str]) -> None:
        """Moves the checkpoints and records of `affected` sub-stages (and an unfinished one among them) to
        `superseded/`; they are trained again by this run."""
        names = {sub.name for sub in affected}
        moved = [name for name in self.state["completed"] if name in names]
        partial = self.state.get("partial")
        partial = partial if partial and partial.get("name") in names else None   # unfinished among them
        if partial:
            moved.append(f"{partial['name']} (unfinished)")
        logger.warning("%s: settings changed (%s) from %s on: keeping the %d sub-stage(s) before it, training "
                       "%s again; the earlier results are moved to %s", self.folder, ", ".join(differ),
                       affected[0].name, affected[0].index - 1, ", ".join(moved) or "nothing finished",
                       self.folder / SUPERSEDED)
        if not self.cluster.is_chief:
            return
        old = self.folder / SUPERSEDED
        if old.exists():
            shutil.rmtree(old)
        old.mkdir()
        kept = {"settings": self.state.get("settings"), "completed": {}}
        for sub in affected:
            record = self.state["completed"].pop(sub.name, None)
            if record is not None:
                kept["completed"][sub.name] = record
            if (self.folder / sub.checkpoint).exists():
                os.replace(self.folder / sub.checkpoint, old / sub.checkpoint)
        if partial:
            kept["partial"] = self.state.pop("partial")
            if (self.folder / partial["file"]).exists():
                os.replace(self.folder / partial["file"], old / partial["file"])
        write_json_atomic(old / STATE_FILE, kept)
        write_json_atomic(self.state_path, self.state)

    def _output_key(self, target):
        return "projection" if target == HIDDEN else "logits"

    def _loss_sum(self, sub: SubStage, batch, output):
        output = tf.cast(output, tf.float32)     # bf16 outputs of a mixed-precision student: the loss is float32
        return losses_lib.weighted_sum(sub.loss, batch[sub.target], output, batch[WEIGHT], self.config.temperature)

    def _validation_loss(self, sub: SubStage, forward) -> float:
        key = self._output_key(sub.target)
        total, count = 0.0, 0.0
        for batch in self.data.batches(sub.target, self.config.batch_size, validation=True):
            total += float(self._loss_sum(sub, batch, forward(batch["input_ids"])[key]))
            count += float(batch[WEIGHT].sum())
        return self.cluster.agree(total / max(count, 1.0))

    def dev_metrics_by_decoding(self) -> dict[str, dict]:
        """{decoding: dev metrics} for every decoding of tags (argmax only for classification), from one pass of
        the model over dev: a sub-stage's record keeps them all, so a run switched to another `--tag_decoding`
        chooses its sub-stage without scoring any checkpoint again."""
        model = self.model
        if self.inference is not None:
            self.inference.set_weights(self.model.get_weights())
            model = self.inference
        logits = predict_student_logits(model, self.data.dev.input_ids, self.config.batch_size)
        return metrics_lib.metrics_by_decoding(logits, self.data.dev, self.data.dev_examples, self.data.labels,
                                               self.data.tagging)

    def _evaluate(self) -> tuple[dict, dict | None]:
        """(dev metrics with this run's decoding, {decoding: dev metrics} or None for a run's own `evaluate`)."""
        if self.evaluate is not None:
            return self.evaluate(), None
        by_decoding = self.dev_metrics_by_decoding()
        return by_decoding[self.decoding], by_decoding

    def _dataset(self, sub: SubStage, rng: np.random.Generator):
        """This worker's replicas' batches of one epoch, through `tf.data`, distributed by the strategy."""
        spec, replicas = self.data.spec(sub.target), self.cluster.replicas

        def dataset_fn(context: tf.distribute.InputContext):
            local = replicas // context.num_input_pipelines
            first = context.input_pipeline_id * local
            return tf.data.Dataset.from_generator(
                lambda: replica_batches(self.data.batches(sub.target, self.config.batch_size, rng),
                                        replicas, first, local),
                output_signature=spec,
            ).prefetch(2)

        options = tf.distribute.InputOptions(experimental_fetch_to_device=False)
        return self.cluster.strategy.distribute_datasets_from_function(dataset_fn, options)

    def _train(self, sub: SubStage) -> dict:
        config, model, strategy = self.config, self.model, self.cluster.strategy
        _set_trainable(self.groups, sub)
        steps = self.data.steps(sub.target, config.batch_size)
        epochs = config.epochs_for(sub, len(self.groups))
        with strategy.scope():
            optimizer = tf.keras.optimizers.Adam(learning_rate_schedule(config, steps, epochs))
        key = self._output_key(sub.target)

        def replica_step(batch):
            with tf.GradientTape() as tape:
                value = self._loss_sum(sub, batch, model(batch["input_ids"], training=True)[key]) / batch["count"]
            variables = model.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(value, variables), variables))
            return value

        def step(batch):
            return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(batch,)), axis=None)

        # Traced afresh every epoch, after the epoch's seed is set: dropout's random ops keep their state inside
        # a traced function, so with one trace per sub-stage epoch k's masks would depend on epochs 1..k-1 and a
        # run resumed at epoch k would differ from an uninterrupted one. One trace per epoch covers the whole
        # epoch (the dataset's element spec leaves batch and width unknown: no retracing inside it).
        forward = inference_function(model)
        best_loss, best_weights, waited, history, first = math.inf, None, 0, [], 0
        resumed = self._load_epochs(sub, epochs, optimizer)
        if resumed is not None:
            best_loss, best_weights, waited, history = resumed
            first = len(history)
        batches_done = first * steps
        for epoch in range(first, epochs):
            tf.keras.utils.set_random_seed(_seed(config.seed, sub.index, epoch))
            rng = np.random.default_rng([config.seed, sub.index, epoch])
            total, n, rows, epoch_started, cpu = 0.0, 0, 0, time.time(), CpuWatch()
            dataset = self._dataset(sub, rng)
            train_step = tf.function(step, input_signature=[dataset.element_spec])
            bar = tqdm(dataset, total=steps, leave=False, disable=not self.cluster.is_chief or bool(os.environ.get("TQDM_DISABLE")),
                       desc=f"{sub.name} epoch {epoch + 1}/{epochs}", unit="batch", mininterval=1.0)
            for n, batch in enumerate(bar, start=1):
                total += float(train_step(batch))
                kill_point("stage:batch")
                rows += _local_rows(batch)
                batches_done += 1
                if self.on_batch is not None:
                    self.on_batch(sub, batches_done)
                if n % 20 == 0:
                    bar.set_postfix(loss=f"{total / n:.4g}")
            train_seconds, others = time.time() - epoch_started, cpu.others_share()
            val = self._validation_loss(sub, forward)
            if not (math.isfinite(total) and math.isfinite(val)):
                raise XtremeDistilError(
                    f"{sub.name} epoch {epoch + 1}: the {'training' if not math.isfinite(total) else 'validation'} "
                    f"loss is {total / max(n, 1) if not math.isfinite(total) else val} (not finite); likely causes: "
                    f"a learning rate too high for this student, or non-finite teacher outputs in the cache. "
                    f"Completed sub-stages in {self.folder} are intact; fix the cause and rerun to resume")
            history.append({"epoch": epoch + 1, "train_loss": total / max(n, 1), "val_loss": val,
                            "sentences_per_second": round(rows * self.cluster.workers / max(train_seconds, 1e-9), 1),
                            "seconds": round(time.time() - epoch_started, 1), "others_cpu_share": others})
            # (several workers on one machine are each other's "other processes": the note is for one worker)
            logger.info("%s epoch %d: train loss %.5g, validation loss %.5g%s", sub.name, epoch + 1, total / max(n, 1),
                        val, shared_note(others) if self.cluster.workers == 1 else "")
            if val < best_loss:
                best_loss, best_weights, waited = val, model.get_weights(), 0
            else:
                waited += 1
                if waited >= config.patience:
                    logger.info("%s: early stop after %d epochs without a better validation loss", sub.name, waited)
                    break
            if epoch + 1 < epochs:
                self._save_epochs(sub, epochs, optimizer, best_loss, best_weights, waited, history)
        model.set_weights(best_weights)
        # Epochs an earlier (killed) run trained count in the sub-stage's time: its seconds are the sub-stage's
        # cost, not this sitting's (histories saved before epochs recorded their seconds add nothing).
        earlier = sum(h.get("seconds", 0.0) for h in history[:first])
        return {"history": history, "val_loss": best_loss, "earlier_seconds": earlier}

    def _epochs_path(self, sub: SubStage) -> Path:
        return self.folder / sub.checkpoint.replace(".weights.h5", ".epoch.npz")

    def _save_epochs(self, sub, epochs, optimizer, best_loss, best_weights, waited, history) -> None:
        """Saves a sub-stage between epochs: weights, optimizer state and the best weights so far (only when
        they are not the current ones), then records them in state.json. Single-worker runs only: under a
        cluster a killed run resumes at the last finished sub-stage."""
        if not self.cluster.is_chief or self.cluster.workers > 1:
            return
        current = self.model.get_weights()
        arrays = {f"w{i}": w for i, w in enumerate(current)}
        arrays.update({f"o{i}": v.numpy() for i, v in enumerate(optimizer.variables)})
        best_is_current = waited == 0
        if not best_is_current:
            arrays.update({f"b{i}": w for i, w in enumerate(best_weights)})
        path = self._epochs_path(sub)
        crc = _save_arrays(path, arrays)
        self.state["partial"] = {"name": sub.name, "epochs": epochs, "file": path.name, "crc32": crc,
                                 "history": history, "best_loss": best_loss, "waited": waited,
                                 "weights": len(current), "optimizer": len(optimizer.variables),
                                 "best_is_current": best_is_current}
        write_json_atomic(self.state_path, self.state)
        logger.info("%s: epoch %d of %d saved (a killed run resumes after it)", sub.name, len(history), epochs)

    def _load_epochs(self, sub: SubStage, epochs: int, optimizer):
        """Restores the epochs of `sub` an earlier run finished, if it saved them intact: the model's weights
        and the optimizer's state are set; returns (best_loss, best_weights, waited, history) or None."""
        partial = self.state.get("partial")
        if not partial or partial.get("name") != sub.name or self.cluster.workers > 1:
            return None
        path = self.folder / partial["file"]
        if partial.get("epochs") != epochs or not _intact(path, partial.get("crc32")):
            logger.warning("%s: the epochs saved by an earlier run do not fit this one (%s); training the "
                           "sub-stage from its start", sub.name,
                           "another epoch count" if partial.get("epochs") != epochs else "missing or damaged")
            return None
        with np.load(path) as arrays:
            current = [arrays[f"w{i}"] for i in range(partial["weights"])]
            state = [arrays[f"o{i}"] for i in range(partial["optimizer"])]
            best = current if partial["best_is_current"] else [arrays[f"b{i}"] for i in range(partial["weights"])]
        with self.cluster.strategy.scope():
            optimizer.build(self.model.trainable_variables)
        if len(optimizer.variables) != len(state):
            logger.warning("%s: the saved optimizer state does not fit this student; training the sub-stage "
                           "from its start", sub.name)
            return None
        self.model.set_weights(current)
        for variable, value in zip(optimizer.variables, state):
            variable.assign(value)
        history = partial["history"]
        logger.info("%s: resuming after epoch %d of %d (saved by an earlier run)", sub.name, len(history), epochs)
        return partial["best_loss"], best, partial["waited"], history

    def run(self, plan: list[SubStage]) -> dict:
        """Runs (or resumes) every sub-stage; returns the state with per-sub-stage dev metrics."""
        chief = self.cluster.is_chief
        self._check_settings(plan)
        init = self.folder / INIT_CHECKPOINT
        if chief and not _intact(init, self.state.get("init_crc32")):
            self.state["init_crc32"] = _save_weights(self.model, init)   # the model is still the fresh student
        if chief:
            write_json_atomic(self.state_path, self.state)
        self.cluster.barrier("initial weights")
        in_memory, previous = None, init   # the first sub-stage to run loads its start from the file
        for sub in plan:
            done = self.state["completed"].get(sub.name)
            if done and _intact(self.folder / sub.checkpoint, done.get("crc32")):
                logger.info("%s: done in an earlier run (dev %s %.4f), skipping",
                            sub.name, done["dev_metric_name"], done["dev_metric"])
                previous = self.folder / sub.checkpoint
                continue
            if previous != in_memory:
                self.model.load_weights(str(previous))
            started = time.time()
            with lost_worker(self.cluster, sub.name):
                result = self._train(sub)
            in_memory = previous = self.folder / sub.checkpoint
            if not chief:
                logger.info("%s done in %.0f s (worker %d)", sub.name, time.time() - started, self.cluster.worker)
                continue
            dev, by_decoding = self._evaluate()
            crc = _save_weights(self.model, self.folder / sub.checkpoint)
            self.state["completed"][sub.name] = {
                "crc32": crc,
                "index": sub.index, "stage": sub.stage, "trainable_groups": sub.trainable_groups,
                "val_loss": result["val_loss"], "history": result["history"],
                "dev_metric": metrics_lib.headline(dev), "dev_metric_name": dev["metric"], "dev": dev,
                "decoding": self.decoding, **({"dev_by_decoding": by_decoding} if by_decoding else {}),
                "seconds": round(time.time() - started + result["earlier_seconds"], 1),
                "seconds_earlier_runs": round(result["earlier_seconds"], 1), "checkpoint": sub.checkpoint,
            }
            partial = self.state.pop("partial", None)
            write_json_atomic(self.state_path, self.state)
            if partial:
                (self.folder / partial["file"]).unlink(missing_ok=True)
            earlier = (f" (+{result['earlier_seconds']:.0f} s in earlier runs)" if result["earlier_seconds"] else "")
            logger.info("%s done in %.0f s%s: dev %s %.4f", sub.name, time.time() - started, earlier,
                        dev["metric"], metrics_lib.headline(dev))
        return self.state

    def best(self, plan: list[SubStage]) -> SubStage:
        """The sub-stage of stages 2-3 with the best dev metric (ties: the earlier one). A sub-stage whose dev
        metric was computed with another `--tag_decoding` takes this decoding's figures from its record (every
        decoding is saved from one pass when it finishes) or, in records written before that, is evaluated again
        from its checkpoint (the model is left with the last one loaded): a finished run can switch decodings
        without training."""
        records = {sub.name: self.state["completed"][sub.name] for sub in plan if sub.name in self.state["completed"]}
        if metrics_lib.best_on_dev(records) is None:
            raise XtremeDistilError("no completed stage-2/3 sub-stage to choose from")
        stale = [sub for sub in plan if sub.name in records and recorded_decoding(records[sub.name]) != self.decoding]
        for sub in stale:
            record = records[sub.name]
            dev, source = (record.get("dev_by_decoding") or {}).get(self.decoding), "saved"
            if dev is None:
                self.model.load_weights(str(self.folder / sub.checkpoint))
                dev, by_decoding = self._evaluate()
                if by_decoding:
                    record["dev_by_decoding"] = by_decoding
                source = "scored from its checkpoint"
            logger.info("%s: dev %s %.4f with %s decoding, %s (%.4f with %s)", sub.name, dev["metric"],
                        metrics_lib.headline(dev), self.decoding, source, record["dev_metric"],
                        recorded_decoding(record))
            record.update(dev=dev, dev_metric=metrics_lib.headline(dev), decoding=self.decoding)
        if stale and self.cluster.is_chief:
            write_json_atomic(self.state_path, self.state)
        best = metrics_lib.best_on_dev(records)    # the records re-evaluated above were updated in place
        return next(sub for sub in plan if sub.name == best)


def _same_setting(recorded, current) -> bool:
    """Equal where both runs recorded a value: a key only one version of the code writes (a setting added
    since, with its default, or one no longer recorded) is not a difference."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return all(_same_setting(recorded[k], current[k]) for k in recorded.keys() & current.keys())
    return recorded == current


def _epochs_for(sub: SubStage, n_groups: int, epochs: int, final_epochs: int | None,
                label_epochs: int | None) -> int:
    if sub.target == LABELS and label_epochs:
        return label_epochs
    if sub.target == LOGITS and final_epochs and sub.trainable_groups >= n_groups:
        return final_epochs
    return epochs


def _sub_stage_settings(settings: dict, sub: SubStage, n_groups: int) -> dict:
    """What the weights a sub-stage ends with depend on, from a run's recorded settings: everything but the
    stage options' epoch counts, which are reduced to this sub-stage's own, and the plan, reduced to the
    sub-stages up to it (the distillation loss only matters from stage 2's logits on)."""
    stages = dict(settings.get("stages") or {})
    counts = {key: stages.pop(key, None) for key in ("epochs", "final_epochs", "label_epochs")}
    if sub.target != LOGITS:
        stages.pop("distil_loss", None)
    plan = settings.get("plan")
    return {**{k: v for k, v in settings.items() if k not in ("stages", "plan")}, "stages": stages,
            "epochs": _epochs_for(sub, n_groups, counts["epochs"], counts["final_epochs"], counts["label_epochs"]),
            "plan": plan[:sub.index] if plan is not None else None}


def _differences(recorded: dict, current: dict) -> list[str]:
    """The settings that differ, one level down (`stages.final_epochs`, `transfer`)."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key), current.get(key)
        if _same_setting(old, new):
            continue
        if key in ("stages", "student") and isinstance(old, dict) and isinstance(new, dict):
            out += [f"{key}.{k}" for k in sorted(old.keys() & new.keys()) if not _same_setting(old[k], new[k])]
        else:
            out.append(key)
    return out


def _local_rows(batch) -> int:
    """Rows this worker trained on in one step (a distributed batch holds one part per local replica)."""
    ids = batch["input_ids"]
    parts = getattr(ids, "values", (ids,))
    return int(sum(int(part.shape[0]) for part in parts))


def _seed(seed: int, index: int, epoch: int) -> int:
    return (seed * 1_000_003 + index * 1_009 + epoch) % (2 ** 31)


def inference_function(model):
    """`model(ids, training=False)` as one tf.function per model, traced once (batch and width are left
    unknown) and reused by every sub-stage's validation loss and dev metrics: the trace reads the variables,
    so weights set or loaded later are what it computes with, and which layers are trainable does not enter
    an inference pass. Kept on the model, as the teacher keeps its own."""
    if getattr(model, "_xd_inference_fn", None) is None:
        model._xd_inference_fn = tf.function(lambda ids: model(ids, training=False), input_signature=[IDS_SPEC])
    return model._xd_inference_fn


def predict_student_logits(model, input_ids: np.ndarray, batch_size: int) -> np.ndarray:
    forward = inference_function(model)
    chunks = [forward(input_ids[i:i + batch_size])["logits"].numpy() for i in range(0, len(input_ids), batch_size)]
    return np.concatenate(chunks)
