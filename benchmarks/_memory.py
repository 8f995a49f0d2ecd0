"""Peak resident memory of this process, as the benchmarks report it.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is not the process's own peak on Linux:
it is carried over ``execve``, so a child started by a large parent (a benchmark
driver, a Dask nanny) reports at least the parent's peak. ``VmHWM`` in
``/proc/self/status`` belongs to the process's own address space.
"""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mib() -> float:
    """Peak RSS of this process in MiB: VmHWM where /proc exists, else ru_maxrss."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
