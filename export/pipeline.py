"""`xtremedistil export`: bundle -> artifacts, each reloaded and checked against the Keras student."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from xtremedistil.distill import data as data_lib
from xtremedistil.distill.bundle import load_bundle
from xtremedistil.distill.files import file_crc32, path_size, read_json, write_json_atomic
from xtremedistil.distill.metrics import headline, metrics_from_logits
from xtremedistil.distill.teacher_phase import encode_split
from xtremedistil.distill.tokenization import encode_sentences
from xtremedistil.errors import XtremeDistilError
from xtremedistil.export.base import PARITY_FAILURE_CHOICES, ExportContext, Quantization, Tolerance, parse_formats
from xtremedistil.export.optimize import OptimizeOptions, optimize
from xtremedistil.export.parity import ParityError, parity_failures, parity_figures
from xtremedistil.export.predictor import load_predictor
from xtremedistil.faults import kill_point
from xtremedistil.layout import BundleLayout

logger = logging.getLogger(__name__)

ARTIFACTS_DIR = BundleLayout.ARTIFACTS
MANIFEST_FILE = BundleLayout.MANIFEST
LIBRARIES = ("tensorflow", "tf-keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert",
             "tensorflow-model-optimization", "transformers", "numpy")


# Export settings that cannot change an artifact that passes (a recipe's export stamp leaves them out).
NOT_IN_ARTIFACTS = ("on_parity_failure", "threads")


@dataclasses.dataclass
class ExportOptions:
    bundle: str
    formats: str | None = None
    task: str | None = None                  # task folder for dev parity; default: the bundle's
    representative_file: str | None = None   # unlabeled sentences; default: the bundle's transfer file
    calibration_size: int = 512
    tflite_batch_sizes: str = "1"
    opset: int = 17
    max_metric_drop: float | None = None     # points; overrides the quantized formats' default
    max_logit_delta: float | None = None     # overrides the fp32 formats' default
    prune: float | None = None
    cluster: int | None = None
    optimize_steps: int = 200
    threads: int | None = None
    on_parity_failure: str = "error"         # "drop": delete a failing artifact, record why, keep the others

    def __post_init__(self):
        if not 17 <= self.opset <= 21:
            raise XtremeDistilError(f"--opset {self.opset}: use 17 to 21 (tf2onnx 1.17 and ONNX Runtime both support them)")
        if self.on_parity_failure not in PARITY_FAILURE_CHOICES:
            raise XtremeDistilError(f"--on_parity_failure '{self.on_parity_failure}' is not one of "
                                    f"{', '.join(PARITY_FAILURE_CHOICES)}")

    def batch_sizes(self) -> tuple[int, ...]:
        try:
            sizes = tuple(int(b) for b in str(self.tflite_batch_sizes).split(",") if b.strip())
        except ValueError:
            sizes = ()
        if not sizes or min(sizes) < 1:
            raise XtremeDistilError(
                f"--tflite_batch_sizes '{self.tflite_batch_sizes}' must be positive integers, e.g. 1,32")
        return sizes


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _task_folder(options: ExportOptions, bundle) -> Path:
    recorded = bundle.config.get("options", {}).get("task")
    chosen = options.task or recorded
    if not chosen:
        raise XtremeDistilError(f"{bundle.folder}: the bundle does not record its task folder; pass --task")
    folder = Path(chosen)
    if not (folder / "dev.tsv").exists():
        hint = "pass --task with the task folder it was distilled on" if not options.task else "fix --task"
        raise XtremeDistilError(f"{folder / 'dev.tsv'}: not found; parity is checked on dev inputs: {hint}")
    return folder


def _representative_path(options: ExportOptions, bundle, task: data_lib.Task) -> Path | None:
    if options.representative_file:
        path = Path(options.representative_file)
        if not path.is_file():
            raise XtremeDistilError(f"--representative_file {path}: no such file")
        return path
    recorded = bundle.config.get("options", {}).get("transfer_file")
    path = data_lib.resolve_transfer_file(task.path, recorded) if recorded else task.transfer_path
    return path if path is not None and Path(path).is_file() else None


def read_representative(path: Path | None, limit: int, explicit: bool) -> list[str]:
    """Up to `limit` non-empty lines; an explicitly given file that yields none is an error."""
    if path is None:
        return []
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in itertools.islice((l for l in handle if l.strip()), limit)]
    except UnicodeDecodeError as err:
        raise XtremeDistilError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    if not lines and explicit:
        raise XtremeDistilError(f"--representative_file {path}: empty; give unlabeled sentences, one per line")
    return lines


def _tolerance(request, options: ExportOptions) -> Tolerance:
    declared = request.config.tolerances[request.quantization]
    if request.quantization is Quantization.FP32:
        if options.max_logit_delta is not None:
            return dataclasses.replace(declared, max_logit_delta=options.max_logit_delta)
        return declared
    if options.max_metric_drop is not None:
        return dataclasses.replace(declared, max_metric_drop=options.max_metric_drop)
    return declared


def run_export(options: ExportOptions) -> dict:
    """Writes every requested artifact, checks its parity, and records it in BUNDLE/manifest.json.

    Raises ParityError (after the manifest is written, so the figures survive) when any artifact
    misses its tolerance; with `on_parity_failure="drop"` such an artifact is deleted instead, its manifest
    row kept (passed: false, dropped: true, the figures and why) so nothing benches or serves it, and only
    an export where every artifact failed raises.
    """
    requests = parse_formats(options.formats)
    batch_sizes = options.batch_sizes()
    optimize_options = OptimizeOptions(prune=options.prune, cluster=options.cluster, steps=options.optimize_steps)
    if options.calibration_size < 1:
        raise XtremeDistilError("--calibration_size must be at least 1")
    bundle = load_bundle(options.bundle)
    task = data_lib.load_task(_task_folder(options, bundle), bundle.tagging)
    dev = encode_split(bundle.tokenizer, task, "dev", bundle.seq_len)
    representative_path = _representative_path(options, bundle, task)
    sentences = read_representative(representative_path, options.calibration_size, bool(options.representative_file))
    representative = encode_sentences(bundle.tokenizer, sentences, bundle.seq_len, bundle.tagging).input_ids if sentences else None

    started = time.time()
    model, optimized = optimize(bundle.model, bundle.student_config, bundle.folder, representative, optimize_options)
    positions = dev.labels != -100 if bundle.tagging else None

    def dev_metric(logits):
        return headline(metrics_from_logits(logits, dev, task.splits["dev"], bundle.labels, bundle.tagging,
                                            bundle.decoding))

    unoptimized_metric = None
    if optimized:
        unoptimized_metric = dev_metric(bundle.predict_logits(dev.input_ids))
        bundle.model, bundle._forward = model, None
    reference = bundle.predict_logits(dev.input_ids)
    reference_metric = dev_metric(reference)
    manifest_path = bundle.folder / MANIFEST_FILE
    manifest = {
        "bundle": str(bundle.folder.resolve()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "task": {"kind": "tagging" if bundle.tagging else "classification", "dev_examples": len(dev),
                 "folder": str(task.path.resolve()), "metric": "f1" if bundle.tagging else "accuracy"},
        "representative": {"file": str(representative_path) if representative_path else None,
                           "sentences": len(sentences)},
        "reference": {"runtime": "keras", "dev_metric": reference_metric,
                      "parameters": int(bundle.model.count_params())},
        "artifacts": [],
    }
    if optimized:
        manifest["optimization"] = {**optimized, "unoptimized_dev_metric": unoptimized_metric}
    previous = read_json(manifest_path)["artifacts"] if manifest_path.exists() else []
    keep = {row["name"]: row for row in previous}
    artifacts_dir = bundle.folder / ARTIFACTS_DIR
    artifacts_dir.mkdir(exist_ok=True)
    for stale in [*artifacts_dir.glob(".tmp-*"), *artifacts_dir.glob(".*.tmp")]:   # left by a killed export
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    ctx = ExportContext(model=model, student_config=bundle.student_config, labels=bundle.labels,
                        artifacts_dir=artifacts_dir, representative_ids=representative,
                        tflite_batch_sizes=batch_sizes, opset=options.opset, model_name="student")
    failures, produced = [], 0
    from tqdm.auto import tqdm

    for request in tqdm(requests, desc="export", unit="format"):
        t0 = time.time()
        tolerance = _tolerance(request, options)
        for artifact in request.config.convert(ctx, request.quantization):
            convert_seconds = time.time() - t0
            kill_point("export:artifact")
            predictor = load_predictor(artifact.path, options.threads)
            logits = predictor.predict(dev.input_ids)
            figures = parity_figures(reference, logits, reference_metric, dev_metric(logits), positions)
            problems = parity_failures(figures, tolerance)
            row = {
                "name": artifact.name, "format": artifact.format, "quantization": artifact.quantization.value,
                "path": str(artifact.path.relative_to(bundle.folder)), "size_bytes": path_size(artifact.path),
                "crc32": file_crc32(artifact.path) if artifact.path.is_file() else None,
                "batch_size": artifact.batch_size, "parity": figures, "tolerance": dataclasses.asdict(tolerance),
                "passed": not problems, "failures": problems, "seconds": round(convert_seconds, 2),
                "details": artifact.details,
            }
            produced += 1
            drop = bool(problems) and options.on_parity_failure == "drop"
            if drop:
                row["dropped"] = True
            keep[artifact.name] = row
            manifest["artifacts"] = list(keep.values())
            write_json_atomic(manifest_path, manifest)
            if drop:     # recorded first: a kill between the two leaves a failed row, never a usable-looking file
                shutil.rmtree(artifact.path) if artifact.path.is_dir() else artifact.path.unlink(missing_ok=True)
                logger.warning("%s: %s; dropped (--on_parity_failure drop): deleted, its figures kept in %s",
                               artifact.name, "; ".join(problems), manifest_path)
            else:
                logger.info("%s: %s", artifact.name, "parity ok" if not problems else "; ".join(problems))
            if problems:
                failures.append(f"{artifact.name}: {'; '.join(problems)}")
            t0 = time.time()
    manifest["seconds"] = round(time.time() - started, 1)
    write_json_atomic(manifest_path, manifest)
    if failures and (options.on_parity_failure == "error" or len(failures) == produced):
        raise ParityError("parity check failed (figures in " + str(manifest_path) + "): " + " | ".join(failures))
    return manifest


def format_manifest(manifest: dict) -> str:
    metric = manifest["task"]["metric"]
    lines = [f"reference Keras student: dev {metric} {manifest['reference']['dev_metric']:.4f}",
             f"{'artifact':<22}{'size':>12}{'max|Δ|':>11}{'agree':>9}{'Δ' + metric:>11}  status"]
    for row in manifest["artifacts"]:
        p = row["parity"]
        lines.append(f"{row['name']:<22}{row['size_bytes'] / 1e6:>10.2f}MB{p['max_abs_logit_delta']:>11.2e}"
                     f"{p['argmax_agreement']:>9.2%}{p['metric_delta_points']:>+10.2f}p  "
                     f"{'ok' if row['passed'] else ('DROPPED: ' if row.get('dropped') else 'FAILED: ') + '; '.join(row['failures'])}")
    return "\n".join(lines)
