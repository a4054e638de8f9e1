#!/usr/bin/env bash
# CI entry point: the README's test command on a clean checkout, plus the set-up it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real NIfTI files (Debian mricron-data, ITK examples) and the pinned venv .venv (nibabel, dipy,
# scipy, numpy). `cargo test` would run it too (tests/common/mod.rs); running it first fails
# early with apt's and pip's full output.
bash .ci/setup-data.sh

# The CUDA backend must keep compiling on machines without CUDA.
cargo check --features cuda

# The README's test command.
cargo test

# Fuzz smoke (issue 14): every parser of user files for 20 s, so the harness (its own crate,
# fuzz/, outside `cargo test`) keeps building and the seeds stay panic-free. The long run is in
# the README ("Guarantees").
cargo run --manifest-path fuzz/Cargo.toml -- run all --seconds 20
