"""Task metrics as plain dicts: accuracy for classification, entity-level P/R/F1 for tagging.

Tagging uses `seqeval` in strict IOB2 mode on word-level tags. When the data carries
languages, every metric is also given per language and macro-averaged over languages (the
paper's multilingual figure); `overall` is always the micro figure over all sentences.
"""
from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Sequence

import numpy as np

from xtremedistil.distill.decoding import DECODINGS, tags_from_piece_logits
from xtremedistil.distill.tokenization import tags_from_piece_predictions

ACCURACY = "accuracy"
F1 = "f1"


def _accuracy(gold: Sequence[str], predicted: Sequence[str]) -> dict:
    correct = sum(g == p for g, p in zip(gold, predicted))
    return {ACCURACY: correct / len(gold) if gold else 0.0, "n": len(gold)}


def _entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    gold, predicted = [list(s) for s in gold], [list(s) for s in predicted]
    options = dict(mode="strict", scheme=IOB2, zero_division=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "precision": float(precision_score(gold, predicted, **options)),
            "recall": float(recall_score(gold, predicted, **options)),
            F1: float(f1_score(gold, predicted, **options)),
            "n": len(gold),
        }


def _by_language(score, gold, predicted, languages, metric_names) -> dict:
    result = {"overall": score(gold, predicted)}
    present = [lang for lang in languages if lang is not None]
    if present:
        groups = defaultdict(list)
        for i, lang in enumerate(languages):
            groups[lang].append(i)
        result["per_language"] = {
            lang: score([gold[i] for i in idx], [predicted[i] for i in idx])
            for lang, idx in sorted(groups.items())
        }
        result["macro"] = {
            name: sum(m[name] for m in result["per_language"].values()) / len(groups)
            for name in metric_names
        }
        result["macro"]["languages"] = len(groups)
    return result


def classification_metrics(gold, predicted, languages=None) -> dict:
    """Accuracy overall, and per language with the macro average when languages are given."""
    languages = list(languages) if languages is not None else [None] * len(gold)
    result = _by_language(_accuracy, list(gold), list(predicted), languages, [ACCURACY])
    result["metric"] = ACCURACY
    return result


def tagging_metrics(gold, predicted, languages=None) -> dict:
    """Entity P/R/F1 (seqeval, strict IOB2) overall, per language, and macro over languages."""
    languages = list(languages) if languages is not None else [None] * len(gold)
    result = _by_language(_entity_scores, list(gold), list(predicted), languages,
                          ["precision", "recall", F1])
    result["metric"] = F1
    return result


def metrics_from_predictions(predicted_ids, encoded, examples, labels, tagging) -> dict:
    """Metrics of argmax ids over an encoded split: word-level tags (first pieces) for tagging."""
    languages = [ex.language for ex in examples]
    if tagging:
        predicted = tags_from_piece_predictions(predicted_ids, encoded.word_index, encoded.n_words, labels)
        return tagging_metrics([list(ex.label) for ex in examples], predicted, languages)
    return classification_metrics([ex.label for ex in examples], [labels[int(i)] for i in predicted_ids], languages)


def metrics_from_logits(logits, encoded, examples, labels, tagging, decoding: str = "argmax") -> dict:
    """Metrics of an encoded split from its logits: each sentence's argmax label, or for tagging word-level tags
    by `decoding` (each word's argmax, or "bio": the best IOB2-valid sequence; `xtremedistil.distill.decoding`)."""
    if tagging:
        predicted = tags_from_piece_logits(logits, encoded.word_index, encoded.n_words, labels, decoding)
        return tagging_metrics([list(ex.label) for ex in examples], predicted, [ex.language for ex in examples])
    return metrics_from_predictions(np.argmax(logits, -1), encoded, examples, labels, tagging)


def metrics_by_decoding(logits, encoded, examples, labels, tagging) -> dict[str, dict]:
    """{decoding: metrics_from_logits(...)} for every decoding of tags (argmax only for classification), from
    one set of logits: saved beside a run's own decoding so another `--tag_decoding` reads them later."""
    return {decoding: metrics_from_logits(logits, encoded, examples, labels, tagging, decoding)
            for decoding in (DECODINGS if tagging else ("argmax",))}


def headline(metrics: dict) -> float:
    """The single figure used for model selection and reports: macro over languages if any."""
    block = metrics.get("macro") or metrics["overall"]
    return block[metrics["metric"]]


def lowest_language(student: dict, teacher: dict) -> tuple[str, float] | None:
    """(language, student metric / teacher's) for the language the student keeps least of, over the languages
    both measured (teacher figure > 0); None without per-language figures. The paper's multilingual claim is
    about the weakest language, not the mean."""
    name = student["metric"]
    shares = {}
    for lang, block in (student.get("per_language") or {}).items():
        theirs = ((teacher.get("per_language") or {}).get(lang) or {}).get(name)
        if block.get(name) is not None and theirs:
            shares[lang] = block[name] / theirs
    if not shares:
        return None
    lang = min(shares, key=shares.get)
    return lang, shares[lang]


def best_on_dev(records: dict[str, dict]) -> str | None:
    """The sub-stage a bundle is made from, by the records of finished sub-stages (state.json "completed"):
    stages 2-3 only (stage 1 fits hidden states and has no comparable dev metric), the highest dev metric,
    the earlier sub-stage on ties. None when no stage-2/3 sub-stage has finished."""
    candidates = [(name, record) for name, record in records.items() if record.get("stage", 2) > 1]
    if not candidates:
        return None
    return max(candidates, key=lambda kv: (kv[1].get("dev_metric", float("-inf")), -kv[1].get("index", 0)))[0]


def retention_percent(share: float | None) -> str:
    """A retention (0.97957) as a percentage with one decimal, rounded down ("97.9%"): a figure shown as 98.0%
    is at least 98%, so a goal or a pick's accuracy floor never reads as met when it is not."""
    if share is None:
        return "n/a"
    return f"{math.floor(share * 1000 + 1e-9) / 10:.1f}%"    # 1e-9: 0.953 * 1000 is 952.99999...


def format_metrics(metrics: dict, title: str = "") -> str:
    """A short human-readable table of a metrics dict."""
    name = metrics["metric"]
    lines = [title] if title else []
    lines.append(f"  overall {name}: {metrics['overall'][name]:.4f} (n={metrics['overall']['n']})")
    for lang, block in metrics.get("per_language", {}).items():
        lines.append(f"    {lang:>4}: {name} {block[name]:.4f} (n={block['n']})")
    if "macro" in metrics:
        lines.append(f"  macro {name} over {metrics['macro']['languages']} languages: {metrics['macro'][name]:.4f}")
    return "\n".join(lines)
