#!/usr/bin/env bash
# Side-by-side benchmark: Herald against nginx + nchan (and the `herald-bench bare` floor server
# for the WebSocket scenarios), with herald-bench as the load generator.
#
#   bench/compare.sh [--repeat R] [--rev REV] [--scenarios a,b,…] [--duration D]
#                    [--time-limit SECONDS] [--out DIR] [--no-record]
#
#   --repeat R        runs of every scenario against every server (default 3); medians are
#                     reported, with the min–max range
#   --rev REV         build Herald from this commit (git archive into a temporary directory,
#                     target dir target/bench-rev) instead of the working tree
#   --scenarios LIST  a subset of: idle idlesse idlelongpoll fanout50 fanout100 fanout400one
#                     many sse longpoll publish publish40k, or fanout200 and fanout400
#                     (saturation from 4 publisher connections: not in the default set)
#   --duration D      measured publish phase of each run (default 10s)
#   --time-limit S    bound on the whole script, build included (default 3600 s): runs that
#                     would not fit are skipped (and listed as skipped), and a watchdog stops
#                     everything at S + 120 s
#   --out DIR         results directory (default bench/results/<UTC date-time>)
#   --no-record       leave BENCHMARKS.md alone (by default the run's table of medians and
#                     the targets judged from it replace its "Latest run" section)
#
# Runs as root on Debian: installs nginx and libnginx-mod-nchan when the module is missing and
# stops the system nginx service if it runs. Servers listen on 127.0.0.1 only: Herald on 18000,
# nginx + nchan on 18080, bare on 18090; no other port is used. Every server is started fresh
# for every run (so RSS per connection is measured on a fresh process) and stopped afterwards;
# an EXIT/INT/TERM trap stops whatever is still running.
#
# Writes one herald-bench JSON per run (<scenario>.<server>.<n>.json, with a .ctx.json beside
# it: load average and the CPU other processes used during the run), server logs, and
# summary.md (machine, command, table of medians, targets judged from them, every run) via
# bench/summarize.py, and (unless --no-record) the same medians and targets into BENCHMARKS.md
# via bench/record.py.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPEAT=3
REV=
SCENARIOS="idle idlesse idlelongpoll fanout50 fanout100 fanout400one many sse longpoll publish publish40k"
DURATION=10s
TIME_LIMIT=3600
OUT=
RECORD=true
COMMAND="bench/compare.sh${*:+ $*}"

usage() { sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --repeat) REPEAT=$2; shift 2 ;;
        --rev) REV=$2; shift 2 ;;
        --scenarios) SCENARIOS=${2//,/ }; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --time-limit) TIME_LIMIT=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-record) RECORD=false; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --repeat must be a positive integer" >&2; exit 2; }
[[ $TIME_LIMIT =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --time-limit is in seconds" >&2; exit 2; }
for s in $SCENARIOS; do
    case $s in idle|idlesse|idlelongpoll|fanout50|fanout100|fanout200|fanout400|fanout400one|many|sse|longpoll|publish|publish40k) ;;
        *) echo "compare.sh: unknown scenario $s" >&2; exit 2 ;; esac
done
# Seconds in a humantime duration such as 10s, 1500ms or 1m (for the time budget only).
duration_seconds() {
    case $1 in
        *ms) echo $(( (${1%ms} + 999) / 1000 )) ;;
        *s) echo "${1%s}" ;;
        *m) echo $(( ${1%m} * 60 )) ;;
        *) echo 60 ;;
    esac
}
DURATION_S=$(duration_seconds "$DURATION")

START=$(date +%s)
STAMP=$(date -u +%Y-%m-%d-%H%M%S)
OUT=${OUT:-$ROOT/bench/results/$STAMP}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/herald-compare.XXXXXX)

HERALD_PORT=18000
NCHAN_PORT=18080
BARE_PORT=18090

log() { printf '[%5ds] %s\n' $(( $(date +%s) - START )) "$*" | tee -a "$OUT/compare.log" >&2; }

# --- cleanup: every process this script started, by pid ------------------------------------
SERVER_PID=        # the current server (herald, nginx master or bare)
SERVER_KIND=
BENCH_PID=         # the current herald-bench run
WATCHDOG_PID=

stop_server() {
    local pid=$SERVER_PID
    [[ -n $pid ]] || return 0
    SERVER_PID=
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "server $SERVER_KIND (pid $pid) did not stop within 15 s of SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    # nginx workers exit with their master; make sure none is left behind.
    if [[ $SERVER_KIND == nchan ]]; then
        for w in ${NGINX_WORKERS//,/ }; do
            kill -0 "$w" 2>/dev/null && kill -KILL "$w" 2>/dev/null || true
        done
    fi
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $BENCH_PID ]] && kill -0 "$BENCH_PID" 2>/dev/null; then
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        wait "$BENCH_PID" 2>/dev/null || true
    fi
    stop_server
    if [[ -n $WATCHDOG_PID ]]; then
        kill "$WATCHDOG_PID" 2>/dev/null || true
        wait "$WATCHDOG_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "stopped (SIGTERM: time limit or killed)"; exit 143' TERM

# Hard bound: the watchdog stops the script (whose trap stops the servers) if the budget plus
# a margin is exceeded anyway.
( sleep $(( TIME_LIMIT + 120 )) && kill -TERM $$ ) 2>/dev/null &
WATCHDOG_PID=$!

# --- ports ---------------------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds
    local i
    for i in $(seq 1 $(( $2 * 10 ))); do
        port_open "$1" && return 0
        sleep 0.1
    done
    return 1
}

wait_port_free() { # port seconds
    local i
    for i in $(seq 1 $(( $2 * 10 ))); do
        port_open "$1" || return 0
        sleep 0.1
    done
    return 1
}

# --- setup ---------------------------------------------------------------------------------
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
if [[ ! -f $NCHAN_MODULE ]] || ! command -v nginx >/dev/null; then
    log "installing nginx and libnginx-mod-nchan"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx libnginx-mod-nchan
fi
for tool in jq python3; do
    if ! command -v "$tool" >/dev/null; then
        log "installing $tool"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$tool"
    fi
done
# The Debian service would compete for CPU (and holds port 80): stop it if it runs.
if [[ -f /run/nginx.pid ]] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
    log "stopping the system nginx service"
    service nginx stop || nginx -s stop || true
fi

for port in $HERALD_PORT $NCHAN_PORT $BARE_PORT; do
    if port_open "$port"; then
        echo "compare.sh: something already listens on 127.0.0.1:$port; stop it first" >&2
        exit 1
    fi
done

ulimit -n "$(ulimit -Hn)"
if (( $(ulimit -n) < 20000 )); then
    log "warning: open files limited to $(ulimit -n); the idle scenario needs 15,000 sockets per process"
fi

cd "$ROOT"
HERALD_DIRTY=
if [[ -n $REV ]]; then
    HERALD_COMMIT=$(git rev-parse --short=12 "$REV^{commit}")
    log "building herald from commit $HERALD_COMMIT (git archive, target/bench-rev)"
    mkdir -p "$WORK/src"
    git archive --format=tar "$HERALD_COMMIT" | tar -x -C "$WORK/src"
    CARGO_TARGET_DIR="$ROOT/target/bench-rev" cargo build --release --locked -q \
        --manifest-path "$WORK/src/Cargo.toml" -p herald-server 2>&1 | tee -a "$OUT/compare.log"
    HERALD_BIN="$ROOT/target/bench-rev/release/herald"
else
    HERALD_COMMIT=$(git rev-parse --short=12 HEAD)
    if [[ -n $(git status --porcelain -- crates/herald-core crates/herald-server Cargo.toml Cargo.lock) ]]; then
        HERALD_DIRTY="with uncommitted changes in crates/herald-core, crates/herald-server or Cargo.*"
    fi
    log "building herald from the working tree ($HERALD_COMMIT${HERALD_DIRTY:+, $HERALD_DIRTY})"
    cargo build --release -q -p herald-server 2>&1 | tee -a "$OUT/compare.log"
    HERALD_BIN="$ROOT/target/release/herald"
fi
log "building herald-bench from the working tree"
cargo build --release -q -p herald-bench 2>&1 | tee -a "$OUT/compare.log"
BENCH_BIN="$ROOT/target/release/herald-bench"
BENCH_COMMIT=$(git rev-parse --short=12 HEAD)
[[ -n $(git status --porcelain -- crates/herald-bench) ]] && BENCH_COMMIT+=" (with uncommitted changes in crates/herald-bench)"

# --- machine -------------------------------------------------------------------------------
{
    echo "date_utc=$(date -u '+%Y-%m-%d %H:%M:%S')"
    echo "command=$COMMAND"
    echo "nproc=$(nproc)"
    echo "cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "kernel=$(uname -sr)"
    echo "os=$(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "nginx=$(nginx -v 2>&1 | sed 's/^nginx version: //')"
    echo "nchan=$(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo unknown)"
    echo "herald_commit=$HERALD_COMMIT${HERALD_DIRTY:+ ($HERALD_DIRTY)}"
    echo "herald_subject=$(git log -1 --format=%s "$HERALD_COMMIT")"
    echo "bench_commit=$BENCH_COMMIT"
    echo "rustc=$(rustc --version)"
    echo "repeat=$REPEAT"
    echo "duration=$DURATION"
} > "$OUT/machine.txt"

# --- servers -------------------------------------------------------------------------------
NGINX_WORKERS=
SERVER_PIDS=       # what herald-bench samples (comma-separated)

start_server() { # kind run-name
    local kind=$1 name=$2 port
    SERVER_KIND=$kind
    case $kind in
        herald)
            port=$HERALD_PORT
            "$HERALD_BIN" serve --listen "127.0.0.1:$HERALD_PORT" --log warn \
                > "$OUT/$name.server.log" 2>&1 &
            SERVER_PID=$!
            SERVER_PIDS=$SERVER_PID
            ;;
        nchan)
            port=$NCHAN_PORT
            local prefix="$WORK/nginx"
            rm -rf "$prefix" && mkdir -p "$prefix"
            sed -e "s#@PREFIX@#$prefix#g" -e "s#@MODULE@#$NCHAN_MODULE#g" \
                "$ROOT/bench/nchan.conf" > "$prefix/nginx.conf"
            # daemon off: the master stays this script's child.
            nginx -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" \
                > "$OUT/$name.server.log" 2>&1 &
            SERVER_PID=$!
            ;;
        bare)
            port=$BARE_PORT
            "$BENCH_BIN" bare --listen "127.0.0.1:$BARE_PORT" --threads 2 \
                > "$OUT/$name.server.log" 2>&1 &
            SERVER_PID=$!
            SERVER_PIDS=$SERVER_PID
            ;;
    esac
    if ! wait_port "$port" 15; then
        log "$kind did not start listening on $port (see $name.server.log)"
        return 1
    fi
    if [[ $kind == nchan ]]; then
        # Sample the workers (the master only supervises): CPU and RSS are summed.
        local i
        for i in $(seq 1 50); do
            NGINX_WORKERS=$(pgrep -P "$SERVER_PID" | paste -sd, -)
            [[ $(tr ',' '\n' <<< "$NGINX_WORKERS" | grep -c .) -ge 2 ]] && break
            sleep 0.1
        done
        SERVER_PIDS=$NGINX_WORKERS
        [[ -n $SERVER_PIDS ]] || { log "no nginx workers found"; return 1; }
    fi
}

server_alive() {
    [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null || return 1
    if [[ $SERVER_KIND == nchan ]]; then
        local w
        for w in ${NGINX_WORKERS//,/ }; do kill -0 "$w" 2>/dev/null || return 1; done
    fi
}

finish_server() { # run-name
    local name=$1 port
    case $SERVER_KIND in herald) port=$HERALD_PORT ;; nchan) port=$NCHAN_PORT ;; bare) port=$BARE_PORT ;; esac
    if [[ $SERVER_KIND == nchan ]]; then
        cp "$WORK/nginx/error.log" "$OUT/$name.nginx-error.log" 2>/dev/null || true
    fi
    stop_server
    wait_port_free "$port" 10 || log "port $port still answers after stopping $SERVER_KIND"
}

# --- measurement helpers ---------------------------------------------------------------------
# Busy and total jiffies of the whole machine.
sys_jiffies() { awk '/^cpu / {busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6}' /proc/stat; }
# utime + stime of the given pids, in jiffies.
pids_jiffies() {
    local total=0 p f a
    for p in ${1//,/ }; do
        if f=$(cat "/proc/$p/stat" 2>/dev/null); then
            f=${f##*) }
            read -r -a a <<< "$f"
            total=$(( total + a[11] + a[12] ))
        fi
    done
    echo "$total"
}

# --- scenarios -----------------------------------------------------------------------------
# Prints the herald-bench arguments of a scenario (URLs excluded).
scenario_args() {
    case $1 in
        idle)      echo "--transport ws --subscribers 15000 --channels 100 --rate 0 --warmup 0s --duration 1s --drain 0s --connect-rate 2000" ;;
        idlesse)   echo "--transport sse --subscribers 15000 --channels 100 --rate 0 --warmup 0s --duration 1s --drain 0s --connect-rate 2000" ;;
        idlelongpoll) echo "--transport longpoll --subscribers 15000 --channels 100 --rate 0 --warmup 0s --duration 1s --drain 0s --connect-rate 2000" ;;
        fanout50)  echo "--transport ws --subscribers 2000 --channels 1 --rate 50 --payload-size 100 --duration $DURATION" ;;
        fanout100) echo "--transport ws --subscribers 2000 --channels 1 --rate 100 --payload-size 100 --duration $DURATION" ;;
        fanout200) echo "--transport ws --subscribers 2000 --channels 1 --rate 200 --payload-size 100 --duration $DURATION" ;;
        fanout400) echo "--transport ws --subscribers 2000 --channels 1 --rate 400 --payload-size 100 --duration $DURATION" ;;
        # The same load from one keep-alive publisher connection (a backend's usual way).
        fanout400one) echo "--transport ws --subscribers 2000 --channels 1 --rate 400 --pub-concurrency 1 --payload-size 100 --duration $DURATION" ;;
        many)      echo "--transport ws --subscribers 5000 --channels 1000 --rate 2000 --payload-size 100 --pub-concurrency 8 --duration $DURATION" ;;
        sse)       echo "--transport sse --subscribers 2000 --channels 1 --rate 50 --payload-size 100 --duration $DURATION" ;;
        longpoll)  echo "--transport longpoll --subscribers 2000 --channels 1 --rate 50 --payload-size 100 --duration $DURATION" ;;
        publish)   echo "--subscribers 0 --channels 100 --rate 1000000 --pub-concurrency 8 --payload-size 100 --duration $DURATION" ;;
        # The same connections at a rate both servers carry: publish latency at the same load.
        publish40k) echo "--subscribers 0 --channels 100 --rate 40000 --pub-concurrency 8 --payload-size 100 --duration $DURATION" ;;
    esac
}

scenario_servers() {
    case $1 in
        idle|fanout50|fanout100|fanout200|fanout400|fanout400one|many) echo "herald nchan bare" ;;
        *) echo "herald nchan" ;;
    esac
}

# Rough length of one run, seconds (connect + settle + warm-up + duration + drain + start/stop).
scenario_seconds() {
    case $1 in
        idle|idlesse|idlelongpoll) echo 20 ;;
        many) echo $(( DURATION_S + 15 )) ;;
        *) echo $(( DURATION_S + 12 )) ;;
    esac
}

url_args() { # server
    case $1 in
        herald) echo "--sub-url http://127.0.0.1:$HERALD_PORT/listen?cid={ch} --pub-url http://127.0.0.1:$HERALD_PORT/publish?cid={ch}" ;;
        nchan)  echo "--sub-url http://127.0.0.1:$NCHAN_PORT/sub?cid={ch} --pub-url http://127.0.0.1:$NCHAN_PORT/pub?cid={ch}" ;;
        bare)   echo "--sub-url ws://127.0.0.1:$BARE_PORT/?cid={ch} --pub-url http://127.0.0.1:$BARE_PORT/publish?cid={ch}" ;;
    esac
}

run_one() { # scenario server n
    local scenario=$1 server=$2 n=$3
    local name="$scenario.$server.$n"
    local args
    args="$(scenario_args "$scenario") $(url_args "$server")"
    if ! start_server "$server" "$name"; then
        echo "{\"run\":\"$name\",\"status\":\"server did not start\"}" > "$OUT/$name.ctx.json"
        finish_server "$name"
        return 0
    fi
    local load busy0 total0 busy1 total1 srv0 srv1 status=0
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    read -r busy0 total0 < <(sys_jiffies)
    srv0=$(pids_jiffies "$SERVER_PIDS")
    # timeout leads its own process group: stopping it (cleanup) stops the whole run.
    rm -f "$WORK/time"
    # shellcheck disable=SC2086
    timeout --kill-after=10 240 /usr/bin/time -f '%e %U %S' -o "$WORK/time" \
        "$BENCH_BIN" $args --server-pid "$SERVER_PIDS" \
        --label "$name" --json "$OUT/$name.json" --quiet > "$OUT/$name.txt" 2> "$OUT/$name.stderr" &
    BENCH_PID=$!
    wait "$BENCH_PID" || status=$?
    BENCH_PID=
    read -r busy1 total1 < <(sys_jiffies)
    srv1=$(pids_jiffies "$SERVER_PIDS")
    local alive=true
    server_alive || alive=false
    local wall=0 gen_u=0 gen_s=0
    [[ -s $WORK/time ]] && read -r wall gen_u gen_s < <(tail -1 "$WORK/time")
    [[ $wall =~ ^[0-9.]+$ ]] || { wall=0 gen_u=0 gen_s=0; }
    # CPU seconds used during the run by the machine, the server, the generator and every
    # other process (other users of this machine: noise).
    local cpu_all cpu_busy cpu_server cpu_gen
    cpu_all=$(jq -n "($total1 - $total0) / 100")
    cpu_busy=$(jq -n "($busy1 - $busy0) / 100")
    cpu_server=$(jq -n "($srv1 - $srv0) / 100")
    cpu_gen=$(jq -n "$gen_u + $gen_s")
    jq -n --arg run "$name" --arg scenario "$scenario" --arg server "$server" \
        --argjson repeat "$n" --argjson exit_status "$status" --argjson alive "$alive" \
        --arg pids "$SERVER_PIDS" --arg load "$load" --argjson wall "$wall" \
        --argjson all "$cpu_all" --argjson busy "$cpu_busy" --argjson srv "$cpu_server" \
        --argjson gen "$cpu_gen" \
        '{run: $run, scenario: $scenario, server: $server, repeat: $repeat,
          exit_status: $exit_status, server_alive_after: $alive, server_pids: $pids,
          loadavg_before: $load, wall_seconds: $wall, machine_cpu_seconds: $all,
          busy_cpu_seconds: $busy, server_cpu_seconds: $srv, generator_cpu_seconds: $gen,
          other_cpu_seconds: ([$busy - $srv - $gen, 0] | max)}' > "$OUT/$name.ctx.json"
    if [[ $status -ne 0 ]]; then
        log "$name: herald-bench exited with status $status (see $name.stderr)"
    fi
    if [[ $alive == false ]]; then
        log "$name: the server was no longer running after the run (see $name.server.log)"
    fi
    finish_server "$name"
    log "$name: $(jq -r '"connected \(.subscribers.connected), \(.publish.achieved_rate | floor) publishes/s, \(.deliveries.per_second) deliveries/s, lost \(.deliveries.lost), p99 \(.latency_us.p99) µs, server CPU \(.server.cpu_seconds) s, \(.server.cpu_us_per_delivery // "-") µs/delivery, RSS/conn \(.server.bytes_per_idle_connection // "-" | tostring | .[0:7]) B, errors \(.errors | add // 0)"' "$OUT/$name.json" 2>/dev/null || echo "no result")"
}

SKIPPED=()
for scenario in $SCENARIOS; do
    for n in $(seq 1 "$REPEAT"); do
        for server in $(scenario_servers "$scenario"); do
            need=$(scenario_seconds "$scenario")
            if (( $(date +%s) - START + need > TIME_LIMIT )); then
                log "skipping $scenario.$server.$n: it would not finish within --time-limit $TIME_LIMIT s"
                SKIPPED+=("$scenario.$server.$n")
                continue
            fi
            run_one "$scenario" "$server" "$n"
        done
    done
done

END=$(date +%s)
{
    echo "total_seconds=$(( END - START ))"
    echo "skipped=${SKIPPED[*]:-}"
} >> "$OUT/machine.txt"
python3 "$ROOT/bench/summarize.py" "$OUT" > "$OUT/summary.md"
if [[ $RECORD == true ]]; then
    python3 "$ROOT/bench/record.py" "$OUT" "$ROOT/BENCHMARKS.md"
    log "BENCHMARKS.md: its \"Latest run\" section now shows this run"
fi
log "done in $(( END - START )) s: $OUT/summary.md"
cat "$OUT/summary.md"
