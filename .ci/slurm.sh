#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, with accounting, for the sweep tests (root, no systemd).
#   .ci/slurm.sh install   Debian's packages (slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
#   .ci/slurm.sh start     install if needed, write the configs, start munged, mariadbd (127.0.0.1),
#                          slurmdbd, slurmctld and slurmd, and wait until the node is idle
#   .ci/slurm.sh stop      stop them by their PID files, in reverse order, and wait for each to exit
#   .ci/slurm.sh status    exit 0 when the node answers idle (or mixed/allocated)
# Accounting (slurmdbd + MariaDB) lets submitit learn that a job died (sacct) instead of waiting forever.
# Facts behind each setting: ../shared/LAUNCHERS.md.
set -euo pipefail

STATE=/var/lib/vae-cli-slurm          # logs and state of this test cluster
ETC=/etc/slurm
PIDS=(/run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid)
HOST=$(hostname -s)
CLUSTER=vaecli

install() {
  command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null \
    && command -v munged >/dev/null && command -v sinfo >/dev/null && return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server \
    >/dev/null
}

node_state() { timeout 10 sinfo -h -o %T 2>/dev/null | head -1 || true; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.2 s
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "slurm.sh: $what did not come up within ${limit}s; logs in $STATE" >&2
      tail -n 20 "$STATE"/*.log >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.2
  done
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_configs() {
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))  # MB, leaving 1 GB to the OS
  mkdir -p "$ETC" "$STATE" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /run/munge /run/mysqld
  cat >"$ETC/slurm.conf" <<EOF
# Written by .ci/slurm.sh: a one-node test cluster on the loopback address.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$ETC/slurmdbd.conf" <<EOF
# Written by .ci/slurm.sh: accounting in MariaDB on 127.0.0.1.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
CommunicationParameters=NoInAddrAny
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$STATE/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$ETC/slurmdbd.conf"
  chown munge:munge /run/munge
  chown mysql:mysql /run/mysqld
}

start() {
  install
  if alive /run/slurmctld.pid && [ -n "$(node_state)" ]; then echo "slurm: already running"; return 0; fi
  write_configs
  [ -f /etc/munge/munge.key ] || { /usr/sbin/mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; }
  chown munge:munge /etc/munge/munge.key
  alive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  wait_for 10 munged munge -n
  if ! alive /run/mysqld/mysqld.pid; then
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    # mariadbd stays in the foreground: nohup keeps it when this script's shell exits.
    nohup /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --port=3306 \
      --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid \
      --log-error="$STATE/mariadb.log" >/dev/null 2>&1 &
  fi
  wait_for 30 mariadbd mariadb --socket=/run/mysqld/mysqld.sock -e "SELECT 1"
  mariadb --socket=/run/mysqld/mysqld.sock -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  alive /run/slurmdbd.pid || slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
  alive /run/slurmctld.pid || slurmctld
  alive /run/slurmd.pid || slurmd
  wait_for 30 "the node" bash -c '[[ "$(sinfo -h -o %T 2>/dev/null)" =~ idle|mixed|alloc ]]'
  scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  echo "slurm: up ($HOST, $(nproc) CPUs, accounting on)"
}

stop() {
  local pidfile pid
  for pidfile in "${PIDS[@]}"; do
    alive "$pidfile" || continue
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  done
  echo "slurm: stopped"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) [[ "$(node_state)" =~ idle|mixed|alloc ]] ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
