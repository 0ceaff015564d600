#!/usr/bin/env bash
# Measures what monitoring costs the message path: 1 publisher -> 1 subscriber, 16 B,
# with and without a scraper hitting /varz and /metrics 100 times a second (50 each),
# alternating runs on fresh servers. Prints msgs/s per run and the median ratio.
#   usage: bench/scripts/scrape_cost.sh [reps] [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
reps=${1:-4}
secs=${2:-3}
bin=target/release/strait
bench=target/release/strait-bench
scraper_py=$(cat <<'PY'
import sys, time, urllib.request
port = sys.argv[1]
n = 0
start = time.monotonic()
while True:
    for path in ("/varz", "/metrics"):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).read()
        except Exception:
            pass
        n += 1
        # 100 requests per second in all.
        delay = start + n / 100.0 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
PY
)
run() { # with_scraper(0|1)
  local port=$((20000 + RANDOM % 20000)) http=$((40000 + RANDOM % 20000)) sp scp=""
  $bin -a 127.0.0.1 -p $port -m $http >/dev/null 2>&1 & sp=$!
  sleep 0.4
  if [ "$1" = 1 ]; then python3 -c "$scraper_py" $http & scp=$!; sleep 0.2; fi
  $bench pubsub --url nats://127.0.0.1:$port --size 16 --duration ${secs}s 2>/dev/null |
    awk '/msgs\/s/ {print $2; exit}'
  if [ -n "$scp" ]; then kill $scp 2>/dev/null || true; fi
  kill $sp 2>/dev/null || true
  wait $sp 2>/dev/null || true
}
plain=(); scraped=()
for i in $(seq 1 "$reps"); do
  if [ $((i % 2)) = 1 ]; then plain+=("$(run 0)"); scraped+=("$(run 1)");
  else scraped+=("$(run 1)"); plain+=("$(run 0)"); fi
  echo "rep $i: plain ${plain[-1]}  scraped ${scraped[-1]}"
done
python3 - "${plain[*]}" "${scraped[*]}" <<'PY'
import sys, statistics
def val(s):
    s = s.strip()
    mult = {"k": 1e3, "M": 1e6, "G": 1e9}.get(s[-1:], 1)
    return float(s.rstrip("kMG")) * mult
p = [val(x) for x in sys.argv[1].split()]
s = [val(x) for x in sys.argv[2].split()]
mp, ms = statistics.median(p), statistics.median(s)
print(f"median plain {mp/1e6:.2f} M msgs/s, scraped {ms/1e6:.2f} M msgs/s, ratio {ms/mp:.3f} (cost {100*(1-ms/mp):.1f}%)")
PY
