#!/usr/bin/env bash
# A one-node Slurm cluster on loopback, for the Slurm executor's tests (and for trying it):
#   scripts/slurm-cluster.sh start DIR   writes DIR/slurm.conf, starts munged, slurmctld and
#                                        slurmd (as root, as CI runs), waits until the node
#                                        takes jobs; use it with SLURM_CONF=DIR/slurm.conf
#   scripts/slurm-cluster.sh stop DIR
# Needs Debian's slurm-wlm and munge (.ci/run installs them). No accounting storage: sacct
# says it is disabled, as on many small clusters, and the executor reads squeue/scontrol.
set -euo pipefail
cmd=${1:?start|stop}; dir=$(realpath -m "${2:?folder}")
stop() {
  for d in slurmd slurmctld munged; do
    [ -f "$dir/$d.pid" ] && kill "$(cat "$dir/$d.pid")" 2>/dev/null || true
    rm -f "$dir/$d.pid"
  done
  # what an earlier start of this folder left without a pid file
  pkill -f -- "$dir/" 2>/dev/null || true
}
case "$cmd" in
stop) stop; exit 0 ;;
start) stop; sleep 1 ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
host=$(hostname -s)
cpus=$(nproc)
cat > "$dir/slurm.conf" <<CONF
ClusterName=gptpipe
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
OverTimeLimit=0
NodeName=node1 NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=node1 Default=YES MaxTime=INFINITE State=UP
CONF
if [ ! -s "$dir/munge/munge.key" ]; then
  head -c 1024 /dev/urandom > "$dir/munge/munge.key"
  chmod 400 "$dir/munge/munge.key"
fi
munged --force --key-file "$dir/munge/munge.key" --socket "$dir/munge/munge.socket" \
  --pid-file "$dir/munged.pid" --log-file "$dir/munged.log" --seed-file "$dir/munge/seed"
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N node1
for _ in $(seq 1 60); do
  if sinfo -h -N -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
    echo "slurm: node1 up (SLURM_CONF=$SLURM_CONF)"
    exit 0
  fi
  scontrol update nodename=node1 state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "slurm did not come up; logs in $dir:" >&2
tail -n 20 "$dir"/*.log >&2
exit 1
