import subprocess
import sys
import time

import pytest

from xtremedistil.distill import machine
from xtremedistil.distill.machine import SHARED_CPU, CpuWatch, shared_note, worst_share


def test_cpu_watch_counts_other_processes_not_this_one_or_its_finished_children(monkeypatch):
    clock = {"wall": 100.0, "busy": 1000.0, "own": 50.0}
    monkeypatch.setattr(machine.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(machine, "_machine_busy", lambda: (clock["busy"], 2))
    monkeypatch.setattr(machine, "_own_cpu", lambda: clock["own"])
    watch = CpuWatch()
    # 10 s on 2 CPUs: the machine used 14 CPU-s, this process (with the children it waited for) 12: others 2 of 20
    clock.update(wall=110.0, busy=1014.0, own=62.0)
    assert watch.others_share() == pytest.approx(0.1)
    clock.update(busy=1020.0)                     # others 8 of 20
    assert watch.others_share() == pytest.approx(0.4)
    clock.update(busy=1005.0)                     # counters' jitter never gives a negative share
    assert watch.others_share() == 0.0
    monkeypatch.setattr(machine, "_machine_busy", lambda: None)     # no /proc/stat: unknown, not zero
    assert watch.others_share() is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat")
def test_cpu_watch_sees_a_process_burning_a_cpu_beside_it():
    cpus = machine._machine_busy()[1]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        watch = CpuWatch()
        time.sleep(1.5)
        share = watch.others_share()
    finally:
        busy.kill()
        busy.wait()
    assert share >= 0.7 / cpus           # one busy CPU of `cpus` (more if anything else runs)


def test_a_shared_span_is_named_and_a_clean_one_is_not():
    assert shared_note(None) == "" and shared_note(SHARED_CPU) == ""
    assert shared_note(0.45) == " (other processes used 45% of the CPU meanwhile: not a clean timing)"
    assert worst_share([None, 0.2, 0.05]) == 0.2 and worst_share([None]) is None
