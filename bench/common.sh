# Helpers shared by bench/ab.sh, bench/profile.sh and bench/callgrind.sh (sourced, not run).

# Prints the scheme subscribers connect with for the herald-bench arguments given: `ws`, or
# `http` when they name another `--transport`.
subscriber_scheme() {
    local scheme=ws previous=
    for argument in "$@"; do
        if [ "$previous" = --transport ] && [ "$argument" != ws ]; then
            scheme=http
        fi
        previous=$argument
    done
    echo "$scheme"
}

# Waits until a server answers `/health` on 127.0.0.1:PORT, polling every 0.1 s at most
# TRIES times (default 50); a server that never answers is the run's to report.
wait_healthy() {
    local port=$1 tries=${2:-50}
    for _ in $(seq "$tries"); do
        curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 0
}

# Sets `bench_urls` to herald-bench's URL arguments for the server on 127.0.0.1:PORT, its
# subscribers connecting over SCHEME (see subscriber_scheme).
set_bench_urls() {
    bench_urls=(--sub-url "$2://127.0.0.1:$1/listen?cid={ch}"
        --pub-url "http://127.0.0.1:$1/publish?cid={ch}")
}
