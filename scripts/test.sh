#!/usr/bin/env bash
# The project's test command (see README): builds everything and runs every test.
#
# Needs a Rust toolchain (stable). What the tests need beyond crates.io is fetched
# into this checkout's target/test-tools/ or the user's cache, never installed
# system-wide and never started as a service; each step says so on the terminal:
#   - Prometheus and promtool (tests/prometheus.rs), from Debian's `prometheus`
#     package, unpacked with dpkg-deb (no maintainer scripts run, so no daemon);
#   - the reference nats-server v2.14 (differential tests), by
#     scripts/reference-server.sh.
# Tests that cannot run here are skipped by name, and the reason printed.
# Without them the tests that need them fail, unless STRAIT_SKIP_REFERENCE=1 says
# to skip the differential tests, which is then printed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi
tools=$PWD/target/test-tools
mkdir -p "$tools"

# --- Prometheus, for tests/prometheus.rs -----------------------------------------
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  export STRAIT_PROMETHEUS_BIN
  STRAIT_PROMETHEUS_BIN=$(dirname "$(command -v promtool)")
elif [[ -x $tools/prometheus/usr/bin/promtool ]]; then
  export STRAIT_PROMETHEUS_BIN=$tools/prometheus/usr/bin
elif command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
  echo "test.sh: fetching Debian's prometheus package into $tools/prometheus (for tests/prometheus.rs; unpacked only, no service is installed or started)" >&2
  download=$(mktemp -d)
  if ! (cd "$download" && apt-get download -qq prometheus >/dev/null 2>&1); then
    if [[ $(id -u) = 0 ]]; then
      echo "test.sh: apt-get update (the package lists are needed to find the package)" >&2
      apt-get update -qq >/dev/null
    fi
    (cd "$download" && apt-get download -qq prometheus >/dev/null)
  fi
  dpkg-deb -x "$download"/prometheus_*.deb "$tools/prometheus"
  rm -rf "$download"
  export STRAIT_PROMETHEUS_BIN=$tools/prometheus/usr/bin
else
  echo "test.sh: promtool not found and apt-get cannot fetch it: install Debian's prometheus package" >&2
  exit 1
fi

# --- The reference nats-server, for the differential tests ---------------------------
skip=()
if [[ ${STRAIT_SKIP_REFERENCE:-} = 1 ]]; then
  echo "test.sh: SKIPPED: the tests against the reference nats-server (*_vs_nats_server), as STRAIT_SKIP_REFERENCE=1 asks" >&2
  skip=(--skip _vs_nats_server)
elif reference=$(scripts/reference-server.sh); then
  export STRAIT_REFERENCE_SERVER=$reference
else
  echo "test.sh: the reference nats-server could not be installed (see above); the *_vs_nats_server tests will fail. Set STRAIT_SKIP_REFERENCE=1 to skip them." >&2
fi

# --- tests/connections.rs holds 10 000 clients: it needs that many descriptors ----
hard_files=$(ulimit -Hn)
if [[ $hard_files != unlimited && $hard_files -lt 10200 ]]; then
  echo "test.sh: SKIPPED: many_connections_10k needs a hard open-files limit of 10200; this machine's is $hard_files" >&2
  skip+=(--skip many_connections_10k)
fi

cargo build --workspace --all-targets
cargo test --workspace -- --test-threads 2 "${skip[@]}"
