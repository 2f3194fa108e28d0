"""The run folder (MODEL_DIR), named in one place.

    MODEL_DIR/
      teacher/              fine-tuned teacher (HF encoder folder, head, spec, metrics)
      teacher-training/     per-epoch checkpoints while the teacher fine-tunes (removed when it is saved)
      augmented/            augmented transfer files, one per settings hash
      cache/                teacher outputs, one folder per (transfer file, settings) hash
      student[-NAME]/       sub-stage checkpoints and state.json of one student
      bundle[-NAME]/        the distilled student (export and bench read it)

Several students distilled from one teacher and one cache share MODEL_DIR and differ by NAME
(`--student_name`); the default student has no suffix.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from xtremedistil.errors import XtremeDistilError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclasses.dataclass(frozen=True)
class RunLayout:
    model_dir: Path
    student_name: str = ""

    def __post_init__(self):
        object.__setattr__(self, "model_dir", Path(self.model_dir))
        if self.student_name and not NAME_PATTERN.match(self.student_name):
            raise XtremeDistilError(f"--student_name '{self.student_name}' must be letters, digits, '.', '_' or '-'")

    def _named(self, base: str) -> Path:
        return self.model_dir / (f"{base}-{self.student_name}" if self.student_name else base)

    @property
    def teacher(self) -> Path:
        return self.model_dir / "teacher"

    @property
    def teacher_training(self) -> Path:
        return self.model_dir / "teacher-training"

    @property
    def augmented(self) -> Path:
        return self.model_dir / "augmented"

    @property
    def cache(self) -> Path:
        return self.model_dir / "cache"

    @property
    def student(self) -> Path:
        return self._named("student")

    @property
    def bundle(self) -> Path:
        return self._named("bundle")


@dataclasses.dataclass(frozen=True)
class BundleLayout:
    """The files of a student bundle (`bundle[-NAME]/`), named only here (light: no TensorFlow import).

        config.json          task kind, labels, seq_len, student config, teacher checkpoint and layer
        tokenizer/           the teacher's tokenizer files
        student.weights.h5   Keras weights, id-remap table included
        id_remap.npy         teacher id -> student row, for inspection
        metrics.json         teacher and student metrics
        manifest.json        what `export` wrote (artifacts with size, CRC-32, parity), read by bench and serving
        artifacts/           the exported SavedModel / TFLite / ONNX files
    """

    CONFIG = "config.json"
    TOKENIZER = "tokenizer"
    WEIGHTS = "student.weights.h5"
    ID_REMAP = "id_remap.npy"
    METRICS = "metrics.json"
    MANIFEST = "manifest.json"
    ARTIFACTS = "artifacts"

    folder: Path

    def __post_init__(self):
        object.__setattr__(self, "folder", Path(self.folder))

    config = property(lambda self: self.folder / self.CONFIG)
    tokenizer = property(lambda self: self.folder / self.TOKENIZER)
    weights = property(lambda self: self.folder / self.WEIGHTS)
    id_remap = property(lambda self: self.folder / self.ID_REMAP)
    metrics = property(lambda self: self.folder / self.METRICS)
    manifest = property(lambda self: self.folder / self.MANIFEST)
    artifacts = property(lambda self: self.folder / self.ARTIFACTS)

    def is_bundle(self) -> bool:
        return self.folder.is_dir() and self.config.exists() and self.weights.exists()


# The progress record of a phase that resumes: the teacher's fine-tuning (`teacher-training/`) and a student's
# stages (`student[-NAME]/`).
STATE_FILE = "state.json"

# The fine-tuned teacher folder (`teacher/`): an HF encoder folder, the head's weights, its spec and metrics.
TEACHER_ENCODER_DIR = "encoder"
TEACHER_HEAD_FILE = "head.npz"
TEACHER_SPEC_FILE = "teacher.json"
TEACHER_METRICS_FILE = "metrics.json"
