"""Peak resident memory of this process, per phase.

VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report its parent's peak if that was
higher. Writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS (Linux 4.0+), so a phase's peak is
measured from its own start; where that is not allowed the figure is the process peak so far (and says so).
"""
from __future__ import annotations

import resource
from pathlib import Path

from xtremedistil.distill.machine import CpuWatch


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB since start (or since the last `reset_peak_rss`)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024   # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Starts a new peak measurement; False where the kernel does not allow it (the peak then accumulates)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PhasePeaks:
    """`peaks.start()` ... `peaks.stop("teacher")` records that phase's peak RSS in MB in `peaks.mb`, and in
    `peaks.others_cpu` the share of the CPUs other processes used meanwhile (its wall time is clean if small)."""

    def __init__(self):
        self.mb: dict[str, float] = {}
        self.others_cpu: dict[str, float | None] = {}
        self.per_phase = True    # False when the peak could not be reset (each figure is then the peak so far)
        self._cpu = None

    def start(self) -> None:
        self.per_phase = reset_peak_rss() and self.per_phase
        self._cpu = CpuWatch()

    def stop(self, name: str) -> None:
        self.mb[name] = round(peak_rss_mb(), 1)
        self.others_cpu[name] = self._cpu.others_share() if self._cpu is not None else None
