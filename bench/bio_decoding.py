"""What IOB2-constrained decoding buys a tagging teacher and its student: test entity F1 per language, argmax
vs the best valid tag sequence, from the same logits.

    python -m xtremedistil.bench.bio_decoding --bundle runs/wikiann-e5/bundle-300-600 [--teacher DIR] [--task DIR]
    python -m xtremedistil.bench.bio_decoding --teacher runs/wikiann-e5/teacher --task ../shared/data/wikiann

Tagging tasks only. Without --bundle, the teacher alone (then --teacher and --task are needed). Entity F1 is
seqeval's strict IOB2 figure, as everywhere in xtremedistil: a predicted `O I-PER` holds no entity and
`B-ORG I-ORG I-PER` a cut one. `bio` decoding (`xtremedistil.distill.decoding`) picks each sentence's most
probable tag sequence in which every I-X follows B-X or I-X; nothing is trained and the exported artifacts
give the same logits. Prints, per model and decoding, the share of test sentences whose argmax tags are not
valid IOB2, F1 per language and the macro figure, and the student's retention under each decoding.
"""
from __future__ import annotations

import sys

import xtremedistil  # noqa: F401
from xtremedistil.bench import teacher_vs_student
from xtremedistil.errors import XtremeDistilError


def compare(bundle_dir: str | None, teacher_dir: str | None = None, task_dir: str | None = None) -> list[dict]:
    """Rows {model, decoding, invalid, metrics} (metrics as `tagging_metrics` gives them)."""
    from xtremedistil.distill.data import load_task
    from xtremedistil.distill.decoding import DECODINGS, invalid_share, tags_from_piece_logits
    from xtremedistil.distill.metrics import tagging_metrics

    if bundle_dir:
        bundle, task = teacher_vs_student.load_bundle_and_task(
            bundle_dir, task_dir, True, f"{bundle_dir}: constrained decoding is for tagging bundles")
        teacher_dir = teacher_dir or teacher_vs_student.default_teacher(bundle_dir)
    elif not (teacher_dir and task_dir):
        raise XtremeDistilError("without --bundle, give --teacher and --task")
    else:
        bundle, task = None, load_task(task_dir, True)
    test = task.splits["test"]
    gold, languages = [list(ex.label) for ex in test], [ex.language for ex in test]
    outputs = {"teacher": teacher_vs_student.teacher_logits(teacher_dir, test, task.labels, True)}
    if bundle is not None:       # each model runs once; both decodings read its logits
        encoded = bundle.encode([" ".join(ex.words) for ex in test])
        outputs["student"] = bundle.predict_logits(encoded.input_ids), encoded
    rows = []
    for model, (logits, encoded) in outputs.items():
        for decoding in DECODINGS:
            tags = tags_from_piece_logits(logits, encoded.word_index, encoded.n_words, task.labels, decoding)
            rows.append({"model": model, "decoding": decoding, "invalid": invalid_share(tags),
                         "metrics": tagging_metrics(gold, tags, languages)})
    return rows


def table(rows: list[dict]) -> list[str]:
    from xtremedistil.distill.metrics import headline, retention_percent

    languages = sorted(rows[0]["metrics"].get("per_language", {}))
    macro = "macro" if languages else "overall"
    lines = ["| model | decoding | invalid IOB2 sentences | " + " | ".join(languages + [macro]) + " |",
             "| --- | --- | ---: | " + " | ".join(["---:"] * (len(languages) + 1)) + " |"]
    for r in rows:
        per = r["metrics"].get("per_language", {})
        cells = [f"{100 * per[lang]['f1']:.2f}" for lang in languages] + [f"{100 * headline(r['metrics']):.2f}"]
        lines.append(f"| {r['model']} | {r['decoding']} | {100 * r['invalid']:.1f}% | " + " | ".join(cells) + " |")
    teacher = {r["decoding"]: r["metrics"] for r in rows if r["model"] == "teacher"}
    for r in rows:
        if r["model"] == "student" and headline(teacher[r["decoding"]]):
            per, base = r["metrics"].get("per_language", {}), teacher[r["decoding"]].get("per_language", {})
            cells = [retention_percent(per[lang]["f1"] / base[lang]["f1"] if base[lang]["f1"] else None)
                     for lang in languages]
            cells.append(retention_percent(headline(r["metrics"]) / headline(teacher[r["decoding"]])))
            lines.append(f"| retention | {r['decoding']} | | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    args = teacher_vs_student.parser("bio_decoding", __doc__, "tagging", bundle_required=False).parse_args(argv)
    try:
        rows = compare(args.bundle, args.teacher, args.task)
    except XtremeDistilError as err:
        print(f"bio_decoding: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
