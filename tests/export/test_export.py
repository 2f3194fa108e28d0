import json
import sys
import subprocess

import numpy as np
import pytest

from helpers import tiny_bundle
from xtremedistil.cli import main
from xtremedistil.export.base import formats, parse_formats, Quantization
from xtremedistil.export.pipeline import ExportOptions, run_export
from xtremedistil.export.predictor import load_predictor
from xtremedistil.errors import XtremeDistilError

# Tiny random students make near-tie predictions, so a 1-point metric rule is meaningless on 4-8 dev
# sentences; quantized variants are checked on logits here, the metric rule on real students.
LOOSE = dict(max_metric_drop=100.0)


@pytest.fixture(scope="module", params=[False, True], ids=["classification", "tagging"])
def exported(request, tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    bundle = tiny_bundle(root, tiny_models("bert"), tagging=request.param)
    manifest = run_export(ExportOptions(bundle=str(bundle), tflite_batch_sizes="1,3", **LOOSE))
    return bundle, manifest


def test_every_format_is_written_and_recorded(exported):
    bundle, manifest = exported
    names = {row["name"] for row in manifest["artifacts"]}
    assert names == {"savedmodel-fp32", "onnx-fp32", "onnx-dynamic", "onnx-static",
                     *(f"tflite-{q}-b{b}" for q in ("fp32", "fp16", "dynamic", "int8") for b in (1, 3))}
    # every registered format and quantization (discovered, not listed here) was written
    assert {(row["format"], row["quantization"]) for row in manifest["artifacts"]} == {
        (name, q.value) for name, fmt in formats().items() for q in fmt.quantizations}
    on_disk = json.loads((bundle / "manifest.json").read_text())
    assert on_disk["artifacts"] == manifest["artifacts"]
    for row in manifest["artifacts"]:
        path = bundle / row["path"]
        assert path.exists() and row["size_bytes"] > 0
        assert row["passed"], row
    assert (bundle / "artifacts/savedmodel/student/1/saved_model.pb").exists()
    assert manifest["versions"]["tensorflow"].startswith("2.21")
    assert manifest["versions"]["onnxruntime"]


def test_fp32_artifacts_match_keras_and_reload_through_load_predictor(exported):
    bundle, manifest = exported
    keras = load_predictor(bundle)
    ids = np.random.default_rng(0).integers(0, 40, (7, keras.bundle.seq_len)).astype(np.int32)
    expected = keras.predict(ids)
    for row in manifest["artifacts"]:
        if row["quantization"] != "fp32":
            continue
        assert row["parity"]["max_abs_logit_delta"] <= 1e-4 and row["parity"]["argmax_agreement"] == 1.0
        got = load_predictor(bundle / row["path"]).predict(ids)   # 7 rows: pads the static batch of 3
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_quantized_artifacts_stay_close_in_logits(exported):
    _, manifest = exported
    for row in manifest["artifacts"]:
        assert row["parity"]["finite"]
        if row["quantization"] == "fp16":
            assert row["parity"]["max_abs_logit_delta"] < 1e-2
        elif row["quantization"] != "fp32":
            assert row["parity"]["max_abs_logit_delta"] < 0.5, row["name"]


def test_golden_op_counts(exported):
    _, manifest = exported
    rows = {row["name"]: row for row in manifest["artifacts"]}
    for name, row in rows.items():
        ops = row["details"].get("op_counts") or {}
        assert not [op for op in ops if op.startswith(("Erfc", "Erf", "CUSTOM", "FlexOp"))], name
    # The BiLSTM is two forward LSTMs (the second over each sentence reversed by its length): ONNX's
    # LSTM op twice and TFLite's fused kernel twice, never a loop; the reversal is a gather.
    for name in ("onnx-fp32", "onnx-dynamic"):
        ops = rows[name]["details"]["op_counts"]
        assert ops["LSTM" if name == "onnx-fp32" else "DynamicQuantizeLSTM"] == 2
        assert not {"Loop", "Scan"} & set(ops) and ops.get("GatherElements", 0) + ops.get("GatherND", 0) + ops.get("Gather", 0) >= 1
    assert rows["onnx-static"]["details"]["op_counts"]["QuantizeLinear"] >= 1
    # Batch 1: the fused LSTM kernel, one per direction. Larger static batches: unrolled into
    # FULLY_CONNECTED steps (XNNPACK-friendly). Never a WHILE loop of unfused ops.
    for quantization in ("fp32", "fp16", "dynamic", "int8"):
        assert rows[f"tflite-{quantization}-b1"]["details"]["op_counts"]["UNIDIRECTIONAL_SEQUENCE_LSTM"] == 2
        ops = rows[f"tflite-{quantization}-b3"]["details"]["op_counts"]
        assert "UNIDIRECTIONAL_SEQUENCE_LSTM" not in ops and "WHILE" not in ops
        assert ops["FULLY_CONNECTED"] > 2 * 16


def test_litert_state_does_not_leak_between_batches(exported):
    bundle, manifest = exported
    row = next(r for r in manifest["artifacts"] if r["name"] == "tflite-fp32-b1")
    predictor = load_predictor(bundle / row["path"])
    ids = np.random.default_rng(1).integers(1, 40, (3, 16)).astype(np.int32)
    first = predictor.predict(ids[:1])
    predictor.predict(ids[1:])
    np.testing.assert_array_equal(predictor.predict(ids[:1]), first)


def test_savedmodel_signature_is_servable(exported):
    import tensorflow as tf

    bundle, _ = exported
    loaded = tf.saved_model.load(str(bundle / "artifacts/savedmodel/student/1"))
    signature = loaded.signatures["serving_default"]
    spec = signature.structured_input_signature[1]["input_ids"]
    assert spec.dtype == tf.int32 and spec.shape[0] is None
    labels = (bundle / "artifacts/savedmodel/student/1/assets/labels.txt").read_text().split()
    assert labels == json.loads((bundle / "config.json").read_text())["task"]["labels"]


def test_broken_artifact_fails_parity_with_nonzero_exit(tiny_models, tmp_path, monkeypatch, capsys):
    from xtremedistil.export.onnx import convert as onnx_convert

    bundle = tiny_bundle(tmp_path, tiny_models("bert"), tagging=False)
    original = onnx_convert.convert_function

    def perturbed(function, signature, path, **kwargs):
        model = original(function, signature, path, **kwargs)
        import onnx
        from onnx import numpy_helper

        for init in model.graph.initializer:   # perturb every float weight
            array = numpy_helper.to_array(init)
            if array.dtype == np.float32 and array.size > 8:
                init.CopyFrom(numpy_helper.from_array(array + 0.05, init.name))
        onnx.save(model, str(path))
        return model

    monkeypatch.setattr(onnx_convert, "convert_function", perturbed)
    code = main(["export", str(bundle), "--formats", "onnx:fp32", "--quiet"])
    assert code == 3
    err = capsys.readouterr().err
    assert "parity check failed" in err and "max |Δlogit|" in err
    row = json.loads((bundle / "manifest.json").read_text())["artifacts"][0]
    assert row["passed"] is False and row["parity"]["max_abs_logit_delta"] > 1e-4


def test_bad_inputs_are_one_line_errors(tiny_models, tmp_path, capsys):
    bundle = tiny_bundle(tmp_path, tiny_models("bert"), tagging=False)
    (tmp_path / "empty.txt").write_text("\n\n")
    cases = [
        (["export", str(tmp_path)], "not a student bundle"),
        (["export", str(bundle), "--formats", "onnx:fp8"], "unknown quantization 'fp8' for onnx; valid: onnx:fp32"),
        (["export", str(bundle), "--formats", "coreml"], "unknown format 'coreml'; valid: onnx:fp32"),
        (["export", str(bundle), "--formats", "savedmodel:dynamic"], "not supported"),
        (["export", str(bundle), "--formats", "onnx:static", "--representative_file", str(tmp_path / "empty.txt")],
         "empty; give unlabeled sentences"),
        (["export", str(bundle), "--tflite_batch_sizes", "0"], "--tflite_batch_sizes"),
        (["export", str(bundle), "--prune", "1.5"], "--prune must be a sparsity"),
        (["export", str(bundle), "--task", str(tmp_path / "nowhere")], "dev.tsv: not found"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert expected in err, (argv, err)
        assert len(err.splitlines()) == 1, err
    assert not (bundle / "artifacts").exists() or not any((bundle / "artifacts").iterdir())


def test_parse_formats_defaults_and_bare_names():
    everything = parse_formats(None)
    assert len(everything) == 8
    assert [r.name for r in parse_formats("onnx")] == ["onnx-fp32", "onnx-dynamic", "onnx-static"]
    assert parse_formats("tflite:int8,tflite:int8")[0].quantization is Quantization.INT8
    with pytest.raises(XtremeDistilError):
        parse_formats(" , ")


def test_missing_representative_data_is_an_error_only_when_needed(tiny_models, tmp_path):
    bundle = tiny_bundle(tmp_path, tiny_models("bert"), tagging=False)
    (tmp_path / "task" / "transfer.txt").unlink()
    run_export(ExportOptions(bundle=str(bundle), formats="onnx:fp32"))
    with pytest.raises(XtremeDistilError, match="needs representative data"):
        run_export(ExportOptions(bundle=str(bundle), formats="onnx:static"))


def test_pruning_and_clustering_give_sparse_and_clustered_weights(tiny_models, tmp_path):
    bundle = tiny_bundle(tmp_path, tiny_models("bert"), tagging=False)
    manifest = run_export(ExportOptions(bundle=str(bundle), formats="onnx:fp32,tflite:fp32", prune=0.5,
                                        optimize_steps=20, **LOOSE))
    assert manifest["optimization"]["prune"]["measured_sparsity"] >= 0.45
    assert all(row["passed"] for row in manifest["artifacts"])   # parity is against the pruned student
    manifest = run_export(ExportOptions(bundle=str(bundle), formats="onnx:fp32", cluster=4, optimize_steps=10))
    assert manifest["optimization"]["cluster"]["max_unique_values"] <= 4


def test_litert_predictor_does_not_need_tensorflow(exported):
    bundle, _ = exported
    code = ("import sys, numpy as np\n"
            "from xtremedistil.export.tflite.predictor import LiteRTPredictor\n"
            f"p = LiteRTPredictor(r'{bundle / 'artifacts/tflite-fp32-b1.tflite'}')\n"
            "print(p.predict(np.ones((2, 16), np.int32)).shape)\n"
            "assert 'tensorflow' not in sys.modules, [m for m in sys.modules if 'tensorflow' in m][:3]\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def _every_student():
    from xtremedistil.distill.students import STUDENTS

    return sorted(STUDENTS)


@pytest.mark.parametrize("kind", _every_student())
def test_every_registered_student_exports_with_parity(tiny_models, tmp_path, kind):
    """The export battery every student gets without being listed: SavedModel, ONNX fp32 and dynamic int8,
    TFLite fp32 at batch 1, each within parity of the Keras student."""
    bundle = tiny_bundle(tmp_path, tiny_models("bert"), tagging=False, kind=kind)
    manifest = run_export(ExportOptions(bundle=str(bundle), formats="savedmodel,onnx:fp32,onnx:dynamic,tflite:fp32",
                                        tflite_batch_sizes="1", **LOOSE))
    rows = {row["name"]: row for row in manifest["artifacts"]}
    assert set(rows) == {"savedmodel-fp32", "onnx-fp32", "onnx-dynamic", "tflite-fp32-b1"}, kind
    for name, row in rows.items():
        assert row["passed"] and row["parity"]["finite"], (kind, row)
        if name != "onnx-dynamic":
            assert row["parity"]["max_abs_logit_delta"] <= 1e-4, (kind, name, row["parity"])


@pytest.mark.parametrize("tagging", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["classification", "tagging"])
def test_cnn_student_exports_to_every_format_with_parity_and_plain_convolutions(tiny_models, tmp_path, tagging):
    bundle = tiny_bundle(tmp_path, tiny_models("bert"), tagging=tagging, kind="cnn")
    manifest = run_export(ExportOptions(bundle=str(bundle), tflite_batch_sizes="1", **LOOSE))
    rows = {row["name"]: row for row in manifest["artifacts"]}
    assert set(rows) == {"savedmodel-fp32", "onnx-fp32", "onnx-dynamic", "onnx-static",
                         *(f"tflite-{q}-b1" for q in ("fp32", "fp16", "dynamic", "int8"))}
    for row in rows.values():
        assert row["passed"] and row["parity"]["finite"], row
    for name in ("savedmodel-fp32", "onnx-fp32", "tflite-fp32-b1"):
        assert rows[name]["parity"]["max_abs_logit_delta"] <= 1e-4, name
    assert "LSTM" not in json.dumps(manifest)
    for name, op in (("tflite-fp32-b1", "CONV_2D"), ("tflite-dynamic-b1", "CONV_2D"), ("onnx-fp32", "Conv")):
        ops = rows[name]["details"]["op_counts"]
        assert ops.get(op, 0) >= 3 and not {"WHILE", "Loop", "Scan"} & set(ops), (name, ops)


def test_max_pooled_bilstm_exports_to_every_format_with_parity_and_fused_lstm(tiny_models, tmp_path):
    """--bilstm_pooling max: the masked maximum lowers to REDUCE_MAX / ReduceMax beside the fused LSTM kernel,
    every format and precision within parity."""
    bundle = tiny_bundle(tmp_path, tiny_models("bert"), tagging=False, bilstm_pooling="max")
    manifest = run_export(ExportOptions(bundle=str(bundle), tflite_batch_sizes="1", **LOOSE))
    rows = {row["name"]: row for row in manifest["artifacts"]}
    assert set(rows) == {"savedmodel-fp32", "onnx-fp32", "onnx-dynamic", "onnx-static",
                         *(f"tflite-{q}-b1" for q in ("fp32", "fp16", "dynamic", "int8"))}
    for name, row in rows.items():
        assert row["passed"] and row["parity"]["finite"], (name, row)
    for name in ("savedmodel-fp32", "onnx-fp32", "tflite-fp32-b1"):
        assert rows[name]["parity"]["max_abs_logit_delta"] <= 1e-4, name
    for name, ops in (("tflite-fp32-b1", ("UNIDIRECTIONAL_SEQUENCE_LSTM", "REDUCE_MAX")),
                      ("onnx-fp32", ("LSTM", "ReduceMax"))):
        counts = rows[name]["details"]["op_counts"]
        assert all(counts.get(op, 0) >= 1 for op in ops), (name, counts)


def test_every_registered_format_keeps_the_plug_in_contract(exported):
    """Derived from the registry: a new format folder gets this battery without being listed anywhere."""
    from xtremedistil.bench import harness

    bundle, manifest = exported
    keras = load_predictor(bundle)
    ids = np.random.default_rng(1).integers(0, 40, (5, keras.bundle.seq_len)).astype(np.int32)
    expected = keras.predict(ids)
    for name, fmt in formats().items():
        rows = [row for row in manifest["artifacts"] if row["format"] == name]
        assert rows, f"{name}: registered but nothing exported"
        assert fmt.runtime in harness.RUNTIMES and harness.FORMAT_RUNTIME[name] == fmt.runtime
        assert set(fmt.unsupported).isdisjoint(q.value for q in fmt.quantizations)
        for row in rows:
            path = bundle / row["path"]
            assert fmt.recognise(path) is not None
            assert all(other.recognise(path) is None for other in formats().values() if other is not fmt)
            predictor = fmt.load_predictor(fmt.recognise(path))
            assert type(predictor) is type(load_predictor(path))
            assert predictor.predict(ids).shape == expected.shape
    assert callable(formats()["onnx"].convert)


def test_on_parity_failure_drop_deletes_the_failing_artifact_keeps_its_figures_and_bench_leaves_it_out(
        tiny_models, tmp_path, capsys, monkeypatch):
    """A sweep must not stop at one student's broken int8 artifact: with --on_parity_failure drop the artifact
    that misses its tolerance is deleted, its manifest row says why (passed false, dropped), the others stay,
    bench lists it as left out; the default still exits 3; every artifact failing still exits 3."""
    from xtremedistil.bench.harness import BenchOptions, _read_students
    from xtremedistil.export import pipeline
    from xtremedistil.export.parity import ParityError

    checked = pipeline.parity_failures      # the quantized artifacts (no logit tolerance) fail, as int8 can
    monkeypatch.setattr(pipeline, "parity_failures", lambda figures, tolerance: checked(figures, tolerance) if
                        tolerance.max_logit_delta is not None else ["dev metric dropped 63.53 points (> 1 allowed)"])
    bundle = tiny_bundle(tmp_path, tiny_models("bert"), tagging=False)
    strict = dict(bundle=str(bundle), formats="onnx:fp32,onnx:dynamic")
    with pytest.raises(ParityError, match="onnx-dynamic: dev metric dropped"):
        run_export(ExportOptions(**strict))
    first = {row["name"]: row for row in json.loads((bundle / "manifest.json").read_text())["artifacts"]}
    assert (bundle / first["onnx-dynamic"]["path"]).exists()       # the default keeps it to look at, and exits 3
    manifest = run_export(ExportOptions(**strict, on_parity_failure="drop"))
    rows = {row["name"]: row for row in manifest["artifacts"]}
    assert rows["onnx-fp32"]["passed"] and (bundle / rows["onnx-fp32"]["path"]).exists()
    dropped = rows["onnx-dynamic"]
    assert not dropped["passed"] and dropped["dropped"] and dropped["failures"]
    assert not (bundle / dropped["path"]).exists()
    assert json.loads((bundle / "manifest.json").read_text())["artifacts"] == manifest["artifacts"]
    _, targets, left_out = _read_students(BenchOptions(bundles=[str(bundle)], out=str(tmp_path / "bench")), 16, ["onnxruntime"])
    assert [t.artifact for t in targets] == ["onnx-fp32"]
    assert [row["artifact"] for row in left_out] == ["onnx-dynamic"]
    assert "failed parity at export" in left_out[0]["error"] and "dropped" in left_out[0]["error"]
    code = main(["export", str(bundle), "--formats", "onnx:dynamic", "--on_parity_failure", "drop"])
    assert code == 3 and "DROPPED" in capsys.readouterr().out
    with pytest.raises(XtremeDistilError, match="--on_parity_failure 'skip' is not one of error, drop"):
        ExportOptions(bundle=str(bundle), on_parity_failure="skip")
