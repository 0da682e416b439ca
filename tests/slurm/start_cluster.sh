#!/usr/bin/env bash
# Start a throwaway single-node SLURM cluster on this machine (munged, slurmctld, slurmd).
# Usage: start_cluster.sh STATE_DIR   (run as root; stop it with stop_cluster.sh STATE_DIR)
# Everything (config, spool, logs, pid files, munge key) lives under STATE_DIR; no accounting
# database, so job status comes from squeue, and MinJobAge keeps finished jobs visible.
set -euo pipefail
state=$(realpath -m "${1:?usage: start_cluster.sh STATE_DIR}")
mkdir -p "$state"/{spool/ctld,spool/d,log,run,munge}
chmod 700 "$state/munge"

host=$(hostname -s)
# CPUs, sockets, memory of this machine as slurmd sees them (first line: NodeName=... ...)
node=$(slurmd -C | head -n 1 | sed -e "s/^NodeName=[^ ]*/NodeName=$host/" -e 's/ UpTime=.*//')
# leave some memory to the OS so slurmd does not drain the node for a low RealMemory
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
node=$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 9 / 10))/" <<<"$node")

# munge: a fresh key, a daemon with its socket under STATE_DIR
dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$state/munge/munge.key"
# the default socket: slurmd's configless fetch and srun inside jobs use that one
mkdir -p /run/munge
socket=/run/munge/munge.socket.2
if [[ -S $socket ]] && munge -n </dev/null >/dev/null 2>&1; then
    echo "a munged is already running on $socket" >&2
    exit 1
fi
munged --key-file="$state/munge/munge.key" --socket="$socket" \
    --pid-file="$state/munge/munged.pid" --log-file="$state/log/munged.log" \
    --seed-file="$state/munge/munged.seed" --force

cat >"$state/slurm.conf" <<CONF
ClusterName=kneurons-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$state/spool/ctld
SlurmdSpoolDir=$state/spool/d
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MpiDefault=none
# configless: slurmd fetches this file from slurmctld and links /run/slurm/conf to it,
# where srun inside a job finds it (the job step's environment has no SLURM_CONF)
SlurmctldParameters=enable_configless
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF="$state/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd --conf-server "$host:6817"

for _ in $(seq 60); do
    if sinfo -h -N -o '%t' 2>/dev/null | grep -qx 'idle'; then
        echo "SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 1
done
echo "the node did not become idle; see $state/log" >&2
sinfo -N -l >&2 || true
exit 1
