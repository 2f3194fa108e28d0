"""Scale-out: strategies, global batches split over replicas, sharded teacher scoring, and a real
two-worker `MultiWorkerMirroredStrategy` run on 127.0.0.1 (slow: separate processes)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import TAGGING_LABELS, TAGGING_ROWS, write_task
from helpers import SENTENCES, CountingTeacher, build_small_cache as build
from xtremedistil.cli import main
from xtremedistil.distill import load_bundle
from xtremedistil.distill.cache import build_cache
from xtremedistil.distill.cluster import _worker_from_tf_config, make_cluster
from xtremedistil.distill.losses import weighted_sum
from xtremedistil.distill.stages import LABELS, LOGITS, WEIGHT, replica_batches
from xtremedistil.errors import XtremeDistilError

ROOT = Path(__file__).resolve().parents[2]


# --- global batches over replicas -------------------------------------------------------------

def _batches(rng, n_rows=10, batch=4, tagging=True):
    ids = rng.integers(0, 50, (n_rows, 6)).astype(np.int32)
    logits = rng.normal(size=(n_rows, 6, 3)).astype(np.float32) if tagging else rng.normal(size=(n_rows, 3)).astype(np.float32)
    labels = rng.integers(-1, 3, (n_rows, 6)) if tagging else rng.integers(0, 3, n_rows)
    labels = np.where(labels < 0, -100, labels).astype(np.int32)
    weight = (labels != -100).astype(np.float32) if tagging else np.ones(n_rows, np.float32)
    for start in range(0, n_rows, batch):
        yield {"input_ids": ids[start:start + batch], LOGITS: logits[start:start + batch],
               LABELS: labels[start:start + batch], WEIGHT: weight[start:start + batch]}


@pytest.mark.parametrize("tagging", [True, False])
@pytest.mark.parametrize("target,loss,temperature", [
    (LOGITS, "mse", 1.0), (LOGITS, "kl", 2.0), (LABELS, "cross_entropy", 1.0),
])
def test_replica_parts_sum_to_the_one_device_mean(tagging, target, loss, temperature):
    """Sum over replicas of (part's weighted loss sum / global weight) == the global batch's mean loss."""
    rng = np.random.default_rng(0)
    model_out = rng.normal(size=(10, 6, 3) if tagging else (10, 3)).astype(np.float32)
    globals_ = list(_batches(np.random.default_rng(1), tagging=tagging))
    parts = list(replica_batches(iter(globals_), replicas=2, first=0, local=2))
    assert len(parts) == 2 * len(globals_)

    def total(batch, out):
        return float(weighted_sum(loss, tf.constant(batch[target]), out, batch[WEIGHT], temperature))

    row = 0
    for g, (a, b) in zip(globals_, zip(parts[::2], parts[1::2])):
        n = len(g["input_ids"])
        np.testing.assert_array_equal(np.concatenate([a["input_ids"], b["input_ids"]]), g["input_ids"])
        assert a["count"] == b["count"] == g[WEIGHT].sum()
        out = model_out[row:row + n]
        split = len(a["input_ids"])
        per_replica = total(a, out[:split]) / a["count"] + total(b, out[split:]) / b["count"]
        one_device = total(g, out) / g[WEIGHT].sum()
        assert per_replica == pytest.approx(one_device, rel=1e-5)
        row += n


def test_each_worker_gets_its_own_replicas_and_a_too_small_last_batch_is_skipped():
    globals_ = list(_batches(np.random.default_rng(2), n_rows=9, batch=4))   # 4, 4, 1 rows
    worker0 = list(replica_batches(iter(globals_), replicas=2, first=0, local=1))
    worker1 = list(replica_batches(iter(globals_), replicas=2, first=1, local=1))
    assert len(worker0) == len(worker1) == 2          # the 1-row batch is skipped on both, in step
    for a, b, g in zip(worker0, worker1, globals_):
        np.testing.assert_array_equal(np.concatenate([a[LOGITS], b[LOGITS]]), g[LOGITS])


# --- strategies and TF_CONFIG -----------------------------------------------------------------

def test_auto_is_the_default_strategy_without_gpus_and_mirrored_runs_on_cpu():
    assert make_cluster("auto").name == "default"   # this machine has no GPU
    cluster = make_cluster("mirrored")
    assert cluster.name == "mirrored" and cluster.replicas == 1 and cluster.is_chief


@pytest.mark.slow   # two full distill runs (about 2 minutes); keeps the fast suite near 15 minutes
def test_mirrored_strategy_distils_like_the_default_one(tiny_models, tmp_path):
    """In-process MirroredStrategy (one CPU replica here) takes the same path as a multi-GPU run:
    variables under its scope, batches through distribute_datasets_from_function, strategy.run."""
    from helpers import classification_task
    from xtremedistil.distill.options import DistilOptions
    from xtremedistil.distill.pipeline import run_distill

    task = classification_task(tmp_path / "task")
    flags = dict(task=str(task), pt_teacher_checkpoint=str(tiny_models("bert")), seq_len=16, ft_epochs=1,
                 ft_batch_size=4, word_emb_dim=8, bilstm_hidden_size=8, teacher_layer=1, distil_epochs=1,
                 distil_batch_size=4, dropout_rate=0.0, seed=7)
    default = run_distill(DistilOptions.from_flags(dict(model_dir=str(tmp_path / "default"), strategy="default", **flags)))
    mirrored = run_distill(DistilOptions.from_flags(dict(model_dir=str(tmp_path / "mirrored"), strategy="mirrored", **flags)))
    assert mirrored["student"]["test"] == default["student"]["test"]
    for name, sub in default["substages"].items():
        assert mirrored["substages"][name]["val_loss"] == pytest.approx(sub["val_loss"], rel=1e-5)


@pytest.mark.parametrize("config,message", [
    (None, "needs TF_CONFIG"),
    ("{not json", "TF_CONFIG is not valid"),
    ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG is not valid"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "not in its cluster"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "not supported"),
])
def test_bad_tf_config_is_one_clear_error(monkeypatch, config, message):
    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", config)
    with pytest.raises(XtremeDistilError, match=message):
        _worker_from_tf_config()


def test_tf_config_positions_with_a_chief(monkeypatch):
    cluster = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}}))
    assert _worker_from_tf_config() == (0, 3)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert _worker_from_tf_config() == (2, 3)


def test_unknown_strategy_is_a_one_line_cli_error(tmp_path, capsys):
    code = main(["distill", "--task", str(tmp_path), "--model_dir", str(tmp_path / "o"),
                 "--pt_teacher_checkpoint", "x", "--strategy", "ring"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--strategy 'ring'" in err[0] and "multiworker" in err[0]


# --- sharded teacher scoring ------------------------------------------------------------------

def test_two_workers_score_disjoint_shards_into_one_cache(tmp_path, tokenizer):
    reference = build(tmp_path / "ref", CountingTeacher(), tokenizer)
    teachers = [CountingTeacher(), CountingTeacher()]
    folder = tmp_path / "shared"

    def worker(k, barrier):
        return build_cache(folder, iter(SENTENCES), teachers[k], tokenizer, seq_len=8, tagging=True,
                           chunk_size=4, batch_size=3, signature={"v": 1}, worker=k, workers=2, barrier=barrier)

    # Worker 1 scores its shard, then "waits" at the barrier, during which worker 0 runs to the end.
    seen = {}
    cache1 = worker(1, lambda what: seen.setdefault(0, worker(0, lambda what: None)))
    cache0 = seen[0]
    assert teachers[0].scored == 4 + 2 and teachers[1].scored == 4     # chunks 0 and 2 / chunk 1
    assert (folder / "index.json").exists()                              # written by worker 0 only
    for cache in (cache0, cache1):
        assert len(cache) == len(reference) and [c["rows"] for c in cache.chunks] == [4, 4, 2]
        for k in range(3):
            for name in ("input_ids", "logits", "hidden"):
                np.testing.assert_array_equal(cache.chunk(k)[name], reference.chunk(k)[name])


def test_a_shard_missing_after_the_barrier_is_a_clear_error(tmp_path, tokenizer):
    with pytest.raises(XtremeDistilError, match="chunk-00001 are missing.*shared"):
        build_cache(tmp_path / "c", iter(SENTENCES), CountingTeacher(), tokenizer, seq_len=8, tagging=True,
                    chunk_size=4, batch_size=3, signature={"v": 1}, worker=0, workers=2, barrier=lambda what: None)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from helpers import bert_tokenizer
    return bert_tokenizer(tmp_path_factory.mktemp("tok"))


# --- a real two-worker run --------------------------------------------------------------------

FLAGS = ["--seq_len", "16", "--ft_epochs", "1", "--ft_batch_size", "4", "--word_emb_dim", "8",
         "--bilstm_hidden_size", "8", "--teacher_layer", "1", "--distil_epochs", "2", "--distil_batch_size", "4",
         "--distil_chunk_size", "4", "--dropout_rate", "0", "--recurrent_dropout", "0", "--seed", "5", "--do_NER"]


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(task, model_dir, checkpoint, log, worker=None, ports=None):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONHASHSEED": "5"}
    strategy = ["--strategy", "default"]
    if worker is not None:
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                       "task": {"type": "worker", "index": worker}})
        strategy = ["--strategy", "multiworker"]
    command = [sys.executable, "-m", "xtremedistil", "distill", "--task", str(task), "--model_dir", str(model_dir),
               "--pt_teacher_checkpoint", str(checkpoint), *FLAGS, *strategy]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait(process, log, timeout=600):
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"timed out; log:\n{log.read_text()[-3000:]}")
    return code


def _start_pair(task, model_dir, checkpoint, log_dir: Path, prefix: str):
    """Two workers on fresh localhost ports; returns (processes, log paths)."""
    ports = _free_ports(2)
    logs = [log_dir / f"{prefix}{k}.log" for k in range(2)]
    return [_start(task, model_dir, checkpoint, logs[k], k, ports) for k in range(2)], logs


def _finish_pair(workers, logs):
    """Waits for both workers; both must exit 0. Returns the log paths."""
    codes = [_wait(w, log) for w, log in zip(workers, logs)]
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    return logs


def _scale_task(folder: Path) -> Path:
    rows = TAGGING_ROWS * 4     # 16 sentences: 4 cache chunks of 4 (two per worker), 4 full global batches of 4 per epoch
    return write_task(folder, rows, labels=TAGGING_LABELS, transfer=[r.split("\t")[0] for r in rows])


def _assert_same_student(a: Path, b: Path):
    """Equal up to float summation order: the gradient all-reduce adds two half-batch sums where one
    device adds the whole batch; with dropout off nothing else differs (same seed, same batches)."""
    ma, mb = (json.loads((p / "bundle" / "metrics.json").read_text()) for p in (a, b))
    assert ma["student"]["best_substage"] == mb["student"]["best_substage"]
    assert ma["student"]["test"] == mb["student"]["test"]
    for name, sub in ma["substages"].items():
        assert mb["substages"][name]["val_loss"] == pytest.approx(sub["val_loss"], rel=1e-4, abs=1e-6)
    for x, y in zip(load_bundle(a / "bundle").model.get_weights(), load_bundle(b / "bundle").model.get_weights()):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_two_workers_on_localhost_match_one_worker_and_survive_a_killed_worker(tiny_models, tmp_path):
    task = _scale_task(tmp_path / "task")
    checkpoint = tiny_models("bert")

    single = _start(task, tmp_path / "single", checkpoint, tmp_path / "single.log")
    assert _wait(single, tmp_path / "single.log") == 0, (tmp_path / "single.log").read_text()[-3000:]

    # Two workers, global batch 4 = 2 rows per worker.
    logs = _finish_pair(*_start_pair(task, tmp_path / "multi", checkpoint, tmp_path, "w"))
    assert "done; the chief wrote" in logs[1].read_text()
    bundle = tmp_path / "multi" / "bundle"
    assert {"student.weights.h5", "metrics.json", "config.json"} <= {p.name for p in bundle.iterdir()}
    chunks = sorted(p.name for p in (tmp_path / "multi" / "cache").glob("transfer-*/chunk-*"))
    assert chunks == [f"chunk-{k:05d}" for k in range(4)]
    _assert_same_student(tmp_path / "single", tmp_path / "multi")

    # Kill worker 1 once stage 2 is under way: the chief stops with a clear error, nothing is corrupted.
    workers, logs = _start_pair(task, tmp_path / "killed", checkpoint, tmp_path, "k")
    state_path = tmp_path / "killed" / "student" / "state.json"
    deadline = time.time() + 600
    while time.time() < deadline and workers[0].poll() is None:
        if state_path.exists() and "stage2-top1" in json.loads(state_path.read_text())["completed"]:
            break
        time.sleep(0.2)
    workers[1].send_signal(signal.SIGKILL)
    code = _wait(workers[0], logs[0], timeout=300)
    chief_log = logs[0].read_text()
    assert code == 1, chief_log[-3000:]
    assert "another worker stopped answering" in chief_log and "restart every worker" in chief_log
    assert "Traceback" not in chief_log
    state = json.loads(state_path.read_text())
    assert {"stage1", "stage2-top1"} <= set(state["completed"]) and not (tmp_path / "killed" / "bundle").exists()
    model = load_bundle(bundle).model
    for done in state["completed"].values():     # every recorded checkpoint is whole and loads
        model.load_weights(str(tmp_path / "killed" / "student" / done["checkpoint"]))

    # Rerunning both workers resumes from the completed sub-stages and ends where the others did.
    logs = _finish_pair(*_start_pair(task, tmp_path / "killed", checkpoint, tmp_path, "r"))
    assert "stage1: done in an earlier run" in logs[0].read_text()
    assert "reusing the complete teacher cache" in logs[1].read_text()
    _assert_same_student(tmp_path / "multi", tmp_path / "killed")


# --- memory does not grow with the transfer set -------------------------------------------------

@pytest.mark.slow
def test_peak_memory_is_flat_from_200k_to_2m_transfer_lines(tmp_path):
    """Scores 200k and 2M synthetic lines with a tiny teacher and trains one stage-2 epoch on each,
    each in its own process (python -m xtremedistil.distill.streaming); 2M may use at most 10% more."""
    from xtremedistil.distill.streaming import compare

    report = compare([200_000, 2_000_000], tmp_path)
    small, large = report["runs"]
    assert large["chunks"] == 20 and small["chunks"] == 2            # 100k-sentence chunks, streamed
    assert report["peak_rss_ratio"] <= 1.10, report
    assert not list(tmp_path.glob("transfer-*.txt"))                  # the generated files are removed
