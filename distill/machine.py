"""What this machine's CPU is, from /proc/cpuinfo, and how much of it other processes used over a span, from
/proc/stat (Linux; elsewhere nothing can be read)."""
from __future__ import annotations

import os
import time
from pathlib import Path


def cpu_info() -> tuple[str | None, set[str] | None]:
    """(model name, feature flags) of the first CPU listed; None for what cannot be read."""
    model, flags = None, None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if model is None and line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return model, flags


# A timing is flagged as taken on a shared machine when other processes used more than this share of its CPUs
# over it (a contended 2-core bench once inflated speedups to 30x; the figures of such a span are not clean).
SHARED_CPU = 0.10


def _machine_busy() -> tuple[float, int] | None:
    """(CPU seconds every process on the machine has used since boot, number of CPUs) from /proc/stat: user,
    nice, system, irq, softirq and steal (the hypervisor giving the CPU to another guest). None off Linux."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        fields = lines[0].split()
        if fields[0] != "cpu" or len(fields) < 9:
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
        cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), max(cpus, 1)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _own_cpu() -> float:
    """CPU seconds of this process (every thread) and of its children it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuWatch:
    """Other processes' share of the machine's CPUs over a span of this process's work: (CPU time of every
    process − this process's and its finished children's) / (wall time × CPUs). Above SHARED_CPU the span's
    wall time measured a shared machine, not the work."""

    def __init__(self):
        self._wall, self._busy, self._own = time.monotonic(), _machine_busy(), _own_cpu()

    def others_share(self) -> float | None:
        """Since construction; None where /proc/stat cannot be read."""
        now, wall = _machine_busy(), time.monotonic() - self._wall
        if now is None or self._busy is None or wall <= 0:
            return None
        others = (now[0] - self._busy[0]) - (_own_cpu() - self._own)
        return round(min(max(others / (wall * now[1]), 0.0), 1.0), 3)


def is_shared(share: float | None) -> bool:
    """Whether a span with this share of the CPUs taken by other processes ran on a shared machine (unknown: no)."""
    return share is not None and share > SHARED_CPU


def shared_note(share: float | None) -> str:
    """'' for a clean span; else a clause for the log line that reports the span's time."""
    if not is_shared(share):
        return ""
    return f" (other processes used {100 * share:.0f}% of the CPU meanwhile: not a clean timing)"


def worst_share(shares) -> float | None:
    """The largest of the known shares (None entries skipped); None when none is known."""
    known = [s for s in shares if s is not None]
    return max(known) if known else None
