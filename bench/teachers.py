"""The teacher side of a benchmark: shape presets, a real fine-tuned teacher, and its artifacts.

Latency does not depend on weight values, so a randomly initialised encoder of mBERT's shape
reproduces the paper's teacher latency exactly without downloading anything. A real teacher folder
(`MODEL_DIR/teacher`, written by `distill`) times the same way and also has an accuracy.

`prepare_teacher` (run in its own process by the harness) writes, under `OUT/teacher/`, the teacher's
artifact in every format that exports teachers (`export.teacher`: today `teacher-savedmodel-fp32/1/`,
`teacher-tflite-{fp32,dynamic}-b{B}.tflite` per batch size, `teacher-onnx-{fp32,dynamic}.onnx`), plus
`teacher.json` listing them with their parity against TensorFlow.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from xtremedistil.distill.files import read_json, write_json_atomic
from xtremedistil.errors import XtremeDistilError
from xtremedistil.export.predictor import Predictor

# name -> (transformers config class, keyword arguments); the published shapes of these models.
PRESETS = {
    "mbert-shape": ("BertConfig", dict(vocab_size=119547, hidden_size=768, num_hidden_layers=12,
                                       num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512)),
    "bert-base-shape": ("BertConfig", dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                                           num_attention_heads=12, intermediate_size=3072,
                                           max_position_embeddings=512)),
    "xlmr-large-shape": ("XLMRobertaConfig", dict(vocab_size=250002, hidden_size=1024, num_hidden_layers=24,
                                                  num_attention_heads=16, intermediate_size=4096,
                                                  max_position_embeddings=514, pad_token_id=1,
                                                  bos_token_id=0, eos_token_id=2)),
}
MANIFEST = "teacher.json"
PRESET_SEED = 1234


@dataclasses.dataclass
class TeacherSource:
    """What `--teacher` named: a preset (random weights) or a fine-tuned teacher folder."""

    name: str
    preset: str | None = None
    folder: str | None = None

    @property
    def has_accuracy(self) -> bool:
        return self.folder is not None


def resolve_teacher(value: str | None, bundles: list[Path]) -> TeacherSource:
    """`--teacher` as given; by default the fine-tuned teacher beside the first bundle, else mbert-shape."""
    from xtremedistil.distill.teacher import SPEC_FILE
    from xtremedistil.layout import RunLayout

    if value is None:
        beside = RunLayout(bundles[0].parent).teacher if bundles else None
        if beside is not None and (beside / SPEC_FILE).exists():
            return TeacherSource(name="teacher", folder=str(beside.resolve()))
        return TeacherSource(name="mbert-shape", preset="mbert-shape")
    if value in PRESETS:
        return TeacherSource(name=value, preset=value)
    path = Path(value)
    for candidate in (path, RunLayout(path).teacher):
        if (candidate / SPEC_FILE).exists():
            return TeacherSource(name="teacher", folder=str(candidate.resolve()))
    raise XtremeDistilError(
        f"--teacher {value}: not a preset ({', '.join(PRESETS)}) nor a fine-tuned teacher folder "
        f"(MODEL_DIR/teacher with {SPEC_FILE}); pass one of those")


def build_teacher(source: TeacherSource, num_labels: int, tagging: bool):
    """(model, vocab_size, pad_id, tokenizer or None) for a preset or a teacher folder."""
    import xtremedistil  # noqa: F401
    import tensorflow as tf

    from xtremedistil.distill.teacher import TeacherModel, load_teacher

    if source.folder:
        model, _spec, tokenizer = load_teacher(source.folder)
        return model, len(tokenizer), tokenizer.pad_token_id or 0, tokenizer
    import transformers

    class_name, kwargs = PRESETS[source.preset]
    config = getattr(transformers, class_name)(**kwargs)
    tf.keras.utils.set_random_seed(PRESET_SEED)
    encoder = transformers.TFAutoModel.from_config(config)
    model = TeacherModel(encoder, num_labels, tagging)
    ones = tf.ones((1, 8), tf.int32)
    model({"input_ids": ones, "attention_mask": ones})
    return model, config.vocab_size, config.pad_token_id or 0, None


def count_parameters(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.weights))


class TeacherPredictor(Predictor):
    """The teacher in TensorFlow (the paper's baseline runtime)."""

    format = "keras"

    def __init__(self, source: TeacherSource, num_labels: int, tagging: bool, threads: int | None = None):
        from xtremedistil.export.predictor import set_tf_threads
        from xtremedistil.export.inference import logits_function

        super().__init__(Path(source.folder or source.preset))
        if threads:
            set_tf_threads(threads)
        self.model, self.vocab_size, self.pad_id, self.tokenizer = build_teacher(source, num_labels, tagging)
        self._function = logits_function(self.model, pad_id=self.pad_id)

    def _run(self, input_ids: np.ndarray) -> np.ndarray:
        return self._function(input_ids)["logits"].numpy()


def prepare_teacher(source: TeacherSource, num_labels: int, tagging: bool, folder: Path, runtimes: list[str],
                    batch_sizes: list[int], seq_len: int, log=print, stamp=None) -> dict:
    """Exports the teacher for every requested runtime into `folder` (`export.teacher`: every registered format
    that exports teachers and runs in one of `runtimes`); reused when already there and `stamp`, the teacher
    folder's size and time, is unchanged. A conversion that fails (a flatbuffer over 2 GB) is recorded under
    "failures" and not measured; the others go on."""
    from xtremedistil.export.teacher import export_teacher, teacher_formats, teacher_plan

    folder.mkdir(parents=True, exist_ok=True)
    wanted = {"source": dataclasses.asdict(source), "num_labels": num_labels, "tagging": tagging, "seq_len": seq_len,
              "stamp": stamp}
    manifest_path = folder / MANIFEST
    manifest = read_json(manifest_path) if manifest_path.exists() else {}
    if manifest.get("wanted") != wanted:
        manifest = {"wanted": wanted, "artifacts": []}
    model, vocab_size, pad_id, _ = build_teacher(source, num_labels, tagging)
    manifest.update(parameters=count_parameters(model), vocab_size=vocab_size, pad_id=pad_id)
    write_json_atomic(manifest_path, manifest)
    plan = teacher_plan(batch_sizes, {name: None for name, fmt in teacher_formats().items() if fmt.runtime in runtimes})

    def failed(name, reason):
        manifest.setdefault("failures", {})[name] = reason
        write_json_atomic(manifest_path, manifest)

    done = {row["name"] for row in manifest["artifacts"]}
    for row in export_teacher(model, pad_id, vocab_size, folder, seq_len, plan, done, on_failure=failed, log=log):
        manifest.get("failures", {}).pop(row["name"], None)
        manifest["artifacts"] = [r for r in manifest["artifacts"] if r["name"] != row["name"]] + [row]
        write_json_atomic(manifest_path, manifest)
    return manifest
