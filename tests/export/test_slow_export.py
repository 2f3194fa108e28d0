"""Slow: the BERT-base-sized teacher converts to ONNX within 6 GB peak RSS (random weights: memory
does not depend on weight values)."""
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, sys, tempfile
import xtremedistil, tensorflow as tf
from transformers import BertConfig, TFBertModel
from xtremedistil.distill.teacher import TeacherModel
from xtremedistil.export.base import Quantization
from xtremedistil.export.teacher import export_teacher, teacher_plan
vocab = int(sys.argv[1])
encoder = TFBertModel(BertConfig(vocab_size=vocab, hidden_act="gelu_new"))   # 12 layers, 768 wide
model = TeacherModel(encoder, num_labels=2, tagging=False)
model({"input_ids": tf.ones((1, 8), tf.int32), "attention_mask": tf.ones((1, 8), tf.int32)})
from xtremedistil.distill.memory import peak_rss_mb   # VmHWM: ru_maxrss would carry pytest's peak over exec
before = peak_rss_mb() * 2**20
with tempfile.TemporaryDirectory() as folder:
    rows = list(export_teacher(model, 0, vocab, folder, 32, teacher_plan([1], {"onnx": [Quantization.FP32]}),
                               log=lambda _: None))
peak = peak_rss_mb() * 2**20
print(json.dumps({"before": before, "peak": peak, "row": rows[0]}))
"""


@pytest.mark.parametrize("vocab", [30522, 119547], ids=["bert-base", "mbert-shape"])
def test_bert_base_sized_teacher_exports_to_onnx_within_6gb(vocab):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(vocab)], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"vocab {vocab}: peak RSS {result['peak'] / 1e9:.2f} GB (model built: {result['before'] / 1e9:.2f} GB), "
          f"size {result['row']['size_bytes'] / 1e6:.0f} MB, max |Δlogit| {result['row']['parity']['max_abs_logit_delta']:.2e}")
    assert result["peak"] < 6e9
    assert result["row"]["parity"]["max_abs_logit_delta"] < 1e-3
