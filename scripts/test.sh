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
# tests/prometheus.rs runs a real Prometheus and promtool (Debian's package).
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing prometheus (for tests/prometheus.rs)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # The package may start a daemon on :9090; the tests use their own instance.
    pkill -x prometheus 2>/dev/null || true
  else
    echo "promtool not found: install Debian's prometheus package (apt-get install prometheus)" >&2
    exit 1
  fi
fi
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads 2
