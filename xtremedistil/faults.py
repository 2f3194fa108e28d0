"""Kill points: named places where the fault-injection battery kills the process with SIGKILL.

`XD_KILL_AT=NAME` kills the process the first time it passes `kill_point(NAME)`; `NAME@N` the N-th time
(counted per process). With `XD_KILL_GROUP=1` too, its whole process group is killed.
NAME is matched exactly, or as a prefix when it ends with `*` (`json:*` = any JSON write). Without the
variable, `kill_point` is one dictionary lookup. The battery (`tests/test_kill_points.py`,
`python -m xtremedistil.faults --help`) runs a command killed at each point in turn, then uninterrupted, and
compares what it wrote with a run that was never killed.

The points sit where a kill is most likely to leave something half done: between writing a temp file and
renaming it into place (`json:FILE`, `weights:KIND`, `npz:KIND`, `dir:NAME`, `file:KIND`), and inside long
loops (`teacher:batch`, `score:batch`, `stage:batch`, `export:artifact`, `bench:measurement`).
"""
from __future__ import annotations

import os
import signal

ENV = "XD_KILL_AT"
GROUP_ENV = "XD_KILL_GROUP"   # set: kill the process group (only where the command was started in its own)
_passes: dict[str, int] = {}


def kill_point(name: str) -> None:
    target = os.environ.get(ENV)
    if not target:
        return
    pattern, _, nth = target.partition("@")
    if not (name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1]))):
        return
    _passes[pattern] = _passes.get(pattern, 0) + 1
    if _passes[pattern] == int(nth or 1):
        if os.environ.get(GROUP_ENV):
            # The whole process group, as a scheduler or a closed terminal kills a job: a bench worker reaching
            # a point takes its parent down too. The battery starts each command in a group of its own.
            os.killpg(os.getpgid(0), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
