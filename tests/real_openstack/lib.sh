# Shared settings and helpers of the real-OpenStack test stack; sourced by install, start, stop,
# status and up. Not executable on its own.
#
# Everything lives under one scratch folder, $REAL_OPENSTACK_DIR (default
# /var/tmp/scaleset-real-openstack), which must be an absolute path. Every service listens on
# 127.0.0.1 only.

# The folder of these scripts (tests/real_openstack in the repository).
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRATCH="${REAL_OPENSTACK_DIR:-/var/tmp/scaleset-real-openstack}"
case "$SCRATCH" in
    /*) ;;
    *) echo "REAL_OPENSTACK_DIR must be an absolute path (got: $SCRATCH)" >&2; exit 2 ;;
esac
SCRATCH="${SCRATCH%/}"
VENV="$SCRATCH/venv"
ETC="$SCRATCH/etc"
DATA="$SCRATCH/data"
LOG="$SCRATCH/log"
RUN="$SCRATCH/run"
TOOLS="$HERE/stack_modules/tools"
RABBIT_LIB=/usr/lib/rabbitmq/bin

# Caches go into the scratch folder, never into the home folder (pip's downloads, stevedore's
# entry-point cache).
export XDG_CACHE_HOME="$SCRATCH/cache"
export PIP_CACHE_DIR="$SCRATCH/cache/pip"
# Every OpenStack CLI prints an EventletDeprecationWarning; it is noise.
export PYTHONWARNINGS=ignore
export OS_CLIENT_CONFIG_FILE="$ETC/clouds.yaml"
export PATH="$VENV/bin:$PATH"

# name port: the API services run by gunicorn through osk_serve, in start-up order.
API_SERVICES=(keystone placement glance-api neutron-api nova-api)
declare -A API_PORT=([keystone]=5000 [placement]=8778 [glance-api]=9292 [neutron-api]=9696
    [nova-api]=8774)
# Readiness probe of each API: the path of its version document and the code it answers with.
declare -A API_PROBE=([keystone]=/v3 [placement]=/ [glance-api]=/ [neutron-api]=/ [nova-api]=/)
declare -A API_READY_CODE=([keystone]=200 [placement]=200 [glance-api]=300 [neutron-api]=200
    [nova-api]=200)
NOVA_DAEMONS=(nova-conductor nova-scheduler nova-compute)

T0="$(date +%s.%N)"

# Seconds since $1 (a `date +%s.%N` value), with one decimal.
elapsed() {
    awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'
}

# Timeline line: seconds since the script began, then the message.
say() {
    printf '%7ss %s\n' "$(elapsed "$T0")" "$*"
}

die() {
    echo "ERROR: $*" >&2
    exit 1
}

# Print the last lines of a log file (or of each file given) to stderr, so CI output explains
# a failure.
show_tail() {
    local f
    for f in "$@"; do
        [[ -f "$f" ]] || continue
        echo "----- last 40 lines of $f -----" >&2
        tail -n 40 "$f" >&2
        echo "----- end of $f -----" >&2
    done
}

# wait_http URL CODE [MAX_SECONDS] [LOGS...]: poll every 0.3 s (each request limited to 2 s,
# because a socket that accepts but never answers would otherwise hang the probe) until URL
# answers with CODE.
wait_http() {
    local url="$1" code="$2" max="${3:-60}"
    shift 3 || shift $#
    local deadline got
    deadline=$(($(date +%s) + max))
    while :; do
        got="$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$url" || true)"
        [[ "$got" == "$code" ]] && return 0
        if (($(date +%s) >= deadline)); then
            echo "TIMEOUT waiting for $url to answer $code (last answer: $got) after ${max}s" >&2
            show_tail "$@"
            return 1
        fi
        sleep 0.3
    done
}

# pid_alive NAME: the process recorded in run/NAME.pid is alive.
pid_alive() {
    local f="$RUN/$1.pid" pid
    [[ -f "$f" ]] || return 1
    pid="$(cat "$f")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

# port_owner PORT: the PID of the process listening on 127.0.0.1:PORT (TCP), if any.
port_owner() {
    ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1
}

# launch NAME COMMAND...: run COMMAND detached in its own session (so stop can signal its whole
# process group), output to log/NAME.out, PID to run/NAME.pid. setsid and nohup exec, so the
# recorded PID is the command's own.
launch() {
    local name="$1"
    shift
    (cd "$SCRATCH" && exec setsid nohup "$@" >"$LOG/$name.out" 2>&1 </dev/null) &
    echo $! >"$RUN/$name.pid"
}

rabbit_env() {
    # shellcheck source=/dev/null
    source "$ETC/rabbitmq/env.sh"
}
