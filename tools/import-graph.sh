#!/usr/bin/env bash
# Prints the import graph of src/ (rooms by floor, the rooms each one uses, and how many files
# make each arrow) and fails on an arrow up or across a floor. CI runs the same check as the test
# `tests/architecture.rs` inside `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test architecture -- --nocapture --test-threads 1 2>&1 |
  sed -n '/^running [1-9]/,/^test result/p'
