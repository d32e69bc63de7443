#!/usr/bin/env bash
# A load balancer (nginx, from Debian) in front of two runtime + gateway pairs, with
# docs/deploy/nginx.conf.template as the deployment recipe has it. Checks, one summary line each:
#   - both pairs serve: 20 GET /v1/models and 20 echo completions through nginx all answer 200,
#     and each pair's /metrics counts some of them;
#   - server-sent events pass unbuffered: a streamed generation's events arrive spread over its
#     time, not all at its end;
#   - failover: under a steady flow of echo completions (and slow generations in flight), one pair
#     is killed with SIGKILL; every request started after it died answers 200 through the other.
#     The in-flight requests that failed with 502 are counted and printed (reported, not
#     required to be 0: nginx does not send a POST that a dead gateway had taken elsewhere).
# Exits non-zero when a check fails; stops what it started (nginx, both pairs) in every case.
#
# Usage: scripts/gateway-lb.sh [SHM_RUNTIME_BIN]   (default target/release/shm-runtime; any
# build: the pairs serve the built-in echo and sleep models). Idempotent: installs nginx and curl
# with apt-get when missing and root, else fails saying how to get them. nginx runs with its own
# configuration, pid file, logs and temporary files in a temporary directory; the system's
# configuration is not read.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C # a decimal point in $EPOCHREALTIME

bin=${1:-target/release/shm-runtime}
template=docs/deploy/nginx.conf.template
flow_seconds=6 # the steady flow's length; the kill comes 2 s into it
loops=4        # concurrent request loops in the flow

fail() {
  echo "gateway-lb: FAILED: $*" >&2
  exit 1
}

# need TOOL PACKAGE: the tool (also looked for in /usr/sbin), installed from Debian when missing
# and root.
need() {
  PATH=$PATH:/usr/sbin command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "gateway-lb: installing $2 (apt-get)"
    if ! { apt-get install -y -qq "$2" >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$2" >/dev/null 2>&1; }; }; then
      fail "cannot install $2 with apt-get"
    fi
    PATH=$PATH:/usr/sbin command -v "$1" >/dev/null 2>&1 || fail "$2 installed but $1 is not on PATH"
  else
    fail "$1 is missing: install it (Debian: sudo apt-get install $2), or run this script as root"
  fi
}
need nginx nginx
need curl curl
nginx=$(PATH=$PATH:/usr/sbin command -v nginx)
[ -x "$bin" ] || fail "no executable $bin: build it with cargo build --release -p shm-runtime-cli (or pass its path)"
[ -f "$template" ] || fail "no $template"

tmp=$(mktemp -d)
chmod 755 "$tmp" # nginx's workers (nobody, when started as root) read below it
names=("lb-a-$$-$RANDOM" "lb-b-$$-$RANDOM")
pids=("" "")
addrs=("" "")
bg=()
nginx_pid=""
cleanup() {
  local p i
  for p in "${bg[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$nginx_pid" ]; then
    kill -TERM "$nginx_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$nginx_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$nginx_pid" 2>/dev/null || true
  fi
  for i in 0 1; do
    p=${pids[$i]}
    [ -n "$p" ] || continue
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
    # The killed pair leaves its segment behind.
    "$bin" cleanup "${names[$i]}" >/dev/null 2>&1 || true # refuses a live one
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

failures=0
check() { # check OK MESSAGE: prints the summary line, counts a failure
  if [ "$1" = 0 ]; then
    echo "gateway-lb: ok: $2"
  else
    echo "gateway-lb: FAILED: $2" >&2
    failures=$((failures + 1))
  fi
}

# The two pairs: a runtime with its gateway each, on ports the kernel picks.
for i in 0 1; do
  "$bin" serve --name "${names[$i]}" --model echo=echo --model slow=sleep --http 127.0.0.1:0 \
    >"$tmp/pair$i.out" 2>"$tmp/pair$i.err" &
  pids[i]=$!
done
for i in 0 1; do
  for _ in $(seq 1 300); do
    addrs[i]=$(sed -n 's|^gateway for .* on http://||p' "$tmp/pair$i.out")
    [ -n "${addrs[$i]}" ] && break
    kill -0 "${pids[$i]}" 2>/dev/null || { tail -5 "$tmp/pair$i.err" >&2; fail "pair $i exited before listening"; }
    sleep 0.1
  done
  [ -n "${addrs[$i]}" ] || fail "pair $i did not listen within 30 s"
  code=""
  for _ in $(seq 1 300); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://${addrs[$i]}/health" || true)
    [ "$code" = 200 ] && break
    sleep 0.1
  done
  [ "$code" = 200 ] || fail "pair $i: /health answered $code within 30 s"
done
echo "gateway-lb: pair A ${names[0]} on ${addrs[0]} (pid ${pids[0]}), pair B ${names[1]} on ${addrs[1]} (pid ${pids[1]})"

# nginx: the template in a configuration of its own (pid, logs, temporary files in $tmp), on a
# free port (another one when the port was taken between the look and the bind).
listen=""
for _ in $(seq 1 10); do
  port=$((20000 + RANDOM % 40000))
  listen=127.0.0.1:$port
  sed -e "s|@LISTEN@|$listen|" -e "s|@GATEWAY_1@|${addrs[0]}|" -e "s|@GATEWAY_2@|${addrs[1]}|" \
    "$template" >"$tmp/shm-runtime.conf"
  cat >"$tmp/nginx.conf" <<EOF
worker_processes 1;
pid $tmp/nginx.pid;
error_log $tmp/error.log warn;
events { worker_connections 1024; }
http {
    log_format lb '\$msec \$status "\$upstream_addr" "\$upstream_status" \$request_time "\$request"';
    access_log $tmp/access.log lb;
    client_body_temp_path $tmp/client_body;
    proxy_temp_path $tmp/proxy;
    fastcgi_temp_path $tmp/fastcgi;
    uwsgi_temp_path $tmp/uwsgi;
    scgi_temp_path $tmp/scgi;
    include $tmp/shm-runtime.conf;
}
EOF
  "$nginx" -t -q -p "$tmp/" -c "$tmp/nginx.conf" -e "$tmp/error.log" 2>"$tmp/nginx-t.err" ||
    { cat "$tmp/nginx-t.err" >&2; fail "nginx -t rejects the configuration"; }
  if "$nginx" -p "$tmp/" -c "$tmp/nginx.conf" -e "$tmp/error.log" 2>"$tmp/nginx.err"; then
    for _ in $(seq 1 50); do [ -s "$tmp/nginx.pid" ] && break; sleep 0.1; done
    nginx_pid=$(cat "$tmp/nginx.pid")
    break
  fi
  grep -q 'in use' "$tmp/nginx.err" || { cat "$tmp/nginx.err" >&2; fail "nginx did not start"; }
done
[ -n "$nginx_pid" ] || fail "nginx found no free port in 10 tries"
lb="http://$listen"
for _ in $(seq 1 50); do curl -s -o /dev/null "$lb/livez" && break; sleep 0.1; done
echo "gateway-lb: nginx $($nginx -v 2>&1 | sed 's|.*/||') on $lb (pid $nginx_pid)"

echo_body='{"model":"echo","prompt":"ping"}'
# gw_count I ROUTE: requests of ROUTE that pair I's gateway answered 200 (from its /metrics).
gw_count() {
  curl -s "http://${addrs[$1]}/metrics" |
    awk -v r="route=\"$2\"" '/^shm_runtime_gateway_http_requests_total\{/ && index($0, r) && /status="200"/ {s += $2} END {print s + 0}'
}
# rt_count I: requests pair I's runtime accepted.
rt_count() {
  curl -s "http://${addrs[$1]}/metrics" | awk '/^shm_runtime_requests_total\{/ {s += $2} END {print s + 0}'
}

# 1. Both pairs serve.
models_ok=0 echo_ok=0
for _ in $(seq 1 20); do
  [ "$(curl -s -o "$tmp/models.json" -w '%{http_code}' "$lb/v1/models")" = 200 ] &&
    grep -q '"id":"echo"' "$tmp/models.json" && models_ok=$((models_ok + 1))
done
for _ in $(seq 1 20); do
  [ "$(curl -s -o "$tmp/echo.json" -w '%{http_code}' -H 'content-type: application/json' -d "$echo_body" "$lb/v1/completions")" = 200 ] &&
    grep -q '"text":"ping"' "$tmp/echo.json" && echo_ok=$((echo_ok + 1))
done
ma=$(gw_count 0 /v1/models) mb=$(gw_count 1 /v1/models)
ea=$(gw_count 0 /v1/completions) eb=$(gw_count 1 /v1/completions)
ra=$(rt_count 0) rb=$(rt_count 1)
check "$([ "$models_ok" = 20 ] && [ "$echo_ok" = 20 ] && [ "$ma" -gt 0 ] && [ "$mb" -gt 0 ] && [ $((ma + mb)) = 20 ] &&
  [ "$ea" -gt 0 ] && [ "$eb" -gt 0 ] && [ $((ea + eb)) = 20 ] && [ "$ra" -gt 0 ] && [ "$rb" -gt 0 ] && echo 0 || echo 1)" \
  "both pairs serve through nginx: /v1/models $models_ok/20 answered 200 (pair A's gateway counted $ma, B's $mb), echo completions $echo_ok/20 (A $ea, B $eb; runtimes accepted A $ra, B $rb)"

# 2. Server-sent events unbuffered: 40 tokens of 10 ms from the sleep model, each line stamped
# when curl hands it over.
stream_body='{"model":"slow","stream":true,"max_tokens":40,"messages":[{"role":"user","content":"hi"}]}'
curl -sN --max-time 20 -H 'content-type: application/json' -d "$stream_body" "$lb/v1/chat/completions" |
  while IFS= read -r line; do if [ -n "$line" ]; then echo "$EPOCHREALTIME $line"; fi; done >"$tmp/sse.txt"
spread=$(awk '$2 == "data:" {if (!f) f = $1; l = $1} END {printf "%.3f", l - f}' "$tmp/sse.txt")
events=$(grep -c ' data: ' "$tmp/sse.txt" || true)
last=$(tail -n1 "$tmp/sse.txt" | cut -d' ' -f2-)
check "$([ "$last" = "data: [DONE]" ] && awk -v s="$spread" 'BEGIN {exit !(s >= 0.2)}' && echo 0 || echo 1)" \
  "server-sent events pass unbuffered: $events events over $spread s (40 tokens of 10 ms), the last data: [DONE]"

# 3. Failover. A steady flow of echo completions from $loops loops, each request logged as
# "start end status"; slow generations (1 s each, non-streamed and streamed) in flight on both
# pairs; pair A killed 2 s in.
flow_start=$EPOCHREALTIME
flow_end=$(awk -v s="$flow_start" -v d="$flow_seconds" 'BEGIN {printf "%.6f", s + d}')
for k in $(seq 1 "$loops"); do
  (
    while awk -v n="$EPOCHREALTIME" -v e="$flow_end" 'BEGIN {exit !(n < e)}'; do
      s=$EPOCHREALTIME
      code=$(curl -s --max-time 10 -o "$tmp/flow$k.json" -w '%{http_code}' -H 'content-type: application/json' \
        -d "$echo_body" "$lb/v1/completions" || true)
      [ "$code" = 200 ] && ! grep -q '"text":"ping"' "$tmp/flow$k.json" && code=bad-body
      echo "$s $EPOCHREALTIME $code"
    done >"$tmp/flow$k.log"
  ) &
  bg+=("$!")
done
sleep 1.5
slow_body='{"model":"slow","prompt":"hi","max_tokens":100}'
for k in 1 2 3 4 5 6; do
  curl -s --max-time 30 -o "$tmp/slow$k.json" -w '%{http_code}\n' -H 'content-type: application/json' \
    -d "$slow_body" "$lb/v1/completions" >"$tmp/slow$k.code" 2>&1 &
  bg+=("$!")
done
for k in 1 2; do
  curl -sN --max-time 30 -o "$tmp/slowstream$k.txt" -w '%{http_code}\n' -H 'content-type: application/json' \
    -d "$stream_body" "$lb/v1/chat/completions" >"$tmp/slowstream$k.code" 2>&1 &
  bg+=("$!")
done
sleep 0.5
kill_start=$EPOCHREALTIME
kill -KILL "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true
kill_done=$EPOCHREALTIME
echo "gateway-lb: killed pair A (SIGKILL) $(awk -v a="$flow_start" -v b="$kill_start" 'BEGIN {printf "%.2f", b - a}') s into the flow; it was gone $(awk -v a="$kill_start" -v b="$kill_done" 'BEGIN {printf "%.1f", (b - a) * 1000}') ms later"
for p in "${bg[@]}"; do wait "$p" || true; done
bg=()

cat "$tmp"/flow*.log >"$tmp/flow.log"
# Requests started after pair A was gone: all must be 200 with the echo.
read -r after after_ok after_bad <<<"$(awk -v k="$kill_done" '$1 > k {n++; if ($3 == 200) ok++; else bad = bad " " $3} END {printf "%d %d %s", n, ok, (bad == "" ? "-" : bad)}' "$tmp/flow.log")"
check "$([ "$after" -ge 20 ] && [ "$after" = "$after_ok" ] && echo 0 || echo 1)" \
  "after the kill: $after_ok/$after new requests through nginx answered 200 from pair B$([ "$after_bad" = - ] || echo "; failed: $after_bad")"
# Requests in flight when it was killed (started before it was gone, ended after the kill).
read -r inflight inflight_502 inflight_other <<<"$(awk -v s="$kill_start" -v k="$kill_done" '$1 <= k && $2 >= s {n++; if ($3 == 502) f++; else if ($3 != 200) o++} END {printf "%d %d %d", n, f, o}' "$tmp/flow.log")"
before=$(awk -v s="$kill_start" '$2 < s' "$tmp/flow.log" | wc -l)
before_bad=$(awk -v s="$kill_start" '$2 < s && $3 != 200' "$tmp/flow.log" | wc -l)
check "$([ "$before" -gt 0 ] && [ "$before_bad" = 0 ] && echo 0 || echo 1)" \
  "before the kill: $((before - before_bad))/$before flow requests answered 200"
slow_codes=$(cat "$tmp"/slow?.code | sort | uniq -c | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}')
slow_502=$(grep -c '^502$' "$tmp"/slow?.code | awk -F: '{s += $2} END {print s + 0}')
slow_ok=$(grep -l '"text":"t0 ' "$tmp"/slow?.json 2>/dev/null | wc -l)
streams_done=$(grep -l '^data: \[DONE\]' "$tmp"/slowstream?.txt 2>/dev/null | wc -l)
# Every slow request either completed (pair B) or failed with 502 (pair A, killed under it).
check "$([ $((slow_ok + slow_502)) = 6 ] && echo 0 || echo 1)" \
  "slow generations in flight at the kill: $slow_ok/6 completed, $slow_502 failed with 502 (HTTP: $slow_codes); streams: $streams_done/2 ended with data: [DONE], $((2 - streams_done)) cut"
rb_after=$(rt_count 1)
check "$([ "$rb_after" -gt "$rb" ] && echo 0 || echo 1)" "pair B's runtime accepted $((rb_after - rb)) requests during the flow"
models_after=0
for _ in $(seq 1 10); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$lb/v1/models")" = 200 ] && models_after=$((models_after + 1))
done
check "$([ "$models_after" = 10 ] && echo 0 || echo 1)" "after the kill: GET /v1/models $models_after/10 answered 200"
echo "gateway-lb: 502s among the requests in flight at the kill: $((inflight_502 + slow_502)) ($inflight_502 of $inflight echo completions, $slow_502 of 6 slow generations; other failures in flight: $inflight_other; streams cut: $((2 - streams_done)) of 2); $(wc -l <"$tmp/flow.log") flow requests in all"

if [ "$failures" -gt 0 ]; then
  echo "gateway-lb: FAILED: $failures checks failed (nginx error log: $(tail -3 "$tmp/error.log" | tr '\n' ' '))" >&2
  exit 1
fi
echo "gateway-lb: ok"
