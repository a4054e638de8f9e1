#!/usr/bin/env bash
# detlab vs PyTorch: one Retina U-Net training step (2 x 1 x 64^3), 1 thread and default threads.
# Usage: benches/train_step_compare.sh [STEPS] [PYTHON]   (run from the repository root after
# `cargo build --release`; PYTHON defaults to /work/torchvenv/bin/python, a venv with torch).
set -euo pipefail
steps="${1:-5}"
python="${2:-/work/torchvenv/bin/python}"
detlab=./target/release/detlab
ms() { grep "training step" | awk '{print $(NF-1)}'; }
echo "machine: $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for threads in 1 0; do
    label=$([ "$threads" = 0 ] && echo "default threads" || echo "1 thread")
    echo "== $label =="
    if [ "$threads" = 0 ]; then d_out=$($detlab bench train-step --steps "$steps"); else d_out=$($detlab bench train-step --threads 1 --steps "$steps"); fi
    echo "$d_out"
    t_out=$("$python" benches/torch_twin.py --threads "$threads" --steps "$steps")
    echo "$t_out"
    d=$(echo "$d_out" | ms); t=$(echo "$t_out" | ms)
    echo "ratio detlab / PyTorch ($label): $(awk -v d="$d" -v t="$t" 'BEGIN {printf "%.2f", d / t}')"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
