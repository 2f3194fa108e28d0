"""Faults: a full disk and damaged files end in one clear line, and what was complete stays intact."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_task
from test_augment import SOURCES
from xtremedistil.cli import main
from xtremedistil.errors import is_disk_full

REPO = Path(__file__).resolve().parents[1]

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
