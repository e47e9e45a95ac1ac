#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the tests of `ablate --launcher slurm`: Debian's
# slurm-wlm and munge, slurmctld and slurmd on localhost as root, no cgroups, no accounting database.
# Its configuration lives in $DIR (default /tmp/diamusic-slurm), never in /etc/slurm, so a machine's own
# SLURM is left alone; the tests use it through SLURM_CONF=$DIR/slurm.conf. Idempotent: a cluster
# already up is reused. Where it cannot run (not root, no apt-get) it says so and exits 0.
set -u
DIR=${1:-${TMPDIR:-/tmp}/diamusic-slurm}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

if [ -f "$CONF" ] && sinfo -h >/dev/null 2>&1; then
  echo "local SLURM: up ($CONF)"; exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: a local SLURM needs root and apt-get; the SLURM cluster test will be skipped"; exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >/dev/null 2>&1 ||
    { echo "note: could not install slurm-wlm and munge; the SLURM cluster test will be skipped"; exit 0; }
fi

mkdir -p "$DIR/state" "$DIR/spool" /run/munge
[ -s /etc/munge/munge.key ] || mungekey --create >/dev/null 2>&1
chown munge:munge /etc/munge/munge.key /run/munge 2>/dev/null
pgrep -x munged >/dev/null || su -s /bin/sh munge -c munged || munged --force

HOST=$(hostname -s)
MEMORY=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
cat > "$CONF" <<EOF
ClusterName=diamusic-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( MEMORY / $(nproc) ))
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ReturnToService=2
MpiDefault=none
NodeName=$HOST CPUs=$(nproc) RealMemory=$MEMORY State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
for pid in "$DIR"/slurmctld.pid "$DIR"/slurmd.pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null; done; sleep 1
slurmctld -c -f "$CONF" && slurmd -f "$CONF" || { echo "note: slurmctld/slurmd did not start (see $DIR/*.log); the SLURM cluster test will be skipped"; exit 0; }
for _ in $(seq 30); do
  sinfo -h -o %T 2>/dev/null | grep -q idle && { echo "local SLURM: up ($CONF)"; exit 0; }
  sleep 1
done
echo "note: the local SLURM node never became idle (see $DIR/*.log); the SLURM cluster test will be skipped"
