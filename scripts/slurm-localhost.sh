#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, to run `spineseg batch --cluster slurm`
# (and tests/test_slurm_real.py) against a real slurmctld instead of the fake sbatch of
# tests/test_cohort_slurm.py. For a developer's Debian/Ubuntu machine or container, as
# root; never run by CI.
#
#   sudo scripts/slurm-localhost.sh up      # install (apt) if needed, configure, start
#   sudo scripts/slurm-localhost.sh status  # sinfo + squeue
#   sudo scripts/slurm-localhost.sh down    # stop munged, slurmctld, slurmd
#
# What `up` sets up (Debian 12: slurm-wlm 22.05, munge 0.5):
#   * a munge key (kept if one exists) and munged;
#   * /etc/slurm/slurm.conf: one node named `hostname -s` with every core of this machine
#     (CPUs=$(nproc)) and RealMemory 1 GB under MemAvailable, in partition `debug`
#     (the default); cons_tres/CR_Core so that 1-CPU jobs run side by side; no cgroups
#     (proctrack/linuxproc, task/none: works in containers), no accounting;
#     state in /var/spool/slurmctld, /var/spool/slurmd, logs in /var/log/slurm;
#   * slurmctld and slurmd started directly (no systemd), then checked with
#     `sinfo` and `srun hostname`.
# An existing /etc/slurm/slurm.conf that this script did not write is left alone (the
# script stops): it will not replace a real cluster's configuration.
# `down` stops the daemons by the pids in their pid files; the install and the config stay.
set -euo pipefail

HOST=$(hostname -s)
CONF=/etc/slurm/slurm.conf
MARK="# written by napari-spineseg scripts/slurm-localhost.sh"
RUN=/run/slurm

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "run as root (sudo $0 $*)" >&2
        exit 2
    fi
}

install_packages() {
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        apt-get install -y slurm-wlm munge
    fi
}

write_config() {
    if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        echo "$CONF exists and was not written by this script: not touching it" >&2
        exit 1
    fi
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(awk '/MemAvailable/ {print int($2 / 1024) - 1024}' /proc/meminfo)
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm "$RUN"
    chown slurm:slurm /var/spool/slurmctld /var/log/slurm "$RUN"
    cat >"$CONF" <<EOF
$MARK
ClusterName=spineseg-localhost
SlurmctldHost=$HOST
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# seconds between SIGTERM and SIGKILL when a job is cancelled or reaches its time limit
KillWait=10
NodeName=$HOST CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    echo "wrote $CONF (node $HOST: $cpus CPUs, ${mem_mb} MB)"
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    if ! munge -n >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged
    fi
    munge -n | unmunge >/dev/null
    echo "munged: ok"
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_slurm() {
    alive "$RUN/slurmctld.pid" || /usr/sbin/slurmctld
    alive "$RUN/slurmd.pid" || /usr/sbin/slurmd
    for _ in $(seq 30); do
        if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
            break
        fi
        sleep 1
    done
    sinfo
    srun -n1 -c1 hostname
}

stop_all() {
    local pidfile
    for pidfile in "$RUN/slurmd.pid" "$RUN/slurmctld.pid" /run/munge/munged.pid; do
        if alive "$pidfile"; then
            kill "$(cat "$pidfile")"
            echo "stopped $(basename "$pidfile" .pid)"
        fi
    done
}

case "${1:-}" in
up)
    need_root up
    install_packages
    write_config
    start_munge
    start_slurm
    ;;
status)
    sinfo
    squeue
    ;;
down)
    need_root down
    stop_all
    ;;
*)
    echo "usage: $0 up|status|down" >&2
    exit 2
    ;;
esac
