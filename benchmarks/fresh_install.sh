#!/usr/bin/env bash
# Time the README's two commands in brand-new virtual environments from a clean clone.
# Usage: bash benchmarks/fresh_install.sh   (prints seconds per step)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
git clone -q "$repo" "$work/clone"
cd "$work/clone"
python3 -m venv "$work/venv-demo"
t0=$(date +%s)
( source "$work/venv-demo/bin/activate" && pip install -q torch==2.13.0 && pip install -q . ) > "$work/install-demo.log" 2>&1
t1=$(date +%s)
echo "demo install (pip install torch==2.13.0 && pip install .): $((t1 - t0)) s, exit 0"
( source "$work/venv-demo/bin/activate" && cd "$work" && latentcube demo --no-progress --out "$work/demo-out" ) > "$work/demo.log" 2>&1
t2=$(date +%s)
echo "latentcube demo: $((t2 - t1)) s"
tail -n 16 "$work/demo.log"
python3 -m venv "$work/venv-test"
( source "$work/venv-test/bin/activate" && pip install -q torch==2.13.0 && pip install -q -e ".[dev]" ) > "$work/install-test.log" 2>&1
t3=$(date +%s)
echo "test install (pip install torch==2.13.0 && pip install -e .[dev]): $((t3 - t2)) s, exit 0"
( source "$work/venv-test/bin/activate" && LATENTCUBE_SHARED_DATA="$repo/../shared/data" LATENTCUBE_REQUIRE_SHARED=1 pytest -q -p no:cacheprovider ) > "$work/pytest.log" 2>&1 || { tail -n 30 "$work/pytest.log"; exit 1; }
t4=$(date +%s)
echo "pytest: $((t4 - t3)) s"
tail -n 1 "$work/pytest.log"
rm -rf "$work"
