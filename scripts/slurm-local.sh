#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the tests marked `slurm` (and for trying
# `robustlab sweep --executor slurm` without a cluster). Runs as root, without systemd.
#
#   scripts/slurm-local.sh start    # munged, slurmctld and slurmd; waits until the node is idle
#   scripts/slurm-local.sh status   # exit 0 when a job can be submitted
#   scripts/slurm-local.sh stop     # stops the daemons it started, removes the job state
#
# Needs Debian's (or Ubuntu's) `slurm-wlm` and `munge` packages:
#   apt-get install -y slurm-wlm munge
# Everything it writes lives under $ROBUSTLAB_SLURM_DIR (default /tmp/robustlab-slurm): the
# configuration (slurm.conf), the controller's state, slurmd's spool, logs and pid files. Client
# commands find the configuration through /etc/slurm/slurm.conf when that is free (a link is made
# there) and through SLURM_CONF otherwise; `start` prints the line to export. Idempotent: `start`
# leaves running daemons alone, `stop` does nothing when nothing runs. Each action says what it did.
set -euo pipefail

DIR=${ROBUSTLAB_SLURM_DIR:-/tmp/robustlab-slurm}
CPUS=${ROBUSTLAB_SLURM_CPUS:-2}
CONF=$DIR/slurm.conf
ETC_CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)
PARTITION=debug

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit "${2:-1}"; }

alive() { # alive PIDFILE: the pid in the file is a live process
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

need_tools() {
    local missing=()
    for tool in munged munge unmunge slurmctld slurmd sbatch squeue sinfo scontrol; do
        command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        die "missing ${missing[*]}; install them with: apt-get install -y slurm-wlm munge" 3
    fi
    [[ $(id -u) == 0 ]] || die "run as root (the daemons run as root here)" 3
}

start_munge() {
    if munge_works; then
        say "munged already running"
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        if [[ -x /usr/sbin/mungekey ]]; then
            /usr/sbin/mungekey --create --force --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
        say "generated /etc/munge/munge.key"
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
    chmod 700 /etc/munge
    chmod 400 /etc/munge/munge.key
    chmod 755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    touch "$DIR/munged.started-by-us"
    for _ in $(seq 50); do munge_works && break; sleep 0.1; done
    munge_works || die "munged does not answer (see /var/log/munge/munged.log)"
    say "started munged (as user munge)"
}

write_conf() {
    local total mem
    total=$(free -m | awk '/^Mem:/ {print $2}')
    mem=$((total > 2048 ? total - 1024 : total / 2)) # a margin for the daemons and the system
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat >"$CONF" <<EOF
# Written by scripts/slurm-local.sh: a single-node cluster for tests.
ClusterName=robustlab-local
# Addresses are the loopback's: the host name need not resolve (containers).
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups, no systemd: processes are tracked through /proc, tasks are not confined.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# A job that asks for no memory gets its CPUs' share (not the whole node, which would run
# one job at a time).
DefMemPerCPU=$((mem / CPUS))
SchedulerType=sched/backfill
ReturnToService=2
# Trust the numbers below rather than the hardware (a container may report other counts).
SlurmdParameters=config_overrides
# Ended jobs stay visible to squeue for a while (no accounting database for sacct here).
MinJobAge=600
# Seconds between SIGTERM and SIGKILL when a job is cancelled, preempted or out of time.
KillWait=5
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    if [[ ! -e $ETC_CONF || ( -L $ETC_CONF && $(readlink "$ETC_CONF") == "$CONF" ) ]]; then
        mkdir -p "$(dirname "$ETC_CONF")"
        ln -sfn "$CONF" "$ETC_CONF"
        touch "$DIR/etc-link.made-by-us"
    fi
    say "wrote $CONF (node $HOST: $CPUS CPUs, ${mem} MB; partition $PARTITION)"
}

node_state() { SLURM_CONF=$CONF sinfo --noheader --nodes="$HOST" --format=%T 2>/dev/null | head -1; }

start() {
    need_tools
    mkdir -p "$DIR"
    start_munge
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
        say "slurmctld and slurmd already running"
    else
        write_conf
        if ! alive "$DIR/slurmctld.pid"; then
            slurmctld -f "$CONF"
            say "started slurmctld"
        fi
        if ! alive "$DIR/slurmd.pid"; then
            slurmd -f "$CONF"
            say "started slurmd"
        fi
    fi
    local state=""
    for _ in $(seq 150); do
        state=$(node_state)
        case $state in
            idle* | mixed* | allocated*) break ;;
            down* | drain*) SLURM_CONF=$CONF scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.2
    done
    case $state in
        idle* | mixed* | allocated*) ;;
        *) die "node $HOST is '${state:-unknown}' after 30 s (see $DIR/log/)" ;;
    esac
    say "cluster up: node $HOST $state, partition $PARTITION"
    [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$CONF" ]] || say "export SLURM_CONF=$CONF"
}

stop() {
    local pid name stopped=0
    for name in slurmd slurmctld; do
        if alive "$DIR/$name.pid"; then
            pid=$(cat "$DIR/$name.pid")
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
            say "stopped $name"
            stopped=1
        fi
    done
    if [[ -e $DIR/munged.started-by-us ]]; then
        local pid
        pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            say "stopped munged"
            stopped=1
        fi
        rm -f "$DIR/munged.started-by-us"
    fi
    if [[ -e $DIR/etc-link.made-by-us ]]; then
        [[ -L $ETC_CONF ]] && rm -f "$ETC_CONF"
        rm -f "$DIR/etc-link.made-by-us"
    fi
    rm -rf "$DIR/state" "$DIR/spool"
    ((stopped)) || say "nothing was running"
}

status() {
    local ok=1
    munge_works && say "munged: running" || { say "munged: not running"; ok=0; }
    for name in slurmctld slurmd; do
        alive "$DIR/$name.pid" && say "$name: running (pid $(cat "$DIR/$name.pid"))" ||
            { say "$name: not running"; ok=0; }
    done
    if ((ok)); then
        say "node $HOST: $(node_state)"
        [[ $(node_state) =~ ^(idle|mixed|allocated) ]] || ok=0
    fi
    ((ok))
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
