import json
import os
from pathlib import Path

import numpy as np
import pytest

from helpers import CLASSIFICATION_ROWS, classification_task, tagging_task, write_task
from xtremedistil.cli import main
from xtremedistil.distill import load_bundle
from xtremedistil.distill.data import load_task
from xtremedistil.distill.metrics import headline, metrics_from_predictions, retention_percent
from xtremedistil.distill.options import DistilOptions
from xtremedistil.distill.pipeline import run_distill
from xtremedistil.distill.teacher_phase import encode_split
from xtremedistil.distill.teacher import load_teacher
from xtremedistil.distill import stages as stages_lib
from xtremedistil.distill.stages import SubStage, StageRunner, schedule
from xtremedistil.distill.students import StudentConfig, build_student, layer_groups
from xtremedistil.errors import XtremeDistilError

TINY_FLAGS = dict(seq_len=16, ft_epochs=1, ft_batch_size=2, word_emb_dim=8, bilstm_hidden_size=8,
                  teacher_layer=1, distil_epochs=2, distil_batch_size=2, distil_chunk_size=3, distil_patience=2,
                  seed=3)


def options(task, model_dir, checkpoint, tagging, **extra):
    return DistilOptions.from_flags(dict(task=str(task), model_dir=str(model_dir), pt_teacher_checkpoint=str(checkpoint),
                                         do_NER=tagging, **{**TINY_FLAGS, **extra}))


@pytest.fixture(scope="module")
def tagging_run(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("tag")
    task = tagging_task(root / "task")
    opts = options(task, root / "out", tiny_models("bert"), True)
    return opts, run_distill(opts)


def _weights_by_layer(model):
    return {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers if layer.get_weights()}


def test_each_substage_trains_what_it_should_and_freezes_the_rest(tagging_run):
    opts, _ = tagging_run
    bundle = load_bundle(f"{opts.run.model_dir}/bundle")
    model = build_student(bundle.student_config)
    names = [g[0].name for g in layer_groups(model, bundle.student_config)]   # bottom-up
    plan = schedule(len(names))
    folder = f"{opts.run.model_dir}/student"
    model.load_weights(f"{folder}/00-init.weights.h5")
    previous = _weights_by_layer(model)
    for sub in plan:
        model.load_weights(f"{folder}/{sub.checkpoint}")
        current = _weights_by_layer(model)
        if sub.stage == 1:
            expected = set(names[:-1])
        else:
            expected = set(names[len(names) - sub.trainable_groups:])
        changed = {name for name in names
                   if any(not np.array_equal(a, b) for a, b in zip(previous[name], current[name]))}
        assert changed == expected, (sub.name, changed, expected)
        assert all(np.array_equal(a, b) for a, b in zip(previous["id_remap"], current["id_remap"]))
        previous = current


def test_stage1_loss_decreases_and_each_recorded_dev_metric_is_its_checkpoints(tagging_run):
    opts, metrics = tagging_run
    state = json.loads(open(f"{opts.run.model_dir}/student/state.json").read())
    history = state["completed"]["stage1"]["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert set(metrics["substages"]) == {s.name for s in schedule(4)}
    # Re-evaluate every checkpoint on dev from scratch: the recorded figure must be that checkpoint's.
    bundle = load_bundle(f"{opts.run.model_dir}/bundle")
    task = load_task(opts.run.task, True)
    dev = encode_split(bundle.tokenizer, task, "dev", bundle.seq_len)
    model = build_student(bundle.student_config)
    for name, done in state["completed"].items():
        model.load_weights(f"{opts.run.model_dir}/student/{done['checkpoint']}")
        logits = model(dev.input_ids, training=False)["logits"].numpy()
        again = metrics_from_predictions(np.argmax(logits, -1), dev, task.splits["dev"], task.labels, True)
        assert headline(again) == pytest.approx(done["dev_metric"]), name


@pytest.mark.slow   # two full distill runs
def test_the_bundle_is_the_substage_best_on_dev_whatever_test_says(tiny_models, tmp_path, monkeypatch):
    """Dev metrics scripted per sub-stage (a peak at stage2-top3; stage 1 higher still, never a candidate);
    the test labels are garbage. The bundle must be stage2-top3's checkpoint, and the same bundle must
    come out when the test labels change."""
    scripted = {"stage1": 1.0, "stage2-top1": 0.2, "stage2-top2": 0.4, "stage2-top3": 0.9, "stage2-top4": 0.3,
                "stage3-top1": 0.5, "stage3-top2": 0.9, "stage3-top3": 0.1, "stage3-top4": 0.6}
    train = StageRunner._train

    def remember(self, sub):
        self.current = sub.name
        return train(self, sub)

    def dev_metrics(self):
        value = scripted[self.current]
        return {"argmax": {"metric": "accuracy", "overall": {"accuracy": value, "n": 8}}}
    monkeypatch.setattr(StageRunner, "_train", remember)
    monkeypatch.setattr(StageRunner, "dev_metrics_by_decoding", dev_metrics)
    runs = []
    for flip in (False, True):
        rows = [r.rsplit("\t", 1) for r in CLASSIFICATION_ROWS]
        test = [f"{text}\t{int(label) ^ 1 if flip else label}" for text, label in rows]
        task = write_task(tmp_path / f"task-{flip}", CLASSIFICATION_ROWS, test=test, labels=["0", "1"],
                          transfer=[r[0] for r in rows])
        opts = options(task, tmp_path / f"out-{flip}", tiny_models("bert"), False, distil_epochs=1)
        runs.append((opts, run_distill(opts)))
    (first, a), (second, b) = runs
    assert a["student"]["best_substage"] == b["student"]["best_substage"] == "stage2-top3"   # ties: the earlier
    assert a["student"]["test"]["overall"]["accuracy"] + b["student"]["test"]["overall"]["accuracy"] == pytest.approx(1.0)
    bundle = load_bundle(f"{first.run.model_dir}/bundle").model
    checkpoint = build_student(load_bundle(f"{first.run.model_dir}/bundle").student_config)
    checkpoint.load_weights(f"{first.run.model_dir}/student/{schedule(4)[3].checkpoint}")
    for x, y, z in zip(bundle.get_weights(), checkpoint.get_weights(), load_bundle(f"{second.run.model_dir}/bundle").model.get_weights()):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


def test_tagging_bundle_reports_languages_and_predicts_words(tagging_run):
    opts, metrics = tagging_run
    assert set(metrics["student"]["test"]["per_language"]) == {"ar", "en", "ru"}
    assert set(metrics["teacher"]["test"]["per_language"]) == {"ar", "en", "ru"}
    bundle = load_bundle(f"{opts.run.model_dir}/bundle")
    teacher, _, _ = load_teacher(f"{opts.run.model_dir}/teacher")          # counted again, from the saved models
    assert metrics["compression"] == pytest.approx(teacher.count_params() / bundle.model.count_params())
    tags = bundle.predict(["john lives in paris .", "иван живет в москва"])
    assert [len(t) for t in tags] == [5, 4]
    assert all(tag in bundle.labels for sentence in tags for tag in sentence)


class Killed(Exception):
    pass


def test_killed_run_resumes_to_the_same_result(tagging_run, tiny_models, tmp_path):
    reference_opts, reference = tagging_run
    task = tagging_task(tmp_path / "task")
    opts = options(task, tmp_path / "out", tiny_models("bert"), True)

    def kill(sub: SubStage, batches: int):
        if sub.name == "stage2-top2" and batches == 3:
            raise Killed()

    with pytest.raises(Killed):
        run_distill(opts, on_batch=kill)
    state = json.loads((tmp_path / "out" / "student" / "state.json").read_text())
    assert set(state["completed"]) == {"stage1", "stage2-top1"}
    assert not (tmp_path / "out" / "bundle").exists()
    resumed = run_distill(opts)
    assert resumed["student"]["best_substage"] == reference["student"]["best_substage"]
    assert resumed["student"]["test"] == reference["student"]["test"]
    assert resumed["substages"].keys() == reference["substages"].keys()
    for name, sub in reference["substages"].items():
        assert resumed["substages"][name]["dev_metric"] == sub["dev_metric"]
        assert resumed["substages"][name]["val_loss"] == pytest.approx(sub["val_loss"], rel=1e-6)
    a = load_bundle(tmp_path / "out" / "bundle").model.get_weights()
    b = load_bundle(f"{reference_opts.run.model_dir}/bundle").model.get_weights()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_run_killed_inside_a_substage_resumes_after_its_last_finished_epoch(tagging_run, tiny_models, tmp_path):
    # distil_epochs=2: killed in the second epoch of stage2-top2, the rerun trains only that epoch (weights,
    # optimizer state and best-so-far restored) and ends where the uninterrupted run ended, bit for bit.
    reference_opts, reference = tagging_run
    task = tagging_task(tmp_path / "task")
    opts = options(task, tmp_path / "out", tiny_models("bert"), True)
    folder = tmp_path / "out" / "student"
    first_batch = {}

    def kill(sub: SubStage, batches: int):
        first_batch.setdefault(sub.name, batches)
        if sub.name == "stage2-top2" and "partial" in json.loads((folder / "state.json").read_text()):
            raise Killed()

    with pytest.raises(Killed):
        run_distill(opts, on_batch=kill)
    state = json.loads((folder / "state.json").read_text())
    assert set(state["completed"]) == {"stage1", "stage2-top1"}
    assert state["partial"]["name"] == "stage2-top2" and len(state["partial"]["history"]) == 1
    saved = folder / state["partial"]["file"]
    assert saved.exists()
    first_batch.clear()
    resumed = run_distill(opts, on_batch=lambda sub, batches: first_batch.setdefault(sub.name, batches))
    assert first_batch["stage2-top2"] > 1                        # epoch 1 was not trained again
    assert first_batch["stage2-top3"] == 1
    assert not saved.exists()                                    # removed once the sub-stage finished
    assert "partial" not in json.loads((folder / "state.json").read_text())
    finished = json.loads((folder / "state.json").read_text())["completed"]["stage2-top2"]
    assert finished["history"][0] == state["partial"]["history"][0] and len(finished["history"]) == 2
    # The sub-stage's time counts the epoch the killed run trained, not only this sitting's.
    earlier = state["partial"]["history"][0]["seconds"]
    assert earlier > 0 and finished["seconds_earlier_runs"] == pytest.approx(earlier)
    assert finished["seconds"] >= earlier + finished["history"][1]["seconds"] - 0.2
    assert resumed["seconds"]["stages_all_runs"] == pytest.approx(
        sum(sub["seconds"] for sub in resumed["substages"].values()), abs=0.1)
    for name, sub in reference["substages"].items():
        assert resumed["substages"][name]["val_loss"] == pytest.approx(sub["val_loss"], rel=1e-6), name
    assert resumed["student"]["test"] == reference["student"]["test"]
    a = load_bundle(tmp_path / "out" / "bundle").model.get_weights()
    b = load_bundle(f"{reference_opts.run.model_dir}/bundle").model.get_weights()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_damaged_epoch_save_trains_the_substage_from_its_start(tiny_models, tmp_path, caplog):
    task = tagging_task(tmp_path / "task")
    opts = options(task, tmp_path / "out", tiny_models("bert"), True, stages="2")
    folder = tmp_path / "out" / "student"

    def kill(sub: SubStage, batches: int):
        if sub.name == "stage2-top1" and "partial" in json.loads((folder / "state.json").read_text()):
            raise Killed()

    with pytest.raises(Killed):
        run_distill(opts, on_batch=kill)
    state = json.loads((folder / "state.json").read_text())
    saved = folder / state["partial"]["file"]
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])      # cut off
    first_batch = {}
    run_distill(opts, on_batch=lambda sub, batches: first_batch.setdefault(sub.name, batches))
    assert first_batch["stage2-top1"] == 1                        # from its start
    assert "damaged" in caplog.text


def test_classification_end_to_end_through_the_cli_with_a_recipe(tiny_models, tmp_path, capsys):
    task = classification_task(tmp_path / "task")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("".join(f"{k}: {v}\n" for k, v in TINY_FLAGS.items()) + "student: transformer\n"
                      "transformer_layers: 1\ntransformer_hidden: 8\ntransformer_heads: 2\ntransformer_ffn: 8\n"
                      "distil_epochs: 5\n")
    code = main(["distill", "--config", str(recipe), "--task", str(task), "--model_dir", str(tmp_path / "out"),
                 "--pt_teacher_checkpoint", str(tiny_models("bert")), "--distil_epochs", "1", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "chosen on dev" in out and "compression" in out
    bundle = load_bundle(tmp_path / "out" / "bundle")
    assert bundle.config["options"]["distil_epochs"] == 1          # the flag beat the recipe
    assert bundle.student_config.kind == "transformer"
    assert bundle.predict(["a great film .", "a bad film"])[0] in {"0", "1"}
    assert json.loads((tmp_path / "out" / "bundle" / "metrics.json").read_text())["task"]["kind"] == "classification"


def test_recipe_and_flag_errors_are_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: x\nbogus_flag: 1\n")
    assert main(["distill", "--config", str(recipe)]) == 2
    assert "unknown key(s) bogus_flag" in capsys.readouterr().err
    recipe.write_text("task: x\n")
    assert main(["distill", "--config", str(recipe)]) == 2
    assert "missing --model_dir, --pt_teacher_checkpoint" in capsys.readouterr().err


def test_metrics_record_wall_time_and_peak_memory_per_phase(tagging_run):
    _, metrics = tagging_run
    peaks = metrics["peak_rss_mb"]
    assert peaks["per_phase"] is True                           # VmHWM reset at each phase start (Linux)
    for phase in ("teacher", "teacher_outputs", "stages", "teacher_fine_tune"):
        assert 50 < peaks[phase] < 20_000, phase                  # MB: a TensorFlow process, not bytes or GB
        assert phase == "teacher_fine_tune" or metrics["seconds"][phase] > 0
    # other processes' share of the CPUs, per phase and per sub-stage (the worst epoch): known on Linux
    for phase in ("teacher", "teacher_outputs", "stages"):
        assert 0 <= metrics["others_cpu_share"][phase] <= 1, phase
    for name, record in metrics["substages"].items():
        assert 0 <= record["others_cpu_share"] <= 1, name
    from xtremedistil.distill.pipeline import format_report   # the console summary names a shared phase
    assert "not clean" not in format_report({**metrics, "others_cpu_share": {"stages": 0.02, "teacher": None}})
    assert format_report({**metrics, "others_cpu_share": {"stages": 0.3}}).splitlines()[-1] == \
        "not clean timings: other processes used 30% of the CPU during stages"


def test_student_config_round_trips_through_the_bundle(tagging_run):
    opts, _ = tagging_run
    bundle = load_bundle(f"{opts.run.model_dir}/bundle")
    assert StudentConfig(**bundle.config["student"]) == bundle.student_config
    assert bundle.config["teacher"]["layer"] == 1


def test_a_second_student_shares_the_teacher_and_cache_and_labels_only_needs_no_teacher_outputs(tagging_run):
    opts, reference = tagging_run
    root = Path(opts.run.model_dir)
    stamps = {p: p.stat().st_mtime_ns for p in [root / "teacher" / "teacher.json", root / "teacher" / "metrics.json",
                                               *root.glob("cache/*/index.json")]}
    bundle_before = (root / "bundle" / "student.weights.h5").read_bytes()
    for path in Path(opts.run.task).iterdir():     # the data copied afresh: new mtimes, the same bytes
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**12))
    metrics = run_distill(opts.replace(student_name="labels-only", stages="labels"))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps     # nothing fine-tuned, evaluated or scored again
    assert sorted(p.name for p in root.glob("cache/*")) == sorted(p.parent.name for p in stamps if p.parent.parent.name == "cache")
    assert set(metrics["substages"]) == {"labels-only"} and metrics["student"]["best_substage"] == "labels-only"
    state = json.loads((root / "student-labels-only" / "state.json").read_text())
    assert state["completed"]["labels-only"]["trainable_groups"] == 4            # every layer trains on labels
    assert (root / "bundle-labels-only" / "student.weights.h5").exists()
    assert (root / "bundle" / "student.weights.h5").read_bytes() == bundle_before  # the first student untouched
    for bad, message in (("1", "stage 1 alone"), ("4", "must be a subset"), ("x", "must be a subset")):
        with pytest.raises(XtremeDistilError, match=message):
            run_distill(opts.replace(stages=bad))
    with pytest.raises(XtremeDistilError, match="--student_name"):
        run_distill(opts.replace(student_name="../x"))


def test_augmented_transfer_set_is_made_once_screened_and_scored(tagging_run):
    """--augment_multiplier: the chief writes MODEL_DIR/augmented/transfer-<hash>.txt once, without a dev or
    test sentence; the teacher scores it like any transfer file; a rerun reuses file and cache."""
    opts, _ = tagging_run
    root = Path(opts.run.model_dir)
    augmented = opts.replace(student_name="augmented", augment_multiplier=3, distil_epochs=1)
    metrics = run_distill(augmented)
    info = metrics["transfer"]
    path = Path(info["file"])
    assert path.parent == root / "augmented" and info["augment"]["sources"] == 4
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == info["sentences"] == info["augment"]["written"] > 4
    task = load_task(opts.run.task, True)
    screened = {" ".join(ex.text.split()) for split in ("dev", "test") for ex in task.splits[split]}
    assert not screened & set(lines)                 # here dev = test = train: only variants survive
    cache_rows = [json.loads(p.read_text())["rows"] for p in root.glob("cache/transfer-*/index.json")]
    assert info["sentences"] in cache_rows
    stamp = path.stat().st_mtime_ns
    again = run_distill(augmented)
    assert path.stat().st_mtime_ns == stamp and again["student"]["test"] == metrics["student"]["test"]
    # Another transfer set (or other stage settings) under the same student name: its finished sub-stages,
    # trained on the first set, are not resumed as if they were this run's; nothing of them is touched.
    state = root / "student-augmented" / "state.json"
    before = state.read_bytes()
    with pytest.raises(XtremeDistilError, match=r"student-augmented: its sub-stages were trained with other "
                                                r"settings \([a-z, ]*transfer differ\); give this run its own "):
        run_distill(augmented.replace(augment_allocation="word", augment_multiplier=5))
    assert state.read_bytes() == before


def test_mention_replacement_alone_makes_an_augmented_transfer_set(tagging_run):
    """--augment_mentions without rule variants: the transfer set is the sources plus train sentences with
    swapped entities (recorded with the train file's digest), scored and distilled like any other."""
    opts, _ = tagging_run
    metrics = run_distill(opts.replace(student_name="mentions", augment_mentions=2, distil_epochs=1))
    info = metrics["transfer"]
    assert info["augment"]["mentions"] == 2 and info["augment"]["multiplier"] == 0
    assert metrics["distillation"]["augment_mentions"] == 2
    stats = json.loads(Path(info["file"]).with_suffix(".json").read_text())
    assert stats["signature"]["config"]["mentions"] == 2 and "train_sha1" in stats["signature"]
    lines = Path(info["file"]).read_text(encoding="utf-8").splitlines()
    # dev = test = train here, so the sources are screened out; the two English PER entities trade places
    assert lines == ["john lives in paris .", "john smith works in google ."] and info["sentences"] == 2


def test_language_multipliers_augment_only_the_named_language_in_a_run(tagging_run):
    """--augment_language_multipliers through distill: the file is named by the counts and the train file, only
    the named language's sentences get variants, and metrics.json records the counts."""
    opts, _ = tagging_run
    metrics = run_distill(opts.replace(student_name="by-language", augment_language_multipliers="en=3",
                                       augment_p_ngram=0.0, augment_p_mask=0.5, augment_p_replace=0.0,
                                       distil_epochs=1))
    info = metrics["transfer"]
    assert metrics["distillation"]["augment_language_multipliers"] == {"en": 3}
    assert info["augment"]["language_multipliers"] == {"en": 3} and info["augment"]["multiplier"] == 0
    stats = json.loads(Path(info["file"]).with_suffix(".json").read_text())
    assert stats["signature"]["config"]["language_multipliers"] == {"en": 3} and "train_sha1" in stats["signature"]
    lines = Path(info["file"]).read_text(encoding="utf-8").splitlines()
    assert lines and all("[MASK]" in line for line in lines)        # sources screened (dev = test = train here)
    english = {"john", "smith", "lives", "in", "paris", "works", "google", "."}
    assert all(set(line.split()) - {"[MASK]"} <= english for line in lines)    # variants of en sentences only


def test_a_changed_late_setting_retrains_only_the_sub_stages_it_affects(tagging_run):
    """Editing `distil_final_epochs` keeps stage 1 and the partly frozen stage-2 sub-stages (their weights
    would come out the same), trains the last stage-2 sub-stage and stage 3 again, moves what they replace
    to superseded/, and ends with the same student as a fresh run under those settings."""
    opts, _ = tagging_run
    root = Path(opts.run.model_dir)
    first = opts.replace(student_name="late", distil_epochs=1)
    run_distill(first)
    folder = root / "student-late"
    state = json.loads((folder / "state.json").read_text())
    names = list(state["completed"])
    final = max((n for n in names if n.startswith("stage2-")), key=lambda n: state["completed"][n]["index"])
    kept = [n for n in names if state["completed"][n]["index"] < state["completed"][final]["index"]]
    retrained = [n for n in names if n not in kept]
    assert kept and retrained[0] == final and any(n.startswith("stage3") for n in retrained)
    kept_bytes = {n: (folder / state["completed"][n]["checkpoint"]).read_bytes() for n in kept}
    old_final = (folder / state["completed"][final]["checkpoint"]).read_bytes()

    changed = run_distill(first.replace(distil_final_epochs=2))
    after = json.loads((folder / "state.json").read_text())
    for n in kept:   # untouched, not retrained
        assert (folder / after["completed"][n]["checkpoint"]).read_bytes() == kept_bytes[n]
        assert after["completed"][n]["history"] == state["completed"][n]["history"]
    assert len(after["completed"][final]["history"]) == 2 and after["settings"]["stages"]["final_epochs"] == 2
    superseded = json.loads((folder / "superseded" / "state.json").read_text())
    assert sorted(superseded["completed"]) == sorted(retrained)
    assert (folder / "superseded" / state["completed"][final]["checkpoint"]).read_bytes() == old_final

    fresh = run_distill(first.replace(student_name="late-fresh", distil_final_epochs=2))
    assert changed["student"]["test"] == fresh["student"]["test"]
    for n in names:
        ours = folder / after["completed"][n]["checkpoint"]
        theirs = root / "student-late-fresh" / after["completed"][n]["checkpoint"]
        assert ours.read_bytes() == theirs.read_bytes(), n


def test_dropping_stage_3_re_bundles_the_finished_stages_1_2_without_training(tagging_run):
    """`--stages 1,2` on a student that ran all three stages trains nothing: stages 1-2 are the same sub-stages
    (the plan up to a sub-stage is part of its settings), the bundle is the best of stage 2 on dev, and the
    bundle's metrics list only the sub-stages it went through. Going back to 1,2,3 picks stage 3 up again."""
    opts, _ = tagging_run
    folder = Path(opts.run.model_dir) / "student-drop3"
    full = run_distill(opts.replace(student_name="drop3", distil_epochs=1))
    state = json.loads((folder / "state.json").read_text())
    files = {p.name: p.read_bytes() for p in folder.glob("*.weights.h5")}
    two = run_distill(opts.replace(student_name="drop3", distil_epochs=1, stages="1,2"))
    after = json.loads((folder / "state.json").read_text())
    assert {p.name: p.read_bytes() for p in folder.glob("*.weights.h5")} == files      # nothing trained
    assert all(after["completed"][n]["history"] == state["completed"][n]["history"] for n in state["completed"])
    stage2 = {n: r for n, r in state["completed"].items() if n.startswith("stage2-")}
    best = max(stage2, key=lambda n: (stage2[n]["dev_metric"], -stage2[n]["index"]))
    assert two["student"]["best_substage"] == best and two["distillation"]["stages"] == "1,2"
    assert headline(two["student"]["dev"]) == pytest.approx(stage2[best]["dev_metric"])
    assert sorted(two["substages"]) == sorted(two["sentences_per_second"]["stages"]) == sorted(["stage1", *stage2])
    assert sorted(full["substages"]) == sorted(state["completed"]) and any(n.startswith("stage3") for n in full["substages"])
    again = run_distill(opts.replace(student_name="drop3", distil_epochs=1))
    assert again["student"]["best_substage"] == full["student"]["best_substage"]
    assert again["student"]["test"] == full["student"]["test"]


@pytest.mark.parametrize("override, message", [
    ({"student": "lstm"}, "--student 'lstm' is not one of bilstm, cnn, transformer"),
    ({"student": "transformer", "transformer_hidden": 250, "transformer_heads": 4}, "multiple of --transformer_heads"),
    ({"teacher_layer": 9}, r"--teacher_layer 9 is out of range for this teacher: use 0 \(embeddings\) to 2"),
    ({"distil_label_epochs": -1}, "--distil_label_epochs must be at least 0, not -1"),
    ({"distil_final_epochs": -2}, "--distil_final_epochs must be at least 0, not -2"),
])
def test_bad_settings_fail_before_the_teacher_is_fine_tuned(tiny_models, tmp_path, monkeypatch, override, message):
    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was fine-tuned before the settings were checked")
    monkeypatch.setattr("xtremedistil.distill.pipeline.run_teacher", no_teacher)
    task = tagging_task(tmp_path / "task")
    with pytest.raises(XtremeDistilError, match=message):
        run_distill(options(task, tmp_path / "out", tiny_models("bert"), True, **override))


def test_status_reads_what_each_phase_recorded(tagging_run, tmp_path, capsys):
    from xtremedistil.status import status

    opts, metrics = tagging_run
    root = Path(opts.run.model_dir)
    lines = status(root)
    teacher = json.loads((root / "teacher" / "teacher.json").read_text())
    dev = 100 * teacher["history"][0]["dev"]
    test = 100 * headline(json.loads((root / "teacher" / "metrics.json").read_text())["test"])
    assert lines[1].startswith(f"teacher: fine-tuned, 1 epoch(s), dev {dev:.2f} (") and lines[1].endswith(f"test {test:.2f}")
    scored = [line for line in lines if line.startswith("teacher outputs: ")]
    assert scored and all("sentences scored" in line for line in scored)
    state = json.loads((root / "student" / "state.json").read_text())["completed"]
    at = lines.index(next(line for line in lines if line.startswith("student: ")))
    assert lines[at].startswith(f"student: {len(state)} sub-stage(s) done")
    for offset, (name, record) in enumerate(sorted(state.items(), key=lambda kv: kv[1]["index"]), start=1):
        assert lines[at + offset].startswith(f"  {name}: dev f1 {100 * record['dev_metric']:.2f}, "
                                             f"validation loss {record['val_loss']:.4g}, {len(record['history'])} epoch(s)")
    best = metrics["student"]["best_substage"]
    assert f"  best on dev so far: {best} ({100 * state[best]['dev_metric']:.2f})" in lines
    assert (f"bundle: test {100 * headline(metrics['student']['test']):.2f} "
            f"({retention_percent(metrics['retention']['test'])} of the teacher's {test:.2f}), best sub-stage {best}, "
            f"{metrics['distillation']['pieces_sent_to_nearest']:,} unseen pieces read their nearest seen piece; "
            "not exported") in lines

    # A run in progress: a teacher half fine-tuned, a student inside a sub-stage.
    run = tmp_path / "run"
    (run / "teacher-training").mkdir(parents=True)
    (run / "teacher-training" / "state.json").write_text(json.dumps(
        {"config": {"epochs": 4}, "history": [{"dev": 0.8148}, {"dev": 0.8394}]}))
    (run / "student-x").mkdir()
    (run / "student-x" / "state.json").write_text(json.dumps(
        {"completed": {}, "partial": {"name": "stage1", "epochs": 16, "waited": 1,
                                      "history": [{"val_loss": 0.5, "seconds": 780}, {"val_loss": 0.45, "seconds": 840},
                                                  {"val_loss": 0.46, "seconds": 810}]}}))
    (run / "student-y").mkdir()
    (run / "student-y" / "state.json").write_text(json.dumps(
        {"completed": {"stage1": {"index": 1, "stage": 1, "dev_metric": 0.01, "val_loss": 0.1, "history": [{}]}},
         "settings": {"stages": {"precision": "bf16"}}}))
    (run / "cache" / "transfer-1" / "chunk-00000").mkdir(parents=True)
    (run / "cache" / "transfer-1" / "chunk-00000" / "meta.json").write_text(json.dumps({"rows": 100000}))
    (run / "cache" / "transfer-1" / ".chunk-00001.tmp").mkdir()                     # being written
    (run / "augmented").mkdir()
    (run / "augmented" / "transfer-2.txt").write_text("a\nb\nc\n")
    (run / "augmented" / "transfer-2.json").write_text(json.dumps(
        {"multiplier": 2, "allocation": "sentence", "mentions": 1, "joins": 2, "sources": 2, "written": 3}))
    lines = status(run)
    assert lines.pop(3) == ("augmented transfer set: transfer-2.txt: 3 lines (from 2 sentences: "
                            "2x per sentence, 1 mention copy, 2 joins)")
    assert lines[1].startswith("teacher: fine-tuning, 2 of 4 epoch(s) finished, dev 81.48 / 83.94; last saved ")
    assert lines[2] == ("teacher outputs: transfer-1: scoring; 1 chunk(s) finished (100,000 sentences; a chunk "
                        "counts once written whole)")
    del lines[2]
    assert lines[2] == "student-x: 0 sub-stage(s) done (0 min)"
    assert lines[3].startswith("  stage1: in progress, 3 of 16 epoch(s) saved (validation loss 0.5, 0.45, 0.46; "
                               "1 without gain); 14 min an epoch, at most 2.9 h to go; last saved ")
    at = lines.index("student-y: 1 sub-stage(s) done (0 min, bf16)")                  # trained in bf16
    assert lines[at + 1].startswith("  stage1: dev")
    assert not any(line.startswith("  best on dev") for line in lines[at + 1:at + 3])   # stage 1 is never the pick
    assert main(["status", str(run)]) == 0 and "student-x" in capsys.readouterr().out
    (tmp_path / "base.yaml").write_text(f"name: base\nmodel_dir: {tmp_path / 'elsewhere'}\n")
    (tmp_path / "r.yaml").write_text("extends: base.yaml\nname: r\n")      # model_dir from the recipe it extends
    assert main(["status", str(tmp_path / "r.yaml"), "--model_dir", str(run)]) == 0
    assert f"run folder {run}" in capsys.readouterr().out
    assert main(["status", str(tmp_path / "r.yaml")]) == 2
    assert f"{tmp_path / 'elsewhere'}: no such run folder" in capsys.readouterr().err
    assert main(["status", str(tmp_path / "none")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    (run / "student-x" / "state.json").write_text("{")
    assert main(["status", str(run)]) == 2
    assert "state.json: damaged" in capsys.readouterr().err


def test_switching_a_finished_run_to_bio_decoding_trains_nothing_and_rescores(tagging_run, tmp_path, monkeypatch):
    """Nothing is trained, the sub-stages are chosen anew, and neither the teacher nor any sub-stage checkpoint is
    run again: their first evaluation saved their dev figures under every decoding (records written before that
    are scored again from their checkpoints)."""
    import shutil

    from xtremedistil.distill import teacher as teacher_lib
    from xtremedistil.distill.decoding import tags_from_piece_logits
    from xtremedistil.distill.metrics import metrics_from_logits

    opts, reference = tagging_run
    shutil.copytree(opts.run.model_dir, tmp_path / "out", ignore=shutil.ignore_patterns("*-labels-only", "*-augmented"))
    bio = opts.replace(model_dir=str(tmp_path / "out"), tag_decoding="bio")
    trained, teacher_passes = [], []
    predict = teacher_lib.predict_logits
    monkeypatch.setattr(teacher_lib, "predict_logits",
                        lambda *args, **kwargs: teacher_passes.append(1) or predict(*args, **kwargs))
    dev_passes = []
    by_decoding = StageRunner.dev_metrics_by_decoding
    monkeypatch.setattr(StageRunner, "dev_metrics_by_decoding",
                        lambda self: dev_passes.append(1) or by_decoding(self))
    saved = json.loads((tmp_path / "out" / "student" / "state.json").read_text())["completed"]
    metrics = run_distill(bio, on_batch=lambda sub, batches: trained.append(sub.name))
    assert trained == [] and teacher_passes == [] and dev_passes == []   # nothing trained, nothing scored again
    state = json.loads((tmp_path / "out" / "student" / "state.json").read_text())["completed"]
    assert {record["decoding"] for record in state.values()} == {"bio"}
    assert all(state[name]["dev"] == saved[name]["dev_by_decoding"]["bio"] for name in state)
    # the saved bio figures are the checkpoint's own: score the chosen one (the bundle's weights) directly
    chosen = metrics["student"]["best_substage"]
    chosen_bundle = load_bundle(tmp_path / "out" / "bundle")
    task_dev = load_task(opts.run.task, True)
    dev = encode_split(chosen_bundle.tokenizer, task_dev, "dev", opts.run.seq_len)
    assert state[chosen]["dev"] == metrics_from_logits(chosen_bundle.predict_logits(dev.input_ids), dev,
                                                       task_dev.splits["dev"], task_dev.labels, True, "bio")
    teacher_saved = json.loads((tmp_path / "out" / "teacher" / "metrics.json").read_text())
    assert teacher_saved["decoding"] == "bio" and metrics["task"]["decoding"] == "bio"
    teacher, _, tokenizer = teacher_lib.load_teacher(tmp_path / "out" / "teacher")
    task = load_task(opts.run.task, True)
    teacher_test = encode_split(tokenizer, task, "test", opts.run.seq_len)
    assert metrics["teacher"]["test"] == teacher_saved["test"] == metrics_from_logits(
        predict(teacher, teacher_test), teacher_test, task.splits["test"], task.labels, True, "bio")
    bundle = load_bundle(tmp_path / "out" / "bundle")
    assert bundle.decoding == "bio"
    test = encode_split(bundle.tokenizer, task, "test", opts.run.seq_len)
    logits = bundle.predict_logits(test.input_ids)
    assert metrics["student"]["test"] == metrics_from_logits(logits, test, task.splits["test"], task.labels, True, "bio")
    assert metrics["student"]["best_substage"] == max(
        (name for name in state if state[name]["stage"] > 1),
        key=lambda name: (state[name]["dev_metric"], -state[name]["index"]))
    texts = [" ".join(ex.words) for ex in task.splits["test"]]
    assert bundle.predict(texts) == tags_from_piece_logits(logits, test.word_index, test.n_words, task.labels, "bio")
    # and back: argmax figures as the original run had them
    back = run_distill(bio.replace(tag_decoding="argmax"), on_batch=lambda sub, batches: trained.append(sub.name))
    assert trained == [] and back["student"]["test"] == reference["student"]["test"] and teacher_passes == []
    assert back["teacher"]["test"] == reference["teacher"]["test"] and dev_passes == []
    # records from before every decoding was saved: each sub-stage is scored again from its checkpoint, once
    state_path = tmp_path / "out" / "student" / "state.json"
    old = json.loads(state_path.read_text())
    for record in old["completed"].values():
        del record["dev_by_decoding"]
    state_path.write_text(json.dumps(old))
    again = run_distill(bio, on_batch=lambda sub, batches: trained.append(sub.name))
    assert trained == [] and len(dev_passes) == len(old["completed"])
    assert again["student"]["test"] == metrics["student"]["test"]
    assert all(record["dev_by_decoding"]["bio"] == record["dev"]
               for record in json.loads(state_path.read_text())["completed"].values())


def test_unseen_pieces_read_their_nearest_seen_piece_and_switching_to_unk_trains_nothing(tagging_run, tmp_path,
                                                                                         monkeypatch):
    """By default every teacher piece but the special ones has a student row to read (the nearest seen piece's);
    --unseen_pieces unk on a finished run trains nothing, and the bundle, its dev and test figures are the UNK
    table's."""
    import shutil

    from xtremedistil.distill.metrics import metrics_from_logits

    opts, reference = tagging_run
    assert reference["distillation"]["unseen_pieces"] == "nearest"
    assert reference["distillation"]["pieces_sent_to_nearest"] > 0
    bundle = load_bundle(f"{opts.run.model_dir}/bundle")
    table = bundle.model.get_layer("id_remap").get_weights()[0]
    special = set(bundle.tokenizer.all_special_ids)
    assert all(row != 1 for teacher_id, row in enumerate(table) if teacher_id not in special)
    assert np.array_equal(np.load(f"{opts.run.model_dir}/bundle/id_remap.npy"), table)

    shutil.copytree(opts.run.model_dir, tmp_path / "out", ignore=shutil.ignore_patterns("*-labels-only", "*-augmented"))
    from xtremedistil.distill import pipeline as pipeline_lib

    trained, scored = [], []
    predict = pipeline_lib.predict_student_logits
    monkeypatch.setattr(pipeline_lib, "predict_student_logits",
                        lambda model, ids, *args: scored.append(len(ids)) or predict(model, ids, *args))
    unk = run_distill(opts.replace(model_dir=str(tmp_path / "out"), unseen_pieces="unk"),
                      on_batch=lambda sub, batches: trained.append(sub.name))
    assert trained == [] and unk["distillation"]["pieces_sent_to_nearest"] == 0
    task = load_task(opts.run.task, True)
    assert scored == [len(task.splits["dev"]), len(task.splits["test"])]    # dev scored again with the UNK table
    assert unk["student"]["best_substage"] == reference["student"]["best_substage"]
    switched = load_bundle(tmp_path / "out" / "bundle")
    unk_table = switched.model.get_layer("id_remap").get_weights()[0]
    moved = table != unk_table
    assert moved.sum() == reference["distillation"]["pieces_sent_to_nearest"] and set(unk_table[moved]) == {1}
    from xtremedistil.status import status
    assert any(line.startswith("bundle: ") and line.endswith(", unseen pieces read UNK; not exported")
               for line in status(tmp_path / "out"))
    for split in ("dev", "test"):   # each figure is the switched bundle's own
        encoded = encode_split(switched.tokenizer, task, split, opts.run.seq_len)
        assert unk["student"][split] == metrics_from_logits(switched.predict_logits(encoded.input_ids), encoded,
                                                            task.splits[split], task.labels, True,
                                                            unk["task"]["decoding"])


def test_bf16_stages_train_a_mixed_precision_twin_and_everything_written_is_float32(tagging_run, monkeypatch):
    """--distil_precision bf16: every sub-stage trains in bfloat16; dev metrics, the chosen checkpoint, test and the
    bundle come from the float32 student with the same weights; the run records its precision."""
    import tensorflow as tf

    opts, _ = tagging_run
    root = Path(opts.run.model_dir)
    trained_in = []
    real_train, real_predict = StageRunner._train, stages_lib.predict_student_logits
    predicted_by = []

    def train(self, sub):
        trained_in.append((sub.name, self.model.get_layer("logits").compute_dtype))
        return real_train(self, sub)

    def predict(model, ids, batch_size):
        predicted_by.append(model.get_layer("logits").compute_dtype)
        return real_predict(model, ids, batch_size)
    monkeypatch.setattr(StageRunner, "_train", train)
    monkeypatch.setattr(stages_lib, "predict_student_logits", predict)
    # the labels-only plan: one sub-stage through the same runner, choice of sub-stage and bundle (a fast test)
    metrics = run_distill(opts.replace(student_name="bf16", distil_precision="bf16", stages="labels"))
    assert [name for name, _ in trained_in] == ["labels-only"]
    assert {dtype for _, dtype in trained_in} == {"bfloat16"}
    assert set(predicted_by) == {"float32"} and len(predicted_by) == len(trained_in)   # dev of each sub-stage
    assert tf.keras.mixed_precision.global_policy().name == "float32"
    assert metrics["distillation"]["precision"] == "bf16"
    state = json.loads((root / "student-bf16" / "state.json").read_text())
    assert state["settings"]["stages"]["precision"] == "bf16"
    bundle = load_bundle(root / "bundle-bf16")
    assert bundle.model.get_layer("logits").compute_dtype == "float32"
    task = load_task(opts.run.task, True)
    test = encode_split(bundle.tokenizer, task, "test", opts.run.seq_len)
    logits = bundle.predict_logits(test.input_ids)
    assert logits.dtype == np.float32
    from xtremedistil.distill.metrics import metrics_from_logits
    assert metrics["student"]["test"] == metrics_from_logits(logits, test, task.splits["test"], task.labels, True)
    # the default leaves no trace in the metrics: earlier runs' records compare equal
    assert "precision" not in json.loads((root / "bundle" / "metrics.json").read_text())["distillation"]
