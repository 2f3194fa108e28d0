"""`xtremedistil distill`, end to end and resumable:

teacher (fine-tune or reuse) -> teacher outputs cached once (transfer + dev) -> student
vocabulary and PCA embeddings -> stages 1-3 -> best sub-stage on dev -> bundle.

Everything lands in MODEL_DIR: `teacher/`, `cache/`, `student/` (checkpoints, state) and
`bundle/`. Rerunning the same command continues from what is complete there.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from xtremedistil.distill import data as data_lib
from xtremedistil.distill.augment import augment_file
from xtremedistil.distill import embeddings as emb_lib
from xtremedistil.distill import metrics as metrics_lib
from xtremedistil.distill.bundle import write_bundle
from xtremedistil.distill.cache import build_cache, signature_hash
from xtremedistil.distill.cluster import make_cluster
from xtremedistil.distill.files import file_digest, read_json, write_json_atomic
from xtremedistil.distill.teacher_phase import encode_split, run_teacher
from xtremedistil.distill.seeding import seed_everything
from xtremedistil.distill.options import DistilOptions
from xtremedistil.distill.stages import StageData, StageRunner, plan_substages, predict_student_logits, training_model
from xtremedistil.distill.students import StudentConfig, build_student, layer_groups
from xtremedistil.distill.machine import is_shared, worst_share
from xtremedistil.distill.memory import PhasePeaks
from xtremedistil.distill.metrics import metrics_from_logits
from xtremedistil.distill.teacher import SPEC_FILE, teacher_stamp as saved_teacher_stamp
from xtremedistil.errors import XtremeDistilError
from xtremedistil.layout import BundleLayout, RunLayout

logger = logging.getLogger(__name__)

CACHE_FORMAT = 3    # 2: tagging chunks carry word_start (the positions the losses count); 3: content-hashed sources


def _teacher_layer(options: DistilOptions, num_layers: int) -> int:
    layer = options.teacher.teacher_layer
    if not 0 <= layer <= num_layers:
        raise XtremeDistilError(
            f"--teacher_layer {layer} is out of range for this teacher: use 0 (embeddings) to {num_layers}")
    return layer


def run_distill(options: DistilOptions, on_batch=None) -> dict:
    """Runs (or resumes) the whole distillation; returns the bundle's metrics dict."""
    phases: dict[str, float] = {}
    peaks = PhasePeaks()
    started = time.time()
    _check_teacher_layer_early(options)
    run = options.run
    cluster = make_cluster(run.strategy)   # first: a multi-worker strategy must precede any TF op

    def teacher_phase(chief: bool):
        return run_teacher(
            run.task, run.model_dir, options.teacher.pt_teacher_checkpoint, run.do_NER, run.seq_len,
            options.fine_tune, run.seed, options.teacher.pt_teacher, run.transfer_file, require_transfer=True,
            evaluate=chief, reuse_only=not chief, decoding=run.tag_decoding,
        )

    # The chief fine-tunes (or reloads) the teacher; the other workers then load what it saved.
    peaks.start()
    teacher = teacher_phase(True) if cluster.is_chief else None
    cluster.barrier("the chief's teacher fine-tuning")
    if teacher is None:
        teacher = teacher_phase(False)
    phases["teacher"] = round(teacher.seconds, 1)
    peaks.stop("teacher")
    task, tokenizer, model = teacher.task, teacher.tokenizer, teacher.model
    layer = _teacher_layer(options, model.num_layers)
    layout = RunLayout(run.model_dir, run.student_name)

    teacher_stamp = saved_teacher_stamp(layout.teacher)
    teacher_emb = emb_lib.teacher_word_embeddings(model.encoder)

    # Optional augmentation of the transfer set (chief writes it; the others read the same file).
    transfer_path, transfer_lines = task.transfer_path, task.transfer_lines
    transfer_info = {"file": str(transfer_path), "sentences": transfer_lines}
    if options.augment.active:
        t0 = time.time()
        peaks.start()
        transfer_path, transfer_lines, transfer_info["augment"] = _augmented_transfer(
            options, task, tokenizer, teacher_emb, teacher_stamp, layout, cluster)
        transfer_info.update(file=str(transfer_path), sentences=transfer_lines)
        phases["augment"] = round(time.time() - t0, 1)
        peaks.stop("augment")

    # Teacher outputs, once.
    t0 = time.time()
    peaks.start()
    spec = tf.TensorSpec([None, None], tf.int32)
    score_fn = tf.function(lambda ids, mask: model.teacher_outputs(ids, mask, layer), input_signature=[spec, spec])

    def score(ids, mask):
        return {k: v.numpy() for k, v in score_fn(ids, mask).items()}

    caches = {}
    for name, path, sentences, total in (
        ("transfer", transfer_path, lambda: data_lib.iter_transfer(transfer_path), transfer_lines),
        ("dev", task.path / "dev.tsv", lambda: (ex.text for ex in task.splits["dev"]), len(task.splits["dev"])),
    ):
        signature = {"source_sha1": file_digest(path), "teacher": teacher_stamp, "layer": layer,
                     "seq_len": run.seq_len, "tagging": task.is_tagging, "format": CACHE_FORMAT,
                     "chunk_size": options.cache.distil_chunk_size}
        caches[name] = build_cache(
            layout.cache / f"{name}-{signature_hash(signature)}", sentences(), score, tokenizer,
            seq_len=run.seq_len, tagging=task.is_tagging, chunk_size=options.cache.distil_chunk_size,
            batch_size=options.cache.score_batch_size, signature=signature, total=total,
            description=f"teacher scoring {name}", worker=cluster.worker, workers=cluster.workers,
            barrier=cluster.barrier, donor_root=layout.cache)
    phases["teacher_outputs"] = round(time.time() - t0, 1)
    peaks.stop("teacher_outputs")

    # Student vocabulary, embeddings, model.
    t0 = time.time()
    train = encode_split(tokenizer, task, "train", run.seq_len)
    dev = encode_split(tokenizer, task, "dev", run.seq_len)
    vocab = emb_lib.build_vocab([train.input_ids, *caches["transfer"].all_input_ids()],
                                teacher_emb.shape[0], tokenizer.pad_token_id, tokenizer.unk_token_id)
    student_settings = options.student
    embedding = emb_lib.pca_embeddings(teacher_emb, vocab, student_settings.word_emb_dim, run.seed)
    sent_to_nearest = 0
    if student_settings.unseen_pieces == "nearest":    # the table only: seen pieces keep their rows
        vocab, sent_to_nearest = emb_lib.send_unseen_to_nearest(vocab, teacher_emb, tokenizer.all_special_ids)
    if student_settings.word_emb_file:
        embedding = emb_lib.read_embedding_file(student_settings.word_emb_file, vocab, tokenizer,
                                                student_settings.word_emb_dim, embedding)
    student_config = StudentConfig(tagging=task.is_tagging, num_labels=len(task.labels), seq_len=run.seq_len,
                                   teacher_vocab_size=teacher_emb.shape[0], vocab_size=vocab.size,
                                   teacher_hidden_size=model.encoder.config.hidden_size, pad_row=emb_lib.PAD_ROW,
                                   **student_settings.architecture())
    seed_everything(run.seed)
    with cluster.scope():
        student = build_student(student_config)
    student.get_layer("id_remap").set_weights([vocab.remap])
    student.get_layer("word_embedding").set_weights([embedding])
    phases["student_init"] = round(time.time() - t0, 1)

    # The stages.
    t0 = time.time()
    peaks.start()
    stage_config = options.distil
    with cluster.scope():   # in bf16 a mixed-precision twin trains; `student` stays float32 (dev metrics, bundle)
        trainee = training_model(student, lambda: build_student(student_config), stage_config.precision)
    groups = layer_groups(trainee, student_config)
    plan = plan_substages(run.stages, len(groups), stage_config.distil_loss)
    data = StageData(caches["transfer"], caches["dev"], train, dev, task.splits["dev"], task.labels, task.is_tagging,
                     pad_id=tokenizer.pad_token_id)
    settings = {"student": student_config.to_dict(), "stages": dataclasses.asdict(stage_config),
                "plan": [sub.name for sub in plan], "transfer": caches["transfer"].index["signature"],
                "dev": caches["dev"].index["signature"]}
    runner = StageRunner(trainee, groups, data, stage_config, layout.student, on_batch=on_batch,
                         cluster=cluster, settings=settings, decoding=run.tag_decoding,
                         inference=student if trainee is not student else None)
    state = runner.run(plan)
    if not cluster.is_chief:
        logger.info("worker %d: all sub-stages done; the chief writes the bundle", cluster.worker)
        cluster.barrier("the chief's bundle")
        return {"worker": cluster.worker, "workers": cluster.workers, "bundle": None}
    best = runner.best(plan)
    student.load_weights(str(layout.student / best.checkpoint))
    student_dev = state["completed"][best.name]["dev"]
    remap = student.get_layer("id_remap")
    if not np.array_equal(remap.get_weights()[0], vocab.remap):
        # Sub-stages trained under the other --unseen_pieces: the table is this run's, and so is the dev figure.
        logger.info("--unseen_pieces %s differs from the table the sub-stages were trained with: the bundle gets "
                    "this run's table; student dev re-scored", student_settings.unseen_pieces)
        remap.set_weights([vocab.remap])
        student_dev = _student_metrics(runner, student, dev, task, "dev")
    phases["stages"] = round(time.time() - t0, 1)
    # What the stages cost over every run that trained them (a resumed run's `stages` is its own sitting only).
    # The records of this plan's sub-stages only: a folder may also hold those of another (--stages 1,2 after
    # 1,2,3 reuses stages 1-2 and leaves stage 3's records), which this student did not go through.
    completed = {sub.name: state["completed"][sub.name] for sub in plan}
    phases["stages_all_runs"] = round(sum(done.get("seconds", 0.0) for done in completed.values()), 1)
    peaks.stop("stages")

    # Test is only reported, for the sub-stage chosen on dev.
    test = encode_split(tokenizer, task, "test", run.seq_len)
    student_test = _student_metrics(runner, student, test, task)
    student_params = int(student.count_params())
    teacher_params = int(model.count_params())
    metrics = {
        "task": {"kind": task.kind, "languages": task.languages, "metric": student_test["metric"],
                 "decoding": runner.decoding},
        "teacher": {"dev": teacher.metrics["dev"], "test": teacher.metrics["test"], "parameters": teacher_params},
        "student": {"dev": student_dev, "test": student_test, "parameters": student_params,
                    "best_substage": best.name},
        # others_cpu_share: the largest share of the CPUs other processes took during one of its epochs
        "substages": {name: {**{k: v[k] for k in ("stage", "dev_metric", "val_loss", "seconds")},
                             "others_cpu_share": worst_share(h.get("others_cpu_share") for h in v.get("history", []))}
                      for name, v in completed.items()},
        "compression": teacher_params / student_params,
        "retention": {split: _ratio(metrics_lib.headline(student_test if split == "test" else student_dev),
                                    metrics_lib.headline(teacher.metrics[split])) for split in ("dev", "test")},
        "seconds": {**phases, "total": round(time.time() - started, 1)},
        # Per phase of this run; teacher_fine_tune from teacher.json (the run that fine-tuned it).
        "peak_rss_mb": {"teacher_fine_tune": read_json(layout.teacher / SPEC_FILE).get("peak_rss_mb"),
                        **peaks.mb, "per_phase": peaks.per_phase},
        # Per phase of this run: other processes' share of the CPUs (above 0.1 its wall time is not clean)
        "others_cpu_share": peaks.others_cpu,
        "transfer": transfer_info,
        "distillation": {"stages": run.stages, "distil_loss": stage_config.distil_loss,
                         "augment_multiplier": options.augment.multiplier, "student_name": run.student_name,
                         **({"augment_mentions": options.augment.mentions} if options.augment.mentions else {}),
                         **({"augment_joins": options.augment.joins} if options.augment.joins else {}),
                         **({"augment_language_multipliers": counts}
                            if (counts := options.augment.language_counts()) else {}),
                         "unseen_pieces": student_settings.unseen_pieces, "pieces_sent_to_nearest": sent_to_nearest,
                         **({"precision": stage_config.precision} if stage_config.precision != "float32" else {})},
        "sentences_per_second": _throughput(layout, caches, completed),
        "seed": run.seed,
    }
    teacher_info = {"checkpoint": options.teacher.pt_teacher_checkpoint, "model_class": options.teacher.pt_teacher,
                    "layer": layer,
                    "parameters": teacher_params, "folder": str(layout.teacher.resolve())}
    write_bundle(layout.bundle, student, student_config, tokenizer, task.labels, metrics, teacher_info,
                 {"options": options.to_flags()}, decoding=runner.decoding)
    write_json_atomic(layout.student / BundleLayout.METRICS, metrics)
    cluster.barrier("the chief's bundle")
    return metrics


def _throughput(layout: RunLayout, caches: dict, completed: dict) -> dict:
    """Sentences per second of each phase (teacher epochs, scoring, each sub-stage's epochs)."""
    history = read_json(layout.teacher / SPEC_FILE).get("history", [])
    return {
        "teacher_fine_tune": [h.get("train_sentences_per_second") for h in history],
        "teacher_scoring": {name: cache.sentences_per_second for name, cache in caches.items()},
        "stages": {name: [h.get("sentences_per_second") for h in done["history"]]
                   for name, done in completed.items()},
    }


def _check_teacher_layer_early(options: DistilOptions) -> None:
    """--teacher_layer against the checkpoint's config when it can be read without loading weights (every other
    setting was checked when `options` was built): a bad layer must not wait for an hour of fine-tuning."""
    layers = _checkpoint_layers(options.teacher.pt_teacher_checkpoint)
    if layers is not None:
        _teacher_layer(options, layers)


def _checkpoint_layers(checkpoint: str) -> int | None:
    """The pre-trained checkpoint's layer count from its config.json (None when it cannot be read cheaply)."""
    from xtremedistil.distill.sources import resolve_checkpoint

    config = Path(resolve_checkpoint(checkpoint)) / "config.json"    # pip: sources resolve to a local folder
    try:
        values = read_json(config)
    except (OSError, XtremeDistilError):     # a hub id, or no readable config: checked after loading
        return None
    layers = values.get("num_hidden_layers", values.get("n_layers"))
    return layers if isinstance(layers, int) else None


def _augmented_transfer(options, task, tokenizer, teacher_emb, teacher_stamp, layout: RunLayout, cluster):
    """MODEL_DIR/augmented/transfer-<hash>.txt for these settings (made once); (path, lines, stats)."""
    config = options.augment
    signature = {"source_sha1": file_digest(task.transfer_path), "teacher": teacher_stamp,
                 "screened_sha1": [file_digest(task.path / f"{split}.tsv") for split in ("dev", "test")],
                 "config": config.signature()}
    if config.mentions or config.language_counts():
        signature["train_sha1"] = file_digest(task.path / "train.tsv")
    path = layout.augmented / f"transfer-{signature_hash(signature)}.txt"
    stats_path = path.with_suffix(".json")
    if cluster.is_chief and not (path.exists() and stats_path.exists()):
        screen = [ex.text for split in ("dev", "test") for ex in task.splits[split]]
        stats = augment_file(task.transfer_path, path, config, mask_token=tokenizer.mask_token or tokenizer.unk_token,
                             embedding=teacher_emb, tokenizer=tokenizer, screen=screen, total=task.transfer_lines,
                             labeled=task.splits["train"])
        write_json_atomic(stats_path, {**stats, "signature": signature})
    cluster.barrier("the chief's augmented transfer set")
    stats = read_json(stats_path)
    logger.info("transfer set: %s (%d sentences from %d)", path, stats["written"], stats["sources"])
    return path, stats["written"], {k: v for k, v in stats.items() if k != "signature"}


def worker_done(metrics: dict) -> str | None:
    """For a non-chief worker's result (no bundle of its own), the line to print; None for the chief."""
    if metrics.get("bundle", "") is not None:
        return None
    return f"worker {metrics['worker']} of {metrics['workers']}: done; the chief wrote the bundle"


def _ratio(student: float, teacher: float) -> float | None:
    """Student metric / teacher metric; None when the teacher scored 0 (no meaningful ratio)."""
    return student / teacher if teacher > 0 else None


def _student_metrics(runner: StageRunner, student, encoded, task, split: str = "test") -> dict:
    logits = predict_student_logits(student, encoded.input_ids, runner.config.batch_size)
    return metrics_from_logits(logits, encoded, task.splits[split], task.labels, task.is_tagging, runner.decoding)


def format_report(metrics: dict) -> str:
    name = metrics["task"]["metric"]
    retention = metrics["retention"]["test"]
    lines = [
        f"teacher: {metrics['teacher']['parameters']:,} parameters",
        metrics_lib.format_metrics(metrics["teacher"]["test"], "  test:"),
        f"student ({metrics['student']['best_substage']}, chosen on dev): {metrics['student']['parameters']:,} parameters",
        metrics_lib.format_metrics(metrics["student"]["test"], "  test:"),
        f"compression: {metrics['compression']:.1f}x fewer parameters; test {name} retention: "
        + (metrics_lib.retention_percent(retention) if retention is not None else "n/a (teacher scored 0)"),
        "wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in metrics["seconds"].items()),
    ]
    shared = {k: v for k, v in (metrics.get("others_cpu_share") or {}).items() if is_shared(v)}
    if shared:
        lines.append("not clean timings: other processes used " + ", ".join(
            f"{100 * v:.0f}% of the CPU during {k}" for k, v in shared.items()))
    return "\n".join(lines)
