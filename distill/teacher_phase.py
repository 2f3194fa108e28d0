"""The teacher phase as the CLI runs it: validate the task, fine-tune (or reuse), evaluate."""
from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path

from xtremedistil.distill import data as data_lib
from xtremedistil.distill import metrics as metrics_lib
from xtremedistil.distill import teacher as teacher_lib
from xtremedistil.distill.decoding import recorded_decoding
from xtremedistil.distill.files import file_digest, read_json, write_json_atomic
from xtremedistil.distill.memory import peak_rss_mb, reset_peak_rss
from xtremedistil.distill.seeding import seed_everything
from xtremedistil.distill.tokenization import encode_examples, load_tokenizer
from xtremedistil.errors import XtremeDistilError
from xtremedistil.layout import RunLayout

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TeacherResult:
    model: teacher_lib.TeacherModel
    spec: teacher_lib.TeacherSpec
    tokenizer: object
    task: data_lib.Task
    metrics: dict          # {"dev": ..., "test": ...}
    trained: bool
    seconds: float


def encode_split(tokenizer, task: data_lib.Task, split: str, seq_len: int):
    return encode_examples(tokenizer, task.splits[split], task.labels, seq_len, task.is_tagging, split)


def run_teacher(task_dir, model_dir, checkpoint, tagging, seq_len, fine_tune: teacher_lib.FineTuneConfig,
                seed: int, model_class=None, transfer_file=None, require_transfer=False,
                evaluate: bool = True, reuse_only: bool = False, decoding: str = "argmax") -> TeacherResult:
    """Fine-tunes the teacher into MODEL_DIR/teacher (or reloads it) and evaluates dev and test.

    The task folder is validated before anything is loaded or written. `reuse_only` (a non-chief
    worker) fails instead of fine-tuning when no matching teacher is saved; without `evaluate` the
    metrics stay empty. `decoding`: how tagging metrics read word tags (`--tag_decoding`).
    """
    started = time.time()
    task = data_lib.load_task(task_dir, tagging, transfer_file, require_transfer)
    seed_everything(seed)
    spec = teacher_lib.TeacherSpec(checkpoint, tagging, task.labels, seq_len, model_class)
    layout = RunLayout(model_dir)
    folder = layout.teacher
    trained = not teacher_lib.check_reusable(folder, spec, fine_tune)
    if trained and reuse_only:
        raise XtremeDistilError(f"{folder}: no fine-tuned teacher matching this run after the chief finished; "
                                "MODEL_DIR must be one folder shared by every worker")
    if trained:
        logger.info("fine-tuning teacher %s on %s (%d train sentences)", checkpoint, task.path, len(task.splits["train"]))
        tokenizer = load_tokenizer(checkpoint)
        model = teacher_lib.build_teacher(spec)
        train = encode_split(tokenizer, task, "train", seq_len)
        dev = encode_split(tokenizer, task, "dev", seq_len)
        work = layout.teacher_training
        per_phase = reset_peak_rss()
        history = teacher_lib.fine_tune(model, train, dev, task.splits["dev"], task.labels, fine_tune, seed, work)
        extra = {"history": history, "fine_tune": dataclasses.asdict(fine_tune), "seed": seed,
                 "peak_rss_mb": round(peak_rss_mb(), 1), "peak_rss_per_phase": per_phase}
        teacher_lib.save_teacher(model, tokenizer, spec, folder, extra)
        shutil.rmtree(work, ignore_errors=True)
    else:
        logger.info("reusing fine-tuned teacher in %s", folder)
        model, spec, tokenizer = teacher_lib.load_teacher(folder)
    results = {}
    if evaluate:
        decoding = decoding if tagging else "argmax"
        results = _saved_metrics(folder, task, decoding) if not trained else None
        if results is None:
            by_decoding = _evaluate(model, tokenizer, task, seq_len, tagging)
            results = by_decoding[decoding]
            write_json_atomic(folder / teacher_lib.METRICS_FILE,
                              {**results, "sources": _split_stamps(task), "decoding": decoding,
                               "by_decoding": by_decoding})
        else:
            logger.info("teacher dev/test metrics with %s decoding reused from %s (same teacher, same dev/test "
                        "files)", decoding, folder / teacher_lib.METRICS_FILE)
    return TeacherResult(model, spec, tokenizer, task, results, trained, time.time() - started)


def _split_stamps(task: data_lib.Task) -> dict:
    stamps = {}
    for split in ("dev", "test"):
        stamps[split] = file_digest(task.path / f"{split}.tsv")
    return stamps


def _evaluate(model, tokenizer, task: data_lib.Task, seq_len: int, tagging: bool) -> dict:
    """{decoding: {"dev": metrics, "test": metrics}} for every decoding of tags (argmax only for
    classification), from one pass of the teacher over each split: a run with another `--tag_decoding`
    later reads its figures instead of evaluating the teacher again."""
    by_decoding: dict[str, dict] = {}
    for split in ("dev", "test"):
        encoded = encode_split(tokenizer, task, split, seq_len)
        logits = teacher_lib.predict_logits(model, encoded)
        for decoding, metrics in metrics_lib.metrics_by_decoding(logits, encoded, task.splits[split], task.labels,
                                                                 tagging).items():
            by_decoding.setdefault(decoding, {})[split] = metrics
    return by_decoding


def _saved_metrics(folder: Path, task: data_lib.Task, decoding: str) -> dict | None:
    """The teacher's saved dev/test metrics when they were computed for this teacher on these very files, with
    this decoding of tags (files written before decodings existed used argmax; files written since hold every
    decoding under "by_decoding"). The file's top level is switched to `decoding` when it stated another (what
    `status` shows is what the last run used)."""
    path = folder / teacher_lib.METRICS_FILE
    if not path.exists() or path.stat().st_mtime_ns < (folder / teacher_lib.SPEC_FILE).stat().st_mtime_ns:
        return None
    try:
        saved = read_json(path)
    except XtremeDistilError:    # damaged: evaluated again
        return None
    if saved.get("sources") != _split_stamps(task):
        return None
    stored = saved.get("by_decoding") or {recorded_decoding(saved): saved}
    results = stored.get(decoding)
    if not isinstance(results, dict) or not {"dev", "test"} <= set(results):
        return None
    results = {split: results[split] for split in ("dev", "test")}
    if recorded_decoding(saved) != decoding:
        write_json_atomic(path, {**saved, **results, "decoding": decoding})
    return results


def report(result: TeacherResult) -> str:
    lines = [f"teacher {result.spec.checkpoint} ({'fine-tuned' if result.trained else 'reused'}, "
             f"{result.model.count_params():,} parameters, {result.seconds:.0f} s)"]
    for split in ("dev", "test"):
        lines.append(metrics_lib.format_metrics(result.metrics[split], f"{split}:"))
    return "\n".join(lines)
