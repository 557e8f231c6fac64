#!/usr/bin/env bash
# A/B of two Herald builds on one herald-bench scenario: alternating single runs against fresh
# servers, so that both see the same machine state; prints one line per run and the medians
# (server CPU per delivery, p99, publish request p50 and p99, publishes/s, the server threads'
# voluntary context switches per publish, loss).
#
#   bench/ab.sh [--rounds N] [--syscalls] [--generator-nice N] A=SERVER B=SERVER -- HERALD-BENCH-ARGS...
#
# SERVER is a `herald` executable, optionally followed by `herald serve` flags for that side
# only, as one word: "w1=target/release/herald --workers 1". Build the other side of a change
# with `git worktree add` and `CARGO_TARGET_DIR=... cargo build --release -p herald-server`.
# HERALD-BENCH-ARGS are a scenario's arguments without URLs (subscribers use ws:// unless another
# --transport is named, then http://), as in BENCHMARKS.md's scenario
# table; for `many`:
#   --transport ws --subscribers 5000 --channels 1000 --rate 2000 --payload-size 100
#   --pub-concurrency 8 --duration 10s
# --syscalls: also count each server's system calls for 5 s of the publish phase, in one extra
# run per side, and print them per published message. With `perf` installed they are counted
# by its syscall tracepoints (`perf stat -e syscalls:sys_enter_…`), which barely slow the
# server; without it, by `strace -c -f`, which slows it enough to change how many messages a
# write gathers (at 400 publishes/s to 2,000 subscribers strace showed 26 messages per writev
# where perf counted 4.7): trust strace's counts for which calls are made, not for batch
# sizes. Either way those runs are not among the rounds above.
# --generator-nice N: run the load generator at that niceness (e.g. -10: above the server), to
# see how much of a latency figure is the generator waiting for a core it shares with the
# server. Off by default, as in bench/compare.sh.
# Needs target/release/herald-bench (cargo build --release -p herald-bench).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
syscalls=0
generator_prefix=()
sides=()
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --syscalls) syscalls=1; shift ;;
        --generator-nice) generator_prefix=(nice -n "$2"); shift 2 ;;
        --) shift; break ;;
        *=*) sides+=("$1"); shift ;;
        *) echo "ab.sh: unexpected argument $1" >&2; exit 2 ;;
    esac
done
if [ ${#sides[@]} -lt 2 ] || [ $# -eq 0 ]; then
    sed -n '2,/^set /{/^set /!p}' "$0" >&2
    exit 2
fi
bench=target/release/herald-bench
# shellcheck source=bench/common.sh
. bench/common.sh
scheme=$(subscriber_scheme "$@")
[ -x "$bench" ] || { echo "ab.sh: build $bench first" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)"
out=$(mktemp -d /tmp/herald-ab.XXXXXX)
echo "results in $out"

port=18300
# The system calls `--syscalls` counts with perf (those the fan-out and HTTP paths make).
perf_events=$(printf 'syscalls:sys_enter_%s,' writev sendto sendmsg write read recvfrom \
    epoll_wait futex sched_yield)
perf_events=${perf_events%,}
# One run: side label, server (executable and its own flags), round, whether to trace.
run() {
    local label=$1 round=$3 trace=$4
    local -a server_cmd
    read -r -a server_cmd <<<"$2"
    shift 4
    port=$((port + 1))
    "${server_cmd[0]}" serve --listen "127.0.0.1:$port" --log warn "${server_cmd[@]:1}" \
        >"$out/$label.$round.server.log" 2>&1 &
    local server=$!
    wait_healthy "$port"
    set_bench_urls "$port" "$scheme"
    "${generator_prefix[@]}" "$bench" "${bench_urls[@]}" \
        --server-pid "$server" --json "$out/$label.$round.json" "$@" \
        >"$out/$label.$round.log" 2>&1 &
    local generator=$!
    if [ "$trace" = 1 ]; then
        # Attach after connecting and warming up (scenarios here connect in a few seconds).
        sleep 6
        if command -v perf >/dev/null; then
            timeout 10 perf stat -x, -o "$out/$label.$round.perf" -e "$perf_events" \
                -p "$server" -- sleep 5 >/dev/null 2>&1 || true
        else
            timeout 5 strace -c -f -p "$server" -o "$out/$label.$round.strace" >/dev/null 2>&1 || true
        fi
    fi
    wait "$generator" || true
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
}

for round in $(seq "$rounds"); do
    for side in "${sides[@]}"; do
        run "${side%%=*}" "${side#*=}" "$round" 0 "$@"
    done
done
if [ "$syscalls" = 1 ]; then
    for side in "${sides[@]}"; do
        run "${side%%=*}" "${side#*=}" trace 1 "$@"
    done
fi

python3 - "$out" "$rounds" "$syscalls" "${sides[@]%%=*}" <<'PY'
import json, re, statistics, sys
out, rounds, syscalls, labels = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4:]
def median(xs):
    return statistics.median(xs) if xs else float("nan")
for label in labels:
    cpu, user, p99, publish_p50, publish_p99, rate, switches, lost = [], [], [], [], [], [], [], 0
    for r in range(1, rounds + 1):
        d = json.load(open(f"{out}/{label}.{r}.json"))
        server = d["server"]
        c = server["cpu_us_per_delivery"] if d["deliveries"]["received"] else None
        if c is None:
            c = server["cpu_seconds"] * 1e6 / max(d["publish"]["published"], 1)
        cpu.append(c)
        # The user-mode part of it (the server's own code; the rest is the kernel's).
        user.append(c * server["cpu_user_seconds"] / server["cpu_seconds"] if server["cpu_seconds"] else 0)
        p99.append(d["latency_us"]["p99"] / 1000)
        # How long the publisher waited for each answer.
        publish_p50.append(d["publish"]["latency_us"]["p50"] / 1000)
        publish_p99.append(d["publish"]["latency_us"]["p99"] / 1000)
        rate.append(d["publish"]["achieved_rate"])
        # How often the server's threads blocked with nothing to do, per publish.
        switches.append((server.get("voluntary_switches") or 0) / max(d["publish"]["published"], 1))
        lost += d["deliveries"]["lost"]
        print(f"{label} run {r}: server CPU {c:.2f} µs (user {user[-1]:.2f}), "
              f"p99 {p99[-1]:.2f} ms, publish p50/p99 {publish_p50[-1]:.2f}/{publish_p99[-1]:.2f} ms, "
              f"{rate[-1]:,.0f} publishes/s, {switches[-1]:.2f} voluntary switches per publish, "
              f"lost {d['deliveries']['lost']}")
    print(f"{label} median: server CPU {median(cpu):.2f} µs (user {median(user):.2f}), "
          f"p99 {median(p99):.2f} ms, publish p50/p99 {median(publish_p50):.2f}/{median(publish_p99):.2f} ms, "
          f"{median(rate):,.0f} publishes/s, {median(switches):.2f} voluntary switches per publish, "
          f"lost {lost} (all runs)")
    if syscalls:
        published = json.load(open(f"{out}/{label}.trace.json"))["publish"]["achieved_rate"] * 5
        counts = {}
        try:
            # perf stat -x, lines: count,unit,event,… ("<not counted>" when it could not).
            for line in open(f"{out}/{label}.trace.perf"):
                fields = line.strip().split(",")
                if len(fields) > 2 and fields[0].isdigit() and "sys_enter_" in fields[2]:
                    counts[fields[2].split("sys_enter_")[1]] = int(fields[0])
            how = "perf"
        except FileNotFoundError:
            for line in open(f"{out}/{label}.trace.strace"):
                m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
                if m and m.group(2) != "total":
                    counts[m.group(2)] = int(m.group(1))
            how = "strace"
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:8]
        print(f"{label} system calls per publish (5 s, {how}): " +
              ", ".join(f"{name} {n / published:.2f}" for name, n in top))
PY
