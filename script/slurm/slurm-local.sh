#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (localhost), for the integration test and for trying
# the job scripts: Debian's slurm-wlm and munge, run as root without systemd.
#   bash script/slurm/slurm-local.sh start     # installs what is missing (apt-get), then starts munged, slurmctld, slurmd
#   bash script/slurm/slurm-local.sh stop
# Exit 0 once `sinfo` shows the node idle; non-zero, with the reason on stderr, where it cannot start.
set -euo pipefail
node=$(hostname -s)
conf=/etc/slurm/slurm.conf
# The mark names the script's old place: a cluster started before the move must still be ours.
mark="# written by adarank's script/slurm-local.sh (a one-node test cluster)"

ours() {  # a configuration this script wrote, or none: never touch a real cluster's
  [ ! -e "$conf" ] || head -n 1 "$conf" | grep -qxF "$mark"
}

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  [ "$(id -u)" = 0 ] || { echo "slurm-local: needs root to install slurm-wlm and munge" >&2; return 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

configure() {
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
  cpus=$(nproc)
  memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  cat >"$conf" <<EOF
$mark
ClusterName=adarank-local
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 400 /etc/munge/munge.key
}

start() {
  ours || { echo "slurm-local: $conf belongs to another SLURM setup: not touching it" >&2; return 1; }
  install
  configure
  for _ in $(seq 60); do
    # (Re)start whatever is not running: a daemon stopped just before may still have been exiting.
    pgrep -x munged >/dev/null || runuser -u munge -- munged
    pgrep -x slurmctld >/dev/null || slurmctld -c
    pgrep -x slurmd >/dev/null || slurmd -N "$node"
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
      echo "slurm-local: node $node is idle"
      return 0
    fi
    sleep 1
  done
  echo "slurm-local: the node did not come up; see /var/log/slurm/*.log" >&2
  return 1
}

stop() {
  ours || { echo "slurm-local: $conf belongs to another SLURM setup: not stopping its daemons" >&2; return 1; }
  pkill -x slurmd || true
  pkill -x slurmctld || true
  pkill -x munged || true
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
