"""A student bundle and the fine-tuned teacher beside it, predicting the same test sentences: what the
diagnostics that show where a student loses its teacher share (`length_buckets`, `entity_recall`)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from xtremedistil.errors import XtremeDistilError


def load_bundle_and_task(bundle_dir: str, task_dir: str | None, tagging: bool, wrong_kind: str):
    """(bundle, task); the task defaults to the one the bundle was distilled on. A bundle of the other kind
    (classification vs tagging) raises `wrong_kind` before anything heavy loads."""
    from xtremedistil.distill import load_bundle
    from xtremedistil.distill.data import load_task

    bundle = load_bundle(bundle_dir)
    if bundle.student_config.tagging != tagging:
        raise XtremeDistilError(wrong_kind)
    return bundle, load_task(task_dir or bundle.config["options"]["task"], tagging)


def teacher_logits(teacher_dir: str, examples, labels: list[str], tagging: bool):
    """(logits, encoded) of the fine-tuned teacher in `teacher_dir` on `examples`."""
    from xtremedistil.distill import teacher as teacher_lib
    from xtremedistil.distill.tokenization import encode_examples

    model, spec, tokenizer = teacher_lib.load_teacher(teacher_dir)
    encoded = encode_examples(tokenizer, examples, labels, spec.seq_len, tagging, "test")
    return teacher_lib.predict_logits(model, encoded), encoded


def predictions(bundle, bundle_dir: str, teacher_dir: str | None, examples, labels: list[str],
                decoding: str | None = None) -> tuple[list, list]:
    """(teacher, student) predictions of `examples`: a label per sentence, or word-level tags for tagging
    (`decoding`: see `xtremedistil.distill.decoding`; default: the bundle's). The teacher defaults to
    MODEL_DIR/teacher beside the bundle."""
    from xtremedistil.distill.decoding import tags_from_piece_logits

    tagging, decoding = bundle.student_config.tagging, decoding or bundle.decoding
    logits, encoded = teacher_logits(teacher_dir or default_teacher(bundle_dir), examples, labels, tagging)
    if tagging:
        teacher = tags_from_piece_logits(logits, encoded.word_index, encoded.n_words, labels, decoding)
        return teacher, bundle.predict([" ".join(ex.words) for ex in examples], decoding)
    return [labels[int(i)] for i in np.argmax(logits, -1)], bundle.predict([ex.text for ex in examples])


def default_teacher(bundle_dir: str) -> str:
    """MODEL_DIR/teacher beside a bundle."""
    return str(Path(bundle_dir).parent / "teacher")


def parser(module: str, doc: str, bundle_kind: str, bundle_required: bool = True) -> argparse.ArgumentParser:
    """The diagnostics' command line: --bundle, --teacher, --task."""
    parser = argparse.ArgumentParser(prog=f"python -m xtremedistil.bench.{module}", description=doc.split("\n\n")[0])
    parser.add_argument("--bundle", required=bundle_required,
                        help=f"a {bundle_kind} student bundle" + ("" if bundle_required else
                                                                  " (without one: the teacher alone)"))
    parser.add_argument("--teacher", help="fine-tuned teacher folder (default: beside the bundle)")
    parser.add_argument("--task", help="task folder (default: the one the bundle was distilled on)")
    return parser
