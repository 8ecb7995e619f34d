#!/usr/bin/env bash
# Stop the one-node SLURM cluster that start_cluster.sh started: exactly the daemons whose pid
# files it left in the scratch folder (slurmd, slurmctld, and munged only if it started it),
# each by its pid. Safe to run twice, or when nothing was started. Cancels the cluster's jobs
# first, so no job step outlives it.
set -uo pipefail

DIR=${NERVESEG_SLURM_DIR:-/tmp/nerveseg-slurm}
export SLURM_CONF=$DIR/slurm.conf

say() { printf 'stop_cluster: %s\n' "$*" >&2; }

# pid of a daemon from its pid file, if that process is alive and is the named program
pid_of() {
    local file=$DIR/run/$1.pid pid
    [[ -s $file ]] || return 1
    pid=$(cat "$file")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]] || return 1
    echo "$pid"
}

stop() {
    local name=$1 pid
    if pid=$(pid_of "$name"); then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name (pid $pid) ignored SIGTERM for 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null
        fi
        say "stopped $name (pid $pid)"
    fi
    rm -f "$DIR/run/$name.pid"
}

if pid_of slurmctld >/dev/null && command -v squeue >/dev/null; then
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [[ -n $jobs ]]; then
        say "cancelling jobs: ${jobs//$'\n'/ }"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 100); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break; sleep 0.1; done
    fi
fi
stop slurmd
stop slurmctld
stop munged
# the link start_cluster.sh made, if it is still ours
if [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$DIR/slurm.conf" ]]; then
    rm -f /etc/slurm/slurm.conf
fi
exit 0
