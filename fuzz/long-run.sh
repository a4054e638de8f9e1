#!/usr/bin/env bash
# The long fuzz run (issue 14): every parser, one process each (a hang or a huge allocation
# stops only that parser's run), until 10 million executions or SECONDS_PER_TARGET seconds.
#   nice -n 10 fuzz/long-run.sh [SECONDS_PER_TARGET (default: no limit)] [EXECS (default 10000000)]
# Logs go to fuzz/artifacts/long-run/<target>.log; the summary table of each is printed at the end.
set -uo pipefail
cd "$(dirname "$0")"
seconds=${1:-}
execs=${2:-10000000}
cargo build --release --quiet || exit 1
mkdir -p artifacts/long-run
limit=()
if [ -n "$seconds" ]; then limit=(--seconds "$seconds"); fi
status=0
for target in $(./target/release/detlab-fuzz list | awk '{print $1}'); do
  ./target/release/detlab-fuzz run "$target" --execs "$execs" "${limit[@]}" \
    > "artifacts/long-run/$target.log" 2>&1 || status=1
  tail -n 1 "artifacts/long-run/$target.log"
done
exit $status
