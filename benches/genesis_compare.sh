#!/usr/bin/env bash
# detlab vs the original Models Genesis transforms (numpy reimplementation with the original
# Python loops): ms per corrupted sample, both sides in one run.
# Usage: benches/genesis_compare.sh [PYTHON] [SIZE ...]   (from the repository root, after
# `cargo build --release`; PYTHON defaults to /tmp/mgvenv/bin/python, a venv with numpy:
# `python3 -m venv /tmp/mgvenv && /tmp/mgvenv/bin/pip install numpy==1.26.4`; sizes D,H,W
# default to 160,160,160, nnssl's patch, and 96,96,96, where the scaled shuffle count differs).
set -euo pipefail
python="${1:-/tmp/mgvenv/bin/python}"
shift || true
sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(160,160,160 96,96,96)
detlab=./target/release/detlab
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for size in "${sizes[@]}"; do
    echo "== patch $size =="
    "$detlab" bench genesis --size "$size" --python "$python"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
