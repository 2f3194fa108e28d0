"""Settings declared once (xtremedistil/settings.py) and distill's sections (distill/options.py)."""
import dataclasses
import re

import pytest

from xtremedistil.errors import XtremeDistilError
from xtremedistil.settings import Settings, flag_fields, help_text, setting, value_type


@dataclasses.dataclass
class Toy(Settings):
    path: str = setting(required=True, help="where")
    epochs: int = setting(3, "passes", flag="toy_epochs", minimum=1)
    rate: float = setting(0.5, "a rate", minimum=0, below=1)
    mode: str = setting("a", "how", choices=("a", "b"))
    limit: int | None = setting(None, "an optional cap", minimum=0)
    internal: int = setting(7, flag=None)

    def check(self):
        if self.mode == "b" and self.epochs > 5:
            raise XtremeDistilError("--mode b takes at most 5 --toy_epochs")


def test_flags_come_from_the_declarations_and_round_trip():
    assert [flag for flag, _ in flag_fields(Toy)] == ["path", "toy_epochs", "rate", "mode", "limit"]
    toy = Toy.from_flags({"path": "p", "toy_epochs": 4, "mode": "b"})
    assert (toy.epochs, toy.mode, toy.internal) == (4, "b", 7)
    assert toy.to_flags() == {"path": "p", "toy_epochs": 4, "rate": 0.5, "mode": "b", "limit": None}
    assert Toy.from_flags(toy.to_flags()) == toy
    fields = {f.name: f for f in dataclasses.fields(Toy)}
    assert value_type(Toy, fields["limit"]) is int and value_type(Toy, fields["rate"]) is float
    assert help_text(fields["epochs"]) == "passes (default: 3)" and help_text(fields["mode"]) == "how: a, b (default: a)"


@pytest.mark.parametrize("values, message", [
    ({}, "missing --path"),
    ({"path": "p", "toy_epochs": 0}, "--toy_epochs must be at least 1, not 0"),
    ({"path": "p", "rate": 1.0}, r"--rate must be in \[0, 1\), not 1.0"),
    ({"path": "p", "mode": "c"}, "--mode 'c' is not one of a, b"),
    ({"path": "p", "limit": -1}, "--limit must be at least 0, not -1"),
    ({"path": "p", "toy_epochs": None}, r"--toy_epochs needs a value \(default: 3\)"),
    ({"path": "p", "mode": "b", "toy_epochs": 6}, "--mode b takes at most 5 --toy_epochs"),
])
def test_a_bad_value_is_one_line_naming_the_flag(values, message):
    with pytest.raises(XtremeDistilError, match=f"^{message}"):
        Toy.from_flags(values)


def test_distill_settings_are_sections_of_the_original_flags_and_fail_when_built(tmp_path):
    from xtremedistil.distill.options import DistilOptions

    flags = [flag for flag, *_ in DistilOptions.flags()]
    assert len(flags) == len(set(flags))                      # one meaning per flag across sections and students
    original = {"task", "model_dir", "do_NER", "pt_teacher", "pt_teacher_checkpoint", "seq_len", "transfer_file",
                "ft_epochs", "ft_batch_size", "distil_epochs", "distil_batch_size", "distil_chunk_size",
                "teacher_layer", "word_emb_dim", "dense_act_func", "bilstm_hidden_size", "dropout_rate"}
    assert original <= set(flags)                             # run_xtreme_distil.py's names
    options = DistilOptions.from_flags({"task": "t", "model_dir": str(tmp_path), "pt_teacher_checkpoint": "c",
                                        "ft_epochs": 2, "distil_label_epochs": 0, "student": "cnn",
                                        "cnn_filters": 16, "bilstm_hidden_size": 8, "seed": 5})
    assert (options.fine_tune.epochs, options.distil.label_epochs, options.student.options.cnn_filters) == (2, None, 16)
    assert options.distil.seed == options.augment.seed == options.run.seed == 5      # one seed, shared
    assert "bilstm_hidden_size" not in options.to_flags()     # another student's option: ignored
    assert DistilOptions.from_flags(options.to_flags()) == options
    for bad, message in (({"seq_len": 2}, "--seq_len must be at least 3"),
                         ({"distil_loss": "l1"}, "--distil_loss 'l1' is not one of"),
                         ({"stages": "1"}, "stage 1 alone trains no logits"),
                         ({"student_name": "../x"}, "--student_name '../x' must be"),
                         ({"cnn_kernel_size": 0}, "--cnn_kernel_size must be at least 1"),
                         ({"augment_p_mask": 0.7, "augment_p_replace": 0.7}, "must not exceed 1"),
                         ({"ft_learning_rate": 0}, "--ft_learning_rate must be positive"),
                         ({"bogus": 1}, "unknown key")):
        with pytest.raises(XtremeDistilError, match=re.escape(message)):
            options.replace(**bad)
