#!/usr/bin/env bash
# Stop the daemons that start_cluster.sh STATE_DIR started (by their pid files only).
set -uo pipefail
state=$(realpath -m "${1:?usage: stop_cluster.sh STATE_DIR}")
export SLURM_CONF="$state/slurm.conf"
scancel --quiet --full --user="$(id -un)" 2>/dev/null || true
for pidfile in "$state/run/slurmd.pid" "$state/run/slurmctld.pid" "$state/munge/munged.pid"; do
    if [[ -s $pidfile ]]; then
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
done
# slurmd's configless link to its config cache under STATE_DIR
if [[ $(readlink /run/slurm/conf 2>/dev/null) == "$state"/* ]]; then
    rm -f /run/slurm/conf
fi
exit 0
