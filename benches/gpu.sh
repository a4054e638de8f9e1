#!/usr/bin/env bash
# detlab on a lent GPU machine, in one short call (see ../shared/reference/gpu.md):
#   1. a CUDA build of detlab: $DETLAB, else .gpu/detlab.xz (a stripped `--features cuda` build
#      carried from the build machine: `strip -o .gpu/detlab target/release/detlab && xz -T2 -9
#      .gpu/detlab`), else `cargo build --release --features cuda --bin detlab` here;
#   2. the CUDA environment (CUDA_PATH, LD_LIBRARY_PATH) and ../shared/tools/cuda_preflight.py,
#      so that a missing library costs seconds, not the lease;
#   3. the quickstart with `--set device=cuda`; its AP@0.1 must lie in the CPU runs' range
#      (README: 0.75-0.94 over seeds 0-5);
#   4. `detlab bench train-step` at nnDetection's scale (128^3, batch 4; retunet and resenc
#      (ResEnc-L) encoders) beside benches/torch_twin.py on CUDA: time per step, and peak GPU
#      memory (nvidia-smi, sampled every 100 ms) against the paper's ~10 GB for Retina U-Net.
#
# Usage: benches/gpu.sh [--dry-run]   (from the repository root; results also go to $OUT or gpu-out/)
#   --dry-run: the same steps on the CPU with a small size (device cpu, 64^3 patches, batch 1,
#   1 step, a 2-iteration quickstart); checks the script, not the figures.
# Environment: DETLAB (binary), PYTHON (with torch; default python3), STEPS (default 5),
#   QS_SEED (default 0).
set -euo pipefail
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
out="${OUT:-gpu-out}"
mkdir -p "$out"
python="${PYTHON:-python3}"
steps="${STEPS:-5}"
log() { echo "[gpu.sh $(date +%H:%M:%S)] $*" | tee -a "$out/summary.txt"; }

# 1. The binary.
if [ -n "${DETLAB:-}" ]; then
    detlab="$DETLAB"
elif [ -f .gpu/detlab.xz ]; then
    xz -dc .gpu/detlab.xz > .gpu/detlab-cuda && chmod +x .gpu/detlab-cuda
    detlab=.gpu/detlab-cuda
elif [ "$dry" = 1 ]; then
    detlab=./target/release/detlab
else
    cargo build --release --features cuda --bin detlab
    detlab=./target/release/detlab
fi
log "binary $detlab; dry run $dry"

# 2. Environment and preflight.
if [ "$dry" = 1 ]; then
    device=cpu
    sizes=(--patch 64 --batch 1)
    steps=1
    qs=(--set cases=4 --set test_cases=2 --set epochs=1 --set iters=2 --set batch=2)
else
    device=cuda
    sizes=()
    qs=()
    n=$(command -v nvcc || true)
    export CUDA_PATH=${CUDA_PATH:-${n:+$(dirname "$(dirname "$(readlink -f "$n")")")}}
    export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
    export LD_LIBRARY_PATH=$CUDA_PATH/lib64:$CUDA_PATH/targets/x86_64-linux/lib:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
    export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal}
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$out/summary.txt"
    preflight=../shared/tools/cuda_preflight.py
    [ -f "$preflight" ] || preflight=shared/tools/cuda_preflight.py
    if [ -f "$preflight" ]; then "$python" "$preflight" || exit 3; fi
fi

# Peak GPU memory (MiB) of a command: nvidia-smi sampled every 100 ms in the background.
with_gpu_memory() {
    local samples="$out/memory.$$"
    if [ "$device" = cuda ]; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$samples" &
        local sampler=$!
        local rc=0
        "$@" || rc=$?
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        log "peak GPU memory (nvidia-smi): $(sort -n "$samples" | tail -1) MiB"
        rm -f "$samples"
        return $rc
    fi
    "$@"
}

# 3. The quickstart on the device.
log "quickstart, device $device"
start=$(date +%s)
timeout 1800 "$detlab" run examples/quickstart.rhai --set device="$device" \
    --set seed="${QS_SEED:-0}" --set out="$out/quickstart" "${qs[@]}" 2>&1 | tail -5 | tee -a "$out/summary.txt"
ap=$("$python" -c "import json,sys; print(json.load(open(sys.argv[1]))['AP_IoU_0.10_MaxDet_100'])" "$out/quickstart/metrics.json")
log "quickstart: $(( $(date +%s) - start )) s wall, AP@0.1 $ap"
if [ "$dry" = 0 ]; then
    "$python" -c "import sys; a=float(sys.argv[1]); sys.exit(0 if 0.75 <= a <= 0.94 else 1)" "$ap" \
        && log "AP@0.1 in the CPU range 0.75-0.94" || log "AP@0.1 OUTSIDE the CPU range 0.75-0.94"
fi

# 4. The training step at nnDetection's scale, detlab then the PyTorch twin.
for encoder in retunet resenc; do
    log "train step, preset nndetection, encoder $encoder, device $device ${sizes[*]}"
    with_gpu_memory "$detlab" bench train-step --preset nndetection --encoder "$encoder" \
        --device "$device" --steps "$steps" "${sizes[@]}" 2>&1 | tee -a "$out/summary.txt"
    with_gpu_memory "$python" benches/torch_twin.py --preset nndetection --encoder "$encoder" \
        --device "$device" --steps "$steps" "${sizes[@]}" 2>&1 | tee -a "$out/summary.txt"
done
log "done; the paper reports ~10 GB of GPU memory for Retina U-Net at this scale"
