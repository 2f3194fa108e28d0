"""Kill points: named places where the fault-injection battery kills the process with SIGKILL.

`XD_KILL_AT=NAME` kills the process the first time it passes `kill_point(NAME)`; `NAME@N` the N-th time
(counted per process). With `XD_KILL_GROUP=1` too, its whole process group is killed.
NAME is matched exactly, or as a prefix when it ends with `*` (`json:*` = any JSON write). Without the
variable, `kill_point` is one dictionary lookup. The battery (`tests/cli/test_kill_points.py`,
`python -m xtremedistil.faults --help`) runs a command killed at each point in turn, then uninterrupted, and
compares what it wrote with a run that was never killed.

The points sit where a kill is most likely to leave something half done: between writing a temp file and
renaming it into place (`json:FILE`, `weights:KIND`, `npz:KIND`, `dir:NAME`, `file:KIND`), and inside long
loops (`teacher:batch`, `score:batch`, `stage:batch`, `export:artifact`, `bench:measurement`).

`XD_DISK_FULL_AT=NAME[@N]` (same matching) simulates a full disk at a write point instead: the temp file being
put in place is cut to half its size (in a temp folder, its largest file), as a write that ran out of space
leaves it, and `OSError(ENOSPC)` is raised from the writer. The disk-full battery
(`python -m xtremedistil.kill_battery --fault disk-full`) uses it to fail every kind of write in turn.
"""
from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

ENV = "XD_KILL_AT"
GROUP_ENV = "XD_KILL_GROUP"   # set: kill the process group (only where the command was started in its own)
DISK_FULL_ENV = "XD_DISK_FULL_AT"
_passes: dict[tuple[str, str], int] = {}


def _hit(env: str, name: str) -> bool:
    """`name` is the point the variable `env` names, passed for the N-th time now."""
    target = os.environ.get(env)
    if not target:
        return False
    pattern, _, nth = target.partition("@")
    if not (name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1]))):
        return False
    _passes[env, pattern] = _passes.get((env, pattern), 0) + 1
    return _passes[env, pattern] == int(nth or 1)


def disk_full_point(name: str) -> bool:
    """True where `XD_DISK_FULL_AT` names this pass of `name` (for writers that simulate the cut themselves)."""
    return _hit(DISK_FULL_ENV, name)


def kill_point(name: str, temp: str | Path | None = None) -> None:
    """A kill point (and, where `temp` is the file or folder about to be put in place, a disk-full point)."""
    if temp is not None and _hit(DISK_FULL_ENV, name):
        _cut(Path(temp))
        raise OSError(errno.ENOSPC, f"No space left on device (simulated at {name})", str(temp))
    if _hit(ENV, name):
        if os.environ.get(GROUP_ENV):
            # The whole process group, as a scheduler or a closed terminal kills a job: a bench worker reaching
            # a point takes its parent down too. The battery starts each command in a group of its own.
            os.killpg(os.getpgid(0), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def _cut(temp: Path) -> None:
    """Leaves `temp` as a write that ran out of space would: its (largest) file cut to half its bytes."""
    if temp.is_dir():
        files = sorted((p for p in temp.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        temp = files[-1] if files else None
    if temp is not None and temp.exists():
        with open(temp, "r+b") as handle:
            handle.truncate(temp.stat().st_size // 2)
