#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzingclient cases against Herald's WebSocket codec.
#
# Builds herald with the `conformance` feature (adds the `GET /echo` endpoint, which runs the
# same FrameReader, frame writers and closing handshake as /listen, with an echo in place of
# the command protocol), starts it on a free port with max-body raised to 16 MiB + 1 KiB (the
# 9.x cases send messages of up to 16 MiB), runs every case with kosoku (the Autobahn case
# files on Python 3; `pip install kosoku`), and writes a summary to stdout and the full
# report under conformance/reports/ (not committed).
#
# Usage: conformance/autobahn.sh [-i CASE-GLOB ...]   (arguments go to kosoku)
# Not part of CI: it needs pip and takes a few minutes.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
command -v kosoku >/dev/null || { echo "kosoku not found: pip install kosoku" >&2; exit 2; }

cargo build -p herald-server --features conformance
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
log="$(mktemp)"
target/debug/herald serve --listen "127.0.0.1:$port" --max-body $((16 * 1024 * 1024 + 1024)) \
    --log warn >"$log" 2>&1 &
herald=$!
trap 'kill "$herald" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.1
done

out="conformance/reports"
rm -rf "$out" "$out.log"
# kosoku exits 1 when any case is not OK, including the compression cases Herald does not
# implement; summarize.py decides what counts as a failure.
kosoku "ws://127.0.0.1:$port/echo" -o "$out" "$@" >"$out.log" 2>&1 || true
tail -n 1 "$out.log"
status=0
python3 conformance/summarize.py "$out" || status=$?
if ! kill -0 "$herald" 2>/dev/null; then
    echo "herald died during the run:" >&2
    cat "$log" >&2
    exit 1
fi
exit "$status"
