"""Time ``latentcube demo`` end to end from the installed package, in a subprocess.

Prints the wall time of each step as reported by the demo and the total, against the
5-minute target of the foundation issue. Usage: ``python benchmarks/bench_demo.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time


def main() -> None:
    exe = shutil.which("latentcube")
    out = tempfile.mkdtemp(prefix="latentcube-demo-bench-")
    cmd = [exe] if exe else [sys.executable, "-m", "latentcube"]
    cmd += ["demo", "--out", out, "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    total = time.perf_counter() - t0
    print(proc.stdout)
    if proc.returncode:
        print(proc.stderr, file=sys.stderr)
        raise SystemExit(proc.returncode)
    print(f"wall time of `latentcube demo` (subprocess, incl. imports): {total:.1f} s")
    print(
        f"target < 300 s: {'met' if total < 300 else 'NOT met'} ({total / 300:.2f} of the budget)"
    )
    print(f"cores: {os.cpu_count()}")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
