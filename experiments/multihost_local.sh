#!/usr/bin/env bash
# A real N-host paxml job on one machine: N local `python -m paxml.main`
# processes joined by jax.distributed (coordinator on 127.0.0.1:PORT) with
# cross-process collectives on CPU through Gloo, one CPU device each. Same
# code path as a multi-host pod (process_count() = N, each host feeds its
# slice of every global batch, orbax's multi-host checkpoint protocol),
# for testing on a laptop or CI.
#
#   experiments/multihost_local.sh N [paxml.main flags...]
#   experiments/multihost_local.sh 2 --exp=vit22b_pax.experiments.ViTSmoke \
#       --job_log_dir=runs/multihost_smoke --eval_on_test
#
# With ICI_MESH_SHAPE unset the mesh is (N, 1): every process on the data
# axis. Host i logs to $LOG_DIR/host<i>.log (default: <job_log_dir>/logs,
# or runs/multihost_local/logs without --job_log_dir). The script waits for
# all; when one exits non-zero it stops the others (they would wait for it
# in a collective) and exits with that first failure's code; Ctrl-C (or
# SIGTERM) stops them all. Re-running the same command resumes from the
# last checkpoint.
#
# Environment: PY (default python3), PORT (default: a free port),
# LOG_DIR, JAX_PLATFORMS (default cpu).
#
# One device per process: with several (XLA_FLAGS=
# --xla_force_host_platform_device_count) jax 0.4.26 timed out creating the
# Gloo context, so XLA_FLAGS is cleared here.
#
# Real clusters run the same paxml.main command once per host instead:
#   TPU pod slice: on every host (e.g. gcloud compute tpus tpu-vm ssh
#     --worker=all), with no multi-host flags: jax.distributed detects the
#     slice's hosts itself (see experiments/tpu_pod.sh).
#   GPU nodes: one process per node with all its GPUs, and
#     --multiprocess_gpu --server_addr=<node 0>:<port> --num_hosts=<nodes>
#     --host_idx=<this node>, e.g. from SLURM ($SLURM_NNODES,
#     $SLURM_NODEID; see experiments/gpu_cluster.sh). paxml passes these to
#     jax.distributed.initialize(coordinator_address, num_processes,
#     process_id).
# In both, --job_log_dir must be storage every host sees (GCS, NFS).
set -uo pipefail
cd "$(dirname "$0")/.."

if (( BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501 )); then
  echo "$0: needs bash >= 5.1 (wait -n -p), this is $BASH_VERSION" >&2
  exit 2
fi
if [[ $# -lt 1 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N [paxml.main flags...]   (N: number of processes)" >&2
  exit 2
fi
N=$1
shift
PY=${PY:-python3}
PORT=${PORT:-$("$PY" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')} || exit 2
JOB_DIR=runs/multihost_local
for arg in "$@"; do
  [[ $arg == --job_log_dir=* ]] && JOB_DIR=${arg#--job_log_dir=}
done
LOG_DIR=${LOG_DIR:-$JOB_DIR/logs}
mkdir -p "$LOG_DIR" || exit 2

declare -A host_of=()  # pid -> host index, for the processes still running

stop_all() {
  local pid
  for pid in "${!host_of[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null  # Each child leads its own group.
  done
  for _ in $(seq 50); do  # 5 s to exit, then SIGKILL.
    local alive=0
    for pid in "${!host_of[@]}"; do
      kill -0 -- "-$pid" 2>/dev/null && alive=1
    done
    (( alive )) || return 0
    sleep 0.1
  done
  for pid in "${!host_of[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null
  done
}
trap 'echo "interrupted: stopping all hosts" >&2; stop_all; wait; exit 130' INT
trap 'stop_all; wait; exit 143' TERM

echo "$N processes, coordinator 127.0.0.1:$PORT, logs in $LOG_DIR/"
for (( i = 0; i < N; i++ )); do
  # setsid: a group of its own, so stop_all also ends what it started.
  setsid env XLA_FLAGS= JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" \
    "$PY" -m paxml.main \
    --multiprocess_gpu \
    --server_addr="127.0.0.1:$PORT" \
    --num_hosts="$N" \
    --host_idx="$i" \
    --jax_cpu_enable_gloo_collectives=true \
    "$@" > "$LOG_DIR/host$i.log" 2>&1 < /dev/null &
  host_of[$!]=$i
  echo "host $i: pid $! -> $LOG_DIR/host$i.log"
done

status=0
while (( ${#host_of[@]} )); do
  pid=
  wait -n -p pid  # The next host to exit (our only background jobs);
  # bash unsets pid first and sets it only when a host exited.
  rc=$?
  if [[ -z ${pid:-} ]]; then
    (( rc == 127 )) && break  # No children left.
    continue  # Interrupted by a trapped signal.
  fi
  host=${host_of[$pid]}
  unset "host_of[$pid]"
  if (( rc != 0 && status == 0 )); then
    status=$rc
    echo "host $host exited with $rc (see $LOG_DIR/host$host.log);" \
      "stopping the others" >&2
    stop_all
  fi
done
(( status == 0 )) && echo "all $N hosts finished"
exit "$status"
