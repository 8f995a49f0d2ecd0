#!/usr/bin/env bash
# A new user's path from the README to a summary map and a change map of the bundled
# sample, timed step by step: a clean clone, a brand-new virtual environment, the
# README's install, then the quickstart's embed, summarise and change commands.
# Usage: bash benchmarks/new_user.sh [--update-docs]
#   --update-docs  copy the two maps to docs/images/quickstart_{summary,change}.png
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "machine: $(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
git clone -q "$repo" "$work/clone"
cd "$work/clone"
step() {  # step NAME COMMAND...: run, print its wall time
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@" > "$work/$name.log" 2>&1 || { echo "$name failed:"; tail -n 20 "$work/$name.log"; exit 1; }
  printf '%-10s %6.1f s\n' "$name" "$(echo "$(date +%s.%N) - $t0" | bc)"
}
t_start=$(date +%s.%N)
step venv python3 -m venv "$work/venv"
source "$work/venv/bin/activate"
step install bash -c "pip install -q torch==2.13.0 && pip install -q ."
cd "$work"
SAMPLE=$(python -c "import latentcube.cube.readers as r; print(r.demo_cube_path())")
step embed latentcube embed "$SAMPLE" --out emb.zarr --no-progress
step summarise latentcube summarise emb.zarr --window 2018-04-01/2018-09-30 --out summer.zarr --png summer.png
step change latentcube change emb.zarr --before 2017-09-01/2017-12-31 --after 2018-09-01/2018-11-30 --out change.zarr --png change.png
printf '%-10s %6.1f s (commands only, typing not included)\n' total "$(echo "$(date +%s.%N) - $t_start" | bc)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ "${1:-}" == "--update-docs" ]]; then
  cp summer.png "$repo/docs/images/quickstart_summary.png"
  cp change.png "$repo/docs/images/quickstart_change.png"
  echo "updated docs/images/quickstart_summary.png and quickstart_change.png"
fi
