#!/usr/bin/env bash
# Stop the test cluster started by tests/slurm/start_cluster.sh RUNDIR.
#
#   bash tests/slurm/stop_cluster.sh RUNDIR
#
# Cancels every job, asks slurmctld to shut down (it stops slurmd too), waits for the
# PIDs recorded in RUNDIR, and only if one is still alive after 15 s kills that PID.
# Safe to call twice or on a half-started cluster.
set -uo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 RUNDIR" >&2; exit 1; }
rundir=$1
conf="$rundir/slurm.conf"
[[ -f $conf ]] || exit 0
export SLURM_CONF="$conf"

pids=()
for f in "$rundir/slurmctld.pid" "$rundir/slurmd.pid"; do
    if [[ -s $f ]]; then
        pid=$(<"$f")
        # Only a live process whose command is a Slurm daemon: never a recycled PID.
        if [[ -r /proc/$pid/comm ]] && [[ $(</proc/"$pid"/comm) == slurm* ]]; then
            pids+=("$pid")
        fi
    fi
done
[[ ${#pids[@]} -gt 0 ]] || exit 0

timeout 10 scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
timeout 10 scontrol shutdown 2>/dev/null || true

alive() { [[ -d /proc/$1 ]]; }
for _ in $(seq 1 75); do
    left=()
    for pid in "${pids[@]}"; do alive "$pid" && left+=("$pid"); done
    [[ ${#left[@]} -eq 0 ]] && exit 0
    sleep 0.2
done
for pid in "${left[@]}"; do
    echo "stop_cluster: PID $pid still alive after shutdown; sending SIGTERM" >&2
    kill -TERM "$pid" 2>/dev/null || true
done
sleep 2
for pid in "${left[@]}"; do alive "$pid" && kill -KILL "$pid" 2>/dev/null; done
exit 0
