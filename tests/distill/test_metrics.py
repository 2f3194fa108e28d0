import pytest

from xtremedistil.distill.metrics import (best_on_dev, classification_metrics, headline, lowest_language,
                                         retention_percent, tagging_metrics)


def test_tagging_metrics_per_language_hand_computed():
    gold = [
        ["B-PER", "I-PER", "O", "B-LOC"],   # en: PER, LOC
        ["B-ORG", "O"],                     # en: ORG
        ["B-PER", "O", "B-LOC"],            # ru: PER, LOC
    ]
    predicted = [
        ["B-PER", "I-PER", "O", "O"],       # PER right, LOC missed
        ["B-ORG", "B-LOC"],                 # ORG right, LOC spurious
        ["I-PER", "O", "B-LOC"],            # strict IOB2: I-PER alone is no entity; LOC right
    ]
    m = tagging_metrics(gold, predicted, ["en", "en", "ru"])
    # en: tp=2, pred=3, gold=3 -> P=R=F1=2/3. ru: tp=1, pred=1, gold=2 -> P=1, R=0.5, F1=2/3.
    assert m["per_language"]["en"]["precision"] == pytest.approx(2 / 3)
    assert m["per_language"]["en"]["f1"] == pytest.approx(2 / 3)
    assert m["per_language"]["ru"]["precision"] == pytest.approx(1.0)
    assert m["per_language"]["ru"]["recall"] == pytest.approx(0.5)
    assert m["per_language"]["ru"]["f1"] == pytest.approx(2 / 3)
    # overall micro: tp=3, pred=4, gold=5 -> P=0.75, R=0.6, F1=2*.75*.6/1.35
    assert m["overall"]["precision"] == pytest.approx(0.75)
    assert m["overall"]["recall"] == pytest.approx(0.6)
    assert m["overall"]["f1"] == pytest.approx(0.9 / 1.35)
    assert m["macro"]["f1"] == pytest.approx(2 / 3)
    assert m["macro"]["recall"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert headline(m) == pytest.approx(2 / 3)


def test_classification_accuracy_per_language():
    m = classification_metrics(["1", "0", "1", "1"], ["1", "1", "1", "0"], ["en", "en", "de", "de"])
    assert m["overall"]["accuracy"] == pytest.approx(0.5)
    assert m["per_language"]["en"]["accuracy"] == pytest.approx(0.5)
    assert m["per_language"]["de"]["accuracy"] == pytest.approx(0.5)
    assert m["metric"] == "accuracy" and headline(m) == pytest.approx(0.5)


def test_no_languages_means_overall_only():
    m = classification_metrics(["a", "b", "b"], ["a", "b", "a"])
    assert "per_language" not in m and "macro" not in m
    assert headline(m) == pytest.approx(2 / 3)


@pytest.mark.parametrize("share, shown", [
    (765 / 872 / (781 / 872), "97.9%"),   # the SST-2 cnn-aug4: 97.96%, one sentence short of a 98% goal
    (0.98, "98.0%"), (0.953, "95.3%"), (1.0, "100.0%"), (1.0178, "101.7%"), (0.0, "0.0%"), (None, "n/a"),
])
def test_a_retention_is_shown_rounded_down_so_a_goal_never_reads_as_met_when_it_is_not(share, shown):
    assert retention_percent(share) == shown


def test_best_on_dev_skips_stage_1_and_prefers_the_earlier_sub_stage_on_ties():
    records = {"stage1": {"stage": 1, "index": 0, "dev_metric": 0.99},       # hidden-state fit: never chosen
               "stage2-top1": {"stage": 2, "index": 1, "dev_metric": 0.60},
               "stage3-top2": {"stage": 3, "index": 6, "dev_metric": 0.80},
               "stage2-top3": {"stage": 2, "index": 3, "dev_metric": 0.80}}
    assert best_on_dev(records) == "stage2-top3"
    records["stage3-top2"]["dev_metric"] = 0.81
    assert best_on_dev(records) == "stage3-top2"
    assert best_on_dev({"stage1": records["stage1"]}) is None
    assert best_on_dev({}) is None


def test_lowest_language_is_the_one_kept_least_of_not_the_lowest_score():
    def metrics(**f1):
        return {"metric": "f1", "per_language": {lang: {"f1": v, "n": 10} for lang, v in f1.items()}}

    teacher = metrics(en=0.80, zh=0.50, de=0.90, sw=0.0)
    # zh has the lowest F1 but keeps 96%; en keeps 87.5%; sw (teacher 0) and fr (teacher has none) cannot count
    lang, share = lowest_language(metrics(en=0.70, zh=0.48, de=0.89, sw=0.1, fr=0.2), teacher)
    assert lang == "en" and share == pytest.approx(0.875)
    assert lowest_language({"metric": "accuracy", "overall": {"accuracy": 0.9}}, teacher) is None
