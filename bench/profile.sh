#!/usr/bin/env bash
# Profiles a Herald server under one herald-bench scenario: starts a fresh server, runs the
# scenario against it, attaches `perf record` for 5 s of the publish phase and prints the
# report's top entries. The profiles BENCHMARKS.md quotes were taken this way.
#
#   bench/profile.sh [--events EVENTS] [--call-graph MODE] [--out FILE] SERVER -- HERALD-BENCH-ARGS...
#
# SERVER is a `herald` executable, optionally followed by `herald serve` flags, as one word:
# "target/prof/release/herald --workers 1". For symbols with source lines, build it with
#   CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_TARGET_DIR=target/prof \
#       cargo build --release -p herald-server
# --events: perf events (default `cpu-clock -F 2000`; these VMs have no hardware counters),
#   e.g. `syscalls:sys_enter_futex` to see where futex calls come from.
# --call-graph: `dwarf` (default; Rust code has no frame pointers) or `fp`.
# --out: where perf.data goes (default: a temporary directory, printed).
# HERALD-BENCH-ARGS are a scenario's arguments without URLs, as for bench/ab.sh (subscribers
# over ws:// unless another --transport is named). Needs perf and target/release/herald-bench.
set -euo pipefail
cd "$(dirname "$0")/.."

events="cpu-clock -F 2000"
call_graph=dwarf
out=
while [ $# -gt 0 ]; do
    case $1 in
        --events) events=$2; shift 2 ;;
        --call-graph) call_graph=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --) shift; break ;;
        *) server_word=$1; shift ;;
    esac
done
if [ -z "${server_word:-}" ] || [ $# -eq 0 ]; then
    sed -n '2,/^set /{/^set /!p}' "$0" >&2
    exit 2
fi
bench=target/release/herald-bench
[ -x "$bench" ] || { echo "profile.sh: build $bench first" >&2; exit 2; }
command -v perf >/dev/null || { echo "profile.sh: perf is not installed" >&2; exit 2; }
[ -n "$out" ] || out="$(mktemp -d /tmp/herald-profile.XXXXXX)/perf.data"
# shellcheck source=bench/common.sh
. bench/common.sh
scheme=$(subscriber_scheme "$@")
graph=(--call-graph "$call_graph")
[ "$call_graph" = dwarf ] && graph=(--call-graph dwarf,32768)
read -r -a perf_events <<<"$events"
ulimit -n "$(ulimit -Hn)"

port=18395
read -r -a server_cmd <<<"$server_word"
"${server_cmd[0]}" serve --listen "127.0.0.1:$port" --log warn "${server_cmd[@]:1}" \
    >"$out.server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
wait_healthy "$port"
set_bench_urls "$port" "$scheme"
"$bench" "${bench_urls[@]}" --server-pid "$server" --json "$out.bench.json" "$@" >"$out.bench.log" 2>&1 &
generator=$!
# Attach after connecting and warming up (scenarios here connect in a few seconds).
sleep 6
perf record -e "${perf_events[@]}" "${graph[@]}" -p "$server" -o "$out" -- sleep 5 \
    >/dev/null 2>&1
wait "$generator" || true
echo "perf data in $out (report: perf report -i $out)"
perf report -i "$out" --no-children --sort dso,sym -g none --stdio 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -40
