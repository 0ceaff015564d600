#!/usr/bin/env bash
# Profiles strait (2 shards) under strait-bench runs; prints the top symbols.
# Usage: profile.sh ["pubsub --size 1k" "reqrep --size 16" ...]   (those two by default)
# Needs perf and a release build (cargo build --release -p strait -p strait-bench).
set -u
cd "$(dirname "$0")/../.."
if [ $# -eq 0 ]; then set -- "pubsub --size 1k" "reqrep --size 16"; fi
for scenario in "$@"; do
  ./target/release/strait -a 127.0.0.1 -p 14555 >/dev/null 2>&1 & SP=$!
  sleep 0.5
  perf record -F 2999 -g -p $SP -o /tmp/perf.data -- sleep 4 >/dev/null 2>&1 &
  PP=$!
  ./target/release/strait-bench $scenario --url nats://127.0.0.1:14555 --duration 4s --server-pid $SP 2>&1 | grep -vE "^\[" | tail -4
  wait $PP
  kill $SP; wait $SP 2>/dev/null
  echo "== $scenario: self time by dso"
  perf report -i /tmp/perf.data --no-children --sort dso --stdio 2>/dev/null | grep -E "^ +[0-9]" | head -6
  echo "== $scenario: top symbols"
  perf report -i /tmp/perf.data --no-children --sort sym --stdio 2>/dev/null | grep -E "^ +[0-9]" | head -22
done
