"""What every exporter shares: quantization names, tolerances, the registry, and `--formats` parsing.

An exporter is one package per format (`savedmodel/`, `tflite/`, `onnx/`), each with the same files:
`config.py` declares the format (supported quantizations, and why the others are not, tolerances),
`convert.py` writes the artifact, `predictor.py` loads it back behind the `Predictor` interface.
"""
from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Callable

from xtremedistil.errors import XtremeDistilError


class Quantization(str, enum.Enum):
    FP32 = "fp32"        # float weights and activations
    FP16 = "fp16"        # float16 weights, computed in float32 where the runtime lacks fp16 kernels
    DYNAMIC = "dynamic"  # int8 weights, activations quantized on the fly (no calibration data)
    INT8 = "int8"        # TFLite full-integer: weights and activations int8, calibrated
    STATIC = "static"    # ONNX QDQ: weights and activations int8, calibrated


# What export does with an artifact that misses its tolerance: stop with exit 3, or delete it and go on.
PARITY_FAILURE_CHOICES = ("error", "drop")


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """A parity threshold: an artifact passes when every figure set here holds on dev inputs.

    `max_logit_delta` bounds max |artifact logit - Keras logit|; `min_argmax_agreement` is the
    fraction of positions where both pick the same label; `max_metric_drop` is in points
    (accuracy or entity F1 x 100) of the Keras student's dev metric.
    """

    max_logit_delta: float | None = None
    min_argmax_agreement: float | None = None
    max_metric_drop: float | None = None

    def __post_init__(self):
        if self.max_logit_delta is not None and self.max_logit_delta < 0:
            raise XtremeDistilError("max_logit_delta must be >= 0")
        if self.min_argmax_agreement is not None and not 0 <= self.min_argmax_agreement <= 1:
            raise XtremeDistilError("min_argmax_agreement must be in [0, 1]")
        if self.max_metric_drop is not None and self.max_metric_drop < 0:
            raise XtremeDistilError("max_metric_drop must be >= 0 (points)")


EXACT = Tolerance(max_logit_delta=1e-4, min_argmax_agreement=1.0)
QUANTIZED = Tolerance(max_metric_drop=1.0)


@dataclasses.dataclass(frozen=True)
class TeacherExport:
    """How a format exports a teacher (a transformer encoder with its head): the quantizations it writes for
    one, whether it writes one artifact per batch size (fixed-shape formats), the file or folder name, and the
    exporter, "module:function" with function(job: export.teacher.TeacherJob, temp: Path) -> details or None,
    which writes the artifact at `temp` (put in place and parity-checked by `export.teacher`)."""

    quantizations: tuple[Quantization, ...]
    exporter: str
    filename: str                           # "{name}.onnx"; "{name}/1" for a versioned folder
    per_batch_size: bool = False

    @property
    def export(self) -> Callable:
        return _resolve(self.exporter)


@dataclasses.dataclass(frozen=True)
class FormatConfig:
    """One export format, the whole plug-in contract: its quantizations with their tolerances and the ones it
    refuses (with why), its converter, the runtime that runs it in `bench` (and that runtime's plot marker), how
    its files are recognised, and its predictor. A format is one package `export/<name>/` whose `config.py`
    calls `register_format`; it is discovered by scanning `export/` (nothing else lists formats).

    `convert` and `predictor` are "module:attribute" strings imported on first use, so listing formats (for
    `--formats` and bench's runtimes) loads no converter or runtime library. `teacher` says how (and whether)
    it exports a teacher, for `xtremedistil export TEACHER_DIR` and bench's teacher artifacts alike.
    """

    name: str
    tolerances: dict[Quantization, Tolerance]
    unsupported: dict[str, str]
    converter: str                          # "module:function", function(ctx, quantization) -> [Artifact]
    predictor: str                          # "module:Class", Class(path, threads) -> Predictor
    runtime: str                            # bench's name for the runtime that runs these files
    recognise: Callable[[Path], Path | None]   # path -> the artifact to load (e.g. a version folder), or None
    describe: str                           # how its files look, for the "not an artifact" error
    bench_rank: int = 50                    # order of runtimes in bench reports (keras is first)
    marker: str = "s"                       # matplotlib marker in bench plots
    default: tuple[Quantization, ...] = ()
    teacher: TeacherExport | None = None    # None: this format does not export teachers

    @property
    def quantizations(self) -> tuple[Quantization, ...]:
        return tuple(self.tolerances)

    @property
    def convert(self) -> Callable:
        return _resolve(self.converter)

    def load_predictor(self, path: Path, threads: int | None = None):
        return _resolve(self.predictor)(path, threads)


def _resolve(target: str):
    import importlib

    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


EXPORTERS: dict[str, FormatConfig] = {}


def by_suffix(suffix: str) -> Callable[[Path], Path | None]:
    """A `recognise` for formats whose artifact is one file ending in `suffix` (".onnx", ".tflite")."""
    def recognise(path: Path) -> Path | None:
        return path if path.is_file() and path.suffix == suffix else None
    return recognise


def register_format(config: FormatConfig) -> FormatConfig:
    EXPORTERS[config.name] = config
    return config


def _load_exporters() -> None:
    """Imports `config` of every package under `export/`: each registers its format (light: no TF)."""
    import importlib
    import importlib.util
    import pkgutil

    import xtremedistil.export as package

    for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if module.ispkg and importlib.util.find_spec(f"{package.__name__}.{module.name}.config") is not None:
            importlib.import_module(f"{package.__name__}.{module.name}.config")


def formats() -> dict[str, FormatConfig]:
    """Every registered format, by name (discovered on first call)."""
    _load_exporters()
    return EXPORTERS


def runtimes() -> tuple[str, ...]:
    """bench's runtimes: the Keras student first, then each format's runtime."""
    return ("keras",) + tuple(f.runtime for f in sorted(formats().values(), key=lambda f: f.bench_rank))


def all_formats() -> list[str]:
    """Every `format:quantization` this build can write."""
    _load_exporters()
    return [f"{name}:{q.value}" for name, fmt in EXPORTERS.items() for q in fmt.quantizations]


@dataclasses.dataclass(frozen=True)
class ArtifactRequest:
    format: str
    quantization: Quantization

    @property
    def name(self) -> str:
        return f"{self.format}-{self.quantization.value}"

    @property
    def config(self) -> FormatConfig:
        return EXPORTERS[self.format]


def parse_formats(spec: str | None) -> list[ArtifactRequest]:
    """`savedmodel,tflite:fp16,onnx` -> requests; a bare format means all its quantizations.

    An unknown format or quantization is an error that lists the valid ones.
    """
    _load_exporters()
    if spec is None or not spec.strip():
        return [ArtifactRequest(name, q) for name, fmt in EXPORTERS.items() for q in fmt.quantizations]
    requests: list[ArtifactRequest] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, _, quant = item.partition(":")
        if name not in EXPORTERS:
            raise XtremeDistilError(
                f"--formats: unknown format '{name}'; valid: {', '.join(all_formats())}")
        fmt = EXPORTERS[name]
        if not quant:
            chosen = list(fmt.quantizations)
        elif quant in fmt.unsupported:
            raise XtremeDistilError(f"--formats: {name}:{quant} is not supported: {fmt.unsupported[quant]}")
        elif quant not in {q.value for q in fmt.quantizations}:
            raise XtremeDistilError(
                f"--formats: unknown quantization '{quant}' for {name}; valid: "
                f"{', '.join(f'{name}:{q.value}' for q in fmt.quantizations)}")
        else:
            chosen = [Quantization(quant)]
        for q in chosen:
            request = ArtifactRequest(name, q)
            if request not in requests:
                requests.append(request)
    if not requests:
        raise XtremeDistilError(f"--formats is empty; valid: {', '.join(all_formats())}")
    return requests


@dataclasses.dataclass
class Artifact:
    """One written artifact: where it is and what the converter wants recorded about it."""

    name: str
    format: str
    quantization: Quantization
    path: Path
    batch_size: int | None = None   # None: any batch size
    details: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ExportContext:
    """What a converter gets: the (possibly pruned/clustered) Keras student and the data it may need.

    `representative_ids` are int32 [n, seq_len] teacher ids from the transfer set, for calibration.
    """

    model: object                      # tf.keras.Model returning {"logits": ...}
    student_config: object             # StudentConfig
    labels: list[str]
    artifacts_dir: Path
    representative_ids: object = None  # np.ndarray | None
    tflite_batch_sizes: tuple[int, ...] = (1,)
    opset: int = 17
    model_name: str = "student"
    qat_model: object = None           # a tfmot QAT model, used for tflite:int8 when present

    def representative(self, name: str):
        """Representative ids, or a one-line error saying which artifact needed them and how to give them."""
        if self.representative_ids is None or len(self.representative_ids) == 0:
            raise XtremeDistilError(
                f"{name} needs representative data for calibration and none was found: pass "
                "--representative_file with unlabeled sentences (one per line) or keep the bundle's transfer file")
        return self.representative_ids
