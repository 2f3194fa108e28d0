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
