"""TF function -> ONNX with tf2onnx, in bounded memory; ONNX Runtime int8 quantization.

Why not `tf2onnx.convert.from_function`: measured here on a BERT-base-sized teacher (12 layers,
768 wide) it peaked at 10 GB RSS even with ONNX optimizers off, and with them on it copies the whole
graph (weights included) once per optimizer pass (`copy.deepcopy` under `catch_errors`). The
freezing step is the other culprit: `convert_variables_to_constants_v2` materialises every weight
several times as protobuf constants, then Grappler folds them again. The path below instead:

1. freezes with tf2onnx's own large-model freezer (no concrete-function rebuild, no Grappler pass);
2. strips the weight bytes out of the GraphDef (`compress_graph_def`) so importing it into a
   `tf.Graph` and shape inference never copy them; tf2onnx builds initializers from those bytes;
3. runs tf2onnx's ONNX optimizers in place (`catch_errors=False`: no deep copies);
4. writes one self-contained .onnx (weights embedded; models over 2 GB need external data, which
   no model this project exports reaches).

ONNX Runtime still applies its own graph optimizations (fusing attention, GELU, LayerNorm) at load.
"""
from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

import numpy as np

import xtremedistil  # noqa: F401
import tensorflow as tf
from xtremedistil.distill.files import written_in_place

logger = logging.getLogger(__name__)

OPSET = 17
# Ops ONNX Runtime cannot run or tf2onnx emits only as a placeholder; none may reach a file.
FORBIDDEN_OPS = ("Erfc", "TFL_", "Unsupported")


def convert_function(function: tf.types.experimental.GenericFunction, input_signature, path: str | Path,
                     opset: int = OPSET, optimize: bool = True):
    """Converts a `tf.function` (input_signature given) to an ONNX file at `path`; returns the ModelProto.

    Output tensor names follow the function's structured outputs (a dict gives its keys).
    """
    import onnx
    from tf2onnx import optimizer, tf_loader
    from tf2onnx.convert import tensor_names_from_structed
    from tf2onnx.tf_utils import compress_graph_def
    from tf2onnx.tfonnx import process_tf_graph

    concrete = function.get_concrete_function(*input_signature)
    input_names = [t.name for t in concrete.inputs if t.dtype != tf.dtypes.resource]
    output_names = [t.name for t in concrete.outputs if t.dtype != tf.dtypes.resource]
    renames = tensor_names_from_structed(concrete, input_names, output_names)
    with tf.device("/cpu:0"):
        graph_def = tf_loader.convert_variables_to_constants_large_model(concrete)
        del concrete
        gc.collect()
        weights = compress_graph_def(graph_def)
        with tf.Graph().as_default() as tf_graph:
            tf.import_graph_def(graph_def, name="")
            del graph_def
            graph = process_tf_graph(tf_graph, continue_on_error=False, opset=opset, input_names=input_names,
                                     output_names=output_names, const_node_values=weights,
                                     tensors_to_rename=renames)
        del weights, tf_graph
        gc.collect()
        if optimize:
            graph = optimizer.optimize_graph(graph, catch_errors=False)
        model = graph.make_model(f"xtremedistil {function.__name__ if hasattr(function, '__name__') else ''}".strip())
        del graph
        gc.collect()
    check_ops(model, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_in_place(path, "file:onnx") as temp:
        onnx.save_model(model, str(temp))
    return model


def op_counts(model) -> dict[str, int]:
    """Node types of an ONNX model (the main graph and any subgraphs), with counts."""
    counts: dict[str, int] = {}

    def walk(graph):
        for node in graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            for attribute in node.attribute:
                if attribute.g is not None and attribute.g.node:
                    walk(attribute.g)
    walk(model.graph)
    return dict(sorted(counts.items()))


def check_ops(model, where: str) -> None:
    """Fails when an op ONNX Runtime cannot run (e.g. `Erfc` from exact GELU) reached the graph."""
    from xtremedistil.errors import XtremeDistilError

    bad = sorted(op for op in op_counts(model) if op.startswith(FORBIDDEN_OPS))
    if bad:
        raise XtremeDistilError(
            f"{where}: ONNX graph contains unsupported ops {', '.join(bad)}; use tanh-approximate GELU "
            "(hidden_act gelu_new / dense_act_func gelu_tanh)")


class _QuietRoot:
    """ONNX Runtime's quantizer logs a generic pre-processing hint on the root logger every call."""

    def __enter__(self):
        self.level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)

    def __exit__(self, *exc):
        logging.getLogger().setLevel(self.level)


def quantize_dynamic(source: Path, target: Path) -> None:
    """int8 weights, activations quantized at run time: no calibration data needed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic as ort_quantize_dynamic

    with _QuietRoot(), written_in_place(target, "file:onnx-int8") as temp:
        ort_quantize_dynamic(str(source), str(temp), weight_type=QuantType.QInt8, per_channel=False)


class _Calibration:
    """ONNX Runtime calibration reader over representative input ids."""

    def __init__(self, input_name: str, input_ids: np.ndarray, batch_size: int = 16):
        self.batches = iter([{input_name: input_ids[i:i + batch_size]} for i in range(0, len(input_ids), batch_size)])

    def get_next(self):
        return next(self.batches, None)


def quantize_static(source: Path, target: Path, input_name: str, representative_ids: np.ndarray,
                    exclude_output_node: bool = True) -> dict:
    """QDQ int8 (weights per channel, activations calibrated on representative ids with MinMax)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static as ort_static

    model = onnx.load(str(source))
    op_types = sorted({n.op_type for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Gather", "Conv")})
    excluded = []
    if exclude_output_node:
        # The last MatMul/Gemm produces the logits: keep it float so the scores stay calibrated.
        producers = {out: n for n in model.graph.node for out in n.output}
        frontier = [o.name for o in model.graph.output]
        seen = set()
        while frontier:
            node = producers.get(frontier.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in ("MatMul", "Gemm"):
                excluded.append(node.name)
                continue
            frontier.extend(node.input)
    temp = target.with_name(f".{target.name}.tmp")
    with _QuietRoot():
        ort_static(str(source), str(temp), _Calibration(input_name, representative_ids),
                   quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types, per_channel=True,
                   activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                   nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
                   extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    os.replace(temp, target)
    return {"quantized_op_types": op_types, "excluded_nodes": excluded,
            "calibration_examples": int(len(representative_ids))}


def convert(ctx, quantization):
    """Writes `artifacts/onnx-<quantization>.onnx` for the student."""
    import tempfile

    from xtremedistil.export.base import Artifact, Quantization
    from xtremedistil.export.inference import logits_function

    target = ctx.artifacts_dir / f"onnx-{quantization.value}.onnx"
    function = logits_function(ctx.model, seq_len=ctx.student_config.seq_len)
    if quantization is Quantization.FP32:
        model = convert_function(function, [], target, opset=ctx.opset)
        return [Artifact(target.stem, "onnx", quantization, target,
                         details={"opset": ctx.opset, "op_counts": op_counts(model)})]
    with tempfile.TemporaryDirectory(dir=ctx.artifacts_dir, prefix=".tmp-") as scratch:
        base = Path(scratch) / "fp32.onnx"
        convert_function(function, [], base, opset=ctx.opset)
        if quantization is Quantization.DYNAMIC:
            quantize_dynamic(base, target)
            details = {"weights": "int8 per tensor", "activations": "quantized at run time"}
        else:
            details = quantize_static(base, target, "input_ids", ctx.representative(f"onnx:{quantization.value}"))
    import onnx

    details.update({"opset": ctx.opset, "op_counts": op_counts(onnx.load(str(target)))})
    return [Artifact(target.stem, "onnx", quantization, target, details=details)]
