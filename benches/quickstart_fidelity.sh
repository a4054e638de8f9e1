#!/bin/bash
# The quickstart's AP and mAP before and after issue 10's nnDetection-fidelity changes, seeds 0-5.
#
#   benches/quickstart_fidelity.sh [BEFORE_COMMIT] [AFTER_COMMIT] [WORK_DIR]
#
# BEFORE_COMMIT (83d6e54): the last commit before the fidelity series (planning, SWA, BaseMoreAug,
# the box convention and cubic resampling landed in 86aff8c..fc3c11d; the commits inside that
# series do not all build on their own, e.g. 669c49d). AFTER_COMMIT (HEAD). Each side is built
# in its own `git worktree` under WORK_DIR (/tmp/qsw) with its own CARGO_TARGET_DIR, so the
# repository's working tree and target/ are never touched. The two sides run at the same time
# (one process each, seeds in order) under `nice -n 5`, so both see the same machine load; each
# run writes WORK_DIR/qs/<side>/<seed>/metrics.json and its `/usr/bin/time -v` report beside it.
# benches/quickstart_fidelity_table.py WORK_DIR/qs prints the table.
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
before=$(git -C "$repo" rev-parse --short "${1:-83d6e54}")
after=$(git -C "$repo" rev-parse --short "${2:-HEAD}")
work=${3:-/tmp/qsw}
mkdir -p "$work/qs"
for side in before after; do
    commit=$before; [ $side = after ] && commit=$after
    if [ ! -d "$work/$side" ]; then git -C "$repo" worktree add --detach "$work/$side" "$commit"; fi
    git -C "$work/$side" checkout --quiet --detach "$commit"
    (cd "$work/$side" && CARGO_TARGET_DIR="$work/target" nice -n 5 cargo build --release --bin detlab)
    cp "$work/target/release/detlab" "$work/detlab_$side"
    echo "$side $commit" >> "$work/qs/commits.txt"
done
run_side() {
    local side=$1
    for seed in 0 1 2 3 4 5; do
        local out="$work/qs/$side/$seed"
        [ -f "$out/metrics.json" ] && continue
        rm -rf "$out"; mkdir -p "$work/qs/$side"
        (cd "$work/$side" && /usr/bin/time -v nice -n 5 "$work/detlab_$side" run examples/quickstart.rhai \
            --set seed=$seed --set out="$out" > "$work/qs/$side/$seed.log" 2> "$work/qs/$side/$seed.time")
        echo "$side $seed end=$(date -u +%FT%TZ) load=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$work/qs/progress.txt"
    done
}
run_side before & run_side after & wait
python3 "$repo/benches/quickstart_fidelity_table.py" "$work/qs"
