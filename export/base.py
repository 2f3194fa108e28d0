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
class FormatConfig:
    """One export format: its quantizations with their tolerances, and the ones it refuses, with why."""

    name: str
    tolerances: dict[Quantization, Tolerance]
    unsupported: dict[str, str]
    convert: Callable
    default: tuple[Quantization, ...] = ()

    @property
    def quantizations(self) -> tuple[Quantization, ...]:
        return tuple(self.tolerances)


EXPORTERS: dict[str, FormatConfig] = {}


def register_format(config: FormatConfig) -> FormatConfig:
    EXPORTERS[config.name] = config
    return config


def _load_exporters() -> None:
    # Importing each package registers it; kept lazy so `base` has no heavy imports.
    from xtremedistil.export.onnx import config as _onnx  # noqa: F401
    from xtremedistil.export.savedmodel import config as _savedmodel  # noqa: F401
    from xtremedistil.export.tflite import config as _tflite  # noqa: F401


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
