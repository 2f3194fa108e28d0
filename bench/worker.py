"""One measurement in its own process: `python -m xtremedistil.bench.worker measure|prepare SPEC.json`.

The harness starts one process per (artifact, thread count) so that one runtime's threads, memory
and allocator state never distort another's, and so that peak RSS belongs to one artifact only.
The result is the last line of stdout, as JSON. Only the runtime being measured is imported:
a LiteRT or ONNX Runtime measurement never loads TensorFlow.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

import xtremedistil  # noqa: F401
from xtremedistil.distill.memory import peak_rss_mb
from xtremedistil.errors import XtremeDistilError


def _predictor(spec: dict):
    from xtremedistil.export.predictor import load_predictor

    threads = spec["threads"]
    if spec["role"] == "teacher" and spec["runtime"] == "keras":
        from xtremedistil.bench.teachers import TeacherPredictor, TeacherSource

        return TeacherPredictor(TeacherSource(**spec["teacher"]), len(spec["labels"]), spec["tagging"], threads)
    return load_predictor(spec["path"], threads)


def evaluate(predictor, spec: dict) -> dict:
    """Metrics of `predictor` on the task's test split (per language where the data has languages)."""
    from xtremedistil.distill import data as data_lib
    from xtremedistil.distill.decoding import recorded_decoding
    from xtremedistil.distill.metrics import metrics_from_logits
    from xtremedistil.distill.tokenization import encode_examples, load_tokenizer

    task = data_lib.load_task(spec["task"], spec["tagging"])
    examples = task.splits["test"][:spec.get("eval_limit") or None]
    encoded = encode_examples(load_tokenizer(spec["tokenizer"]), examples, spec["labels"], spec["seq_len"],
                              spec["tagging"], "test")
    logits = predictor.predict(encoded.input_ids, batch_size=64)
    return metrics_from_logits(logits, encoded, examples, spec["labels"], spec["tagging"], recorded_decoding(spec))


def measure(spec: dict) -> dict:
    from xtremedistil.bench.latency import time_predictor

    started = time.perf_counter()
    predictor = _predictor(spec)
    load_seconds = time.perf_counter() - started
    ids = np.load(spec["inputs"])
    latency = [time_predictor(predictor, ids, b, spec["queries"], spec["warmup"], spec["repeats"])
               for b in spec["batch_sizes"]]
    result = {"latency": latency, "peak_rss_mb": peak_rss_mb(), "load_seconds": load_seconds,
              "tensorflow_loaded": "tensorflow" in sys.modules}
    if spec.get("evaluate"):
        started = time.perf_counter()
        result["metrics"] = evaluate(predictor, spec)
        result["eval_seconds"] = time.perf_counter() - started
    return result


def prepare(spec: dict) -> dict:
    from xtremedistil.bench.teachers import TeacherSource, prepare_teacher

    manifest = prepare_teacher(TeacherSource(**spec["teacher"]), len(spec["labels"]), spec["tagging"],
                               Path(spec["folder"]), spec["runtimes"], spec["batch_sizes"], spec["seq_len"],
                               log=lambda text: print(text, file=sys.stderr, flush=True), stamp=spec.get("stamp"))
    return {"manifest": manifest, "peak_rss_mb": peak_rss_mb()}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("measure", "prepare"):
        print("usage: python -m xtremedistil.bench.worker measure|prepare SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    try:
        result = measure(spec) if argv[0] == "measure" else prepare(spec)
    except XtremeDistilError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
