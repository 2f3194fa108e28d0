"""Test accuracy by sentence length, teacher vs student: where a student loses its teacher's accuracy.

    python -m xtremedistil.bench.length_buckets --bundle runs/sst2/bundle [--teacher runs/sst2/teacher] \
        [--task DIR] [--edges 10,20,30]

Classification tasks only. The teacher defaults to MODEL_DIR/teacher beside the bundle and the task to the
one the bundle was distilled on. Prints one line per bucket of whitespace words: sentences, teacher and
student accuracy, retention, and how often the two agree.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import xtremedistil  # noqa: F401
from xtremedistil.errors import XtremeDistilError


def length_buckets(bundle_dir: str, teacher_dir: str | None = None, task_dir: str | None = None,
                   edges=(10, 20, 30)) -> list[dict]:
    from xtremedistil.distill import load_bundle
    from xtremedistil.distill import teacher as teacher_lib
    from xtremedistil.distill.data import load_task
    from xtremedistil.distill.tokenization import encode_examples

    bundle = load_bundle(bundle_dir)
    if bundle.student_config.tagging:
        raise XtremeDistilError("length buckets are for classification bundles (tagging F1 is per entity)")
    task = load_task(task_dir or bundle.config["options"]["task"], False)
    teacher_dir = teacher_dir or str(Path(bundle_dir).parent / "teacher")
    model, spec, tokenizer = teacher_lib.load_teacher(teacher_dir)
    test, labels = task.splits["test"], task.labels
    gold = np.array([labels.index(ex.label) for ex in test])
    student = np.array([labels.index(p) for p in bundle.predict([ex.text for ex in test])])
    encoded = encode_examples(tokenizer, test, labels, spec.seq_len, False, "test")
    teacher = np.argmax(teacher_lib.predict_logits(model, encoded), -1)
    words = np.array([len(ex.text.split()) for ex in test])
    bounds = [0, *edges, int(words.max()) + 1]
    rows = []
    for lo, hi in zip(bounds, bounds[1:]):
        m = (words >= lo) & (words < hi)
        if m.any():
            t, s = float((teacher[m] == gold[m]).mean()), float((student[m] == gold[m]).mean())
            rows.append({"words": f"{lo}-{hi - 1}", "sentences": int(m.sum()), "teacher": t, "student": s,
                         "retention": s / t if t else None, "agreement": float((teacher[m] == student[m]).mean())})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xtremedistil.bench.length_buckets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="a classification student bundle")
    parser.add_argument("--teacher", help="fine-tuned teacher folder (default: beside the bundle)")
    parser.add_argument("--task", help="task folder (default: the one the bundle was distilled on)")
    parser.add_argument("--edges", default="10,20,30", help="bucket edges in words (default: 10,20,30)")
    args = parser.parse_args(argv)
    try:
        rows = length_buckets(args.bundle, args.teacher, args.task, [int(e) for e in args.edges.split(",") if e])
    except (XtremeDistilError, ValueError) as err:
        print(f"length_buckets: error: {err}", file=sys.stderr)
        return 2
    print("| words | sentences | teacher | student | retention | agreement |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['words']} | {r['sentences']} | {100 * r['teacher']:.1f} | {100 * r['student']:.1f} | "
              f"{100 * r['retention']:.1f}% | {100 * r['agreement']:.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
