#!/usr/bin/env bash
# tests/slurm/cluster.sh start DIR    a single-node Slurm cluster of our own in DIR (as root)
# tests/slurm/cluster.sh stop DIR     stop everything it started there, remove DIR
#
# What the Slurm tests (tests/test_slurm.py) run against, and what a user can rehearse a
# sweep on (docs/slurm.md). Everything lives in DIR: munge's key and socket,
# a MariaDB database for accounting, slurmdbd, slurmctld and slurmd, their configs, state
# and logs, on free ports of 127.0.0.1. Nothing is read from or written to /etc, /run or
# /var, so a cluster already on the machine is left alone, and the tests recognise this one
# by DIR/owner and its unique ClusterName.
#
# Accounting is real (slurmdbd + MariaDB): submitit asks `sacct` what became of a job
# that died without writing its result (scancel, a time limit, SIGKILL); without it,
# sacct fails and the launching process waits for such a job forever.
#
# Needs (Debian): apt-get install --no-install-recommends slurmctld slurmd slurm-client
#   slurmdbd munge mariadb-server
# After `start`, clients need: export SLURM_CONF=DIR/slurm.conf (printed on success).
set -euo pipefail

PARTITION=experiments
CPUS=8  # the fewest CPUs the node offers
OWNER_FILE=owner  # names the cluster; the tests run only against a DIR that holds it

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$2

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll until COMMAND succeeds
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "slurm cluster: $what did not come up in ${limit} s; logs in $dir/log" >&2
            return 1
        fi
        sleep 0.2
    done
}

start_munge() {
    mkdir -p "$dir/munge"
    mungekey --create --keyfile="$dir/munge/munge.key" 2>/dev/null \
        || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    munged -F --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munge.seed" \
        --log-file="$dir/log/munged.log" >>"$dir/log/munged.out" 2>&1 &
    echo $! >"$dir/pids/munged"
    wait_for 10 munged test -S "$dir/munge/munge.socket"
}

start_mariadb() {
    mariadb-install-db --no-defaults --user=root --datadir="$dir/mysql" --skip-test-db \
        --auth-root-authentication-method=socket >"$dir/log/mariadb-install.log" 2>&1
    mariadbd --no-defaults --user=root --datadir="$dir/mysql" --bind-address=127.0.0.1 \
        --port="$db_port" --socket="$dir/mysql.sock" --pid-file="$dir/mysql.pid" \
        --log-error="$dir/log/mariadb.log" --skip-log-bin --innodb-buffer-pool-size=64M \
        --innodb-log-file-size=16M --innodb-flush-log-at-trx-commit=0 >>"$dir/log/mariadb.out" 2>&1 &
    echo $! >"$dir/pids/mariadbd"
    wait_for 30 MariaDB mariadb --no-defaults --socket="$dir/mysql.sock" -u root -e "select 1"
    mariadb --no-defaults --socket="$dir/mysql.sock" -u root -e "
        CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$db_password';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

write_configs() {
    local cpus memory
    # This machine's CPUs (at least CPUS, so that a few one-CPU test jobs run at once on a
    # 2-core machine: SlurmdParameters=config_overrides lets slurmd accept that) and memory.
    cpus=$(slurmd -C | head -1 | sed -n 's/.* CPUs=\([0-9]*\).*/\1/p')
    memory=$(slurmd -C | head -1 | sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p')
    [ "$cpus" -ge "$CPUS" ] || cpus=$CPUS
    cat >"$dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
PidFile=$dir/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=$db_password
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$dir/slurmdbd.conf"  # slurmdbd refuses a config others can read
    cat >"$dir/slurm.conf" <<EOF
ClusterName=$cluster
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
AuthType=auth/munge
# cred_expire: also how long a requeued job waits before it starts again (default 120 s)
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
AccountingStoragePass=$dir/munge/munge.socket  # the munge socket for slurmdbd
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait=30  # Slurm's default: how long a job has to close its run after SIGTERM
# A requeued job is eligible again after cred_expire: start it within seconds, not a minute.
SchedulerParameters=sched_interval=5,bf_interval=5
MinJobAge=300
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    if [ "$(id -u)" != 0 ]; then
        echo "slurm cluster: must run as root (slurmd starts jobs as their users)" >&2
        exit 1
    fi
    if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
        echo "slurm cluster: $dir is not empty" >&2
        exit 1
    fi
    mkdir -p "$dir"/{log,pids,state,spool}
    chmod 755 "$dir"  # clients of every user reach munge's socket in it
    dir=$(cd "$dir" && pwd)
    cluster="exp$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"  # unique: never another's
    db_password=$(od -An -N12 -tx4 /dev/urandom | tr -d ' \n')
    db_port=$(free_port)
    dbd_port=$(free_port)
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    printf 'cluster=%s\npartition=%s\n' "$cluster" "$PARTITION" >"$dir/$OWNER_FILE"
    write_configs
    export SLURM_CONF=$dir/slurm.conf
    start_munge
    start_mariadb
    slurmdbd -D >>"$dir/log/slurmdbd.out" 2>&1 &
    echo $! >"$dir/pids/slurmdbd"
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster "$cluster" >/dev/null
    slurmctld -D -i >>"$dir/log/slurmctld.out" 2>&1 &
    echo $! >"$dir/pids/slurmctld"
    slurmd -D -N localhost >>"$dir/log/slurmd.out" 2>&1 &
    echo $! >"$dir/pids/slurmd"
    wait_for 30 "the node" sh -c "sinfo -h -N -o %t | grep -qx idle"
    echo "export SLURM_CONF=$dir/slurm.conf  # cluster $cluster, partition $PARTITION"
}

ours() {  # this cluster's slurmstepd and job processes: its SLURM_CONF, and a job id
    local pid environ
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        environ=$( { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null) || continue
        grep -qx "SLURM_CONF=$dir/slurm.conf" <<<"$environ" || continue
        if grep -q "^SLURM_JOB_ID=" <<<"$environ" || [ "$(cat "/proc/$pid/comm")" = slurmstepd ]; then
            echo "$pid"
        fi
    done
}

stop() {
    [ -d "$dir" ] || exit 0
    dir=$(cd "$dir" && pwd)
    if [ ! -f "$dir/$OWNER_FILE" ]; then
        echo "slurm cluster: $dir was not made by this script; left alone" >&2
        exit 1
    fi
    export SLURM_CONF=$dir/slurm.conf
    # Jobs first, as Slurm ends them (SIGTERM: they close their runs), for 10 s at most.
    if scancel --full --quiet $(squeue -h -o %A 2>/dev/null | sort -u) 2>/dev/null; then
        for _ in $(seq 50); do
            [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    # Then the daemons, the last started first.
    for daemon in slurmd slurmctld slurmdbd mariadbd munged; do
        [ -f "$dir/pids/$daemon" ] || continue
        pid=$(cat "$dir/pids/$daemon")
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    done
    # What is left of a job (slurmstepd and the job's processes outlive slurmd).
    for pid in $(ours); do
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$dir"
}

case $action in
start) start ;;
stop) stop ;;
*) usage ;;
esac
