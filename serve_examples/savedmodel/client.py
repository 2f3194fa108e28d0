"""A Python client of the student's SavedModel signature `serving_default(input_ids) -> logits`.

    # in-process, through TensorFlow (no server):
    python serve_examples/savedmodel/client.py runs/demo/bundle "the storm brought heavy rain ."
    # against TensorFlow Serving's REST API (see README.md in this folder for starting it):
    python serve_examples/savedmodel/client.py runs/demo/bundle --url http://localhost:8501/v1/models/student \
        "the storm brought heavy rain ."

Either way the text is tokenized here with the bundle's tokenizer (TF Serving only sees int32 ids),
and the logits become labels / entities through the same pipeline the ONNX server and the LiteRT
script use (`xtremedistil.export.serving`). Prints one JSON line per text.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

import numpy as np

from xtremedistil.errors import XtremeDistilError
from xtremedistil.export.predictor import Predictor
from xtremedistil.export.serving import TextPipeline


class ServingPredictor(Predictor):
    """Logits from TensorFlow Serving's REST predict API (row format, signature serving_default)."""

    format = "tf-serving"

    def __init__(self, url: str, timeout: float = 30.0):
        super().__init__(url)
        self.url = url.rstrip("/") + ":predict"
        self.timeout = timeout

    def _run(self, input_ids: np.ndarray) -> np.ndarray:
        body = json.dumps({"signature_name": "serving_default", "instances": input_ids.tolist()}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return np.asarray(json.loads(response.read())["predictions"], dtype=np.float32)
        except (urllib.error.URLError, OSError, KeyError, ValueError) as err:
            raise XtremeDistilError(f"{self.url}: TensorFlow Serving did not answer: {err}") from err


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", metavar="BUNDLE", help="student bundle exported with `xtremedistil export`")
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="texts to label")
    parser.add_argument("--url", help="TF Serving model URL, e.g. http://localhost:8501/v1/models/student "
                                      "(default: load the SavedModel in this process)")
    args = parser.parse_args(argv)
    try:
        predictor = ServingPredictor(args.url) if args.url else None
        pipeline = TextPipeline(args.bundle, formats=("savedmodel",), predictor=predictor)
        for text, result in zip(args.texts, pipeline.predict(args.texts)):
            print(json.dumps({"text": text, **result}, ensure_ascii=False))
    except XtremeDistilError as err:
        print(f"client: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
