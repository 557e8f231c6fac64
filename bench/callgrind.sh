#!/usr/bin/env bash
# Counts the instructions a Herald server executes per delivery (and per publish) under one
# herald-bench scenario, with valgrind's callgrind: a count that repeats within about 1 %
# from run to run whatever else the machine does, where CPU time on these machines moves by
# 10 % and more. For changes too small for bench/ab.sh to see. Instructions are not time
# (a cache miss costs no instruction): confirm a gain in time with bench/ab.sh.
#
#   bench/callgrind.sh [--out DIR] LABEL=SERVER [LABEL=SERVER ...] -- HERALD-BENCH-ARGS...
#
# SERVER is a `herald` executable. Each runs once under callgrind (about 50 times slower),
# so keep the scenario small: e.g. for long polling
#   --transport longpoll --subscribers 200 --channels 1 --rate 10 --payload-size 100 --duration 10s
# and for many channels
#   --transport ws --subscribers 500 --channels 100 --rate 200 --payload-size 100 --pub-concurrency 8 --duration 10s
# The count covers the whole life of the server (start, connects, the publish phase, exit),
# the same for every side. --out keeps each side's callgrind.out.LABEL there, for
# `callgrind_annotate --inclusive=yes FILE` (build with
# CARGO_PROFILE_RELEASE_DEBUG=line-tables-only for source lines).
# Needs valgrind, curl and target/release/herald-bench.
set -euo pipefail
cd "$(dirname "$0")/.."

out=
sides=()
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        --) shift; break ;;
        *=*) sides+=("$1"); shift ;;
        *) echo "callgrind.sh: unexpected argument $1" >&2; exit 2 ;;
    esac
done
if [ ${#sides[@]} -eq 0 ] || [ $# -eq 0 ]; then
    sed -n '2,/^set /{/^set /!p}' "$0" >&2
    exit 2
fi
bench=target/release/herald-bench
[ -x "$bench" ] || { echo "callgrind.sh: build $bench first" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 2; }
# shellcheck source=bench/common.sh
. bench/common.sh
scheme=$(subscriber_scheme "$@")
[ -n "$out" ] || out=$(mktemp -d /tmp/herald-callgrind.XXXXXX)
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"

port=18500
for side in "${sides[@]}"; do
    label=${side%%=*}
    server=${side#*=}
    port=$((port + 1))
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out.$label" \
        "$server" serve --listen "127.0.0.1:$port" --log warn >"$out/$label.server.log" 2>&1 &
    pid=$!
    # valgrind starts the server some fifty times slower.
    wait_healthy "$port" 300
    set_bench_urls "$port" "$scheme"
    "$bench" "${bench_urls[@]}" --json "$out/$label.json" "$@" >"$out/$label.log" 2>&1 || true
    # SIGINT: the server shuts down as it would in production, and valgrind writes its file.
    kill -INT "$pid"
    wait "$pid" || true
    python3 - "$out" "$label" <<'PY'
import json, sys
out, label = sys.argv[1], sys.argv[2]
report = json.load(open(f"{out}/{label}.json"))
received = report["deliveries"]["received"]
published = report["publish"]["published"]
total = None
for line in open(f"{out}/callgrind.out.{label}"):
    if line.startswith(("summary:", "totals:")):
        total = int(line.split()[1])
if total is None:
    sys.exit(f"{label}: no instruction total in callgrind.out.{label}")
per = lambda n: f"{total / n:,.0f}" if n else "-"
print(f"{label}: {total:,} instructions; {received:,} deliveries ({per(received)} per delivery), "
      f"{published:,} publishes ({per(published)} per publish), lost {report['deliveries']['lost']}")
PY
done
echo "callgrind files in $out"
