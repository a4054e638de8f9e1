#!/usr/bin/env bash
# detlab vs PyTorch: one Retina U-Net training step, 1 thread and 2 threads, both sides in the
# same run and interleaved (detlab, twin, detlab, twin), so that the load of a shared machine
# hits both alike.
# Usage: benches/train_step_compare.sh [STEPS] [PYTHON] [BENCH ARGS...]
#   BENCH ARGS go to both `detlab bench train-step` and benches/torch_twin.py, e.g.
#   `--preset quickstart`, `--encoder resenc` (default: the 2 x 1 x 64^3 bench network).
#   Run from the repository root after `cargo build --release`; PYTHON (default
#   /work/torchvenv/bin/python) is a python with torch; DETLAB overrides the binary.
set -euo pipefail
steps="${1:-5}"
python="${2:-/work/torchvenv/bin/python}"
shift $(($# < 2 ? $# : 2))
detlab="${DETLAB:-./target/release/detlab}"
ms() { grep "training step" | awk '{print $(NF-1)}'; }
rss() { grep "peak RSS" | awk '{print $(NF-1)}'; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for threads in 1 2; do
    echo "== $threads thread(s) =="
    d_out=$($detlab bench train-step --threads "$threads" --steps "$steps" "$@")
    echo "$d_out"
    t_out=$("$python" benches/torch_twin.py --threads "$threads" --steps "$steps" "$@")
    echo "$t_out"
    d=$(echo "$d_out" | ms); t=$(echo "$t_out" | ms)
    echo "ratio detlab / PyTorch ($threads thread(s)): step $(awk -v d="$d" -v t="$t" 'BEGIN {printf "%.2f", d / t}'), peak RSS $(awk -v d="$(echo "$d_out" | rss)" -v t="$(echo "$t_out" | rss)" 'BEGIN {printf "%.2f", d / t}')"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
