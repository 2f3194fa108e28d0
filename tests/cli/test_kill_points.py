"""The kill battery (xtremedistil/kill_battery.py): SIGKILL the CLI at named points, rerun, compare with an
uninterrupted run. A short distill chain runs in `make test`; every point of distill, export and bench
under `-m slow`."""
import json
import os
import subprocess
import sys

import pytest

from helpers import CLASSIFICATION_ROWS, write_task
from xtremedistil import faults
from xtremedistil.kill_battery import FAST_POINTS, Plan, compare, main, run_battery


def test_kill_point_matches_name_prefix_and_pass(monkeypatch):
    killed = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: killed.append(sig))
    monkeypatch.delenv(faults.GROUP_ENV, raising=False)
    monkeypatch.setattr(faults, "_passes", {})
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.kill_point("json:state.json")
    assert killed == []                                        # unset: nothing
    monkeypatch.setenv(faults.ENV, "json:state.json@2")
    faults.kill_point("json:index.json")
    faults.kill_point("json:state.json")
    assert killed == []                                        # first pass of two
    faults.kill_point("json:state.json")
    assert len(killed) == 1
    monkeypatch.setattr(faults, "_passes", {})
    monkeypatch.setenv(faults.ENV, "json:*")
    faults.kill_point("json:manifest.json")
    assert len(killed) == 2


def test_a_kill_point_kills_the_process_or_with_the_group_flag_its_group(tmp_path):
    # A parent in its own session starts a child; the child reaches the point: without XD_KILL_GROUP only
    # the child dies (the parent reports it), with it the parent dies too.
    script = ("import subprocess, sys\n"
              "code = subprocess.run([sys.executable, '-c', 'from xtremedistil.faults import kill_point; "
              "kill_point(\"x\")']).returncode\n"
              "raise SystemExit(7 if code == -9 else 1)")
    env = {**os.environ, "XD_KILL_AT": "x"}
    assert subprocess.run([sys.executable, "-c", script], env=env, start_new_session=True).returncode == 7
    env["XD_KILL_GROUP"] = "1"
    assert subprocess.run([sys.executable, "-c", script], env=env, start_new_session=True).returncode == -9


def test_a_kill_point_really_kills_the_process():
    code = subprocess.run([sys.executable, "-c", "from xtremedistil.faults import kill_point\nkill_point('x')\n"
                           "raise SystemExit(5)"], env={**os.environ, "XD_KILL_AT": "x"}, start_new_session=True).returncode
    assert code == -9


def test_compare_finds_changed_weights_json_and_missing_files(tmp_path):
    import numpy as np

    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "run").mkdir(parents=True)
        np.save(root / "run" / "x.npy", np.arange(4))
        (root / "run" / "m.json").write_text(json.dumps({"f1": 0.5, "seconds": 3, "path": str(root / "run")}))
    (b / "run" / "m.json").write_text(json.dumps({"f1": 0.5, "seconds": 9, "path": str(b / "run")}))
    (b / "run" / ".state.json.abc.tmp").write_text("{")
    differences, leftovers, compared = compare(a, b)
    assert differences == [] and compared == 2                 # seconds and the run folder are not differences
    assert leftovers == ["run/.state.json.abc.tmp"]
    np.save(b / "run" / "x.npy", np.arange(4) + 1)
    (b / "run" / "m.json").write_text(json.dumps({"f1": 0.6}))
    (a / "run" / "only.json").write_text("{}")
    differences, _, _ = compare(a, b)
    assert differences == ["run/only.json: only in reference", "run/m.json: JSON differs", "run/x.npy: arrays differ"]


def _task(tmp_path):
    return write_task(tmp_path / "task", CLASSIFICATION_ROWS * 3, CLASSIFICATION_ROWS, CLASSIFICATION_ROWS,
                      labels=["0", "1"], transfer=[r.split("\t")[0] for r in CLASSIFICATION_ROWS] * 2)


def test_distill_killed_while_saving_an_epoch_resumes_to_the_uninterrupted_result(tiny_models, tmp_path):
    plan = Plan(tmp_path / "kb", str(tiny_models("bert")), str(_task(tmp_path)), quick=True,
                points=dict(FAST_POINTS))
    summary = run_battery(plan, log=lambda line: None)
    assert summary["not_reached"] == [] and summary["killed"] == len(FAST_POINTS["distill"])
    assert summary["reruns_failed"] == []
    assert summary["differences"] == []
    assert summary["files_compared"] >= 12                     # checkpoints, state, caches, bundle, metrics


@pytest.mark.slow
def test_every_kill_point_of_distill_export_and_bench(tiny_models, tmp_path, capsys):
    code = main(["--workdir", str(tmp_path / "kb"), "--pt_teacher_checkpoint", str(tiny_models("bert")),
                 "--task", str(_task(tmp_path))])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "kb" / "battery-kill.json").read_text())
    assert code == 0, out
    assert summary["killed"] >= 25 and summary["not_reached"] == [] and summary["differences"] == []


def test_a_full_disk_at_a_write_point_keeps_the_earlier_file_and_leaves_no_temp(tmp_path, monkeypatch):
    from xtremedistil.distill.files import atomic_directory, write_json_atomic, written_in_place

    faults._passes.clear()
    write_json_atomic(tmp_path / "state.json", {"epoch": 1})
    with atomic_directory(tmp_path / "bundle") as temp:
        (temp / "weights").write_bytes(b"x" * 100)
    (tmp_path / "model.onnx").write_bytes(b"old")
    monkeypatch.setenv("XD_DISK_FULL_AT", "json:state.json")
    with pytest.raises(OSError, match="No space left"):
        write_json_atomic(tmp_path / "state.json", {"epoch": 2})
    monkeypatch.setenv("XD_DISK_FULL_AT", "dir:bundle")
    with pytest.raises(OSError, match="No space left"):
        with atomic_directory(tmp_path / "bundle") as temp:
            (temp / "weights").write_bytes(b"y" * 100)
    monkeypatch.setenv("XD_DISK_FULL_AT", "file:onnx")
    with pytest.raises(OSError, match="No space left"):
        with written_in_place(tmp_path / "model.onnx", "file:onnx") as temp:
            temp.write_bytes(b"new")
    monkeypatch.delenv("XD_DISK_FULL_AT")
    with pytest.raises(RuntimeError):                          # a writer's own failure: the temp goes too
        with written_in_place(tmp_path / "model.onnx", "file:onnx") as temp:
            temp.write_bytes(b"half")
            raise RuntimeError("converter failed")
    assert json.loads((tmp_path / "state.json").read_text()) == {"epoch": 1}
    assert (tmp_path / "bundle" / "weights").read_bytes() == b"x" * 100
    assert (tmp_path / "model.onnx").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "model.onnx", "state.json"]


@pytest.mark.slow
def test_a_full_disk_at_every_kind_of_write_ends_in_one_line_and_resumes_to_the_same_result(tiny_models, tmp_path,
                                                                                           capsys):
    code = main(["--workdir", str(tmp_path / "kb"), "--pt_teacher_checkpoint", str(tiny_models("bert")),
                 "--task", str(_task(tmp_path)), "--fault", "disk-full"])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "kb" / "battery-disk-full.json").read_text())
    assert code == 0, out
    assert summary["points"] >= 20 and summary["killed"] == summary["points"]
    assert summary["damaged_files"] == [] and summary["differences"] == [] and summary["temp_files_left"] == []
