"""What this machine's CPU is, from /proc/cpuinfo (Linux; elsewhere nothing can be read)."""
from __future__ import annotations

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
