"""The teacher side of a benchmark: shape presets, a real fine-tuned teacher, and its artifacts.

Latency does not depend on weight values, so a randomly initialised encoder of mBERT's shape
reproduces the paper's teacher latency exactly without downloading anything. A real teacher folder
(`MODEL_DIR/teacher`, written by `distill`) times the same way and also has an accuracy.

`prepare_teacher` (run in its own process by the harness) writes, under `OUT/teacher/`:
`savedmodel/1/` (signature `serving_default(input_ids) -> logits`), `teacher-onnx-fp32.onnx`,
`teacher-onnx-dynamic.onnx` (bounded-memory tf2onnx path of `export.teacher`) and
`teacher-tflite-{fp32,dynamic}-b{B}.tflite` per batch size, plus `teacher.json` listing them.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np

from xtremedistil.distill.files import path_size, put_in_place, read_json, write_json_atomic, written_in_place
from xtremedistil.errors import XtremeDistilError, is_disk_full
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


def _tflite_teacher(model, pad_id: int, batch_size: int, seq_len: int, dynamic: bool) -> bytes:
    import tensorflow as tf

    from xtremedistil.export.inference import logits_function

    fixed = logits_function(model, seq_len=seq_len, batch_size=batch_size, pad_id=pad_id)   # static shapes
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fixed.get_concrete_function()], model)
    if dynamic:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def prepare_teacher(source: TeacherSource, num_labels: int, tagging: bool, folder: Path, runtimes: list[str],
                    batch_sizes: list[int], seq_len: int, log=print, stamp=None) -> dict:
    """Converts the teacher for every requested runtime into `folder` (reused when already there and
    `stamp`, the teacher folder's size and time, is unchanged)."""
    import xtremedistil  # noqa: F401
    import tensorflow as tf

    from xtremedistil.export.base import Quantization
    from xtremedistil.export.inference import logits_function
    from xtremedistil.export.teacher import FP32_MAX_DELTA, export_teacher_onnx

    folder.mkdir(parents=True, exist_ok=True)
    wanted = {"source": dataclasses.asdict(source), "num_labels": num_labels, "tagging": tagging, "seq_len": seq_len,
              "stamp": stamp}
    manifest_path = folder / MANIFEST
    manifest = read_json(manifest_path) if manifest_path.exists() else {}
    if manifest.get("wanted") != wanted:
        manifest = {"wanted": wanted, "artifacts": []}
    done = {row["name"] for row in manifest["artifacts"]}
    model, vocab_size, pad_id, _ = build_teacher(source, num_labels, tagging)
    manifest.update(parameters=count_parameters(model), vocab_size=vocab_size, pad_id=pad_id)
    function = logits_function(model, pad_id=pad_id)

    def add(row):
        manifest["artifacts"] = [r for r in manifest["artifacts"] if r["name"] != row["name"]] + [row]
        write_json_atomic(manifest_path, manifest)

    write_json_atomic(manifest_path, manifest)
    if "savedmodel" in runtimes and "teacher-savedmodel-fp32" not in done:
        started = time.time()
        target = folder / "savedmodel" / "1"
        module = tf.Module()
        module.model, module.serve = model, function
        with written_in_place(target, "file:teacher-artifact", folder / ".savedmodel.tmp") as temp:
            shutil.rmtree(temp, ignore_errors=True)          # left by a killed run
            tf.saved_model.save(module, str(temp), signatures={"serving_default": function.get_concrete_function()})
            target.parent.mkdir(exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)        # not in the manifest yet: a kill here re-makes it
        add({"name": "teacher-savedmodel-fp32", "runtime": "savedmodel", "quantization": "fp32",
             "path": str(target.relative_to(folder)), "size_bytes": path_size(target), "batch_size": None,
             "seconds": round(time.time() - started, 1)})
        log(f"teacher SavedModel written in {time.time() - started:.0f} s")
    if "litert" in runtimes:   # before ONNX: TFLite fuses exact GELU into its GELU kernel, ONNX needs Erf
        for batch_size in batch_sizes:
            for quantization in ("fp32", "dynamic"):
                name = f"teacher-tflite-{quantization}-b{batch_size}"
                if name in done:
                    continue
                started = time.time()
                target = folder / f"{name}.tflite"
                temp = target.with_name(f".{target.name}.tmp")
                try:
                    flatbuffer = _tflite_teacher(model, pad_id, batch_size, seq_len, quantization == "dynamic")
                    temp.write_bytes(flatbuffer)
                    del flatbuffer
                    parity = _parity(temp, function, vocab_size, pad_id, batch_size, seq_len)
                    if quantization == "fp32" and not parity["max_abs_logit_delta"] <= FP32_MAX_DELTA:
                        raise XtremeDistilError(f"LiteRT logits differ from TensorFlow by "
                                                f"{parity['max_abs_logit_delta']:.3g}; the conversion is broken")
                except Exception as err:  # noqa: BLE001 - e.g. > 2 GB flatbuffer (xlmr-large fp32): skip, report
                    temp.unlink(missing_ok=True)
                    if is_disk_full(err):
                        raise                   # not the conversion's fault: the CLI's disk-full line, resumable
                    reason = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300] if str(err).strip() else ''}"
                    manifest.setdefault("failures", {})[name] = reason
                    write_json_atomic(manifest_path, manifest)
                    log(f"{name}: conversion failed, not measured ({reason})")
                    continue
                put_in_place(temp, target, "file:teacher-artifact")
                manifest.get("failures", {}).pop(name, None)
                add({"name": name, "runtime": "litert", "quantization": quantization, "path": target.name,
                     "size_bytes": target.stat().st_size, "batch_size": batch_size, "parity": parity,
                     "seconds": round(time.time() - started, 1)})
                log(f"{name} written in {time.time() - started:.0f} s")
    if "onnxruntime" in runtimes and not {"teacher-onnx-fp32", "teacher-onnx-dynamic"} <= done:
        rows = export_teacher_onnx(model, pad_id, vocab_size, folder, seq_len,
                                   [Quantization.FP32, Quantization.DYNAMIC])
        for row in rows:
            add({"name": row["name"], "runtime": "onnxruntime", "quantization": row["quantization"],
                 "path": Path(row["path"]).name, "size_bytes": row["size_bytes"], "batch_size": None,
                 "seconds": row["seconds"], "parity": row["parity"]})
        log("teacher ONNX fp32/dynamic written")
    return manifest


def _parity(path: Path, function, vocab_size: int, pad_id: int, batch_size: int, seq_len: int) -> dict:
    from xtremedistil.export.teacher import sample_ids
    from xtremedistil.export.tflite.predictor import LiteRTPredictor

    ids = sample_ids(vocab_size, pad_id, max(batch_size, 16), seq_len)
    reference = function(ids)["logits"].numpy()
    logits = LiteRTPredictor(path).predict(ids)
    return {"max_abs_logit_delta": float(np.abs(logits - reference).max()),
            "argmax_agreement": float((logits.argmax(-1) == reference.argmax(-1)).mean()), "compared": len(ids)}
