"""The bench harness on tiny bundles in every runtime, the report's arithmetic, the plots, and the gate."""
import copy
import json
import shutil

import numpy as np
import pytest

from helpers import tiny_bundle, tiny_teacher
from xtremedistil.bench.gate import compare, pick_baseline, run_gate, GateInputError, Regression
from xtremedistil.bench.harness import BenchOptions, machine_fingerprint, run_bench
from xtremedistil.bench.report import (_per_language, format_headline, pareto_front, render_markdown, shared_cpu_line,
                                       sitting_line)
from xtremedistil.cli import main
from xtremedistil.errors import XtremeDistilError
from xtremedistil.export.pipeline import ExportOptions, run_export

PROTOCOL = dict(batch_sizes="1,4", seq_len=16, threads="1", queries=12, warmup=1)


@pytest.fixture(scope="module")
def benched(tiny_models, tmp_path_factory):
    """Two students of one task (a BiLSTM with every format, a transformer with ONNX only) against a
    tiny teacher folder beside the first bundle (the default teacher), in all four runtimes."""
    root = tmp_path_factory.mktemp("bench")
    checkpoint = tiny_models("bert")
    first = tiny_bundle(root / "a", checkpoint, tagging=False)
    tiny_teacher(root / "a", checkpoint, tagging=False)
    run_export(ExportOptions(bundle=str(first), tflite_batch_sizes="1,4",
                             formats="savedmodel,onnx:fp32,onnx:dynamic,tflite:fp32,tflite:dynamic",
                             max_metric_drop=100.0))
    second = tiny_bundle(root / "b", checkpoint, tagging=False, kind="transformer", seed=1)
    run_export(ExportOptions(bundle=str(second), formats="onnx:fp32", max_metric_drop=100.0))
    out = root / "report"
    report = run_bench(BenchOptions(bundles=[str(first), str(second)], out=str(out), names="bilstm,transformer",
                                    **PROTOCOL), progress=False)
    return report, out, first, second


def _rows(report, **match):
    return [r for r in report["rows"] if all(r[k] == v for k, v in match.items())]


def test_every_runtime_is_measured_for_teacher_and_students(benched):
    report, _, _, _ = benched
    assert report["failures"] == []
    for runtime in ("keras", "savedmodel", "litert", "onnxruntime"):
        for batch in (1, 4):
            assert _rows(report, role="teacher", runtime=runtime, batch_size=batch), (runtime, batch)
            assert _rows(report, model="bilstm", runtime=runtime, batch_size=batch), (runtime, batch)
    assert {r["runtime"] for r in _rows(report, model="transformer")} == {"keras", "onnxruntime"}
    # A static-batch TFLite artifact is timed at its own batch size.
    assert {r["artifact"] for r in _rows(report, model="bilstm", runtime="litert", batch_size=4)} == {
        "tflite-fp32-b4", "tflite-dynamic-b4"}
    for row in report["rows"]:
        assert row["p50_ms"] > 0 and row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["peak_rss_mb"] > 10 and row["size_bytes"] > 0 and row["parameters"] > 0


def test_report_numbers_are_consistent(benched):
    report, _, _, _ = benched
    teacher_metric = report["teacher"]["metric"]
    assert teacher_metric is not None
    for row in report["rows"]:
        assert row["sentences_per_s"] == pytest.approx(row["batch_size"] * 1000 / row["p50_ms"])
        assert row["ms_per_sentence"] == pytest.approx(row["p50_ms"] / row["batch_size"])
        peers = _rows(report, role="teacher", batch_size=row["batch_size"], threads=row["threads"])
        same = [t for t in peers if t["runtime"] == row["runtime"] and t["quantization"] == "fp32"]
        assert row["speedup_same_runtime"] == pytest.approx(same[0]["p50_ms"] / row["p50_ms"])
        assert row["speedup_best"] == pytest.approx(min(t["p50_ms"] for t in peers) / row["p50_ms"])
        assert row["compression_params"] == pytest.approx(report["teacher"]["parameters"] / row["parameters"])
        assert row["retention"] == pytest.approx(row["metric"] / teacher_metric)
    fastest_teacher = min(_rows(report, role="teacher", batch_size=4), key=lambda r: r["p50_ms"])
    assert fastest_teacher["speedup_best"] == pytest.approx(1.0)


def test_accuracy_is_the_test_split_metric_of_each_artifact(benched):
    from xtremedistil.distill import data as data_lib
    from xtremedistil.distill.bundle import load_bundle

    report, _, first, _ = benched
    bundle = load_bundle(first)
    task = data_lib.load_task(bundle.config["options"]["task"], False)
    examples = task.splits["test"]
    expected = np.mean([p == e.label for p, e in zip(bundle.predict([e.text for e in examples]), examples)])
    for row in _rows(report, model="bilstm"):
        if row["quantization"] == "fp32":
            assert row["metric"] == pytest.approx(expected), row["artifact"]
        assert row["metrics"]["overall"]["n"] == len(examples)


def test_litert_and_onnx_measurements_never_load_tensorflow(benched):
    _, out, _, _ = benched
    records = [json.loads(line) for line in (out / "measurements.jsonl").read_text().splitlines()]
    measured = [r for r in records if "latency" in r]
    assert measured and all("error" not in r for r in records)
    spec_free = [r for r in measured if not r["tensorflow_loaded"]]
    assert len(spec_free) >= 8   # teacher: 4 tflite + 2 onnx; students: 4 tflite + 3 onnx


def test_report_files_and_plots_are_written(benched):
    import matplotlib.image

    report, out, _, _ = benched
    saved = json.loads((out / "report.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    assert saved["environment"]["cores"] >= 1 and saved["environment"]["versions"]["onnxruntime"]
    text = (out / "report.md").read_text()
    assert "## Batch 4, 1 thread" in text and "speedup vs best teacher" in text and "| bilstm |" in text
    for name in ("accuracy_vs_latency.png", "speedup_by_batch.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 200 and image.shape[1] > 400


def test_a_rerun_resumes_without_measuring_again(benched):
    report, out, first, second = benched
    before = (out / "measurements.jsonl").read_text()
    again = run_bench(BenchOptions(bundles=[str(first), str(second)], out=str(out), names="bilstm,transformer",
                                   **PROTOCOL), progress=False)
    assert (out / "measurements.jsonl").read_text() == before
    assert [r["p50_ms"] for r in again["rows"]] == [r["p50_ms"] for r in report["rows"]]
    # A re-exported artifact (new bytes) is measured again, and only that one.
    from xtremedistil.bench.harness import _stamp

    import onnx

    artifact = second / "artifacts" / "onnx-fp32.onnx"
    model = onnx.load(str(artifact))
    model.doc_string = "re-exported"
    onnx.save(model, str(artifact))
    _stamp.cache_clear()
    run_bench(BenchOptions(bundles=[str(first), str(second)], out=str(out), names="bilstm,transformer", **PROTOCOL),
              progress=False)
    added = (out / "measurements.jsonl").read_text()[len(before):].splitlines()
    assert len(added) == 1 and "latency" in json.loads(added[0])
    # --remeasure-shared: a measurement taken beside other work is measured again, and only that one
    records = [json.loads(line) for line in (out / "measurements.jsonl").read_text().splitlines()]
    shared_key = next(r["key"] for r in records if "latency" in r)
    for record in records:
        record["others_cpu_share"] = 0.5 if record["key"] == shared_key else 0.0
    (out / "measurements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    marked = (out / "measurements.jsonl").read_text()
    options = dict(bundles=[str(first), str(second)], out=str(out), names="bilstm,transformer", **PROTOCOL)
    run_bench(BenchOptions(**options), progress=False)                          # resuming alone keeps it
    assert (out / "measurements.jsonl").read_text() == marked
    run_bench(BenchOptions(**options, remeasure_shared=True), progress=False)
    added = (out / "measurements.jsonl").read_text()[len(marked):].splitlines()
    assert [json.loads(line)["key"] for line in added] == [shared_key]


def test_rounds_measure_round_robin_and_report_medians(benched, tmp_path):
    """--rounds N: every artifact measured N times (a rerun keeps what it has: round 1 is a one-round bench's
    measurement), each row the median over the rounds, the rounds' p50s kept; ratios from those medians."""
    _, _, first, _ = benched
    out = tmp_path / "rounds"
    options = dict(bundles=[str(first)], out=str(out), runtimes="onnxruntime", **PROTOCOL)
    one = run_bench(BenchOptions(**options), progress=False)
    lines = (out / "measurements.jsonl").read_text().splitlines()
    measured = [json.loads(line) for line in lines if "latency" in json.loads(line)]
    three = run_bench(BenchOptions(**options, rounds=3), progress=False)
    added = [json.loads(line) for line in (out / "measurements.jsonl").read_text().splitlines()[len(lines):]]
    assert len(added) == 2 * len(measured) and all("latency" in r for r in added)
    assert three["protocol"]["rounds"] == 3 and "median of 3 round-robin rounds" in (out / "report.md").read_text()
    by_key = {(r["model"], r["artifact"], r["batch_size"]): r for r in one["rows"]}
    for row in three["rows"]:
        rounds = row["rounds_p50_ms"]
        assert len(rounds) == 3 and row["p50_ms"] == pytest.approx(float(np.median(rounds)))
        assert rounds[0] == pytest.approx(by_key[(row["model"], row["artifact"], row["batch_size"])]["p50_ms"])
        assert row["timed_batches"] == 3 * by_key[(row["model"], row["artifact"], row["batch_size"])]["timed_batches"]
        assert row["ms_per_sentence"] == pytest.approx(row["p50_ms"] / row["batch_size"])
        teacher = _rows(three, role="teacher", runtime="onnxruntime", quantization="fp32", batch_size=row["batch_size"])
        assert row["speedup_same_runtime"] == pytest.approx(teacher[0]["p50_ms"] / row["p50_ms"])
    with pytest.raises(XtremeDistilError, match="--rounds 0"):
        run_bench(BenchOptions(**{**options, "out": str(tmp_path / "zero")}, rounds=0), progress=False)


def test_combine_rounds_takes_medians_and_the_first_error():
    from xtremedistil.bench.harness import combine_rounds

    def record(p50, rss):
        return {"latency": [{"batch_size": 2, "p50_ms": p50, "p90_ms": p50 + 1, "p99_ms": p50 + 2, "mean_ms": p50,
                             "timed_batches": 5, "sentences": 10, "ms_per_sentence": p50 / 2,
                             "sentences_per_s": 2000 / p50}], "peak_rss_mb": rss, "load_seconds": 1.0,
                "metrics": {"accuracy": 0.5}}

    combined = combine_rounds([record(4.0, 100), record(9.0, 120), record(5.0, 90)])
    row = combined["latency"][0]
    assert row["p50_ms"] == 5.0 and row["p90_ms"] == 6.0 and row["rounds_p50_ms"] == [4.0, 9.0, 5.0]
    assert row["ms_per_sentence"] == 2.5 and row["sentences_per_s"] == 400.0 and row["timed_batches"] == 15
    assert combined["peak_rss_mb"] == 120 and combined["metrics"] == {"accuracy": 0.5}
    shares = combine_rounds([{**record(4.0, 100), "others_cpu_share": s} for s in (0.01, 0.3, None)])
    assert shares["others_cpu_share"] == 0.3          # a round beside other work taints the median
    assert combine_rounds([record(4.0, 100), {"error": "exit 1: boom"}]) == {"error": "exit 1: boom"}
    assert combine_rounds([record(4.0, 100)]) == record(4.0, 100)


def test_gate_passes_on_identical_reports_and_catches_regressions(benched, tmp_path, capsys):
    report, out, _, _ = benched
    baseline = tmp_path / "baseline.json"     # this run's report: out/report.json is rewritten by the resume test
    baseline.write_text(json.dumps(report))
    assert main(["bench", "gate", str(baseline), "--baseline", str(baseline)]) == 0
    assert "gate passed" in capsys.readouterr().out

    slower = copy.deepcopy(report)
    row = next(r for r in slower["rows"] if r["role"] == "student" and r["batch_size"] == 4)
    row["speedup_best"] *= 0.8
    path = tmp_path / "slower.json"
    path.write_text(json.dumps(slower))
    assert main(["bench", "gate", str(path), "--baseline", str(baseline)]) == 1
    table = capsys.readouterr().out
    assert "speedup_best" in table and "-20.0%" in table and "b4 t1" in table
    # within a looser tolerance it passes
    assert main(["bench", "gate", str(path), "--baseline", str(baseline), "--max-speedup-drop", "25%"]) == 0
    # ... unless the mean over every student row is held tighter than that one row's drop spreads over them
    assert main(["bench", "gate", str(path), "--baseline", str(baseline), "--max-speedup-drop", "25%",
                 "--max-mean-speedup-drop", "0.5%"]) == 1
    assert "geometric mean of" in capsys.readouterr().out

    worse = copy.deepcopy(report)
    row = next(r for r in worse["rows"] if r["role"] == "student")
    row["metric"] -= 0.01
    path.write_text(json.dumps(worse))
    assert main(["bench", "gate", str(path), "--baseline", str(baseline)]) == 1
    assert "-1.00 pt" in capsys.readouterr().out


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("rows"), "not a bench report"),
    (lambda r: r["rows"][0].pop("speedup_best"), "lacks speedup_best"),
    (lambda r: r["protocol"].update(seq_len=64), "another protocol"),
    (lambda r: r["rows"].append({**r["rows"][-1], "model": "ghost", "role": "student"}), "no row for"),
])
def test_gate_exits_2_on_unusable_baselines(benched, tmp_path, capsys, mutate, message):
    report, out, _, _ = benched
    baseline = copy.deepcopy(report)
    mutate(baseline)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline))
    assert main(["bench", "gate", str(out / "report.json"), "--baseline", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_gate_input_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["bench", "gate", str(bad), "--baseline", str(bad)]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main(["bench", "gate", str(tmp_path / "missing.json"), "--baseline", str(bad)]) == 2
    with pytest.raises(GateInputError, match="percentage"):
        run_gate(str(bad), str(bad), max_speedup_drop="ten")


def test_gate_compare_unit():
    row = {"model": "s", "role": "student", "runtime": "onnxruntime", "quantization": "dynamic", "batch_size": 32,
           "threads": 2, "metric": 0.9, "speedup_same_runtime": 50.0, "speedup_best": 10.0, "compression_params": 30.0}
    baseline = {"protocol": {"seq_len": 32, "teacher": "mbert-shape"}, "rows": [row]}
    assert compare(baseline, baseline, 0.1, 0.5) == []
    current = copy.deepcopy(baseline)
    current["rows"][0].update(speedup_same_runtime=45.5, metric=0.896)   # -9%, -0.4 points: within
    assert compare(current, baseline, 0.1, 0.5) == []
    current["rows"][0].update(speedup_same_runtime=44.0, metric=0.89)    # -12%, -1 point
    assert {f["measure"] for f in compare(current, baseline, 0.1, 0.5)} == {"speedup_same_runtime", "metric"}
    # compression (parameter counts) is exact whatever the speedup tolerance
    current = copy.deepcopy(baseline)
    current["rows"][0]["compression_params"] = 29.9
    assert [f["measure"] for f in compare(current, baseline, 0.5, 0.5)] == ["compression_params"]
    # every row a little slower: within a wide per-row tolerance, caught by the geometric-mean one
    rows = [dict(row, batch_size=b, speedup_same_runtime=50.0 * b, speedup_best=10.0 * b) for b in (1, 2, 4)]
    baseline = {"protocol": {"seq_len": 32}, "rows": rows}
    slower = {"protocol": {"seq_len": 32}, "rows": [dict(r, speedup_same_runtime=r["speedup_same_runtime"] * f,
                                                           speedup_best=r["speedup_best"] * 0.95)
                                                      for r, f in zip(rows, (0.8, 0.75, 0.7))]}
    assert compare(slower, baseline, 0.5, 0.5) == []
    assert compare(slower, baseline, 0.5, 0.5, max_mean_speedup_drop=0.3) == []
    found = compare(slower, baseline, 0.5, 0.5, max_mean_speedup_drop=0.2)
    assert [(f["row"], f["measure"]) for f in found] == [("geometric mean of 3 student rows", "speedup_same_runtime")]
    assert found[0]["change"] == pytest.approx((0.8 * 0.75 * 0.7) ** (1 / 3) - 1)
    with pytest.raises(Regression):
        raise Regression("x")


def test_pareto_front():
    points = [(1.0, 0.80), (2.0, 0.85), (3.0, 0.84), (0.5, 0.70), (4.0, 0.90), (2.0, 0.60)]
    assert pareto_front(points) == [(0.5, 0.70), (1.0, 0.80), (2.0, 0.85), (4.0, 0.90)]


def _language_row(model, role, runtime, per_language):
    scores = {lang: {"f1": f1, "n": 10} for lang, f1 in per_language.items()}
    macro = sum(per_language.values()) / len(per_language)
    return {"model": model, "role": role, "runtime": runtime,
            "metrics": {"metric": "f1", "per_language": scores, "macro": {"f1": macro}}}


def test_per_language_table_gives_each_students_retention_and_weakest_language():
    rows = [_language_row("student", "student", "onnxruntime", {"de": 0.0, "en": 0.0}),   # not the reference
            _language_row("teacher", "teacher", "keras", {"de": 0.80, "en": 0.90}),
            _language_row("student", "student", "keras", {"de": 0.76, "en": 0.8008})]
    lines = _per_language({"rows": rows})
    assert lines[2] == "| language | teacher | student | student retention |"
    # en 0.8008 / 0.90 = 88.98%: floored, so a language just under 89% never reads as 89.0%
    assert "| de | 0.8000 | 0.7600 | 95.0% |" in lines and "| en | 0.9000 | 0.8008 | 88.9% |" in lines
    assert "| macro | 0.8500 | 0.7804 | 91.8% |" in lines
    assert "Lowest retention of a language: student en (88.9%)." in lines
    without_teacher = _per_language({"rows": rows[2:]})
    assert without_teacher[2] == "| language | student |" and not any("Lowest" in line for line in without_teacher)


def test_measurements_of_another_machine_are_not_reused(benched, tmp_path):
    """A runs folder carried to another CPU (or written before measurements named their machine) is measured
    again: reusing its teacher figures beside this machine's student figures would give ratios of two CPUs."""
    report, out, first, second = benched
    copied = tmp_path / "report"
    shutil.copytree(out, copied)
    options = dict(bundles=[str(second)], out=str(copied), names="transformer", runtimes="onnxruntime", **PROTOCOL)
    run_bench(BenchOptions(**options), progress=False)
    lines = (copied / "measurements.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    ours = [r for r in records if "latency" in r and r["machine"] == machine_fingerprint()]
    assert ours and all(r["measured_at"] >= r["bench_run"] > 0 for r in ours)
    again = run_bench(BenchOptions(**options), progress=False)              # same machine: nothing measured
    assert (copied / "measurements.jsonl").read_text().splitlines() == lines
    assert sitting_line(again).startswith("Measured in one bench run, ")
    for index, record in enumerate(records):        # half from another CPU, half from a version that named none
        if "latency" in record:
            if index % 2:
                record["machine"] = "Another CPU | 64 cores | avx512f"
            else:
                record.pop("machine")
    (copied / "measurements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    measured = {(r["model"], r["artifact"], r["threads"]) for r in again["rows"]}
    third = run_bench(BenchOptions(**options), progress=False)
    added = (copied / "measurements.jsonl").read_text().splitlines()[len(records):]
    assert len(added) == len(measured) and all(json.loads(line)["machine"] == machine_fingerprint() for line in added)
    assert sitting_line(third).startswith("Measured in one bench run, ")


def test_a_report_says_when_its_figures_come_from_several_bench_runs(benched):
    report = copy.deepcopy(benched[0])
    assert all(row["measured_at"] and row["bench_run"] for row in report["rows"])
    run = report["rows"][0]["bench_run"]
    for row in report["rows"]:
        row["bench_run"], row["measured_at"] = run, run + 5
    assert sitting_line(report).startswith("Measured in one bench run, ")
    assert "sitting" not in format_headline(report)
    teacher = [row for row in report["rows"] if row["role"] == "teacher"]
    for row in teacher:                             # resumed a few minutes later: said, not flagged
        row["bench_run"], row["measured_at"] = run - 600, run - 590
    assert sitting_line(report).startswith("Measured in 2 bench runs (a resumed run), ")
    for row in teacher:                             # the teacher's figures from a run two days earlier
        row["bench_run"], row["measured_at"] = run - 2 * 86400, run - 2 * 86400 + 10
    line = sitting_line(report)
    reused = {(r["model"], r["artifact"], r["threads"]) for r in teacher}
    total = {(r["model"], r["artifact"], r["threads"]) for r in report["rows"]}
    assert line.startswith(f"**Not one sitting: {len(reused)} of {len(total)} measurements were reused from earlier "
                           "bench runs** (2 runs, ") and "`--fresh`" in line
    assert line in render_markdown(report).splitlines()
    assert format_headline(report).splitlines()[-1].startswith("Not one sitting")
    for row in report["rows"]:                      # reports written before measurements recorded it: no line
        row.pop("measured_at")
    assert sitting_line(report) is None


def test_measurements_beside_other_work_are_flagged_in_the_report(benched):
    report = copy.deepcopy(benched[0])
    # every measurement of the bench run records other processes' share of the CPU while it ran
    assert all(row["others_cpu_share"] is None or 0 <= row["others_cpu_share"] <= 1 for row in report["rows"])
    for row in report["rows"]:
        row["others_cpu_share"] = 0.02
    assert shared_cpu_line(report).startswith("CPU: every measurement had the machine to itself (other processes "
                                              "took at most 2% of it")
    assert "Not a clean" not in format_headline(report)
    student = next(r for r in report["rows"] if r["role"] == "student")
    for row in report["rows"]:
        if (row["model"], row["artifact"]) == (student["model"], student["artifact"]):
            row["others_cpu_share"] = 0.45
    line = shared_cpu_line(report)
    flagged = {(r["model"], r["artifact"], r["threads"]) for r in report["rows"] if r["others_cpu_share"] > 0.1}
    measured = {(r["model"], r["artifact"], r["threads"]) for r in report["rows"]}
    assert line.startswith(f"**Not a clean bench: {len(flagged)} of {len(measured)} measurements shared the CPU")
    assert f"{student['model']} {student['artifact']} (" in line and "45%)" in line and "--remeasure-shared" in line
    assert line in render_markdown(report).splitlines()
    assert format_headline(report).splitlines()[-1].startswith("Not a clean bench")
    for row in report["rows"]:          # reports written before the share was recorded: no line
        row.pop("others_cpu_share")
    assert shared_cpu_line(report) is None


def test_bench_bad_inputs_are_one_line_errors(benched, tmp_path, capsys):
    _, _, first, second = benched
    cases = [
        ([str(tmp_path)], "not a student bundle"),
        ([str(first), "--runtimes", "keras,tensorrt"], "unknown tensorrt"),
        ([str(first), "--batch-sizes", "0,32"], "positive integers"),
        ([str(first), "--seq-len", "32"], "pass --seq-len 16"),
        ([str(first), "--teacher", "gpt-shape"], "not a preset"),
        ([str(first), "--queries", "0"], "--queries 0"),
        ([str(first), str(second), "--names", "one"], "--names gives 1 names for 2 bundles"),
    ]
    for args, message in cases:
        seq_len = [] if "--seq-len" in args else ["--seq-len", "16"]
        code = main(["bench", *args, *seq_len, "--out", str(tmp_path / "out"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_bench_without_exported_artifacts_says_to_export(tiny_models, tmp_path, capsys):
    bundle = tiny_bundle(tmp_path, tiny_models("bert"), tagging=False)
    # no --seq-len: the bundle's own (16) is the protocol, so the error is the missing export, not seq_len
    code = main(["bench", str(bundle), "--out", str(tmp_path / "out"), "--quiet", "--runtimes", "keras,onnxruntime"])
    err = capsys.readouterr().err
    assert code == 2 and "run `xtremedistil export" in err and len(err.strip().splitlines()) == 1


def test_a_teacher_conversion_failure_is_reported_not_fatal(tiny_models, tmp_path, monkeypatch):
    from xtremedistil.bench import teachers
    from xtremedistil.export.tflite import teacher as tflite_teacher

    folder = tiny_teacher(tmp_path, tiny_models("bert"), tagging=False)
    real = tflite_teacher.export_teacher

    def fail_fp32(job, temp):
        if job.quantization.value == "fp32":
            temp.write_bytes(b"half a flatbuffer")
            raise ValueError("Flatbuffer size is above 2 GB\nthe model is too large")
        return real(job, temp)

    monkeypatch.setattr(tflite_teacher, "export_teacher", fail_fp32)
    source = teachers.TeacherSource(name="teacher", folder=str(folder))
    manifest = teachers.prepare_teacher(source, 2, False, tmp_path / "out", ["litert"], [1], 16, log=lambda _: None)
    assert [row["name"] for row in manifest["artifacts"]] == ["teacher-tflite-dynamic-b1"]
    assert "too large" in manifest["failures"]["teacher-tflite-fp32-b1"]
    assert not list((tmp_path / "out").glob(".*.tmp")) and not (tmp_path / "out" / "teacher-tflite-fp32-b1.tflite").exists()


def test_a_teacher_folder_exports_to_every_teacher_format_with_parity(tiny_models, tmp_path, capsys):
    """`xtremedistil export TEACHER_DIR`: every format whose plug-in exports teachers (found through the
    registry, not listed here), each reloaded through its runtime and within FP32_MAX_DELTA of TensorFlow for
    fp32; a quantization no teacher format offers is one line before anything is loaded."""
    from xtremedistil.export.base import formats
    from xtremedistil.export.teacher import FP32_MAX_DELTA

    folder = tiny_teacher(tmp_path, tiny_models("bert"), tagging=True)
    assert main(["export", str(folder), "--tflite_batch_sizes", "1,4", "--quiet"]) == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    expected = {f"teacher-{name}-{q.value}" + (f"-b{b}" if fmt.teacher.per_batch_size else "")
                for name, fmt in formats().items() if fmt.teacher
                for q in fmt.teacher.quantizations for b in ((1, 4) if fmt.teacher.per_batch_size else (None,))}
    assert {row["name"] for row in manifest["artifacts"]} == expected and len(expected) >= 7
    for row in manifest["artifacts"]:
        assert (folder / "artifacts" / row["path"]).exists() and row["size_bytes"] > 0
        assert row["parity"]["compared"] == 16
        if row["quantization"] == "fp32":
            assert row["parity"]["max_abs_logit_delta"] <= FP32_MAX_DELTA and row["parity"]["argmax_agreement"] == 1.0
    assert not list((folder / "artifacts").glob(".*"))
    capsys.readouterr()
    assert main(["export", str(folder), "--formats", "tflite:int8", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "a teacher exports to tflite:fp32, tflite:dynamic in tflite, not int8" in err and len(err.strip().splitlines()) == 1


def test_speedups_are_gated_only_against_a_baseline_from_the_same_cpu(tmp_path, capsys):
    """Kernels differ by instruction set, so a baseline folder holds one baseline per CPU model; against
    another CPU's baseline only compression and metrics are gated (and the output says so)."""
    row = {"model": "s", "role": "student", "runtime": "onnxruntime", "quantization": "dynamic", "batch_size": 32,
           "threads": 2, "metric": 0.9, "speedup_same_runtime": 50.0, "speedup_best": 10.0, "compression_params": 30.0}
    xeon = {"protocol": {"seq_len": 32}, "environment": {"cpu": "Intel(R) Xeon(R) Processor"}, "rows": [row]}
    epyc = copy.deepcopy(xeon)
    epyc["environment"]["cpu"] = "AMD EPYC"
    epyc["rows"][0]["speedup_same_runtime"] = 30.0                   # -40%: another CPU, not a regression
    assert compare(epyc, xeon, 0.1, 0.5) == []
    epyc["rows"][0]["metric"] = 0.88                                  # metrics are still gated
    assert {f["measure"] for f in compare(epyc, xeon, 0.1, 0.5)} == {"metric"}
    epyc["rows"][0]["metric"] = 0.9
    folder = tmp_path / "baselines"
    folder.mkdir()
    (folder / "baseline.json").write_text(json.dumps(xeon))
    report = tmp_path / "report.json"
    report.write_text(json.dumps(epyc))
    assert main(["bench", "gate", str(report), "--baseline", str(folder)]) == 0
    assert "speedups NOT compared" in capsys.readouterr().out
    assert pick_baseline(str(folder), epyc) == str(folder / "baseline.json")      # no EPYC baseline yet
    own = copy.deepcopy(epyc)
    own["rows"][0]["speedup_same_runtime"] = 40.0                    # this CPU's baseline: 30 -> 25% better
    (folder / "baseline-amd-epyc.json").write_text(json.dumps(own))
    assert pick_baseline(str(folder), epyc) == str(folder / "baseline-amd-epyc.json")
    assert main(["bench", "gate", str(report), "--baseline", str(folder)]) == 1    # -25% on its own CPU
    assert "speedup_same_runtime" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["bench", "gate", str(report), "--baseline", str(empty)]) == 2


def test_a_worker_starts_from_a_folder_holding_another_xtremedistil_package(tmp_path, monkeypatch):
    """A recipe run from a source checkout with the package installed non-editable: the checkout's xtremedistil/
    folder (no bench/ inside) must not be what the worker's `python -m` imports (it was, before PYTHONSAFEPATH)."""
    from xtremedistil.bench.harness import WorkerPool

    shadow = tmp_path / "checkout" / "xtremedistil"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('the working directory was imported')\n")
    monkeypatch.chdir(shadow.parent)
    (tmp_path / "out").mkdir()
    record = WorkerPool(tmp_path / "out", timeout=300, fresh=True).run("prepare", {}, "key")
    assert "working directory" not in record["error"] and "KeyError" in record["error"], record
