#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (localhost), for the Slurm tests and for trying
# `xtc sweep --executor slurm` without a cluster. Needs root and Debian's packages:
#   apt-get install -y slurm-wlm munge
#
#   tools/slurm-local.sh start    # configure (CPUs and memory from `slurmd -C`) and start
#   eval "$(tools/slurm-local.sh env)"   # point sbatch/squeue/scontrol at it (SLURM_CONF)
#   tools/slurm-local.sh status   # sinfo + squeue; exit 1 when it is not up
#   tools/slurm-local.sh stop     # stop slurmctld and slurmd (and munged if started here)
#
# Everything lives in $XTC_SLURM_DIR (default /tmp/xtc-slurm): slurm.conf, state, logs.
# Its own ports (6917/6918) keep it apart from a system Slurm; /etc/slurm is not touched.
# No accounting daemon (slurmdbd): `sacct` does not work here; xtc watches jobs with squeue.
# Exit codes: 0 ok, 1 not running (status), 3 Slurm or munge not installed, 4 not root.
set -euo pipefail

STATE=${XTC_SLURM_DIR:-/tmp/xtc-slurm}
CONF=$STATE/slurm.conf
HOST=$(hostname -s)

need_installed() {
    local missing=()
    for cmd in slurmctld slurmd sbatch squeue scontrol munged munge; do
        command -v "$cmd" > /dev/null 2>&1 || missing+=("$cmd")
    done
    if ((${#missing[@]})); then
        echo "slurm-local: ${missing[*]} not installed; install with:" \
             "apt-get install -y slurm-wlm munge" >&2
        exit 3
    fi
}

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "slurm-local: must run as root (slurmd starts jobs as their users)" >&2
        exit 4
    fi
}

start_munge() {
    if munge -n 2> /dev/null | unmunge > /dev/null 2>&1; then
        return  # a munged already answers
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        if command -v mungekey > /dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
    fi
    local user=root
    id munge > /dev/null 2>&1 && user=munge
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown "$user" /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 400 /etc/munge/munge.key
    chmod 755 /run/munge
    if [ "$user" = munge ]; then
        runuser -u munge -- munged
    else
        munged --force
    fi
    pgrep -n -x munged > "$STATE/run/munged.pid" || true
    for _ in $(seq 50); do
        munge -n 2> /dev/null | unmunge > /dev/null 2>&1 && return
        sleep 0.1
    done
    echo "slurm-local: munged did not start (see /var/log/munge/munged.log)" >&2
    exit 1
}

write_conf() {
    # the node as slurmd sees it: CPUs, sockets, cores, threads, RealMemory (MB)
    local node
    node=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ UpTime=.*//')
    local cpus mem
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<< "$node")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<< "$node")
    cat > "$CONF" << EOF
# Written by tools/slurm-local.sh: a one-node cluster on $HOST ($node).
ClusterName=xtc-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=6917
SlurmdPort=6918
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire seconds before it may start again (default 120)
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# every process of a job is tracked (the notebook kernels too) and gets its signals
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((mem / cpus))
SchedulerType=sched/backfill
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$HOST NodeAddr=127.0.0.1 $node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

is_up() {
    SLURM_CONF=$CONF sinfo -h -o %T 2> /dev/null | grep -qE '^(idle|mixed|allocated|completing)'
}

start() {
    need_installed
    need_root
    mkdir -p "$STATE/spool/ctld" "$STATE/spool/d" "$STATE/log" "$STATE/run"
    if [ -f "$CONF" ] && is_up; then
        echo "slurm-local: already running ($CONF)"
        return
    fi
    stop_daemons quiet
    start_munge
    write_conf
    export SLURM_CONF=$CONF
    slurmctld -c -f "$CONF"  # -c: no jobs left over from an earlier start
    slurmd -f "$CONF" -N "$HOST"
    for _ in $(seq 100); do
        if is_up; then
            echo "slurm-local: running; node $HOST: $(sinfo -h -N -o '%c CPUs, %m MB')"
            echo "slurm-local: export SLURM_CONF=$CONF"
            return
        fi
        if SLURM_CONF=$CONF sinfo -h -o %T 2> /dev/null | grep -qE 'down|drain'; then
            scontrol update nodename="$HOST" state=resume 2> /dev/null || true
        fi
        sleep 0.2
    done
    echo "slurm-local: the node did not come up; logs: $STATE/log/" >&2
    tail -5 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
    exit 1
}

stop_daemons() {
    for name in slurmd slurmctld; do
        local pidfile=$STATE/run/$name.pid
        if [ -s "$pidfile" ]; then
            local pid
            pid=$(cat "$pidfile")
            if kill "$pid" 2> /dev/null; then
                for _ in $(seq 100); do
                    kill -0 "$pid" 2> /dev/null || break
                    sleep 0.1
                done
                kill -9 "$pid" 2> /dev/null || true
            fi
            rm -f "$pidfile"
        fi
    done
    [ "${1:-}" = quiet ] || echo "slurm-local: stopped"
}

stop() {
    if [ -f "$CONF" ]; then
        SLURM_CONF=$CONF scancel --full --quiet --state=RUNNING,PENDING -u "$(id -un)" \
            2> /dev/null || true
    fi
    stop_daemons
    if [ -s "$STATE/run/munged.pid" ]; then  # only a munged this script started
        kill "$(cat "$STATE/run/munged.pid")" 2> /dev/null || true
        rm -f "$STATE/run/munged.pid"
    fi
}

status() {
    if [ -f "$CONF" ] && is_up; then
        SLURM_CONF=$CONF sinfo
        SLURM_CONF=$CONF squeue
        echo "export SLURM_CONF=$CONF"
    else
        echo "slurm-local: not running"
        exit 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
