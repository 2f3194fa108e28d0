import re

import numpy as np
import pytest

from xtremedistil.distill.embeddings import UNK_ROW, build_vocab, pca_embeddings, send_unseen_to_nearest
from xtremedistil.distill.students import STUDENTS, StudentConfig, build_student, layer_groups
from xtremedistil.distill.students.base import describe_student
from xtremedistil.errors import XtremeDistilError


def config(kind="bilstm", tagging=True, **overrides):
    base = dict(kind=kind, tagging=tagging, num_labels=5, seq_len=12, teacher_vocab_size=50, vocab_size=10,
                teacher_hidden_size=16, word_emb_dim=8, bilstm_hidden_size=6, transformer_hidden=8,
                transformer_heads=2, transformer_ffn=16, cnn_filters=8)
    return StudentConfig(**{**base, **overrides})


def test_every_student_describes_its_shape_for_reports():
    descriptions = {kind: describe_student(config(kind).to_dict()) for kind in STUDENTS}
    assert descriptions["bilstm"] == "BiLSTM 8/6" and descriptions["transformer"] == "transformer 2x8"
    assert descriptions["cnn"] == "cnn 8/3x8 k3"
    assert len(set(descriptions.values())) == len(STUDENTS)


def test_a_student_is_one_file_its_options_become_flags_config_keys_and_checked_settings(monkeypatch):
    """register_student(..., options=) is all a new student needs: its options are `--flags` of distill, keys of
    its config (flat in the bundle, read as config.NAME), checked on creation; names clash with nothing."""
    import dataclasses

    import tensorflow as tf

    from xtremedistil.cli import build_parser
    from xtremedistil.distill.options import DistilOptions
    from xtremedistil.distill.students import base

    for registry in ("STUDENTS", "GROUPS", "DESCRIPTIONS", "OPTIONS"):     # the toy leaves no trace
        monkeypatch.setattr(base, registry, dict(getattr(base, registry)))

    @dataclasses.dataclass
    class ToyOptions(base.StudentOptions):
        toy_width: int = base.option(7, "units of the toy layer", minimum=2)

    @base.register_student("toy", lambda c: [["word_embedding"], ["toy"], ["projection"], ["logits"]],
                           lambda c: f"toy {c.toy_width}", ToyOptions)
    def build_toy(cfg, batch_size=None, unroll=False):
        ids, rows = base.student_inputs(cfg, batch_size)
        x = tf.keras.layers.Embedding(cfg.vocab_size, cfg.word_emb_dim, name="word_embedding")(rows)
        x = tf.keras.layers.Dense(cfg.toy_width, name="toy")(tf.keras.layers.GlobalAveragePooling1D()(x))
        return tf.keras.Model(ids, base.student_outputs(cfg, x))

    toy = config("toy", False, toy_width=3)
    assert toy.toy_width == 3 and toy.to_dict()["toy_width"] == 3 and "bilstm_hidden_size" not in toy.to_dict()
    assert base.StudentConfig(**toy.to_dict()) == toy and describe_student(toy.to_dict()) == "toy 3"
    assert build_student(toy)(np.ones((2, 12), np.int32))["logits"].shape == (2, 5)
    monkeypatch.setenv("COLUMNS", "200")
    parser = build_parser(distill_flags=True)
    args = parser.parse_args(["distill", "--student", "toy", "--toy_width", "4"])
    assert (args.student, args.toy_width) == ("toy", 4)
    distill_help = parser._subparsers._group_actions[0].choices["distill"].format_help()
    assert re.search(r"toy student:\n  --toy_width WIDTH +units of the toy layer \(default: 7\)", distill_help)
    flags = dict(task="t", model_dir="m", pt_teacher_checkpoint="c", student="toy", toy_width=5)
    assert DistilOptions.from_flags(flags).student.options.toy_width == 5
    with pytest.raises(XtremeDistilError, match="--toy_width must be at least 2, not 1"):
        DistilOptions.from_flags({**flags, "toy_width": 1})          # at once: before any work
    with pytest.raises(XtremeDistilError, match="--toy_width must be at least 2"):
        config("toy", toy_width=1)
    with pytest.raises(XtremeDistilError, match="unknown student setting"):
        config("toy", toy_depth=1)
    with pytest.raises(AttributeError, match="'toy' student has no setting 'bilstm_hidden_size'"):
        toy.bilstm_hidden_size

    @dataclasses.dataclass
    class Clash(base.StudentOptions):
        cnn_filters: int = base.option(1, "taken")
    with pytest.raises(ValueError, match="option 'cnn_filters' is already an option of cnn"):
        base.register_student("clash", lambda c: [], options=Clash)


def test_old_bundle_configs_with_every_students_fields_still_load():
    flat = {**config("cnn").to_dict(), "bilstm_hidden_size": 600, "transformer_layers": 2}   # as bundles were
    assert StudentConfig(**flat) == config("cnn") and StudentConfig(**flat).to_dict() == config("cnn").to_dict()


def test_unknown_student_lists_valid_names():
    with pytest.raises(XtremeDistilError, match=f"unknown student 'lstm'; valid students: {', '.join(sorted(STUDENTS))}$"):
        config(kind="lstm")


@pytest.mark.parametrize("kind", sorted(STUDENTS))
@pytest.mark.parametrize("tagging", [True, False])
def test_students_take_teacher_ids_and_give_named_outputs(kind, tagging):
    model = build_student(config(kind, tagging))
    out = model(np.ones((3, 12), np.int32))
    assert out["logits"].shape == ((3, 12, 5) if tagging else (3, 5))
    assert out["projection"].shape == ((3, 12, 16) if tagging else (3, 16))
    groups = layer_groups(model, config(kind, tagging))
    assert groups[0][0].name == "word_embedding" and groups[-1][0].name == "logits"
    assert not model.get_layer("id_remap").trainable_weights


def _lstm_parameters(units, inputs):
    return 4 * (units * (inputs + units) + units)   # kernel, recurrent kernel, bias of 4 gates


def test_bilstm_is_the_papers_shape_with_fused_kernel_defaults():
    """300-dim embeddings, a 600-unit LSTM each way over them, projection to the teacher's hidden
    size from both directions, logits: the parameter count of the paper's student, term by term."""
    cfg = config(word_emb_dim=300, bilstm_hidden_size=600)
    model = build_student(cfg)
    forward, backward = model.get_layer("bilstm_forward"), model.get_layer("bilstm_backward")
    assert forward.units == backward.units == 600 and forward.recurrent_dropout == 0.0
    assert tuple(forward.cell.kernel.shape) == tuple(backward.cell.kernel.shape) == (300, 2400)
    expected = (10 * 300 + 2 * _lstm_parameters(600, 300) + (1200 * 16 + 16) + (16 * 5 + 5)
                + 50)   # the id-remap table (non-trainable)
    assert model.count_params() == expected
    assert model.get_layer("projection").units == 16
    with_dropout = build_student(config(recurrent_dropout=0.1))
    assert with_dropout.get_layer("bilstm_backward").recurrent_dropout == 0.1


VARIANTS = [(kind, {}) for kind in sorted(STUDENTS)] + [("bilstm", {"bilstm_pooling": "max"})]


@pytest.mark.parametrize("kind,options", VARIANTS, ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items())
                         if isinstance(v, dict) else v)
@pytest.mark.parametrize("tagging", [True, False])
def test_logits_do_not_depend_on_padding_or_batch_company(kind, options, tagging):
    """A sentence gets the same logits unpadded, padded to any width, and beside a longer one."""
    cfg = config(kind, tagging, dropout_rate=0.0, **options)
    model = build_student(cfg)
    model.get_layer("id_remap").set_weights([np.arange(50, dtype=np.int32) % 10])
    sentence = np.array([3, 5, 7, 9], np.int32)
    longer = np.array([4, 6, 8, 2, 3, 5, 7, 9, 4, 6], np.int32)

    def logits(rows, width):
        batch = np.zeros((len(rows), width), np.int32)
        for i, row in enumerate(rows):
            batch[i, :len(row)] = row
        out = model(batch)["logits"].numpy()[0]
        return out[:len(sentence)] if tagging else out

    alone = logits([sentence], 4)
    for width, company in ((8, []), (12, []), (12, [longer])):
        np.testing.assert_allclose(logits([sentence] + company, width), alone, atol=1e-5)
    # Both ends of the sentence matter (the backward direction reads it from its last real token).
    assert not np.allclose(logits([np.array([3, 5, 7, 2], np.int32)], 4), alone, atol=1e-5)
    assert not np.allclose(logits([np.array([4, 5, 7, 9], np.int32)], 4), alone, atol=1e-5)


def test_bilstm_max_pooling_takes_each_units_maximum_over_the_real_steps():
    """--bilstm_pooling max: the classifier reads each unit's maximum over the sentence's real positions (both
    directions), not the last step; same weights as 'last', other logits; the default stays the paper's."""
    import tensorflow as tf

    from xtremedistil.distill.students.base import copy_student_weights

    assert config(tagging=False).bilstm_pooling == "last"
    assert describe_student(config(tagging=False, bilstm_pooling="max").to_dict()) == "BiLSTM 8/6 max-pooled"
    with pytest.raises(XtremeDistilError, match="bilstm_pooling"):
        config(tagging=False, bilstm_pooling="mean")
    pooled = build_student(config(tagging=False, dropout_rate=0.0, bilstm_pooling="max"))
    pooled.get_layer("id_remap").set_weights([np.arange(50, dtype=np.int32) % 10])
    last = copy_student_weights(pooled, build_student(config(tagging=False, dropout_rate=0.0)))
    assert pooled.count_params() == last.count_params()
    batch = np.zeros((2, 9), np.int32)
    batch[0, :5], batch[1, :9] = [3, 5, 7, 9, 4], [4, 6, 8, 2, 3, 5, 7, 9, 4]
    inside = tf.keras.Model(pooled.input, [pooled.get_layer(name).output for name in
                                           ("bilstm_forward", "bilstm_backward", "bilstm")])
    forward, backward, features = (t.numpy() for t in inside(batch))
    for row, length in enumerate((5, 9)):
        np.testing.assert_allclose(features[row, :6], forward[row, :length].max(axis=0), atol=1e-6)
        np.testing.assert_allclose(features[row, 6:], backward[row, :length].max(axis=0), atol=1e-6)
    assert not np.allclose(pooled(batch)["logits"], last(batch)["logits"], atol=1e-4)


def test_cnn_is_dilated_residual_convolutions_with_one_group_for_the_encoder():
    cfg = config("cnn", tagging=False, cnn_layers=3, cnn_filters=8, cnn_kernel_size=3)
    model = build_student(cfg)
    convs = [model.get_layer(f"conv_{i}") for i in range(3)]
    assert [c.dilation_rate for c in convs] == [(1,), (2,), (4,)]
    assert all(tuple(c.kernel.shape) == (3, 8, 8) for c in convs)
    assert [[layer.name for layer in group] for group in layer_groups(model, cfg)] == [
        ["word_embedding"], ["conv_input", "conv_0", "conv_1", "conv_2"], ["projection"], ["logits"]]
    expected = (10 * 8 + (8 * 8 + 8) + 3 * (3 * 8 * 8 + 8) + (8 * 16 + 16) + (16 * 5 + 5) + 50)
    assert model.count_params() == expected
    # The receptive field grows with dilation: the first token reaches the 8th position's output (1+2*(1+2+4)=15).
    model.get_layer("id_remap").set_weights([np.arange(50, dtype=np.int32) % 10])
    tagging = build_student(config("cnn", tagging=True, cnn_filters=8, dropout_rate=0.0))
    tagging.get_layer("id_remap").set_weights([np.arange(50, dtype=np.int32) % 10])
    a = tagging(np.array([[3, 5, 7, 9, 4, 6, 8, 2, 3, 5]], np.int32))["logits"].numpy()[0, 7]
    b = tagging(np.array([[4, 5, 7, 9, 4, 6, 8, 2, 3, 5]], np.int32))["logits"].numpy()[0, 7]
    assert not np.allclose(a, b, atol=1e-6)


def test_id_remap_maps_seen_ids_and_sends_unknown_to_unk():
    vocab = build_vocab([np.array([[2, 7, 7, 0]]), np.array([[9, 3]])], teacher_vocab_size=12, pad_id=0, unk_id=1)
    assert vocab.teacher_ids.tolist() == [0, 1, 2, 3, 7, 9]
    assert vocab.remap[[0, 1, 2, 3, 7, 9]].tolist() == [0, 1, 2, 3, 4, 5]
    assert vocab.remap[[4, 5, 11]].tolist() == [UNK_ROW] * 3
    model = build_student(config(teacher_vocab_size=12, vocab_size=vocab.size))
    model.get_layer("id_remap").set_weights([vocab.remap])
    assert model.get_layer("id_remap")(np.array([[9, 4, 0]], np.int32)).numpy().tolist() == [[5, 1, 0]]


def test_unseen_pieces_read_as_their_nearest_seen_piece_and_special_ones_stay_unk():
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(12, 6)).astype(np.float32)
    teacher[4] = 3 * teacher[7] + 0.01 * rng.normal(size=6)     # unseen 4 points where 7 does (cosine, not length)
    teacher[5] = teacher[2] - 0.01 * rng.normal(size=6)         # unseen 5 next to 2
    teacher[11] = teacher[9]                                    # unseen 11 is special: stays UNK
    vocab = build_vocab([np.array([[2, 7, 7, 0]]), np.array([[9, 3]])], teacher_vocab_size=12, pad_id=0, unk_id=1)
    moved, count = send_unseen_to_nearest(vocab, teacher, keep_unk=[11], block=2)
    assert moved.teacher_ids.tolist() == vocab.teacher_ids.tolist()          # no new rows
    assert moved.remap[[0, 1, 2, 3, 7, 9]].tolist() == vocab.remap[[0, 1, 2, 3, 7, 9]].tolist()
    assert moved.remap[4] == vocab.remap[7] and moved.remap[5] == vocab.remap[2]
    unseen = [4, 5, 6, 8, 10]                                                 # and 1 (UNK itself), 11 (special)
    assert moved.remap[11] == moved.remap[1] == UNK_ROW and count == len(unseen)
    unit = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    seen = [2, 3, 7, 9]
    for i in unseen:
        assert moved.remap[i] == vocab.remap[seen[int(np.argmax(unit[seen] @ unit[i]))]]
    assert vocab.remap[4] == UNK_ROW                                          # the input is left alone


def test_pca_keeps_geometry_of_teacher_rows():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(30, 4)) @ rng.normal(size=(4, 16))  # rank 4 in 16 dims
    vocab = build_vocab([np.arange(2, 20)], 30, pad_id=0, unk_id=1)
    reduced = pca_embeddings(teacher, vocab, dim=4)
    assert reduced.shape == (vocab.size, 4)
    rows = teacher[vocab.teacher_ids[2:]]
    original = np.linalg.norm(rows[:, None] - rows[None], axis=-1)
    kept = np.linalg.norm(reduced[2:, None] - reduced[None, 2:], axis=-1)
    np.testing.assert_allclose(kept, original, rtol=1e-4, atol=1e-4)
    assert np.all(reduced[0] == 0)  # padding row
    assert pca_embeddings(teacher, vocab, dim=40).shape == (vocab.size, 40)


@pytest.mark.parametrize("kind", sorted(STUDENTS))
@pytest.mark.parametrize("tagging", [True, False])
def test_a_bf16_twin_computes_in_bfloat16_from_the_same_float32_weights_and_trains(kind, tagging):
    """--distil_precision bf16: the stages train a mixed-precision twin of the float32 student. Its variables are
    float32 and start as the student's, so its checkpoints load into the student; its layers compute in bfloat16
    (what makes it faster); one step of every loss is finite; building it leaves the global policy float32."""
    import tensorflow as tf

    from xtremedistil.distill.losses import weighted_sum
    from xtremedistil.distill.stages import training_model

    cfg = config(kind, tagging)
    student = build_student(cfg)
    student.get_layer("id_remap").set_weights([np.arange(50, dtype=np.int32) % 10])    # ids 1-9: real rows
    assert training_model(student, lambda: build_student(cfg), "float32") is student
    twin = training_model(student, lambda: build_student(cfg), "bf16")
    assert tf.keras.mixed_precision.global_policy().name == "float32"
    assert twin.get_layer("logits").compute_dtype == "bfloat16"
    assert student.get_layer("logits").compute_dtype == "float32"
    assert {w.dtype for w in twin.get_weights()} <= {np.dtype("float32"), np.dtype("int32")}
    for a, b in zip(twin.get_weights(), student.get_weights()):
        np.testing.assert_array_equal(a, b)
    ids = np.array([[3, 4, 5, 0, 0, 0], [6, 7, 8, 9, 1, 2]], np.int32)
    shape = (2, 6) if tagging else (2,)
    weight = np.ones(shape, np.float32)
    targets = {"mse": np.ones(shape + (5,), np.float32), "cross_entropy": np.array(np.ones(shape), np.int64)}
    optimizer = tf.keras.optimizers.Adam(1e-2)
    for loss, target in targets.items():
        with tf.GradientTape() as tape:
            logits = twin(ids, training=True)["logits"]
            assert logits.dtype == tf.bfloat16
            value = weighted_sum(loss, target, tf.cast(logits, tf.float32), weight)
        grads = tape.gradient(value, twin.trainable_variables)
        assert np.isfinite(float(value)) and all(g is None or g.dtype == tf.float32 for g in grads)
        optimizer.apply_gradients((g, v) for g, v in zip(grads, twin.trainable_variables) if g is not None)
    student.set_weights(twin.get_weights())          # what loading a twin's checkpoint amounts to
    full = student(ids)["logits"].numpy()
    assert full.dtype == np.float32
    np.testing.assert_allclose(twin(ids)["logits"].numpy().astype(np.float32), full, rtol=0.05, atol=0.05)
