#!/usr/bin/env bash
# Start a real single-node Slurm cluster (slurmctld + slurmd on loopback) for tests.
#
#   bash tests/slurm/start_cluster.sh RUNDIR
#
# Installs Debian's slurmctld/slurmd/slurm-client when they are missing (needs root
# and apt-get), writes RUNDIR/slurm.conf for this host (all CPUs, auth/none, fast
# requeue), starts both daemons with every state/spool/pid/log file inside RUNDIR and
# waits until the node is idle. Clients find the cluster through SLURM_CONF; the last
# line printed is `export SLURM_CONF=RUNDIR/slurm.conf`.
# Stop it with tests/slurm/stop_cluster.sh RUNDIR (the callers do so in a trap).
#
# Exit status: 0 cluster up; 3 Slurm missing and cannot be installed here (not root,
# or no apt-get): callers turn this into a skip; anything else is a real failure.
set -euo pipefail

die() { echo "start_cluster: $*" >&2; exit 1; }
cannot() { echo "start_cluster: $*" >&2; exit 3; }

[[ $# -eq 1 ]] || die "usage: $0 RUNDIR"
mkdir -p "$1"
rundir=$(cd "$1" && pwd)

# --- 1. Slurm binaries ---------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v sbatch >/dev/null; then
    [[ $(id -u) -eq 0 ]] || cannot "Slurm is not installed and installing it needs root"
    command -v apt-get >/dev/null || cannot "Slurm is not installed and apt-get is unavailable"
    echo "start_cluster: installing slurmctld slurmd slurm-client (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$rundir/apt.log" 2>&1 || { tail -5 "$rundir/apt.log" >&2; die "apt-get update failed"; }
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client \
        >>"$rundir/apt.log" 2>&1 || { tail -5 "$rundir/apt.log" >&2; die "apt-get install failed"; }
fi
# The daemons run as SlurmUser=root below.
[[ $(id -u) -eq 0 ]] || cannot "the test cluster runs its daemons as root"

# --- 2. One cluster per machine: ports 6817/6818 on loopback ----------------------------
if (exec 3<>/dev/tcp/127.0.0.1/6817) 2>/dev/null; then
    die "something already listens on 127.0.0.1:6817 (another slurmctld?); stop it first"
fi

# --- 3. slurm.conf for this host --------------------------------------------------------
host=$(hostname -s)
ncpu=$(nproc)
mkdir -p "$rundir/state" "$rundir/spool" "$rundir/log"
conf="$rundir/slurm.conf"
cat >"$conf" <<EOF
# Written by tests/slurm/start_cluster.sh: a throw-away one-node cluster.
ClusterName=bertforge-test
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
# Requeued jobs restart only after cred_expire seconds; 5 is the smallest accepted value.
AuthInfo=cred_expire=5
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=${rundir}/state
SlurmdSpoolDir=${rundir}/spool
SlurmctldPidFile=${rundir}/slurmctld.pid
SlurmdPidFile=${rundir}/slurmd.pid
SlurmctldLogFile=${rundir}/log/slurmctld.log
SlurmdLogFile=${rundir}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: the cgroup plugins leave folders behind on a shared machine.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
SchedulerParameters=sched_interval=2,bf_interval=1
DependencyParameters=kill_invalid_depend
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${ncpu} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
export SLURM_CONF="$conf"

# --- 4. Start the daemons and wait for an idle node --------------------------------------
slurmctld -f "$conf" -i || die "slurmctld failed to start; see $rundir/log/slurmctld.log"
slurmd -f "$conf" -N "$host" || die "slurmd failed to start; see $rundir/log/slurmd.log"

for _ in $(seq 1 150); do
    state=$(sinfo -h -N -n "$host" -o '%t' 2>/dev/null || true)
    if [[ $state == idle ]]; then
        echo "start_cluster: node $host idle with $ncpu CPUs (state in $rundir)" >&2
        echo "export SLURM_CONF=$conf"
        exit 0
    fi
    sleep 0.2
done
tail -5 "$rundir/log/slurmctld.log" "$rundir/log/slurmd.log" >&2 || true
die "node $host did not become idle within 30 s (last state: ${state:-none})"
