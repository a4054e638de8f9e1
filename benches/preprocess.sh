#!/usr/bin/env bash
# One line to compare detlab's preprocessing with nibabel + scipy + numpy on the same CT-sized
# case: builds the release binary, generates the input once, runs both, prints the table.
#   benches/preprocess.sh [--size 512,512,300] [--repeat 1]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin detlab
exec target/release/detlab bench preprocess "$@"
