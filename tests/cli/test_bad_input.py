"""Malformed input, counted: each case is a one-line error (exit 2), no traceback, and nothing written before is
changed. The README's Reliability tally counts these rows (and the HTTP bodies of test_serve.py).

Every case runs the real CLI entry point (`main`) in this process, against a model folder that already holds an
earlier result (`metrics.json`) and, for bundle cases, a copy of a valid bundle that the case damages.
"""
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from helpers import CLASSIFICATION_ROWS, TAGGING_LABELS, TAGGING_ROWS, tiny_bundle, write_task
from xtremedistil.cli import main


def _task(root, **changes):
    """A valid classification task, then `changes` (file name -> text, or None to delete) applied."""
    task = write_task(root / "task", CLASSIFICATION_ROWS, labels=["0", "1"],
                      transfer=[r.split("\t")[0] for r in CLASSIFICATION_ROWS])
    for name, text in changes.items():
        path = task / name.replace("_", ".")
        if text is None:
            path.unlink()
        elif isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
    return task


def _ner_task(root, train):
    return write_task(root / "task", train, dev=TAGGING_ROWS, labels=TAGGING_LABELS,
                      transfer=[r.split("\t")[0] for r in TAGGING_ROWS])


def _teacher(c, task, *extra):
    return ["teacher", "--task", str(task), "--model_dir", str(c.model_dir), "--pt_teacher_checkpoint", c.checkpoint,
            "--quiet", *extra]


def _distill(c, *extra, task=None):
    return ["distill", "--task", str(task or _task(c.root)), "--model_dir", str(c.model_dir),
            "--pt_teacher_checkpoint", c.checkpoint, "--quiet", *extra]


def _recipe(c, text, *extra):
    path = c.root / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return ["recipe", str(path), "--model_dir", str(c.model_dir), "--results", str(c.root / "results"), "--quiet",
            *extra]


GOOD_RECIPE = """name: r
model_dir: runs/r
distill:
  task: {task}
  pt_teacher_checkpoint: {checkpoint}
  seq_len: 16
"""


def _good_recipe(c, extra=""):
    return GOOD_RECIPE.format(task=_task(c.root), checkpoint=c.checkpoint) + extra


def _bundle(c, damage):
    bundle = c.root / "bundle"
    shutil.copytree(c.bundle, bundle)
    damage(bundle)
    return bundle


def _cut(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# (id, what it checks, argv builder). Grouped by kind: task files, CLI flags, recipes, bundles.
TASK_CASES = [
    ("task-missing", lambda c: _teacher(c, c.root / "no-such-task")),
    ("task-no-train", lambda c: _teacher(c, _task(c.root, train_tsv=None))),
    ("task-no-labels", lambda c: _teacher(c, _task(c.root, labels_tsv=None))),
    ("task-line-without-tab", lambda c: _teacher(c, _task(c.root, train_tsv="a good film\t1\njust words\n"))),
    ("task-unknown-label", lambda c: _teacher(c, _task(c.root, train_tsv="a good film\t1\na bad film\t7\n"))),
    ("task-empty-train", lambda c: _teacher(c, _task(c.root, train_tsv=""))),
    ("task-empty-dev", lambda c: _teacher(c, _task(c.root, dev_tsv=""))),
    ("task-not-utf8", lambda c: _teacher(c, _task(c.root, train_tsv=b"a good film\t1\n\xff\xfe bad\t0\n"))),
    ("task-empty-text", lambda c: _teacher(c, _task(c.root, train_tsv="a good film\t1\n\t0\n"))),
    ("task-duplicate-labels", lambda c: _teacher(c, _task(c.root, labels_tsv="0\n1\n1\n"))),
    ("task-ner-tag-count", lambda c: _teacher(c, _ner_task(c.root, ["john lives here\ten:B-PER en:O"]), "--do_NER")),
    ("task-ner-unknown-tag", lambda c: _teacher(c, _ner_task(c.root, ["john lives\ten:X-PER en:O"]), "--do_NER")),
    ("task-ner-on-classification", lambda c: _teacher(c, _task(c.root), "--do_NER")),
    ("task-transfer-missing", lambda c: _distill(c, "--transfer_file", "nothing-here.txt")),
]
FLAG_CASES = [
    ("flag-not-an-int", lambda c: _distill(c, "--seq_len", "abc")),
    ("flag-seq-len-zero", lambda c: _distill(c, "--seq_len", "0")),
    ("flag-batch-size-zero", lambda c: _distill(c, "--distil_batch_size", "0")),
    ("flag-stage-unknown", lambda c: _distill(c, "--stages", "5")),
    ("flag-unknown", lambda c: _distill(c, "--no_such_flag", "1")),
    ("flag-teacher-missing", lambda c: ["teacher", "--task", str(_task(c.root)), "--model_dir", str(c.model_dir),
                                        "--pt_teacher_checkpoint", str(c.root / "no-teacher"), "--quiet"]),
    ("flag-teacher-not-a-model", lambda c: ["teacher", "--task", str(_task(c.root)), "--model_dir",
                                            str(c.model_dir), "--pt_teacher_checkpoint", str(c.root), "--quiet"]),
    ("flag-augment-multiplier-negative", lambda c: ["augment", "--task", str(_task(c.root)), "--pt_teacher_checkpoint",
                                                    c.checkpoint, "--out", str(c.root / "a.txt"),
                                                    "--augment_multiplier", "-1", "--quiet"]),
    ("flag-export-unknown-format", lambda c: ["export", str(_bundle(c, lambda b: None)), "--formats", "coreml"]),
    ("flag-export-bad-batch", lambda c: ["export", str(_bundle(c, lambda b: None)), "--tflite_batch_sizes", "x"]),
    ("flag-export-no-bundle", lambda c: ["export", str(c.root / "no-bundle")]),
    ("flag-bench-unknown-runtime", lambda c: ["bench", str(c.bundle), "--out", str(c.root / "b"), "--runtimes",
                                              "tensorrt"]),
    ("flag-bench-batch-zero", lambda c: ["bench", str(c.bundle), "--out", str(c.root / "b"), "--batch-sizes", "0"]),
    ("flag-bench-threads-zero", lambda c: ["bench", str(c.bundle), "--out", str(c.root / "b"), "--threads", "0"]),
    ("flag-pick-no-report", lambda c: ["pick", str(c.root / "no-report")]),
    ("flag-unknown-command", lambda c: ["predict", "x"]),
]
RECIPE_CASES = [
    ("recipe-missing", lambda c: ["recipe", str(c.root / "none.yaml")]),
    ("recipe-not-yaml", lambda c: _recipe(c, "name: [r\ndistill: {")),
    ("recipe-not-a-mapping", lambda c: _recipe(c, "- a\n- b\n")),
    ("recipe-unknown-section", lambda c: _recipe(c, _good_recipe(c, "trainer:\n  epochs: 3\n"))),
    ("recipe-unknown-distill-key", lambda c: _recipe(c, _good_recipe(c, "  no_such_key: 3\n"))),
    ("recipe-wrong-type", lambda c: _recipe(c, _good_recipe(c, "  ft_epochs: many\n"))),
    ("recipe-undefined-variable", lambda c: _recipe(c, _good_recipe(c).replace("seq_len: 16",
                                                                                "seq_len: ${XD_NO_SUCH_VARIABLE}"))),
    ("recipe-set-without-equals", lambda c: _recipe(c, _good_recipe(c), "--set", "distill.ft_epochs")),
    ("recipe-set-unknown-key", lambda c: _recipe(c, _good_recipe(c), "--set", "distill.no_such_key=1")),
    ("recipe-unknown-step", lambda c: _recipe(c, _good_recipe(c), "--steps", "distill,deploy")),
    ("recipe-student-not-a-mapping", lambda c: _recipe(c, _good_recipe(c, "students:\n  - just-a-name\n"))),
    ("recipe-unknown-student", lambda c: _recipe(c, _good_recipe(c, "students:\n  - {student_name: a}\n"),
                                                 "--students", "b")),
]
BUNDLE_CASES = [
    ("bundle-empty-folder", lambda c: ["export", str(_bundle(c, lambda b: [p.unlink() for p in b.iterdir()
                                                                            if p.is_file()]))]),
    ("bundle-config-garbled", lambda c: ["export", str(_bundle(c, lambda b: (b / "config.json").write_text("{\"kind")))]),
    ("bundle-config-missing-key", lambda c: ["export", str(_bundle(c, lambda b: (b / "config.json").write_text(
        json.dumps({k: v for k, v in json.loads((b / "config.json").read_text()).items() if k != "student"}))))]),
    ("bundle-weights-cut", lambda c: ["export", str(_bundle(c, lambda b: _cut(b / "student.weights.h5")))]),
    ("bundle-weights-missing", lambda c: ["export", str(_bundle(c, lambda b: (b / "student.weights.h5").unlink()))]),
    ("bundle-labels-empty", lambda c: ["export", str(_bundle(c, lambda b: _edit_config(b, "task", labels=[])))]),
    ("bundle-seq-len-not-a-number", lambda c: ["export", str(_bundle(c, lambda b: _edit_config(b, "task", seq_len="x")))]),
    ("bundle-tokenizer-file-missing", lambda c: ["export", str(_bundle(c, lambda b: _remove_tokenizer_file(b)))]),
    ("bundle-tokenizer-garbled", lambda c: ["export", str(_bundle(c, lambda b: _garble_tokenizer(b)))]),
    ("bundle-bench-config-garbled", lambda c: ["bench", str(_bundle(c, lambda b: (b / "config.json").write_text("")))
                                               , "--out", str(c.root / "b"), "--runtimes", "keras"]),
]
CASES = TASK_CASES + FLAG_CASES + RECIPE_CASES + BUNDLE_CASES


def _edit_config(bundle: Path, section: str, **changes):
    config = json.loads((bundle / "config.json").read_text())
    config[section].update(changes)
    (bundle / "config.json").write_text(json.dumps(config))


def _tokenizer_dir(bundle: Path) -> Path:
    return bundle / "tokenizer"


def _remove_tokenizer_file(bundle: Path):
    folder = _tokenizer_dir(bundle)
    victim = next(p for p in sorted(folder.iterdir()) if p.name in ("vocab.txt", "tokenizer.json"))
    victim.unlink()
    if victim.name == "tokenizer.json" and (folder / "vocab.txt").exists():
        (folder / "vocab.txt").unlink()


def _garble_tokenizer(bundle: Path):
    for name in ("tokenizer_config.json",):
        (_tokenizer_dir(bundle) / name).write_text("{\"model_max_length\": ", encoding="utf-8")


def _digests(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class Context:
    def __init__(self, root: Path, checkpoint: str, bundle: Path):
        self.root, self.checkpoint, self.bundle = root, checkpoint, bundle
        self.model_dir = root / "model"
        (self.model_dir / "earlier").mkdir(parents=True)
        (self.model_dir / "earlier" / "metrics.json").write_text('{"accuracy": 0.9}\n')


@pytest.fixture(scope="module")
def valid_bundle(tiny_models, tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("valid"), tiny_models("bert"), tagging=False)


def test_there_are_at_least_40_malformed_inputs_of_every_kind():
    assert len(CASES) >= 40 and len({name for name, _ in CASES}) == len(CASES)
    assert min(len(TASK_CASES), len(FLAG_CASES), len(RECIPE_CASES), len(BUNDLE_CASES)) >= 8


@pytest.mark.parametrize("name, build", CASES, ids=[name for name, _ in CASES])
def test_malformed_input_is_one_line_no_traceback_and_nothing_earlier_changes(name, build, tmp_path, tiny_models,
                                                                              valid_bundle, capsys):
    c = Context(tmp_path, str(tiny_models("bert")), valid_bundle)
    before, bundle_before = _digests(c.model_dir), _digests(valid_bundle)
    argv = build(c)
    damaged = _digests(c.root / "bundle") if (c.root / "bundle").exists() else None
    try:
        code = main(argv)
    except SystemExit as exit_:                    # argparse exits (bad flags): that is the CLI's answer too
        code = exit_.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2, f"{name}: exit {code}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert len(errors) == 1 and errors[0].startswith("xtremedistil"), err[-3000:]
    # Besides the error line only the problems it announces, one per line, each naming its file (`path:line: what`)
    others = [line.strip() for line in err.splitlines() if line.strip() and ": error: " not in line]
    assert all(line.startswith(str(tmp_path)) for line in others), err[-3000:]
    assert _digests(c.model_dir) == before                   # the earlier result, byte for byte
    assert _digests(valid_bundle) == bundle_before
    if damaged is not None:
        assert _digests(c.root / "bundle") == damaged        # a damaged bundle is refused, not "repaired"


# Corruption of files only a finished run leaves (the other cases: test_cache, test_losses, test_distill,
# test_faults, test_serve, test_sources and the bundle rows above).
def test_a_damaged_manifest_is_one_line_naming_it(valid_bundle, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(valid_bundle, bundle)
    (bundle / "manifest.json").write_text('{"artifacts": [{"name": "onnx-fp32", "pa', encoding="utf-8")
    code = main(["bench", str(bundle), "--out", str(tmp_path / "b"), "--runtimes", "onnxruntime", "--seq-len", "16", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(f"xtremedistil bench: error: {bundle / 'manifest.json'}: damaged")


def test_a_measurement_line_cut_by_a_full_disk_is_measured_again_and_later_lines_stay_whole(tmp_path, monkeypatch):
    from xtremedistil.distill.files import append_line

    log = tmp_path / "measurements.jsonl"
    append_line(log, json.dumps({"key": "a"}), "bench:measurement")
    monkeypatch.setenv("XD_DISK_FULL_AT", "bench:measurement")
    with pytest.raises(OSError, match="No space left"):
        append_line(log, json.dumps({"key": "b", "p50_ms": 1.5}), "bench:measurement")
    assert not log.read_text().endswith("\n")                    # the cut line a full disk leaves
    monkeypatch.delenv("XD_DISK_FULL_AT")
    append_line(log, json.dumps({"key": "b", "p50_ms": 1.5}), "bench:measurement")
    assert [json.loads(line)["key"] for line in log.read_text().splitlines()] == ["a", "b"]
