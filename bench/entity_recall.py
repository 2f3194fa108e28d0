"""Where a tagging student loses its teacher: entity recall by kind, teacher vs student, per language.

    python -m xtremedistil.bench.entity_recall --bundle runs/wikiann-e5/bundle-300-600 \
        [--teacher runs/wikiann-e5/teacher] [--task DIR] [--languages en,de] [--decoding bio]

Tagging tasks only. The teacher defaults to MODEL_DIR/teacher beside the bundle and the task to the one the
bundle was distilled on. Each gold entity of the test split (exact span and type, as seqeval counts them) is
put in three groupings: its type, its length in words (1, 2, 3+) and whether its span holds punctuation
(a comma, a bracket, a quote or a dash: "Nowy Dwór , Gmina Somonino", "Stephen Levin ( councillor )").
Prints, per language and group, the entities, the share the teacher and the student find, and the gap.

A second table looks at one decision behind many punctuated misses: a comma or an opening bracket between two
entity words either lies inside one span ("Las Cruces , New Mexico", tagged I-) or separates two ("Nowy
Dwór", "Gmina Somonino"; tagged O or B-). Per language and mark: the cases in gold, the share gold joins,
and how often the teacher and the student decide as gold does.
"""
from __future__ import annotations

import sys
import unicodedata

import xtremedistil  # noqa: F401
from xtremedistil.bench import teacher_vs_student
from xtremedistil.errors import XtremeDistilError


def _punctuated(words) -> bool:
    """True when a word of the span is punctuation only (any script's commas, brackets, quotes, dashes)."""
    return any(w and all(unicodedata.category(c).startswith("P") for c in w) for w in words)


def _groups(words, entity) -> list[tuple[str, str]]:
    kind, start, end = entity
    n = end - start + 1
    return [("type", kind), ("words", str(n) if n < 3 else "3+"),
            ("punctuation", "yes" if _punctuated(words[start:end + 1]) else "no")]


def _pools(language) -> tuple:
    """The rows a sentence counts in: its language's and "all" (only "all" when it has no language)."""
    return (language, "all") if language else ("all",)


def recall_by_kind(gold: list[list[str]], predicted: dict[str, list[list[str]]], words: list,
                   languages: list) -> list[dict]:
    """Rows {language, group, kind, entities, <model>: recall} from word-level gold and predicted tags;
    language "all" pools every sentence. `predicted` maps a model name to its tags of every sentence."""
    from seqeval.metrics.sequence_labeling import get_entities

    found: dict[tuple, dict] = {}
    for i, tags in enumerate(gold):
        hits = {name: set(get_entities(list(p[i]))) for name, p in predicted.items()}
        for entity in get_entities(list(tags)):
            for language in _pools(languages[i]):
                for group, kind in _groups(words[i], entity):
                    cell = found.setdefault((language, group, kind), {"entities": 0, **{n: 0 for n in predicted}})
                    cell["entities"] += 1
                    for name in predicted:
                        cell[name] += entity in hits[name]
    order = {"type": 0, "words": 1, "punctuation": 2}
    rows = []
    for (language, group, kind), cell in sorted(found.items(), key=lambda kv: (kv[0][0] == "all", kv[0][0],
                                                                             order[kv[0][1]], kv[0][2])):
        rows.append({"language": language, "group": group, "kind": kind, "entities": cell["entities"],
                     **{name: cell[name] / cell["entities"] for name in predicted}})
    return rows


JOIN_MARKS = (",", "(")


def joins_across(gold: list[list[str]], predicted: dict[str, list[list[str]]], words: list, languages: list,
                 marks=JOIN_MARKS) -> list[dict]:
    """Rows {language, mark, cases, gold_joined, <model>: agreement}: at each mark whose neighbours are both
    inside gold entities, whether gold puts the mark in a span (an I- tag) and how often each model decides
    the same; language "all" pools every sentence."""
    found: dict[tuple, dict] = {}
    for i, tags in enumerate(gold):
        w = words[i]
        for j in range(1, len(w) - 1):
            if w[j] not in marks or tags[j - 1] == "O" or tags[j + 1] == "O":
                continue
            joined = tags[j].startswith("I-")
            for language in _pools(languages[i]):
                cell = found.setdefault((language, w[j]), {"cases": 0, "gold_joined": 0, **{n: 0 for n in predicted}})
                cell["cases"] += 1
                cell["gold_joined"] += joined
                for name, p in predicted.items():
                    cell[name] += p[i][j].startswith("I-") == joined
    return [{"language": language, "mark": mark, "cases": cell["cases"],
             **{k: v / cell["cases"] for k, v in cell.items() if k != "cases"}}
            for (language, mark), cell in sorted(found.items(), key=lambda kv: (kv[0][0] == "all", kv[0]))]


def _predictions(bundle_dir, teacher_dir, task_dir, languages, decoding) -> tuple:
    """(gold tags, {"teacher": tags, "student": tags}, words, languages) of the test sentences kept: the
    arguments of `recall_by_kind` and `joins_across`."""
    bundle, task = teacher_vs_student.load_bundle_and_task(
        bundle_dir, task_dir, True, f"{bundle_dir}: entity recall is for tagging bundles (for classification use "
        "python -m xtremedistil.bench.length_buckets)")
    test = task.splits["test"]
    if languages:
        present = {ex.language for ex in test}
        missing = [lang for lang in languages if lang not in present]
        if missing:
            raise XtremeDistilError(f"--languages: {', '.join(missing)} not in the test split (it has "
                                    f"{', '.join(sorted(str(p) for p in present)) or 'no languages'})")
        test = [ex for ex in test if ex.language in languages]
    teacher, student = teacher_vs_student.predictions(bundle, bundle_dir, teacher_dir, test, task.labels,
                                                       decoding)
    return ([list(ex.label) for ex in test], {"teacher": teacher, "student": student},
            [ex.words for ex in test], [ex.language for ex in test])


def entity_recall(bundle_dir: str, teacher_dir: str | None = None, task_dir: str | None = None,
                  languages: list[str] | None = None, decoding: str | None = None,
                  joins: list | None = None) -> list[dict]:
    """Recall rows (see `recall_by_kind`); `joins`, when given a list, receives the `joins_across` rows."""
    columns = _predictions(bundle_dir, teacher_dir, task_dir, languages, decoding)
    if joins is not None:
        joins.extend(joins_across(*columns))
    return recall_by_kind(*columns)


def main(argv=None) -> int:
    parser = teacher_vs_student.parser("entity_recall", __doc__, "tagging")
    parser.add_argument("--languages", default="", help="comma-separated languages to keep (default: all)")
    parser.add_argument("--decoding", choices=("argmax", "bio"),
                        help="word tags of both models: each word's argmax or the best IOB2-valid sequence "
                             "(default: the bundle's --tag_decoding)")
    args = parser.parse_args(argv)
    joins: list[dict] = []
    try:
        rows = entity_recall(args.bundle, args.teacher, args.task,
                             [lang for lang in args.languages.split(",") if lang] or None, args.decoding, joins)
    except XtremeDistilError as err:
        print(f"entity_recall: error: {err}", file=sys.stderr)
        return 2
    print("| language | group | kind | entities | teacher recall | student recall | gap (points) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['language']} | {r['group']} | {r['kind']} | {r['entities']} | {100 * r['teacher']:.1f} | "
              f"{100 * r['student']:.1f} | {100 * (r['teacher'] - r['student']):.1f} |")
    print()
    print("A mark between two entity words: one span (joined) or two? Agreement with gold, % of cases.")
    print()
    print("| language | mark | cases | gold joins | teacher agrees | student agrees | gap (points) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in joins:
        print(f"| {r['language']} | {r['mark']} | {r['cases']} | {100 * r['gold_joined']:.1f} | "
              f"{100 * r['teacher']:.1f} | {100 * r['student']:.1f} | {100 * (r['teacher'] - r['student']):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
