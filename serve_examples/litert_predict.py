"""The edge path: predict with a TFLite artifact through ai-edge-litert, without TensorFlow.

    python serve_examples/litert_predict.py runs/demo/bundle < sentences.txt
    python serve_examples/litert_predict.py runs/demo/bundle --input sentences.txt --artifact tflite-int8-b1

One JSON line per input line, in order: {"line": 1, "text": "...", "label": ..., "score": ...}
(classification) or {"line": 1, "text": "...", "tags": [...], "entities": [...]} (tagging). A line that
is empty, too long or not valid UTF-8 gives {"line": N, "error": "..."} and the others still run.
Only the tokenizer, NumPy and the LiteRT interpreter are imported.
"""
from __future__ import annotations

import argparse
import json
import sys

from xtremedistil.errors import XtremeDistilError
from xtremedistil.export.serving import RequestError, TextPipeline, validate_texts


def _lines(stream):
    for number, raw in enumerate(stream, 1):
        raw = raw.rstrip(b"\r\n")
        try:
            yield number, raw.decode("utf-8"), None
        except UnicodeDecodeError as err:
            yield number, None, f"not valid UTF-8 (byte {err.start})"


def run(pipeline: TextPipeline, stream, out, batch_size: int) -> int:
    """Writes one JSON line per input line; returns how many lines failed."""
    failed, pending = 0, []

    def flush():
        if not pending:
            return
        results = pipeline.predict([text for _, text in pending], batch_size, validate=False)
        for (number, text), result in zip(pending, results):
            out.write(json.dumps({"line": number, "text": text, **result}, ensure_ascii=False) + "\n")
        pending.clear()

    for number, text, problem in _lines(stream):
        if problem is None:
            try:
                validate_texts([text], pipeline.limits)
            except RequestError as err:
                problem = str(err).replace("texts[0]", "the line")
        if problem is not None:
            flush()   # keep the output in input order
            out.write(json.dumps({"line": number, "error": problem}) + "\n")
            failed += 1
            continue
        pending.append((number, text))
        if len(pending) >= batch_size:
            flush()
    flush()
    out.flush()
    return failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", metavar="BUNDLE", help="student bundle exported with `xtremedistil export`")
    parser.add_argument("--artifact", help="TFLite artifact name from manifest.json (default: the int8 one)")
    parser.add_argument("--input", help="file with one text per line (default: standard input)")
    parser.add_argument("--batch-size", type=int, default=32, help="lines per interpreter call (default: 32)")
    parser.add_argument("--threads", type=int, default=None, help="LiteRT threads (default: LiteRT's)")
    args = parser.parse_args(argv)
    try:
        pipeline = TextPipeline(args.bundle, args.artifact, formats=("tflite",), threads=args.threads)
        stream = open(args.input, "rb") if args.input else sys.stdin.buffer
    except (XtremeDistilError, OSError) as err:
        print(f"litert_predict: error: {err}", file=sys.stderr)
        return 2
    with stream:
        failed = run(pipeline, stream, sys.stdout, max(1, args.batch_size))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
