#!/usr/bin/env bash
# Start a one-node SLURM cluster on localhost, for tests/workflow/test_slurm.py and by hand.
#
#   sudo bash benchmarks/slurm/start_cluster.sh     # as root; idempotent
#   sinfo; sbatch ...; snakemake --executor slurm ...   # as root, on this machine
#   sudo bash benchmarks/slurm/stop_cluster.sh      # stops what this script started
#
# Installs Debian's slurm-wlm and munge with apt-get if they are missing, writes a slurm.conf
# for one node named after `hostname -s` (its CPUs and memory as `slurmd -C` reports them) into
# a scratch folder, starts munged as the munge user and slurmctld and slurmd as root, and waits
# until `sinfo` shows the node idle. Outside the scratch folder it touches only the munge key
# (/etc/munge/munge.key, created if absent) and a link /etc/slurm/slurm.conf to the scratch
# configuration (made only where no configuration is; stop_cluster.sh removes it). Settings
# that work without cgroups (containers) and without a database: proctrack/linuxproc,
# task/none, no accounting; DefMemPerCPU, so that a job does not take the node's whole memory.
#
# Environment: NERVESEG_SLURM_DIR (scratch folder, default /tmp/nerveseg-slurm),
# NERVESEG_SLURM_TIMEOUT (seconds to wait for the node, default 60), SLURM_CTLD_PORT and
# SLURM_D_PORT (default 6817 and 6818).
# Exit status: 0 when the node is idle, 3 when apt-get is unavailable and SLURM is not
# installed (one line on stderr says so), 1 on any other failure (the daemons' logs are shown).
set -euo pipefail

DIR=${NERVESEG_SLURM_DIR:-/tmp/nerveseg-slurm}
TIMEOUT=${NERVESEG_SLURM_TIMEOUT:-60}
CTLD_PORT=${SLURM_CTLD_PORT:-6817}
D_PORT=${SLURM_D_PORT:-6818}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

say() { printf 'start_cluster: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

[[ $(id -u) == 0 ]] || die "must run as root (it installs packages and starts slurmctld/slurmd)"

mkdir -p "$DIR"/{state,spool,log,run}
chmod 755 "$DIR"

# --- 1. packages -------------------------------------------------------------------------
t0=$(now)
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v munged >/dev/null || ! command -v sinfo >/dev/null; then
    if ! command -v apt-get >/dev/null; then
        say "SKIP: apt-get is not available and SLURM (slurmctld, slurmd, munged) is not installed"
        exit 3
    fi
    # The packages' maintainer scripts would start munge, slurmctld and slurmd through their
    # init scripts: a policy-rc.d that denies it (unless one is already there) keeps the only
    # daemons those this script starts and stop_cluster.sh stops.
    policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -q --no-install-recommends slurm-wlm munge; }
    say "installing slurm-wlm and munge with apt-get"
    if ! apt_install >"$DIR/log/apt.log" 2>&1; then
        say "apt-get install failed without an update; running apt-get update"
        apt-get update -q >>"$DIR/log/apt.log" 2>&1 || { tail -n 20 "$DIR/log/apt.log" >&2; die "apt-get update failed"; }
        apt_install >>"$DIR/log/apt.log" 2>&1 || { tail -n 20 "$DIR/log/apt.log" >&2; die "apt-get install slurm-wlm munge failed"; }
    fi
    [[ -n $policy ]] && rm -f "$policy"
    say "apt install took $(since "$t0") s"
fi

t1=$(now)

# --- 2. munge ------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0700 /var/lib/munge /var/log/munge

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if munge_ok; then
    # Someone else's munged (or ours, from an earlier start): use it, and leave it alone.
    alive "$DIR/run/munged.pid" || say "using the munged already running"
else
    rm -f "$DIR/run/munged.pid"
    # munged writes its pid file as the munge user: the default one under /run/munge.
    runuser -u munge -- munged --force
    for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
    munge_ok || die "munged did not start (see /var/log/munge/munged.log)"
    cp /run/munge/munged.pid "$DIR/run/munged.pid"
fi

# --- 3. slurm.conf -------------------------------------------------------------------------
host=$(hostname -s)
# `slurmd -C`: NodeName=HOST CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2
# ThreadsPerCore=1 RealMemory=24105
node=$(slurmd -C | grep '^NodeName=' | head -1)
[[ -n $node ]] || die "slurmd -C printed no NodeName line"
node=$(sed -E "s/^NodeName=[^ ]+/NodeName=$host/" <<<"$node")
mem=$(grep -oE 'RealMemory=[0-9]+' <<<"$node" | cut -d= -f2)
cpus=$(grep -oE 'CPUs=[0-9]+' <<<"$node" | cut -d= -f2)
# A job that asks for no memory gets its share of the node per CPU (at most 1 GiB per CPU).
defmem=$(( mem / cpus )); (( defmem > 1024 )) && defmem=1024

cat > "$CONF.new" <<EOF
# Written by benchmarks/slurm/start_cluster.sh: a one-node cluster on localhost.
ClusterName=nerveseg
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups (containers) and no database
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$defmem
ReturnToService=2
MinJobAge=300
SlurmdTimeout=300
InactiveLimit=0
KillWait=30
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
mv "$CONF.new" "$CONF"
# Programs inside a job find the configuration at the default path only: Snakemake's
# slurm-jobstep executor drops every SLURM_* variable, SLURM_CONF included, before its `srun`.
# So /etc/slurm/slurm.conf is a link to this one (stop_cluster.sh removes it); a real
# configuration there is never replaced.
ETC_CONF=/etc/slurm/slurm.conf
if [[ -L $ETC_CONF || ! -e $ETC_CONF ]]; then
    mkdir -p /etc/slurm
    ln -sfn "$CONF" "$ETC_CONF"
elif [[ $(readlink -f "$ETC_CONF") != "$(readlink -f "$CONF")" ]]; then
    die "$ETC_CONF exists and is not a link to $CONF: this machine has its own SLURM configuration; not touching it"
fi

# --- 4. slurmctld and slurmd ---------------------------------------------------------------
if alive "$DIR/run/slurmctld.pid"; then
    say "slurmctld already running (pid $(cat "$DIR/run/slurmctld.pid")); reconfiguring"
    scontrol reconfigure >/dev/null 2>&1 || true
else
    # -c: forget jobs of an earlier cluster in this scratch folder
    slurmctld -f "$CONF" -c || { tail -n 30 "$DIR/log/slurmctld.log" >&2; die "slurmctld failed to start"; }
fi
if ! alive "$DIR/run/slurmd.pid"; then
    slurmd -f "$CONF" || { tail -n 30 "$DIR/log/slurmd.log" >&2; die "slurmd failed to start"; }
fi

# --- 5. wait for the node ------------------------------------------------------------------
state=""
deadline=$(( $(date +%s) + TIMEOUT ))
while (( $(date +%s) < deadline )); do
    state=$(sinfo -h -N -n "$host" -o '%t' 2>/dev/null | head -1 || true)
    case $state in
        idle|mix|alloc) break ;;
        down*|drain*|drng*|fail*)
            scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
if [[ $state != idle && $state != mix && $state != alloc ]]; then
    say "node $host is ${state:-not reported} after ${TIMEOUT} s; the logs:"
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    exit 1
fi
say "cluster up in $(since "$t1") s: node $host ($cpus CPUs, ${mem} MB, ${defmem} MB per CPU by default) $state; SLURM_CONF=$CONF"
