"""Process memory figures from /proc (Linux), shared by the benchmarks.

Peak memory is read as VmHWM after resetting it (``clear_refs`` 5), so a benchmark can
measure the peak of one operation inside a fresh worker process.
"""

from __future__ import annotations

import os


def rss_mb() -> float:
    """Resident set size of this process, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def hwm_mb() -> float:
    """Peak resident set size (VmHWM) since start or the last :func:`reset_peak`, MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
