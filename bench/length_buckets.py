"""Test accuracy by sentence length, teacher vs student: where a student loses its teacher's accuracy.

    python -m xtremedistil.bench.length_buckets --bundle runs/sst2/bundle [--teacher runs/sst2/teacher] \
        [--task DIR] [--edges 10,20,30]

Classification tasks only. The teacher defaults to MODEL_DIR/teacher beside the bundle and the task to the
one the bundle was distilled on. Prints one line per bucket of whitespace words: sentences, teacher and
student accuracy, retention, and how often the two agree.
"""
from __future__ import annotations

import sys

import numpy as np

import xtremedistil  # noqa: F401
from xtremedistil.bench import teacher_vs_student
from xtremedistil.errors import XtremeDistilError


def length_buckets(bundle_dir: str, teacher_dir: str | None = None, task_dir: str | None = None,
                   edges=(10, 20, 30)) -> list[dict]:
    bundle, task = teacher_vs_student.load_bundle_and_task(
        bundle_dir, task_dir, False, "length buckets are for classification bundles (tagging F1 is per entity)")
    test, labels = task.splits["test"], task.labels
    teacher, student = teacher_vs_student.predictions(bundle, bundle_dir, teacher_dir, test, labels)
    gold = np.array([labels.index(ex.label) for ex in test])
    teacher = np.array([labels.index(p) for p in teacher])
    student = np.array([labels.index(p) for p in student])
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
    parser = teacher_vs_student.parser("length_buckets", __doc__, "classification")
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
