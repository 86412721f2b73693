#!/usr/bin/env bash
# Install and start a one-node Slurm cluster on localhost (Debian, as root), for the
# end-to-end test of `sensitivity submit` (tests/test_slurm.py).
#
#   bash .ci/slurm-setup.sh        # idempotent: does nothing more when the node is already idle
#
# What it does: apt-get installs slurmctld, slurmd, slurm-client and munge; writes
# /etc/slurm/slurm.conf (SlurmUser=root, proctrack/linuxproc, task/none, select/cons_tres,
# auth/munge, one node named after `hostname -s` with this machine's CPU count and memory,
# one default partition `debug`); starts munged, slurmctld and slurmd (no systemd needed);
# waits until `sinfo` shows the node idle. Exits non-zero with a message naming what failed.
set -euo pipefail

say() { echo "slurm-setup: $*"; }
die() { echo "slurm-setup: ERROR: $*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "must run as root (it installs packages and starts daemons)"
command -v apt-get >/dev/null || die "needs a Debian-like system with apt-get"

NODE="$(hostname -s)"
[[ -n "$NODE" ]] || die "hostname -s printed nothing"
CPUS="$(nproc)"
MEM_MB="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
STATE=/var/lib/slurm
LOGS=/var/log/slurm
RUN=/run/slurm
WAIT_S="${SLURM_SETUP_WAIT_S:-60}"

node_state() { timeout 10 sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null | head -n1 | tr -d '*~#$@+' || true; }

# --- fast path: already up -------------------------------------------------------------
if command -v sinfo >/dev/null && [[ "$(node_state)" =~ ^(idle|mixed|allocated)$ ]]; then
    say "cluster already up: node $NODE is $(node_state)"
    exit 0
fi

# --- packages ---------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
        || die "apt-get install slurmctld slurmd slurm-client munge failed"
fi

# --- munge ------------------------------------------------------------------------------
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    rm -f /run/munge/munged.pid
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    else
        /usr/sbin/munged --force || die "munged did not start (see /var/log/munge/munged.log)"
    fi
    for _ in $(seq 1 20); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.5
    done
    munge -n | unmunge >/dev/null 2>&1 || die "munge does not answer: 'munge -n | unmunge' fails"
fi

# --- slurm.conf ---------------------------------------------------------------------------
mkdir -p "$CONF_DIR" "$STATE/slurmctld" "$STATE/slurmd" "$LOGS" "$RUN"
NEW_CONF="$(mktemp)"
cat > "$NEW_CONF" <<EOF
# Written by .ci/slurm-setup.sh: a one-node cluster on localhost for tests.
ClusterName=localcluster
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
SlurmctldPidFile=${RUN}/slurmctld.pid
SlurmdPidFile=${RUN}/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=${STATE}/slurmctld
SlurmdSpoolDir=${STATE}/slurmd
SlurmctldLogFile=${LOGS}/slurmctld.log
SlurmdLogFile=${LOGS}/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MailProg=/bin/true
JobCompType=jobcomp/none
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
EOF
CHANGED=0
if ! cmp -s "$NEW_CONF" "$CONF"; then
    say "writing $CONF (node $NODE, $CPUS CPUs, ${MEM_MB} MB)"
    install -m 0644 "$NEW_CONF" "$CONF"
    CHANGED=1
fi
rm -f "$NEW_CONF"

# --- daemons ------------------------------------------------------------------------------
running() {  # running PIDFILE: the daemon whose pid is in PIDFILE is alive
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}
stop() {  # stop PIDFILE: end the daemon we started earlier (by its recorded pid only)
    if running "$1"; then
        local pid; pid="$(cat "$1")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -f "$1"
}
if [[ "$CHANGED" == 1 ]]; then
    stop "$RUN/slurmd.pid"
    stop "$RUN/slurmctld.pid"
fi
show_logs() {
    echo "--- sinfo:" >&2; timeout 10 sinfo >&2 || true
    echo "--- $LOGS/slurmctld.log (tail):" >&2; tail -n 15 "$LOGS/slurmctld.log" >&2 2>/dev/null || true
    echo "--- $LOGS/slurmd.log (tail):" >&2; tail -n 15 "$LOGS/slurmd.log" >&2 2>/dev/null || true
}
start() {  # start NAME: start the daemon NAME unless it runs; fail if it dies at once
    local name="$1" pidfile="$RUN/$1.pid"
    running "$pidfile" && return 0
    say "starting $name"
    "$name" || { show_logs; die "$name did not start (see $LOGS/$name.log)"; }
    for _ in $(seq 1 10); do running "$pidfile" && break; sleep 0.5; done
    sleep 1
    running "$pidfile" || { show_logs; die "$name exited right after starting (see $LOGS/$name.log)"; }
}
start slurmctld
start slurmd

# --- wait for the node ------------------------------------------------------------------
say "waiting up to ${WAIT_S}s for node $NODE to be idle"
state=""
for _ in $(seq 1 "$((WAIT_S * 2))"); do
    state="$(node_state)"
    case "$state" in
        idle|mixed|allocated) say "cluster up: node $NODE is $state"; sinfo; exit 0 ;;
        down|drained|draining|drain|fail|failing)
            scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
    esac
    for d in slurmctld slurmd; do
        running "$RUN/$d.pid" || { show_logs; die "$d died (see $LOGS/$d.log)"; }
    done
    sleep 0.5
done
show_logs
die "node $NODE did not become idle within ${WAIT_S}s (state: '${state:-no answer}')"
