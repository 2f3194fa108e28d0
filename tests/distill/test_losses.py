"""Losses per sub-stage, tagging losses on first pieces only, length-bucketed batches, early stopping
and the learning-rate schedule of a sub-stage."""
import numpy as np
import pytest
import tensorflow as tf

from helpers import bert_tokenizer
from xtremedistil.distill import batching
from xtremedistil.distill.cache import build_cache
from xtremedistil.distill.losses import LOSSES, distil_losses, get_loss, weighted_sum
from xtremedistil.distill.stages import (
    HIDDEN, LABELS, LOGITS, WEIGHT, StageConfig, StageData, StageRunner, learning_rate_schedule, schedule,
)
from xtremedistil.distill.students import StudentConfig, build_student, layer_groups
from xtremedistil.distill.tokenization import encode_words
from xtremedistil.errors import XtremeDistilError


def test_every_substage_declares_its_loss_and_stage1_stays_mse_with_kl():
    plan = schedule(4, distil_loss="kl")
    assert {sub.loss for sub in plan if sub.stage == 1} == {"mse"}
    assert {sub.loss for sub in plan if sub.stage == 2} == {"kl"}
    assert {sub.loss for sub in plan if sub.stage == 3} == {"cross_entropy"}
    assert all(sub.loss in LOSSES for sub in plan)


def test_stage1_value_is_mse_even_when_the_distil_loss_is_kl():
    """The runner computes a sub-stage's loss by the sub-stage's name, not by --distil_loss."""
    runner = StageRunner.__new__(StageRunner)
    runner.config = StageConfig(distil_loss="kl", temperature=2.0)
    stage1 = schedule(4, distil_loss="kl")[0]
    rng = np.random.default_rng(0)
    target, output = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=(3, 5)).astype(np.float32)
    batch = {HIDDEN: target, WEIGHT: np.ones(3, np.float32)}
    value = float(runner._loss_sum(stage1, batch, output))
    assert value == pytest.approx(float(np.mean((output - target) ** 2, axis=-1).sum()), rel=1e-5)
    assert value != pytest.approx(float(weighted_sum("kl", target, output, np.ones(3), 2.0)), rel=1e-3)


def test_unknown_losses_are_one_clear_error():
    with pytest.raises(XtremeDistilError, match="--distil_loss 'l1' is not one of kl, mse"):
        StageConfig(distil_loss="l1")
    with pytest.raises(XtremeDistilError, match="unknown loss 'l1'; valid losses: cross_entropy, kl, mse"):
        get_loss("l1")
    assert distil_losses() == ["kl", "mse"]


@pytest.mark.parametrize("name", distil_losses())
def test_every_distillation_loss_is_zero_at_the_target_positive_away_with_finite_gradients_and_weights(name):
    """The battery every registered stage-2 loss gets: no test list to edit when a loss is added."""
    rng = np.random.default_rng(3)
    target = tf.constant(rng.normal(size=(4, 3)), tf.float32)
    output = tf.Variable(rng.normal(size=(4, 3)), dtype=tf.float32)
    weight = tf.constant([1.0, 1.0, 0.0, 1.0])
    assert float(weighted_sum(name, target, target, weight, 2.0)) == pytest.approx(0.0, abs=1e-6)
    with tf.GradientTape() as tape:
        value = weighted_sum(name, target, output, weight, 2.0)
    gradient = tape.gradient(value, output).numpy()
    assert float(value) > 0 and np.isfinite(gradient).all() and np.abs(gradient[[0, 1, 3]]).sum() > 0
    np.testing.assert_array_equal(gradient[2], 0.0)                 # a weight-0 row contributes nothing


def test_kl_is_zero_for_equal_logits_and_matches_its_definition():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    np.testing.assert_allclose(get_loss("kl")(a, a, 2.0).numpy(), 0.0, atol=1e-6)
    p, q = tf.nn.softmax(a / 2.0).numpy(), tf.nn.softmax(b / 2.0).numpy()
    np.testing.assert_allclose(get_loss("kl")(a, b, 2.0).numpy(), 4.0 * (p * np.log(p / q)).sum(-1), rtol=1e-5)


@pytest.fixture()
def tagging_data(tmp_path):
    """A tagging StageData over a real cache: 'smiths' splits into 2 pieces, 'paris' is one."""
    tokenizer = bert_tokenizer(tmp_path / "tok")
    sentences = ["john smiths lives in paris .", "the movie .", "ivan smiths works in london ."]

    def teacher(ids, mask):
        ids = ids.astype(np.float32)
        return {"logits": np.stack([ids, -ids, ids / 2], -1), "hidden": np.stack([ids, ids], -1)}

    cache = build_cache(tmp_path / "cache", iter(sentences), teacher, tokenizer, seq_len=12, tagging=True,
                        chunk_size=2, batch_size=2, signature={"v": 1})
    words = [s.split() for s in sentences]
    labels = ["B-LOC", "O", "B-PER"]
    tags = [["O"] * len(w) for w in words]
    encoded = encode_words(tokenizer, words, 12, tags, {label: i for i, label in enumerate(labels)})
    return StageData(cache, cache, encoded, encoded, [], labels, True, pad_id=tokenizer.pad_token_id), tokenizer


def test_tagging_losses_count_only_the_first_piece_of_each_word(tagging_data):
    data, tokenizer = tagging_data
    for target in (HIDDEN, LOGITS, LABELS):
        for batch in data.batches(target, 2, validation=True):
            ids, weight = batch["input_ids"], batch[WEIGHT]
            assert weight.shape == ids.shape
            for row_ids, row_weight in zip(ids, weight):
                pieces = tokenizer.convert_ids_to_tokens(row_ids.tolist())
                counted = [p for p, w in zip(pieces, row_weight) if w]
                assert counted == [p for p in pieces if p not in ("[CLS]", "[SEP]", "[PAD]") and not p.startswith("##")]
    # An output that is wrong only on continuation pieces, specials and padding costs nothing.
    batch = next(data.batches(LOGITS, 3, validation=True))
    wrong_elsewhere = np.where(batch[WEIGHT][..., None] > 0, batch[LOGITS], 99.0).astype(np.float32)
    assert float(weighted_sum("mse", batch[LOGITS], wrong_elsewhere, batch[WEIGHT])) == 0.0


def test_batches_are_bucketed_by_length_and_cut_to_their_longest_sentence():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 33, 500)
    batches = batching.bucketed_batches(lengths, 16, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))       # every row once
    spread = [lengths[b].max() - lengths[b].min() for b in batches]
    assert max(spread) <= 2                                                     # similar lengths together
    widths = [batching.width(lengths[b], 32) for b in batches]
    assert all(w % 8 == 0 and w >= lengths[b].max() for w, b in zip(widths, batches))
    assert sum(w * len(b) for w, b in zip(widths, batches)) < 0.7 * 32 * 500   # padding compute saved
    again = batching.bucketed_batches(lengths, 16, np.random.default_rng(1))
    other = batching.bucketed_batches(lengths, 16, np.random.default_rng(2))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))           # seeded
    assert any(not np.array_equal(a, b) for a, b in zip(batches, other))       # another epoch, another order
    ids = np.array([[5, 6, 0, 0], [5, 0, 0, 0], [0, 0, 0, 0]])
    assert batching.lengths(ids, 0).tolist() == [2, 1, 1]


def _runner(tmp_path, tagging_data, epochs=4, patience=10, label_epochs=None, final_epochs=None):
    data, tokenizer = tagging_data
    config = StudentConfig(kind="bilstm", tagging=True, num_labels=3, seq_len=12, teacher_vocab_size=len(tokenizer),
                           vocab_size=len(tokenizer), teacher_hidden_size=2, word_emb_dim=4, bilstm_hidden_size=4)
    model = build_student(config)
    model.get_layer("id_remap").set_weights([np.arange(len(tokenizer), dtype=np.int32)])
    stage_config = StageConfig(epochs=epochs, batch_size=2, patience=patience, label_epochs=label_epochs,
                               final_epochs=final_epochs)
    return StageRunner(model, layer_groups(model, config), data, stage_config, tmp_path / "student"), model


def test_early_stopping_restores_the_best_epoch(tmp_path, tagging_data, monkeypatch):
    runner, model = _runner(tmp_path, tagging_data, epochs=5, patience=2)
    scripted, seen = iter([3.0, 1.0, 2.0, 4.0, 0.5]), []

    def validation(sub, forward):
        seen.append([w.copy() for w in model.get_weights()])
        return next(scripted)
    monkeypatch.setattr(runner, "_validation_loss", validation)
    result = runner._train(schedule(4)[1])
    assert [h["val_loss"] for h in result["history"]] == [3.0, 1.0, 2.0, 4.0]     # stopped after 2 worse epochs
    assert result["val_loss"] == 1.0
    for restored, best in zip(model.get_weights(), seen[1]):
        np.testing.assert_array_equal(restored, best)
    assert any(not np.array_equal(a, b) for a, b in zip(seen[3], seen[1]))        # it did move on after epoch 2


def test_learning_rate_decays_by_cosine_from_the_peak_to_the_floor_over_every_step():
    config = StageConfig(epochs=3, learning_rate=1e-3, final_learning_rate=1e-8)
    lr = learning_rate_schedule(config, steps_per_epoch=10)
    assert float(lr(0)) == pytest.approx(1e-3)
    assert float(lr(15)) == pytest.approx(1e-8 + (1e-3 - 1e-8) * 0.5, rel=1e-4)   # half-way: half the range
    assert float(lr(30)) == pytest.approx(1e-8, rel=1e-3)
    values = [float(lr(step)) for step in range(31)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_a_substage_trains_with_that_schedule(tmp_path, tagging_data, monkeypatch):
    runner, _ = _runner(tmp_path, tagging_data, epochs=2)
    seen = []
    real = learning_rate_schedule

    def spy(config, steps_per_epoch, epochs):
        seen.append((steps_per_epoch, epochs))
        return real(config, steps_per_epoch, epochs)
    monkeypatch.setattr("xtremedistil.distill.stages.learning_rate_schedule", spy)
    runner._train(schedule(4)[1])
    assert seen == [(runner.data.steps(LOGITS, 2), 2)]


def test_label_and_final_substages_run_their_own_epochs_and_decay_over_them(tmp_path, tagging_data, monkeypatch):
    """--distil_label_epochs: stage-3 sub-stages; --distil_final_epochs: the stage-2 sub-stage training every group
    (stage2-top4 of a 4-group student), not the partly frozen ones before it nor stage 1."""
    runner, _ = _runner(tmp_path, tagging_data, epochs=1, label_epochs=3, final_epochs=2)
    monkeypatch.setattr(runner, "_validation_loss", lambda sub, forward: 1.0 / (1 + len(seen)))
    seen = []
    real = learning_rate_schedule

    def spy(config, steps_per_epoch, epochs):
        seen.append(epochs)
        return real(config, steps_per_epoch, epochs)
    monkeypatch.setattr("xtremedistil.distill.stages.learning_rate_schedule", spy)
    plan = schedule(4)
    assert [plan[i].name for i in (0, 1, 3, 4, 5, 8)] == ["stage1", "stage2-top1", "stage2-top3", "stage2-top4",
                                                           "stage3-top1", "stage3-top4"]
    runs = [runner._train(plan[i]) for i in (0, 1, 3, 4, 5, 8)]
    assert [len(run["history"]) for run in runs] == [1, 1, 1, 2, 3, 3]
    assert seen == [1, 1, 1, 2, 3, 3]
    lr = learning_rate_schedule(runner.config, 10, 3)
    assert float(lr(30)) == pytest.approx(runner.config.final_learning_rate, rel=1e-3)
    assert StageConfig(label_epochs=0).label_epochs is None and StageConfig(final_epochs=0).final_epochs is None
    with pytest.raises(XtremeDistilError, match="--distil_label_epochs must be at least 0"):
        StageConfig(label_epochs=-1)
    with pytest.raises(XtremeDistilError, match="--distil_final_epochs must be at least 0"):
        StageConfig(final_epochs=-1)


def test_a_non_finite_loss_stops_the_substage_with_a_clear_error(tmp_path, tagging_data, monkeypatch):
    runner, _ = _runner(tmp_path, tagging_data, epochs=3)
    monkeypatch.setattr(runner, "_validation_loss", lambda sub, forward: float("nan"))
    with pytest.raises(XtremeDistilError, match=r"stage2-top1 epoch 1: the validation loss is nan \(not finite\); "
                                                r"likely causes: a learning rate too high"):
        runner._train(schedule(4)[1])


def _fresh_runner(tmp_path, tagging_data, folder):
    tf.keras.utils.set_random_seed(7)
    runner, model = _runner(tmp_path / folder, tagging_data, epochs=1)
    return runner, model


def _checkpoint_weights(model, path):
    model.load_weights(str(path))
    return [w.copy() for w in model.get_weights()]


@pytest.mark.parametrize("damaged", ["01-stage1.weights.h5", "02-stage2-top1.weights.h5", "00-init.weights.h5"])
def test_a_damaged_checkpoint_is_trained_again_to_the_same_weights(tmp_path, tagging_data, monkeypatch, damaged):
    """A checkpoint garbled after its sub-stage finished (CRC-32 in state.json) is not trusted: that
    sub-stage runs again from the previous checkpoint and gives identical weights; intact later
    sub-stages are kept (a damaged initial checkpoint is rewritten from the fresh student)."""
    monkeypatch.setattr(StageRunner, "dev_metrics_by_decoding",
                        lambda self: {d: {"metric": "f1", "overall": {"f1": 0.5}} for d in ("argmax", "bio")})
    plan = schedule(4)[:3]
    runner, model = _fresh_runner(tmp_path, tagging_data, "run")
    runner.run(plan)
    folder = tmp_path / "run" / "student"
    before = {p.name: _checkpoint_weights(model, p) for p in sorted(folder.glob("*.weights.h5"))}
    path = folder / damaged
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    trained = []
    real_train = StageRunner._train
    monkeypatch.setattr(StageRunner, "_train", lambda self, sub: trained.append(sub.name) or real_train(self, sub))
    again, model = _fresh_runner(tmp_path, tagging_data, "run")
    again.run(plan)
    assert trained == ([] if damaged.startswith("00") else [damaged[3:].split(".")[0]])
    after = {p.name: _checkpoint_weights(model, p) for p in sorted(folder.glob("*.weights.h5"))}
    assert list(after) == list(before)
    for name in before:
        for a, b in zip(after[name], before[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_a_damaged_state_file_is_one_clear_error(tmp_path, tagging_data):
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "state.json").write_text('{"completed": {"stage1": {')
    with pytest.raises(XtremeDistilError, match=r"state.json: damaged .*delete it to train every sub-stage again"):
        _runner(tmp_path, tagging_data)


def test_settings_differ_only_where_both_runs_recorded_a_value():
    from xtremedistil.distill.stages import _same_setting

    old = {"kind": "bilstm", "bilstm_hidden_size": 300, "cnn_filters": 256}       # flat, every kind's fields
    assert _same_setting(old, {"kind": "bilstm", "bilstm_hidden_size": 300})       # the per-student format
    assert not _same_setting(old, {"kind": "bilstm", "bilstm_hidden_size": 600})
    assert _same_setting({"stages": {"epochs": 1}}, {"stages": {"epochs": 1, "final_epochs": None}})
    assert not _same_setting({"stages": {"final_epochs": None}}, {"stages": {"final_epochs": 4}})
