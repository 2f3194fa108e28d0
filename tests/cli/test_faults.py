"""Faults: a full disk and damaged files end in one clear line, and what was complete stays intact."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_task
from helpers import SOURCES
from xtremedistil.cli import main
from xtremedistil.errors import is_disk_full

REPO = Path(__file__).resolve().parents[2]

# Runs the CLI with a file-size limit: any write past `limit` bytes fails with EFBIG, as a full disk would
# fail with ENOSPC (SIGXFSZ ignored so the write returns the error instead of killing the process).
FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from xtremedistil.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


def _cli_with_disk_limit(limit: int, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FULL_DISK, str(limit), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def test_full_disk_while_augmenting_is_one_line_keeps_the_earlier_file_and_a_rerun_finishes(tiny_models, tmp_path):
    rows = [f"{s}\t{i % 2}" for i, s in enumerate(SOURCES)]
    task = write_task(tmp_path / "task", rows, dev=rows[:2], test=rows[2:4], labels=["0", "1"], transfer=SOURCES)
    out = tmp_path / "aug.txt"
    args = ["augment", "--task", str(task), "--pt_teacher_checkpoint", str(tiny_models("bert")), "--out", str(out),
            "--quiet"]
    assert main(args + ["--augment_multiplier", "2"]) == 0
    earlier = out.read_bytes()
    full = _cli_with_disk_limit(len(earlier) + 200, args + ["--augment_multiplier", "40"])
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 3, full.stderr[-2000:]
    assert "Traceback" not in full.stderr
    assert lines[-1].startswith("xtremedistil augment: error: no space left on the device")
    assert "rerun the same command to resume" in lines[-1]
    assert out.read_bytes() == earlier                                   # the earlier result is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aug.txt", "task"]   # no temp file left behind
    assert main(args + ["--augment_multiplier", "40"]) == 0               # space freed: the same command finishes
    assert len(out.read_bytes()) > len(earlier) + 200


def test_disk_full_is_recognised_from_the_os_h5py_and_tensorflow():
    assert is_disk_full(OSError(28, "No space left on device"))
    assert is_disk_full(OSError(27, "File too large"))
    assert is_disk_full(RuntimeError("Unable to synchronously create file (file write failed: errno = 28, "
                                   "error message = 'No space left on device')"))
    wrapped = ValueError("saving failed")
    wrapped.__cause__ = OSError(28, "No space left on device")
    assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(2, "No such file or directory"))


@pytest.mark.parametrize("name, content", [
    ("report.json", '{"rows": [1, 2'),
    ("report.json", "\xff\xfe not json"),
])
def test_damaged_reports_are_one_line_errors_for_pick_and_gate(tmp_path, capsys, name, content):
    (tmp_path / name).write_text(content, encoding="latin-1")
    assert main(["pick", str(tmp_path)]) == 2
    assert main(["bench", "gate", str(tmp_path / name), "--baseline", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(line.startswith("xtremedistil") or line.startswith("|") or not line
                                          for line in err.splitlines())


@pytest.mark.slow
@pytest.mark.parametrize("free_kb", [64, 400])
def test_a_real_full_disk_mid_distill_is_one_line_and_the_rerun_after_freeing_space_matches(tiny_models, tmp_path,
                                                                                          free_kb):
    """A real ENOSPC: the run folder on a small tmpfs, filled up to `free_kb` free (needs root; skipped
    otherwise). The rerun after the filler is removed must give the bundle an uninterrupted run gives."""
    import numpy as np
    import h5py

    from helpers import CLASSIFICATION_ROWS

    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        task = write_task(tmp_path / "task", CLASSIFICATION_ROWS * 3, CLASSIFICATION_ROWS, CLASSIFICATION_ROWS,
                          labels=["0", "1"], transfer=[r.split("\t")[0] for r in CLASSIFICATION_ROWS] * 2)

        def distill(model_dir):
            return subprocess.run([sys.executable, "-m", "xtremedistil", "distill", "--task", str(task), "--model_dir",
                                   str(model_dir), "--pt_teacher_checkpoint", str(tiny_models("bert")), "--seq_len",
                                   "16", "--ft_epochs", "1", "--ft_batch_size", "4", "--word_emb_dim", "8",
                                   "--bilstm_hidden_size", "8", "--teacher_layer", "1", "--distil_epochs", "1",
                                   "--distil_batch_size", "4", "--seed", "3", "--quiet"],
                                  capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONHASHSEED": "0"})

        assert distill(tmp_path / "reference").returncode == 0
        filler = mount / "filler"
        stat = os.statvfs(mount)
        with open(filler, "wb") as handle:                          # tmpfs pages are allocated when written
            handle.write(b"\0" * (stat.f_bavail * stat.f_frsize - free_kb * 1024))
        full = distill(mount / "run")
        assert full.returncode == 3, full.stderr[-2000:]
        assert "Traceback" not in full.stderr
        errors = [line for line in full.stderr.splitlines() if ": error: " in line]
        assert len(errors) == 1 and "no space left on the device" in errors[0] and "rerun the same command" in errors[0]
        filler.unlink()                                              # space freed: the same command resumes
        again = distill(mount / "run")
        assert again.returncode == 0, again.stderr[-2000:]

        def weights(bundle):
            with h5py.File(bundle / "student.weights.h5", "r") as handle:
                out = {}
                handle.visititems(lambda n, d: out.__setitem__(n, d[()]) if isinstance(d, h5py.Dataset) else None)
                return out
        a, b = weights(tmp_path / "reference" / "bundle"), weights(mount / "run" / "bundle")
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        assert not [p for p in (mount / "run").rglob("*") if ".tmp" in p.name]
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
