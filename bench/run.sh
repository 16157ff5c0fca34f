#!/usr/bin/env bash
# Benchmarks our nbdkit (Swift) against Debian's nbdkit, qemu-nbd and nbd-server.
# Usage: bench/run.sh            (or: make bench)
# Environment:
#   ROUNDS=5          interleaved rounds (every server, every workload, once per round)
#   SIZE_MIB=1024     size of the memory disk, the file disk and the copy source
#   FIO_RUNTIME=5     seconds per fio job
#   STARTUP_N=30      captive start-ups per server per round
#   CONN_N=1000       connections per server per round (connection setup rate)
#   IDLE_K=64         idle connections held open for the memory-per-connection measurement
#   RAND_N=50000      requests per python-driven random-read run (TLS and its plaintext baseline)
#   WORKLOADS="..."   run only these workloads (names as in README.md, e.g. "tls-psk-seqread
#                     seqread-4conn"); default: all
#   BENCH_TIMEOUT=2400  hard limit for the whole run, in seconds
#   OURS=path         skip the build and benchmark this binary instead
# Output: bench/RESULTS.md, bench/ratios.png, raw data and logs in bench/out/ (gitignored).
set -euo pipefail

# Bounded in time: re-run ourselves under timeout(1); the EXIT trap below still cleans up.
if [ -z "${BENCH_UNDER_TIMEOUT:-}" ]; then
    export BENCH_UNDER_TIMEOUT=1
    exec timeout -k 15 "${BENCH_TIMEOUT:-2400}" "$0" "$@"
fi

ROUNDS=${ROUNDS:-5}
SIZE_MIB=${SIZE_MIB:-1024}
FIO_RUNTIME=${FIO_RUNTIME:-5}
STARTUP_N=${STARTUP_N:-30}
CONN_N=${CONN_N:-1000}
IDLE_K=${IDLE_K:-64}
RAND_N=${RAND_N:-50000}
WORKLOADS=${WORKLOADS:-}
SERVER_CPU=0
CLIENT_CPU=1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
OUT=$BENCH/out
HELPER=$BENCH/nbdhelper.py
REF=/usr/bin/nbdkit
SYSPY=/usr/bin/python3          # the system Python has the libnbd bindings
export PATH=/usr/bin:$PATH
export LC_ALL=C

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ---------------------------------------------------------------- cleanup
TMP=""
declare -A SPID=()       # server label -> pid of the running server
IDLE_PID=""
LIMIT_PID=""
cleanup() {
    local rc=$?
    set +e
    [ -n "$IDLE_PID" ] && kill "$IDLE_PID" 2>/dev/null
    [ -n "$LIMIT_PID" ] && kill "$LIMIT_PID" 2>/dev/null
    for l in "${!SPID[@]}"; do stop_server "$l"; done
    [ -n "$TMP" ] && rm -rf "$TMP"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- dependencies
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
need=(nbdkit qemu-utils nbd-server libnbd-bin python3-libnbd fio util-linux procps socat python3 coreutils gnutls-bin)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
want_plot=1
dpkg -s python3-matplotlib >/dev/null 2>&1 || missing+=(python3-matplotlib)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    $SUDO apt-get update -qq
    if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; then
        # The chart is optional: try again without it.
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]/python3-matplotlib/}" >/dev/null
    fi
fi
dpkg -s python3-matplotlib >/dev/null 2>&1 || want_plot=0

mkdir -p "$OUT"
rm -f "$OUT"/*.log "$OUT"/*.tsv "$OUT"/*.json "$OUT"/meta.env "$OUT"/RESULTS-*.md
TMP=$(mktemp -d /dev/shm/nbdbench.XXXXXX)
RAW=$OUT/raw.tsv
ERR=$OUT/errors.tsv
META=$OUT/meta.env
printf 'round\tserver\tbackend\tworkload\tmetric\tvalue\n' >"$RAW"
printf 'round\tserver\tbackend\tworkload\trc\tcommand\tdetail\n' >"$ERR"
TLSINFO=$OUT/tls.tsv
printf 'round\tserver\tmode\tnegotiated\n' >"$TLSINFO"
START_TIME=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
T_START=$EPOCHREALTIME

# ---------------------------------------------------------------- build ours
BUILD_NOTE=""
if [ -z "${OURS:-}" ]; then
    log "building release binary (.build-bench)"
    cd "$ROOT"
    if swift build -c release -Xswiftc -static-stdlib --scratch-path .build-bench >"$OUT/build.log" 2>&1; then
        OURS=$ROOT/.build-bench/release/nbdkit
        BUILD_NOTE="working tree at $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- Sources Package.swift || echo ' plus uncommitted changes')"
    else
        # Others edit the working tree concurrently; if it does not compile right now,
        # benchmark the last commit instead and say so.
        log "working tree does not build (see bench/out/build.log); building HEAD instead"
        head=$(git -C "$ROOT" rev-parse --short HEAD)
        mkdir -p "$TMP/src"
        git -C "$ROOT" archive HEAD | tar -x -C "$TMP/src"
        swift build -c release -Xswiftc -static-stdlib --package-path "$TMP/src" --scratch-path "$ROOT/.build-bench-head" \
            >"$OUT/build-head.log" 2>&1
        OURS=$ROOT/.build-bench-head/release/nbdkit
        BUILD_NOTE="commit $head (the working tree did not compile when this run started: $(grep -m1 'error:' "$OUT/build.log" | sed "s|$ROOT/||"))"
    fi
else
    BUILD_NOTE="given binary $OURS"
fi
log "ours: $OURS ($BUILD_NOTE)"

# ---------------------------------------------------------------- data
SIZE=$((SIZE_MIB * 1024 * 1024))
SRC=$TMP/src.img        # random source for sequential writes
DISK=$TMP/disk.img      # the exported file
log "making ${SIZE_MIB} MiB random source and disk files in $TMP"
head -c "$SIZE" /dev/urandom >"$SRC"
cp "$SRC" "$DISK"
# A different random content for the disk, so writing SRC changes every block.
head -c "$SIZE" /dev/urandom >"$DISK"

# TLS material, made fresh for every run: a CA and a server certificate for localhost (the
# file names nbdkit and qemu-nbd both look for), and a PSK file for user alice.
PKI=$TMP/tls/pki        # ca-cert.pem server-cert.pem server-key.pem (clients read ca-cert.pem)
PSKDIR=$TMP/tls/psk     # keys.psk ("alice:hexkey"); qemu-nbd wants the directory
PSK=$PSKDIR/keys.psk
CHACHA_ONLY=$TMP/tls/client-chacha-only.conf   # GNUTLS_SYSTEM_PRIORITY_FILE for psk-chacha clients
make_tls_files() {
    local d=$TMP/tls
    mkdir -p "$PKI" "$PSKDIR"
    printf 'cn = bench CA\nca\ncert_signing_key\nexpiration_days = 30\n' >"$d/ca.info"
    printf 'organization = bench\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 30\n' >"$d/server.info"
    certtool --generate-privkey --outfile "$d/ca-key.pem"
    certtool --generate-self-signed --load-privkey "$d/ca-key.pem" --template "$d/ca.info" --outfile "$PKI/ca-cert.pem"
    certtool --generate-privkey --outfile "$PKI/server-key.pem"
    certtool --generate-certificate --load-ca-certificate "$PKI/ca-cert.pem" --load-ca-privkey "$d/ca-key.pem" \
        --load-privkey "$PKI/server-key.pem" --template "$d/server.info" --outfile "$PKI/server-cert.pem"
    chmod 600 "$PKI/server-key.pem"
    psktool -u alice -p "$PSK"
    # A client-side GnuTLS configuration that removes every AES suite, so the psk-chacha
    # workloads compare all servers on ChaCha20-Poly1305 whatever each server would prefer.
    printf '[overrides]\n' >"$CHACHA_ONLY"
    local c
    for c in AES-128-GCM AES-256-GCM AES-128-CCM AES-256-CCM AES-128-CBC AES-256-CBC; do
        printf 'tls-disabled-cipher = %s\n' "$c" >>"$CHACHA_ONLY"
    done
}
make_tls_files >"$OUT/tls-setup.log" 2>&1 || { log "certtool/psktool failed, see bench/out/tls-setup.log"; exit 1; }

# ---------------------------------------------------------------- servers
# A = ours, B = reference nbdkit, C = qemu-nbd, D = nbd-server.
declare -A NAME=([A]="ours (swift nbdkit)" [B]="nbdkit $($REF --version | awk '{print $2}')" \
                 [C]="qemu-nbd $(qemu-nbd --version | awk 'NR==1{print $2}')" \
                 [D]="nbd-server $(nbd-server -V 2>&1 | awk '/version/{print $NF; exit}')")
declare -A URI=() SLOG=()
NBDSERVER_PIDFILE=/run/nbd-server.pid

# A free TCP port on the loopback interface (asked from the kernel, then released).
free_port() { $SYSPY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_server LABEL BACKEND [MODE] -> SPID[LABEL], URI[LABEL]; returns 1 if it does not come up.
# MODE: unix (default, plain Unix socket), tcp (127.0.0.1, free port), psk or x509 (Unix
# socket, --tls=require with the PSK file or the certificate directory).
start_server() {
    local l=$1 backend=$2 mode=${3:-unix} sock=$TMP/$1.sock slog port=""
    slog=$OUT/server-$l-$backend$([ "$mode" = unix ] || echo "-$mode")-r$ROUND.log
    SLOG[$l]=$slog
    rm -f "$sock"
    # Listening and TLS arguments per server family (nbdkit-style = A and B, qemu-nbd = C).
    local nbdkit_args=(-U "$sock") qemu_args=(-k "$sock")
    case $mode in
        unix) URI[$l]="nbd+unix:///?socket=$sock" ;;
        tcp)  port=$(free_port)
              nbdkit_args=(-i 127.0.0.1 -p "$port"); qemu_args=(-b 127.0.0.1 -p "$port")
              URI[$l]="nbd://127.0.0.1:$port" ;;
        psk)  nbdkit_args+=(--tls=require "--tls-psk=$PSK")
              qemu_args+=(--object "tls-creds-psk,id=tls0,endpoint=server,dir=$PSKDIR" --tls-creds tls0)
              URI[$l]="nbds+unix://alice@/?socket=$sock&tls-psk-file=$PSK" ;;
        x509) nbdkit_args+=(--tls=require "--tls-certificates=$PKI")
              qemu_args+=(--object "tls-creds-x509,id=tls0,endpoint=server,dir=$PKI,verify-peer=off" --tls-creds tls0)
              URI[$l]="nbds+unix:///?socket=$sock&tls-certificates=$PKI" ;;
    esac
    case "$l/$backend" in
        A/memory) taskset -c $SERVER_CPU "$OURS" -f "${nbdkit_args[@]}" memory "$SIZE" >"$slog" 2>&1 & SPID[$l]=$! ;;
        B/memory) taskset -c $SERVER_CPU "$REF"  -f "${nbdkit_args[@]}" memory "$SIZE" >"$slog" 2>&1 & SPID[$l]=$! ;;
        A/file)   taskset -c $SERVER_CPU "$OURS" -f "${nbdkit_args[@]}" file "$DISK" >"$slog" 2>&1 & SPID[$l]=$! ;;
        B/file)   taskset -c $SERVER_CPU "$REF"  -f "${nbdkit_args[@]}" file "$DISK" >"$slog" 2>&1 & SPID[$l]=$! ;;
        A/null)   taskset -c $SERVER_CPU "$OURS" -f "${nbdkit_args[@]}" null "$SIZE" >"$slog" 2>&1 & SPID[$l]=$! ;;
        B/null)   taskset -c $SERVER_CPU "$REF"  -f "${nbdkit_args[@]}" null "$SIZE" >"$slog" 2>&1 & SPID[$l]=$! ;;
        C/file)   taskset -c $SERVER_CPU qemu-nbd -f raw -t -e 0 "${qemu_args[@]}" "$DISK" >"$slog" 2>&1 & SPID[$l]=$! ;;
        D/file)
            # nbd-server -d serves a single connection and exits, so it runs as the daemon it
            # normally is; its pid comes from its pid file (checked against our config path).
            # No TLS here (see README.md).
            local cfg=$TMP/nbd-server.conf listen="  unixsock = $sock"
            [ "$mode" = tcp ] && listen=$(printf '  listenaddr = 127.0.0.1\n  port = %s' "$port")
            printf '[generic]\n%s\n[bench]\n  exportname = %s\n' "$listen" "$DISK" >"$cfg"
            rm -f "$NBDSERVER_PIDFILE"
            taskset -c $SERVER_CPU nbd-server -C "$cfg" >"$slog" 2>&1 || true
            case $mode in   # the export is named "bench"
                unix) URI[$l]="nbd+unix:///bench?socket=$sock" ;;
                tcp)  URI[$l]="nbd://127.0.0.1:$port/bench" ;;
            esac
            local i pid=""
            for i in $(seq 50); do
                pid=$(cat "$NBDSERVER_PIDFILE" 2>/dev/null || true)
                [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$cfg" && break
                pid=""; sleep 0.1
            done
            [ -n "$pid" ] || { record_error "$l" "$backend" start 1 "nbd-server -C $cfg" "no pid file"; return 1; }
            SPID[$l]=$pid ;;
        *) echo "no server $l/$backend" >&2; return 1 ;;
    esac
    local i
    for i in $(seq 100); do
        if ! kill -0 "${SPID[$l]}" 2>/dev/null; then
            record_error "$l" "$backend" start 1 "start $l $backend" "server exited: $(tail -c 600 "$slog" | tr '\n\t' '  ')"
            unset "SPID[$l]"; return 1
        fi
        { [ "$mode" = tcp ] || [ -S "$sock" ]; } && timeout 5 nbdinfo --size "${URI[$l]}" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    record_error "$l" "$backend" start 1 "start $l $backend" "socket not ready after 10 s: $(tail -c 600 "$slog" | tr '\n\t' '  ')"
    stop_server "$l"; return 1
}

stop_server() {
    local l=$1 pid=${SPID[$1]:-} i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        [ -e "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "SPID[$l]"
}

server_alive() { local pid=${SPID[$1]:-}; [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; }

# Server CPU time in clock ticks: utime+stime of the server and its live children, plus
# cutime+cstime of those it has reaped (nbd-server forks one child per connection).
CLK=$(getconf CLK_TCK)
cpu_ticks() {
    local pid=$1 t=0 c
    t=$(awk '{sub(/^.*\) /, ""); print $12+$13+$14+$15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    for c in $(cat "/proc/$pid/task/"*/children 2>/dev/null); do
        t=$((t + $(awk '{sub(/^.*\) /, ""); print $12+$13}' "/proc/$c/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}
# Memory of the server's process tree in KiB: "RSS USS" (USS = private pages, Private_Clean +
# Private_Dirty, so shared libraries mapped again by a forked child are not counted twice).
mem_kib() {
    local pid=$1 rss=0 pss=0 p
    for p in "$pid" $(cat "/proc/$pid/task/"*/children 2>/dev/null); do
        rss=$((rss + $(awk '/^Rss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)))
        pss=$((pss + $(awk '/^Private_(Clean|Dirty):/{n+=$2} END{print n+0}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)))
    done
    echo "$rss $pss"
}

record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$1" "$2" "$3" "$4" "$5" >>"$RAW"; }
record_error() {
    log "ERROR $1 $2 $3 rc=$4: $6"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$1" "$2" "$3" "$4" "$5" "$(echo "$6" | tr '\n\t' '  ' | cut -c1-800)" >>"$ERR"
}

# core_ticks CPU: "busy total" jiffies of one CPU from /proc/stat (busy: all but idle and iowait)
core_ticks() {
    # (guest time is already counted in user time, so only the first eight counters are summed)
    awk -v c="cpu$1" '$1 == c {t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t}' /proc/stat
}

# run_client LABEL BACKEND WORKLOAD TIMEOUT CMD... : runs CMD on the client CPU with a time
# limit; sets ELAPSED (s) and CPU (server CPU s) and CLIENT_OUT; records how busy the client's
# core was (100% means the client, not the server, set the pace); returns 1 on failure.
ELAPSED=0; CPU=0; CLIENT_OUT=""
run_client() {
    local l=$1 backend=$2 wl=$3 tmo=$4; shift 4
    local pid=${SPID[$l]:-} c0 c1 t0 t1 rc=0 errf=$TMP/client.err
    if ! server_alive "$l"; then
        record_error "$l" "$backend" "$wl" -1 "$*" "server not running (died earlier)"; return 1
    fi
    local k0 k1
    c0=$(cpu_ticks "$pid"); k0=$(core_ticks $CLIENT_CPU); t0=$EPOCHREALTIME
    CLIENT_OUT=$(timeout "$tmo" taskset -c $CLIENT_CPU "$@" 2>"$errf") || rc=$?
    t1=$EPOCHREALTIME; k1=$(core_ticks $CLIENT_CPU)
    sleep 0.05
    c1=$(cpu_ticks "$pid")
    ELAPSED=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.6f", b-a}')
    CPU=$(awk -v a="$c0" -v b="$c1" -v k="$CLK" 'BEGIN{printf "%.4f", (b-a)/k}')
    local alive=1; server_alive "$l" || alive=0
    if [ $rc -ne 0 ] || [ $alive = 0 ]; then
        local why="client rc=$rc$([ $rc = 124 ] && echo ' (timed out)'); client stderr: $(tail -c 400 "$errf")"
        [ $alive = 0 ] && why="$why; SERVER DIED; server log: $(tail -c 600 "${SLOG[$l]}")"
        record_error "$l" "$backend" "$wl" "$rc" "$*" "$why"
        return 1
    fi
    record "$l" "$backend" "$wl" client_busy_pct \
        "$(echo "$k0 $k1" | awk '{d = $4 - $2; printf "%.0f", (d > 0 ? 100 * ($3 - $1) / d : 0)}')"
    return 0
}

# ---------------------------------------------------------------- workloads
# want WL...: true if WORKLOADS is empty or names one of WL.
want() {
    [ -z "$WORKLOADS" ] && return 0
    local w; for w in "$@"; do [[ " $WORKLOADS " == *" $w "* ]] && return 0; done; return 1
}
MB=1000000
# wl_seqread LABEL BACKEND [WORKLOAD [CONNS]]: nbdcopy the whole disk to null: over URI[LABEL]
# with CONNS connections (nbdcopy uses one if the server does not advertise multi-conn; the
# number actually used is recorded as "connections").
wl_seqread() {
    local l=$1 b=$2 wl=${3:-seqread} conns=${4:-1}
    want "$wl" || return 0
    if [ "$conns" -gt 1 ]; then
        nbdinfo --can multi-conn "${URI[$l]}" 2>/dev/null || conns=1
        record "$l" "$b" "$wl" connections "$conns"
    fi
    run_client "$l" "$b" "$wl" 120 nbdcopy --no-extents -C "$conns" -T "$conns" --request-size=262144 "${URI[$l]}" null: || return 0
    record "$l" "$b" "$wl" MB_per_s "$(awk -v s=$SIZE -v e=$ELAPSED 'BEGIN{printf "%.1f", s/e/1e6}')"
    record "$l" "$b" "$wl" cpu_s_per_GB "$(awk -v s=$SIZE -v c=$CPU 'BEGIN{printf "%.4f", c/(s/1e9)}')"
    record "$l" "$b" "$wl" cpu_us_per_req "$(awk -v s=$SIZE -v c=$CPU 'BEGIN{printf "%.2f", c*1e6/(s/262144)}')"
}
wl_seqwrite() {
    local l=$1 b=$2
    want seqwrite || return 0
    run_client "$l" "$b" seqwrite 120 nbdcopy --no-extents -C 1 -T 1 --request-size=262144 "$SRC" "${URI[$l]}" || return 0
    record_seqwrite "$l" "$b" seqwrite
}
# record_seqwrite LABEL BACKEND WORKLOAD: throughput and server CPU of the nbdcopy run just made
record_seqwrite() {
    local l=$1 b=$2 wl=$3
    record "$l" "$b" "$wl" MB_per_s "$(awk -v s=$SIZE -v e=$ELAPSED 'BEGIN{printf "%.1f", s/e/1e6}')"
    record "$l" "$b" "$wl" cpu_s_per_GB "$(awk -v s=$SIZE -v c=$CPU 'BEGIN{printf "%.4f", c/(s/1e9)}')"
    record "$l" "$b" "$wl" cpu_us_per_req "$(awk -v s=$SIZE -v c=$CPU 'BEGIN{printf "%.2f", c*1e6/(s/262144)}')"
}
# wl_fio LABEL BACKEND RW QD [JOBS [WORKLOAD]]: fio ioengine=nbd, 4 KiB; JOBS jobs, each with
# its own connection, QD requests in flight each (JSON totals summed by group_reporting).
wl_fio() {
    local l=$1 b=$2 rw=$3 qd=$4 jobs=${5:-1} wl=${6:-$3-qd$4}
    local js=$OUT/fio-$l-$b-$wl-r$ROUND.json
    want "$wl" || return 0
    run_client "$l" "$b" "$wl" $((FIO_RUNTIME + 60)) fio --name=bench --ioengine=nbd --uri="${URI[$l]}" \
        --rw="$rw" --bs=4k --iodepth="$qd" --numjobs="$jobs" --group_reporting --time_based --runtime="$FIO_RUNTIME" \
        --lat_percentiles=1 --output-format=json --output="$js" || return 0
    local ios iops p50 dir
    dir=read; [ "$rw" = randwrite ] && dir=write
    # p50 of the total latency (submission + completion), as the client sees each request.
    read -r ios iops p50 < <($SYSPY -c "import json,sys; j=json.load(open(sys.argv[1]))['jobs'][0][sys.argv[2]]; print(j['total_ios'], j['iops'], j['lat_ns']['percentile']['50.000000'] / 1000)" "$js" "$dir") || true
    if [ "${ios:-0}" -le 0 ]; then record_error "$l" "$b" "$wl" 0 fio "zero I/Os completed"; return 0; fi
    record "$l" "$b" "$wl" IOPS "$(printf '%.0f' "$iops")"
    record "$l" "$b" "$wl" p50_us "$p50"
    record "$l" "$b" "$wl" cpu_us_per_req "$(awk -v n=$ios -v c=$CPU 'BEGIN{printf "%.2f", c*1e6/n}')"
    record "$l" "$b" "$wl" cpu_s_per_GB "$(awk -v n=$ios -v c=$CPU 'BEGIN{printf "%.3f", c/(n*4096/1e9)}')"
}
# wl_pyrand LABEL BACKEND WORKLOAD: RAND_N random 4 KiB reads, 32 in flight, from a python
# libnbd aio loop (nbdhelper.py randread). Used for TLS, because fio's nbd engine only takes
# uri= and libnbd refuses tls-psk-file=/tls-certificates= in a URI unless the program allows
# local files, which fio does not; also run in plaintext as the baseline for this client.
wl_pyrand() {
    local l=$1 b=$2 wl=$3
    want "$wl" || return 0
    run_client "$l" "$b" "$wl" 300 $SYSPY "$HELPER" randread "${URI[$l]}" "$RAND_N" 32 || return 0
    record "$l" "$b" "$wl" IOPS "$(awk -v n=$RAND_N -v e="$CLIENT_OUT" 'BEGIN{printf "%.0f", n/e}')"
    record "$l" "$b" "$wl" cpu_us_per_req "$(awk -v n=$RAND_N -v c=$CPU 'BEGIN{printf "%.2f", c*1e6/n}')"
    record "$l" "$b" "$wl" cpu_s_per_GB "$(awk -v n=$RAND_N -v c=$CPU 'BEGIN{printf "%.3f", c/(n*4096/1e9)}')"
}
wl_connrate() {
    local l=$1 b=$2
    want connrate || return 0
    run_client "$l" "$b" connrate 120 $SYSPY "$HELPER" connrate "${URI[$l]}" "$CONN_N" || return 0
    record "$l" "$b" connrate conn_per_s "$(awk -v n=$CONN_N -v e="$CLIENT_OUT" 'BEGIN{printf "%.1f", n/e}')"
    record "$l" "$b" connrate cpu_us_per_req "$(awk -v n=$CONN_N -v c=$CPU 'BEGIN{printf "%.1f", c*1e6/n}')"
}
wl_idle() {
    local l=$1 b=$2 pid=${SPID[$1]} before after fifo=$TMP/idle.fifo outf=$TMP/idle.out
    want idle || return 0
    server_alive "$l" || { record_error "$l" "$b" idle -1 idle "server not running"; return 0; }
    sleep 0.3
    read -r rss0 pss0 < <(mem_kib "$pid") || true
    rm -f "$fifo"; mkfifo "$fifo"
    taskset -c $CLIENT_CPU $SYSPY "$HELPER" idle "${URI[$l]}" "$IDLE_K" <"$fifo" >"$outf" 2>"$TMP/idle.err" &
    IDLE_PID=$!
    exec 7>"$fifo"
    local i ok=0
    for i in $(seq 300); do
        grep -q ready "$outf" 2>/dev/null && { ok=1; break; }
        kill -0 "$IDLE_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ $ok = 1 ]; then
        sleep 0.5
        read -r rss1 pss1 < <(mem_kib "$pid") || true
        record "$l" "$b" idle KiB_RSS_per_conn "$(awk -v a=$rss0 -v b=$rss1 -v k=$IDLE_K 'BEGIN{printf "%.1f", (b-a)/k}')"
        record "$l" "$b" idle KiB_USS_per_conn "$(awk -v a=$pss0 -v b=$pss1 -v k=$IDLE_K 'BEGIN{printf "%.1f", (b-a)/k}')"
        record "$l" "$b" idle KiB_RSS_base "$rss0"
    else
        record_error "$l" "$b" idle 1 "nbdhelper.py idle URI $IDLE_K" "connections not all open within 30 s: $(tail -c 400 "$TMP/idle.err"); server alive: $(server_alive "$l" && echo yes || echo no)"
    fi
    exec 7>&-
    for i in $(seq 50); do kill -0 "$IDLE_PID" 2>/dev/null || break; sleep 0.1; done
    kill "$IDLE_PID" 2>/dev/null || true; wait "$IDLE_PID" 2>/dev/null || true
    IDLE_PID=""
    sleep 0.3
}
wl_startup() {
    local l=$1 bin=$2 i t0 t1 rc=0 errf=$TMP/startup.err
    want startup || return 0
    t0=$EPOCHREALTIME
    for i in $(seq "$STARTUP_N"); do
        timeout 10 taskset -c $SERVER_CPU "$bin" -U - null 1M --run true 2>"$errf" || { rc=$?; break; }
    done
    t1=$EPOCHREALTIME
    if [ $rc -ne 0 ]; then
        record_error "$l" null startup "$rc" "$bin -U - null 1M --run true" "iteration $i: $(tail -c 400 "$errf")"; return 0
    fi
    record "$l" null startup ms_per_run "$(awk -v a="$t0" -v b="$t1" -v n="$STARTUP_N" 'BEGIN{printf "%.2f", (b-a)*1000/n}')"
}
wl_limits() {
    # Not NBD: how fast this machine moves bytes through a Unix socket (socat, 256 KiB
    # blocks, receiver on the server CPU, sender on the client CPU), and through memory.
    local sock=$TMP/raw.sock bytes=$((8 * 1024 * 1024 * 1024)) out t t0 t1 i
    want limits || return 0
    rm -f "$sock"
    taskset -c $SERVER_CPU socat -u -b 262144 "UNIX-LISTEN:$sock" OPEN:/dev/null &
    local rpid=$!
    LIMIT_PID=$rpid
    for i in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
    t0=$EPOCHREALTIME
    if timeout 60 taskset -c $CLIENT_CPU socat -u -b 262144 "OPEN:/dev/zero,readbytes=$bytes" "UNIX-CONNECT:$sock" \
        && wait "$rpid"; then
        t1=$EPOCHREALTIME
        record limit unix-socket limit_unix_socket MB_per_s "$(awk -v s=$bytes -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", s/(b-a)/1e6}')"
    else
        kill "$rpid" 2>/dev/null || true; wait "$rpid" 2>/dev/null || true
    fi
    out=$(taskset -c $CLIENT_CPU dd if=/dev/zero of=/dev/null bs=1M count=16384 2>&1 | tail -1)
    t=$(echo "$out" | awk -F', ' '{print $3}' | awk '{print $1}')
    record limit dd limit_dd_zero_null MB_per_s "$(awk -v s=$((16384 * 1048576)) -v e="$t" 'BEGIN{printf "%.1f", s/e/1e6}')"
    read -r t out < <(taskset -c $CLIENT_CPU $SYSPY "$HELPER" memcpy $((8 * 1024 * 1024 * 1024))) || true
    record limit memcpy limit_memcpy MB_per_s "$(awk -v s="$out" -v e="$t" 'BEGIN{printf "%.1f", s/e/1e6}')"
    # The copy that storing a sequential write into a memory disk costs, alone: the receiver's
    # CPU per GB for each way of taking 256 KiB pieces from the socket into a memory file.
    local way res
    for way in splice mapped unmapped buffer; do
        rm -f "$sock" "$TMP/receive.out"
        taskset -c $SERVER_CPU $SYSPY "$HELPER" receive $way "$sock" "$SIZE" >"$TMP/receive.out" &
        rpid=$!
        LIMIT_PID=$rpid
        for i in $(seq 100); do grep -q ready "$TMP/receive.out" 2>/dev/null && break; sleep 0.1; done
        if timeout 60 taskset -c $CLIENT_CPU socat -u -b 262144 "OPEN:/dev/zero,readbytes=$SIZE" "UNIX-CONNECT:$sock" \
            && timeout 60 tail --pid="$rpid" -f /dev/null && wait "$rpid"; then
            read -r t out < <(tail -1 "$TMP/receive.out")
            record limit "receive-$way" "limit_receive_$way" cpu_s_per_GB "$(awk -v s="$out" -v c="$t" 'BEGIN{printf "%.4f", c/(s/1e9)}')"
        else
            kill "$rpid" 2>/dev/null || true; wait "$rpid" 2>/dev/null || true
        fi
    done
    LIMIT_PID=""
    rm -f "$sock" "$TMP/receive.out"
}

BACKEND_WLS=(idle connrate seqread seqwrite seqwrite-alloc randread-qd1 randread-qd32 randwrite-qd1 randwrite-qd32
             randread-qd32-py seqread-4conn randread-4conn-qd8)
run_backend_suite() {   # LABEL BACKEND: the plain Unix-socket workloads
    local l=$1 b=$2
    want "${BACKEND_WLS[@]}" || return 0
    log "round $ROUND: ${NAME[$l]} $b"
    start_server "$l" "$b" || return 0
    if [ "$b" = memory ]; then
        # Fill the whole memory disk with random data first, so reads hit allocated pages. This
        # first write allocates every page: it is recorded as seqwrite-alloc. The VM returns
        # memory freed for a few seconds to its host (free page reporting), and a page that was
        # returned costs the next process to touch it several times as much; touching and
        # freeing 1.5x the disk just before gives every server recently used pages to start from.
        taskset -c $CLIENT_CPU $SYSPY "$HELPER" touch $((SIZE * 3 / 2)) || true
        if run_client "$l" "$b" seqwrite-alloc 120 nbdcopy --no-extents -C 1 -T 1 --request-size=262144 "$SRC" "${URI[$l]}"; then
            record_seqwrite "$l" "$b" seqwrite-alloc
        fi
        wl_connrate "$l" "$b"
    else
        wl_idle "$l" "$b"
        wl_connrate "$l" "$b"
    fi
    wl_seqread "$l" "$b"
    wl_seqwrite "$l" "$b"
    wl_fio "$l" "$b" randread 1
    wl_fio "$l" "$b" randread 32
    wl_fio "$l" "$b" randwrite 1
    wl_fio "$l" "$b" randwrite 32
    wl_pyrand "$l" "$b" randread-qd32-py                  # baseline for the TLS random reads
    # Four connections at once.
    wl_seqread "$l" "$b" seqread-4conn 4                  # nbdcopy -C 4 -T 4
    wl_fio "$l" "$b" randread 8 4 randread-4conn-qd8      # fio numjobs=4, iodepth 8 each
    stop_server "$l"
}

run_null_suite() {      # LABEL: seqwrite to the null plugin, which drops what it receives: the
    local l=$1          # rate the client reaches when the server stores nothing
    want seqwrite || return 0
    log "round $ROUND: ${NAME[$l]} null"
    start_server "$l" null || return 0
    wl_seqwrite "$l" null
    stop_server "$l"
}

run_tcp_suite() {       # LABEL: file backend over TCP loopback (127.0.0.1, a free port)
    local l=$1
    want tcp-seqread tcp-randread-qd32 || return 0
    log "round $ROUND: ${NAME[$l]} file over TCP"
    start_server "$l" file tcp || return 0
    wl_seqread "$l" file tcp-seqread
    wl_fio "$l" file randread 32 1 tcp-randread-qd32
    stop_server "$l"
}

run_tls_suite() {       # LABEL MODE(psk|psk-chacha|x509): file backend, --tls=require, Unix socket
    local l=$1 m=$2 server_mode=${2%-chacha}
    want "tls-$m-seqread" "tls-$m-randread-qd32" || return 0
    log "round $ROUND: ${NAME[$l]} file over TLS ($m)"
    start_server "$l" file "$server_mode" || return 0
    # psk-chacha: the server is started as for psk; only its clients see the ChaCha20-only
    # configuration, so the server keeps whatever order it would use with any other client.
    [ "$m" = psk-chacha ] && export GNUTLS_SYSTEM_PRIORITY_FILE=$CHACHA_ONLY
    # What libnbd negotiated (cipher, key exchange, MAC), to show every server uses the same.
    printf '%s\t%s\t%s\t%s\n' "$ROUND" "$l" "$m" \
        "$(timeout 10 $SYSPY "$HELPER" tlsinfo "${URI[$l]}" 2>&1 | tail -1 | tr '\t' ' ')" >>"$TLSINFO"
    wl_seqread "$l" file "tls-$m-seqread"
    wl_pyrand "$l" file "tls-$m-randread-qd32"
    unset GNUTLS_SYSTEM_PRIORITY_FILE
    stop_server "$l"
}

# ---------------------------------------------------------------- rounds
{
    echo "START_TIME='$START_TIME'"
    echo "COMMAND='ROUNDS=$ROUNDS bench/run.sh'"
    echo "ROUNDS=$ROUNDS SIZE_MIB=$SIZE_MIB FIO_RUNTIME=$FIO_RUNTIME STARTUP_N=$STARTUP_N CONN_N=$CONN_N IDLE_K=$IDLE_K RAND_N=$RAND_N"
    echo "WORKLOADS='$WORKLOADS'"
    echo "NPROC='$(nproc)'"
    echo "CPU_MODEL='$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)'"
    echo "MEM='$(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)'"
    echo "KERNEL='$(uname -r)'"
    echo "LOAD_BEFORE='$(cut -d' ' -f1-3 /proc/loadavg)'"
    echo "OURS_BIN='${OURS#$ROOT/}'"
    echo "BUILD_NOTE='${BUILD_NOTE//\'/}'"
    echo "V_A='$("$OURS" --version 2>&1 | head -1)'"
    echo "V_B='$($REF --version | head -1)'"
    echo "V_C='$(qemu-nbd --version | head -1)'"
    echo "V_D='$(nbd-server -V 2>&1 | grep -m1 version)'"
    echo "V_NBDCOPY='$(nbdcopy --version | head -1)'"
    echo "V_FIO='$(fio --version)'"
    echo "V_GNUTLS='$(certtool --version | head -1)'"
    echo "TLS_KEYS='$(certtool -i --infile "$PKI/server-cert.pem" | awk -F': ' '/Subject Public Key Algorithm/{a=$2} /Algorithm Security Level/{print a ", " $2; exit}')'"
    echo "WANT_PLOT=$want_plot"
} >"$META"

ORDER=(A B C D)
for ROUND in $(seq "$ROUNDS"); do
    # Rotate the order each round so no server is always first or last.
    rot=$(( (ROUND - 1) % 4 ))
    order=("${ORDER[@]:$rot}" "${ORDER[@]:0:$rot}")
    wl_limits
    for l in "${order[@]}"; do
        case $l in A) wl_startup A "$OURS" ;; B) wl_startup B "$REF" ;; esac
    done
    for l in "${order[@]}"; do
        case $l in A|B) run_backend_suite "$l" memory ;; esac
    done
    for l in "${order[@]}"; do
        case $l in A|B) run_null_suite "$l" ;; esac
    done
    for l in "${order[@]}"; do run_backend_suite "$l" file; done
    for l in "${order[@]}"; do run_tcp_suite "$l"; done
    # TLS: ours, nbdkit and qemu-nbd (nbd-server has no PSK; see README.md).
    for m in psk psk-chacha x509; do
        for l in "${order[@]}"; do case $l in A|B|C) run_tls_suite "$l" "$m" ;; esac; done
    done
done

echo "LOAD_AFTER='$(cut -d' ' -f1-3 /proc/loadavg)'" >>"$META"
echo "DURATION_S=$(awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b-a}')" >>"$META"
# A partial run (WORKLOADS=...) or a quick one (ROUNDS=1) must not replace the committed results.
if [ -z "$WORKLOADS" ] && [ "$ROUNDS" -ge 3 ] && [ -z "${BENCH_OUT_ONLY:-}" ]; then
    RES=$BENCH/RESULTS.md PNG=$BENCH/ratios.png
else
    RES=$OUT/RESULTS-short.md PNG=$OUT/ratios-short.png
fi
log "writing ${RES#$ROOT/}"
$SYSPY "$BENCH/report.py" "$OUT" "$RES" "$PNG"
log "done"
