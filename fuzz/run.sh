#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and fails if any of them crashes.
#
# Usage: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]   (default: 60 s, every target)
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Seeds are written
# here (nothing large is committed); the corpora grow under fuzz/corpus/ and crashes land in
# fuzz/artifacts/<target>/, both git-ignored. Reproduce a crash with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
set -uo pipefail

cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# A few valid and nearly valid inputs per target, so the fuzzer starts from the grammar.
seed() {
    local target="$1"
    shift
    mkdir -p "corpus/$target"
    local i=0
    for input in "$@"; do
        printf '%b' "$input" >"corpus/$target/seed-$i"
        i=$((i + 1))
    done
}
seed cursor '\x01k3f9:17' '\x03a:1,,7' '\x02' '\x010' '\x01zzzzzzzzzzzzz:1' '\x0299999999999999999999'
seed channel_id 'chat:5_a-b.c@d=e' 'a' 'a b' '\xc3\xa4'
seed query 'cid=a&cid=b%3A1&since=5&_=123' 'cid=a&transport=iframe&callback=app.handle' \
    'cid=a&limit=10&last_event_id=k3f9:1' 'cid=%ff&since=%%'
seed payload '{"text":"hi"}' '[1, 2.5e3, true, null, "\\u00e9\\ud83d\\ude00"]' '"\\ud800"' 'plain text'
seed ws_command '{"type":"subscribe","cid":"a","since":"k3f9:1","ref":1}' \
    '{"type":"publish","cid":"a","data":{"x":[1]}}' '{"type":"unsubscribe","cid":"a"}' \
    '{"type":"ping","ref":{"a":null}}' '{"type":"nope"}' \
    '{"type":"auth","token":"a.b.c","ref":2}' '{"type":"refresh","token":7}'
# Masked client frames: text "hi", a fragmented text with a ping between, a close 1000.
seed ws_frames '\x03\x81\x82\x01\x02\x03\x04\x69\x6b' \
    '\x05\x01\x81\x00\x00\x00\x00h\x89\x80\x00\x00\x00\x00\x80\x81\x00\x00\x00\x00i' \
    '\x01\x88\x82\x00\x00\x00\x00\x03\xe8' '\x02\x81\xfe\x04\x01\x00\x00\x00\x00'
seed config 'history_size = 7\nhistory_ttl = "5s"\nlisten = "127.0.0.1:9"\npublish_keys = ["a"]\n' \
    'max_body = 0' 'keepalive = "1h"\nclient_publish = true\n' \
    'allowed_origins = ["https://*.example.com"]\n[namespaces.chat]\nhistory_size = 5\nprivate = true\n'
# Mode byte 0: raw token text; 1: claim bytes signed with the target's HS256 secret.
seed request_head '\x4fGET /listen?cid=a HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n' \
    '\x07GET /listen/?cid=a HTTP/1.1\nContent-Length: 0\n\n' '\x4fPOST /publish HTTP/1.1\r\n\r\n' \
    '\x4fPOST /publish?cid=a HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}'
seed token '\x00eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.AAAA' '\x00a.b.c' '\x00' \
    '\x01{"sub":"u1","exp":4102444800,"channels":["room5","chat:*"],"publish":["*"]}' \
    '\x01{"sub":"u1","exp":1}' '\x01{"sub":7,"exp":"x","channels":[""]}'

cargo +nightly fuzz build || exit 1
mkdir -p logs
failed=()
printf '%-12s %8s %12s %s\n' target seconds execs result
for target in "${targets[@]}"; do
    log="logs/$target.log"
    if cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1; then
        result=ok
    else
        result="CRASH (see $log, fuzz/artifacts/$target/)"
        failed+=("$target")
    fi
    execs="$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -n 1)"
    printf '%-12s %8s %12s %s\n' "$target" "$seconds" "${execs:-?}" "$result"
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashed: ${failed[*]}" >&2
    exit 1
fi
