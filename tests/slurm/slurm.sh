#!/usr/bin/env bash
# A real Slurm on this host: installs Debian's slurm-wlm and munge when missing (root), starts
# munged, slurmctld and slurmd for localhost with a generated slurm.conf, submits
# slurm/loom.sbatch running Fashion-MNIST at 4 tasks (mpirun inside the allocation), kills one
# task with SIGKILL mid-run, and checks that the job was requeued (RestartCnt 1), that the
# requeued run resumed, and that the final parameters equal those of an uninterrupted run.
# Then it sends the scheduler's warning (SIGUSR1 to the batch script) to a second job and checks
# the graceful path: checkpoint, exit 85, requeue, resume, same parameters.
# Usage: slurm.sh TRAIN_MNIST TEMPLATE. Skips (77) when not root and Slurm is absent.
set -euo pipefail
train=$(realpath "$1") template=$(realpath "$2")
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  [ "$(id -u)" -eq 0 ] || { echo "skipped: Slurm not installed and not root"; exit 77; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
[ "$(id -u)" -eq 0 ] || { echo "skipped: the local Slurm needs root"; exit 77; }
work=$(mktemp -d /tmp/loom-slurm.XXXXXX)
host=$(hostname -s)
conf=$work/slurm.conf
export SLURM_CONF=$conf
mkdir -p "$work/state" "$work/spool"
chmod 700 "$work"
# Every daemon is this test's own (own munge socket, pid files, state): nothing of the host's.
stop_daemons() {
  for p in slurmd slurmctld munged; do
    [ -f "$work/$p.pid" ] && kill "$(cat "$work/$p.pid")" 2>/dev/null || true
  done
  pkill -f "slurm(d|ctld) -f $conf" 2>/dev/null || true
  for _ in $(seq 20); do pgrep -f "slurm(d|ctld) -f $conf" >/dev/null || break; sleep 0.5; done
  pkill -9 -f "slurm(d|ctld) -f $conf" 2>/dev/null || true
}
cleanup() {
  echo "slurm test: stopping the daemons"
  stop_daemons
  rm -f /dev/shm/loom-slurmtest-$$-* 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cat >"$conf" <<CONF
ClusterName=loomtest
SlurmctldHost=$host
AuthInfo=socket=$work/munge.sock
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
KillWait=5
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
NodeName=$host CPUs=4 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
munged --force --socket="$work/munge.sock" --pid-file="$work/munged.pid" \
  --log-file="$work/munged.log" --seed-file="$work/munge.seed"
slurmctld -f "$conf"
slurmd -f "$conf"
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo -h -o %T | grep -q idle || { cat "$work"/*.log; echo "FAIL: the local Slurm did not come up"; exit 1; }

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1 OMPI_MCA_rmaps_base_oversubscribe=1
args=(--epochs 2 --max-steps 60 --ckpt-every 10 --snapshot-every 1)
mpirun --oversubscribe --bind-to none -np 4 "$train" --epochs 2 --max-steps 60 --dump-params "$work/straight.bin" >/dev/null

job_state() { scontrol show job "$1" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
restart_count() { scontrol show job "$1" | grep -o 'Restarts=[0-9]*' | cut -d= -f2; }
wait_for() { # job, state regex, seconds
  for _ in $(seq "$3"); do job_state "$1" | grep -Eq "$2" && return 0; sleep 1; done
  echo "FAIL: job $1 never reached $2 (now $(job_state "$1"))"; scontrol show job "$1"
  cat "$work"/*.out 2>/dev/null; tail -20 "$work"/slurmctld.log; exit 1
}

run_case() { # name, how to disturb the job (kill|usr1)
  local name=$1 how=$2 out=$work/$1.out
  local id
  # A job name of its own: this test's cluster numbers jobs from 1 on every run.
  id=$(sbatch --parsable --ntasks=4 --output="$out" --export=ALL,LOOM_JOB_ID="slurmtest-$$-$name" \
       "$template" "$train" "${args[@]}" \
       --ckpt-dir "$work/ckpt-$name" --dump-params "$work/$name.bin")
  wait_for "$id" RUNNING 60
  for _ in $(seq 120); do [ -f "$work/ckpt-$name/latest" ] && break; sleep 0.5; done # mid-run
  if [ "$how" = kill ]; then
    pid=$(pgrep -f -n "train_mnist.*ckpt-$name") && kill -9 "$pid"
    echo "$name: killed task pid $pid of job $id"
  else
    scancel --batch --signal=USR1 "$id"
    echo "$name: sent SIGUSR1 to the batch script of job $id"
  fi
  # Wait for the requeue itself (a job passes through transient states while it is requeued,
  # so only Restarts tells), then let it start early: Slurm makes a requeued job eligible
  # after a delay (its BeginTime moves ahead), which changes nothing else. Not at once: a
  # start within a second of the requeue can meet the old batch step's revoked credential
  # ("Job credential revoked"), and Slurm then fails the job for good.
  local r=0
  for _ in $(seq 180); do r=$(restart_count "$id"); [ "${r:-0}" -ge 1 ] && break; sleep 1; done
  [ "${r:-0}" -ge 1 ] || { cat "$out"; echo "FAIL: job $id was not requeued"; exit 1; }
  local pending=0
  for _ in $(seq 60); do
    state=$(job_state "$id")
    [ "$state" = PENDING ] && pending=$((pending + 1))
    [ "$pending" -ge 5 ] && { scontrol update JobId="$id" StartTime=now 2>/dev/null || true; }
    [ "$state" = RUNNING ] || [ "$state" = COMPLETED ] && break
    sleep 1
  done
  # The end: COMPLETED. Right after a requeue the job may show FAILED or CANCELLED while its
  # old step is torn down, so only such a state lasting 90 s counts as the end.
  local bad=0
  for _ in $(seq 300); do
    state=$(job_state "$id")
    [ "$state" = COMPLETED ] && break
    if echo "$state" | grep -Eq "FAILED|CANCELLED|TIMEOUT"; then bad=$((bad + 1)); else bad=0; fi
    [ "$bad" -ge 90 ] && break
    sleep 1
  done
  [ "$(job_state "$id")" = COMPLETED ] || { cat "$out"; echo "FAIL: job $id ended $(job_state "$id")"; exit 1; }
  local restarts
  restarts=$(restart_count "$id")
  [ "${restarts:-0}" -ge 1 ] || { cat "$out"; echo "FAIL: job $id was not requeued"; exit 1; }
  grep -q "requeueing job $id" "$out" && grep -q "Slurm restart 1" "$out" || { cat "$out"; echo "FAIL: no requeue/resume in the log"; exit 1; }
  grep -Eq "resumed from" "$out" || { cat "$out"; echo "FAIL: the requeued run did not resume"; exit 1; }
  ls /dev/shm | grep -q "loom-slurmtest-$$-$name-" && { cat "$out"; echo "FAIL: segments left"; exit 1; }
  cmp "$work/straight.bin" "$work/$name.bin" || { cat "$out"; echo "FAIL: parameters differ"; exit 1; }
  echo "$name: job $id requeued $restarts time(s), resumed ($(grep -m1 -o 'resumed from[^$]*' "$out")), parameters identical"
}
run_case crash kill
run_case preempt usr1
grep -q "checkpoint written, exit 85" "$work/preempt.out" || { cat "$work/preempt.out"; echo "FAIL: no graceful stop"; exit 1; }
echo "slurm: requeue after a killed task and after the scheduler's warning, both resumed exactly"
