#!/usr/bin/env bash
# The project's test command (see README): builds everything and runs every test.
# Needs only a Rust toolchain (stable) and crates.io; integration tests start the
# real binary on loopback ports and read ../shared/reference/ captures.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads 2
