#!/usr/bin/env bash
# Measures `majordodo standalone` as a user meets it and prints a table:
#   - start time (process spawn until the banner is printed), on a fresh and on a recovered data
#     directory;
#   - `submit --jsonl` of N noop tasks (submission rate), and the time until all are finished;
#   - stop time after SIGTERM.
#
# Usage: crates/majordodo-cli/bench/standalone.sh [path/to/majordodo] [tasks] [batch size]
# Default binary: target/release/majordodo (build it with `cargo build --release -p majordodo-cli`).
set -euo pipefail

bin=${1:-target/release/majordodo}
tasks=${2:-100000}
batch=${3:-1000}
bin=$(realpath "$bin")
work=$(mktemp -d)
trap 'kill -9 "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"

now_ms() { date +%s%3N; }

# Starts standalone and waits for its banner; sets pid, url, start_ms.
start() {
    rm -f out.txt
    local t0; t0=$(now_ms)
    "$bin" standalone --http-port 0 --worker-port 0 >out.txt 2>err.txt &
    pid=$!
    for _ in $(seq 1 400); do
        grep -q "Stop with Ctrl-C" out.txt 2>/dev/null && break
        sleep 0.01
    done
    grep -q "Stop with Ctrl-C" out.txt || { cat err.txt; echo "standalone did not start"; exit 1; }
    start_ms=$(( $(now_ms) - t0 ))
    url=$(awk '/HTTP API:/ {print $3}' out.txt)
}

stop() {
    local t0; t0=$(now_ms)
    kill -TERM "$pid"
    wait "$pid"
    stop_ms=$(( $(now_ms) - t0 ))
}

finished() {
    "$bin" status --json --url "$url" | awk -F': ' '/"finishedTasks"/ {gsub(/[ ,]/, "", $2); print $2}'
}

start
fresh_start=$start_ms

seq 1 "$tasks" | awk '{printf "{\"tasktype\":\"noop\",\"data\":\"task %d\"}\n", $1}' >tasks.jsonl
t0=$(now_ms)
"$bin" submit --jsonl tasks.jsonl --batch-size "$batch" --url "$url" >submit.txt
submit_ms=$(( $(now_ms) - t0 ))
until [ "$(finished)" = "$tasks" ]; do sleep 0.05; done
all_done_ms=$(( $(now_ms) - t0 ))
stop
loaded_stop=$stop_ms

start
recovered_start=$start_ms
stop

printf '\n%-46s %12s\n' "measure" "value"
printf '%-46s %12s\n' "----------------------------------------------" "------------"
printf '%-46s %9d ms\n' "start, fresh data dir (spawn to banner)" "$fresh_start"
printf '%-46s %9d ms\n' "start, recovering $tasks tasks" "$recovered_start"
printf '%-46s %9d ms\n' "submit --jsonl $tasks tasks (batch $batch)" "$submit_ms"
printf '%-46s %9d /s\n' "  submission rate" "$(( tasks * 1000 / (submit_ms > 0 ? submit_ms : 1) ))"
printf '%-46s %9d ms\n' "  until all finished (noop, local worker)" "$all_done_ms"
printf '%-46s %9d ms\n' "stop after SIGTERM (after the run)" "$loaded_stop"
printf '%-46s %9d ms\n' "stop after SIGTERM (idle, recovered)" "$stop_ms"
