"""`xtremedistil pick`: the Pareto front of a bench report and the artifact to ship for a budget."""
import json

import pytest

from xtremedistil.bench.pick import Budget, budgets_from_recipe, describe, front, pick
from xtremedistil.bench.report import render_markdown
from xtremedistil.cli import main
from xtremedistil.errors import XtremeDistilError


def _row(model, artifact, p50, metric, size_mb, batch=1, threads=2, teacher_metric=0.90):
    return {"model": model, "role": "teacher" if model == "teacher" else "student", "artifact": artifact,
            "runtime": artifact.split("-")[0], "quantization": artifact.split("-")[-1], "batch_size": batch,
            "threads": threads, "p50_ms": p50, "p90_ms": p50, "p99_ms": p50, "ms_per_sentence": p50 / batch,
            "sentences_per_s": 1000 * batch / p50, "metric": metric, "retention": None if metric is None else metric / teacher_metric,
            "size_bytes": int(size_mb * 1e6), "peak_rss_mb": 10.0, "speedup_same_runtime": None,
            "speedup_best": None, "teacher_same_runtime": None, "teacher_best": None, "compression_params": 1.0}


ROWS = [
    _row("teacher", "onnx-fp32", 12.0, 0.900, 90.0),
    _row("teacher", "onnx-dynamic", 6.0, 0.895, 23.0),
    _row("big", "onnx-fp32", 3.0, 0.885, 40.0),
    _row("big", "litert-dynamic", 2.5, 0.884, 10.0),
    _row("big", "litert-fp16", 2.5, 0.884, 20.0),       # same point as litert-dynamic, larger
    _row("small", "onnx-fp32", 0.8, 0.850, 5.0),
    _row("small", "onnx-dynamic", 0.9, 0.840, 1.5),     # dominated: slower and less accurate than onnx-fp32
    _row("small", "onnx-fp32", 0.5, 0.860, 5.0, batch=32),
    _row("teacher", "onnx-fp32", 9.0, None, 90.0, batch=1, threads=1),
]
REPORT = {"rows": ROWS, "protocol": {"batch_sizes": [1, 32], "threads": [1, 2], "seq_len": 16, "queries": 10,
                                     "warmup": 1, "repeats": 1},
          "task": {"metric": "accuracy"}}


def test_the_front_keeps_what_nothing_beats_and_the_smaller_of_equal_points():
    names = [(r["model"], r["artifact"]) for r in front([r for r in ROWS if r["batch_size"] == 1 and r["threads"] == 2])]
    assert names == [("small", "onnx-fp32"), ("big", "litert-dynamic"), ("big", "onnx-fp32"),
                     ("teacher", "onnx-dynamic"), ("teacher", "onnx-fp32")]


@pytest.mark.parametrize("budget, expected", [
    (Budget(), ("teacher", "onnx-fp32")),                                   # no constraint: the most accurate
    (Budget(max_latency_ms=5), ("big", "onnx-fp32")),
    (Budget(max_latency_ms=5, max_size_mb=15), ("big", "litert-dynamic")),
    (Budget(max_latency_ms=5, min_retention=0.98, prefer="speed"), ("big", "litert-dynamic")),
    (Budget(min_retention=0.98, max_size_mb=15, prefer="accuracy"), ("big", "litert-dynamic")),  # 0.884/0.9 = 98.2%
    (Budget(max_size_mb=2), ("small", "onnx-dynamic")),                      # off the front, but the only one that fits
    (Budget(batch_size=32), ("small", "onnx-fp32")),
])
def test_the_pick_is_the_most_accurate_candidate_within_a_latency_budget(budget, expected):
    result = pick(REPORT, budget)
    assert (result["pick"]["model"], result["pick"]["artifact"]) == expected
    assert result["budget"]["threads"] == 2 and result["unmet"] == [] and result["nearest_miss"] is None


@pytest.mark.parametrize("budget, expected", [
    # An accuracy floor alone: the fastest artifact keeping it, not the teacher's most accurate one.
    (Budget(min_retention=0.98), ("big", "litert-dynamic")),                 # 2.5 ms, 98.2% (fp16: same, larger)
    (Budget(min_retention=0.99), ("teacher", "onnx-dynamic")),               # 6 ms, 99.4%
    (Budget(min_retention=0.94), ("small", "onnx-fp32")),                    # 0.8 ms, 94.4%; onnx-dynamic is 93.3%
    (Budget(min_retention=0.90, max_size_mb=2), ("small", "onnx-dynamic")),
    (Budget(min_retention=0.98, prefer="accuracy"), ("teacher", "onnx-fp32")),
])
def test_an_accuracy_floor_without_a_latency_bound_picks_the_fastest_that_keeps_it(budget, expected):
    result = pick(REPORT, budget)
    assert (result["pick"]["model"], result["pick"]["artifact"]) == expected
    assert result["budget"]["objective"] == ("accuracy" if budget.prefer == "accuracy" else "speed")


def test_no_pick_names_the_constraint_nobody_meets_and_the_nearest_miss():
    result = pick(REPORT, Budget(max_latency_ms=0.6, min_retention=0.9))
    assert result["pick"] is None and result["unmet"] == ["max_latency_ms"]
    miss = result["nearest_miss"]
    assert (miss["model"], miss["artifact"]) == ("small", "onnx-fp32") and set(miss["misses"]) == {"max_latency_ms"}
    both = pick(REPORT, Budget(max_latency_ms=3.0, min_retention=0.99))    # each met by someone, never together
    assert both["pick"] is None and both["unmet"] == []


def test_budgets_are_checked():
    with pytest.raises(XtremeDistilError, match="--min_retention is a fraction"):
        Budget(min_retention=98)
    with pytest.raises(XtremeDistilError, match="--max_latency_ms must be positive"):
        Budget(max_latency_ms=0)
    with pytest.raises(XtremeDistilError, match="--prefer must be one of auto, accuracy, speed"):
        Budget(min_retention=0.9, prefer="smallest")
    with pytest.raises(XtremeDistilError, match="--max_size_mb must be a number"):
        Budget(max_size_mb="small")
    with pytest.raises(XtremeDistilError, match="no measurement with an accuracy at batch 8"):
        pick(REPORT, Budget(batch_size=8))
    with pytest.raises(XtremeDistilError, match="pick: unknown key"):
        budgets_from_recipe([{"batch": 1}], "r.yaml")
    assert budgets_from_recipe({"batch_size": 32, "min_retention": "0.95"}, "r.yaml") == [
        Budget(batch_size=32, min_retention=0.95)]


def test_cli_writes_pick_json_and_exits_1_when_nothing_fits(tmp_path, capsys):
    (tmp_path / "report.json").write_text(json.dumps(REPORT))
    assert main(["pick", str(tmp_path), "--max_latency_ms", "5"]) == 0
    assert "pick (batch 1, 2 threads, most accurate within the budget): big onnx-fp32" in capsys.readouterr().out
    assert main(["pick", str(tmp_path), "--min_retention", "0.98"]) == 0
    assert "pick (batch 1, 2 threads, fastest within the budget): big litert-dynamic" in capsys.readouterr().out
    assert main(["pick", str(tmp_path), "--min_retention", "0.98", "--prefer", "accuracy"]) == 0
    assert "most accurate within the budget): teacher onnx-fp32" in capsys.readouterr().out
    assert json.loads((tmp_path / "pick.json").read_text())["pick"]["artifact"] == "onnx-fp32"
    assert main(["pick", str(tmp_path / "report.json"), "--max_latency_ms", "0.1"]) == 1
    assert "no candidate at batch 1, 2 threads meets the budget" in capsys.readouterr().out
    (tmp_path / "report.json").write_text(json.dumps(REPORT)[:50])
    assert main(["pick", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the bench report" in err and "Traceback" not in err


def test_report_md_lists_the_front_and_the_picks():
    report = {**REPORT, "picks": [pick(REPORT, Budget(max_latency_ms=5))], "teacher": {"name": "t", "parameters": 1,
              "metric": 0.9}, "students": [], "failures": [],
              "environment": {"cpu": "cpu", "cores": 2, "git_commit": "abc", "cpu_flags": []}}
    text = render_markdown(report)
    assert "## Pareto front, batch 1, 2 threads" in text and "## Pareto front, batch 32, 2 threads" in text
    assert "| big | litert-dynamic | 2.500 |" in text and "| small | onnx-dynamic |" not in text
    assert "## Pick for the budget" in text and "- pick (batch 1, 2 threads, most accurate within the budget): big onnx-fp32" in text


def test_length_buckets_split_the_test_set_and_match_each_model(tiny_models, tmp_path):
    import numpy as np

    from helpers import tiny_bundle, tiny_teacher
    from xtremedistil.bench.length_buckets import length_buckets, main as buckets_main
    from xtremedistil.distill import load_bundle
    from xtremedistil.distill.data import load_task

    bundle = tiny_bundle(tmp_path, tiny_models("bert"), tagging=False)
    tiny_teacher(tmp_path, tiny_models("bert"), tagging=False)
    rows = length_buckets(str(bundle), edges=[3])
    test = load_task(tmp_path / "task", False).splits["test"]
    assert sum(r["sentences"] for r in rows) == len(test)
    predicted = load_bundle(bundle).predict([ex.text for ex in test])
    accuracy = np.mean([p == ex.label for p, ex in zip(predicted, test)])
    assert sum(r["student"] * r["sentences"] for r in rows) / len(test) == pytest.approx(accuracy)
    assert all(0 <= r["teacher"] <= 1 and 0 <= r["agreement"] <= 1 for r in rows)
    tagging = tiny_bundle(tmp_path / "tag", tiny_models("bert"), tagging=True)
    assert buckets_main(["--bundle", str(tagging)]) == 2


def test_the_nearest_miss_of_an_accuracy_floor_is_not_shown_as_meeting_it():
    rows = [_row("teacher", "onnx-fp32", 12.0, 0.8956, 90.0, teacher_metric=0.8956),
            _row("cnn", "litert-dynamic", 0.2, 0.8773, 4.0, teacher_metric=0.8956)]    # 97.96% of the teacher
    report = {**REPORT, "rows": rows, "teacher": {"name": "t", "parameters": 1, "metric": 0.8956}, "students": [],
              "failures": [], "environment": {"cpu": "cpu", "cores": 2, "git_commit": "abc", "cpu_flags": []}}
    result = pick(report, Budget(min_retention=0.98, max_latency_ms=1))
    assert result["pick"] is None and result["nearest_miss"]["model"] == "cnn"
    assert "97.9% retained" in describe(result) and "98.0%" not in describe(result)
    assert "| 97.9% |" in render_markdown({**report, "picks": [result]})
