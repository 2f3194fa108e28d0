"""One interface over every runtime: `load_predictor(path).predict(input_ids) -> logits`.

`path` may be a bundle folder (the Keras student), a SavedModel folder (`…/NAME/1` or `…/NAME`),
a `.tflite` file (run with `ai-edge-litert`) or a `.onnx` file (run with ONNX Runtime). Inputs are
int32 teacher token ids `[n, seq_len]`; outputs float32 logits `[n, labels]` or `[n, seq_len, labels]`.
Artifacts compiled for a static batch size are fed in slices of that size, the last one padded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from xtremedistil.errors import XtremeDistilError


class Predictor:
    """Base class: subclasses implement `_run` on one batch (of `batch_size` rows when that is set)."""

    format = "?"
    batch_size: int | None = None   # static batch size of the artifact, None for any

    def __init__(self, path: Path):
        self.path = Path(path)

    def _run(self, input_ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, input_ids, batch_size: int = 64) -> np.ndarray:
        """Logits for `input_ids` ([n, seq_len] int), computed `batch_size` rows at a time."""
        input_ids = np.ascontiguousarray(input_ids, dtype=np.int32)
        if input_ids.ndim != 2:
            raise XtremeDistilError(f"input_ids must be [batch, seq_len], got shape {input_ids.shape}")
        step = self.batch_size or batch_size
        outputs = []
        for start in range(0, len(input_ids), step):
            chunk = input_ids[start:start + step]
            rows = len(chunk)
            if self.batch_size and rows < self.batch_size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - rows, axis=0)])
            outputs.append(np.asarray(self._run(chunk), dtype=np.float32)[:rows])
        if not outputs:
            raise XtremeDistilError("predict got no input rows")
        return np.concatenate(outputs)

    def __repr__(self):
        return f"{type(self).__name__}({self.path})"


def set_tf_threads(threads: int) -> None:
    """Caps TensorFlow's intra-op threads (only possible before TensorFlow runs its first op)."""
    import xtremedistil  # noqa: F401
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already initialised in this process: the first setting stays


class KerasPredictor(Predictor):
    """The Keras student of a bundle: the reference every artifact is compared with."""

    format = "keras"

    def __init__(self, path: Path, threads: int | None = None):
        from xtremedistil.distill.bundle import load_bundle

        super().__init__(path)
        if threads:
            set_tf_threads(threads)
        self.bundle = load_bundle(path)

    def _run(self, input_ids: np.ndarray) -> np.ndarray:
        return self.bundle.predict_logits(input_ids, batch_size=len(input_ids))


def load_predictor(path: str | Path, threads: int | None = None) -> Predictor:
    """The right runtime for `path` (see the module docstring); `threads` caps intra-op threads."""
    path = Path(path)
    if not path.exists():
        raise XtremeDistilError(f"{path}: no such file or folder")
    try:
        return _load_predictor(path, threads)
    except XtremeDistilError:
        raise
    except Exception as err:  # noqa: BLE001 - a runtime's own parse error: one line naming the file
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise XtremeDistilError(f"{path}: cannot be loaded ({reason}); it is damaged or cut off: export it again "
                                "with `xtremedistil export BUNDLE`") from None


def _load_predictor(path: Path, threads: int | None) -> Predictor:
    from xtremedistil.export.base import formats
    from xtremedistil.layout import BundleLayout

    if BundleLayout(path).is_bundle():
        return KerasPredictor(path, threads)
    for fmt in formats().values():
        artifact = fmt.recognise(path)
        if artifact is not None:
            return fmt.load_predictor(artifact, threads)
    kinds = ", ".join(fmt.describe for fmt in formats().values())
    raise XtremeDistilError(
        f"{path}: not a bundle or an exported artifact ({kinds}); pass a bundle folder or a file "
        "listed in its manifest.json")
