#!/usr/bin/env bash
# Start mpi_kvbench on this machine with mpirun.
#
#   launch/mpirun.sh [RANKS] [mpi_kvbench run flags...]
#   launch/mpirun.sh 8 --config configs/mlperf-option1.yaml --cache-dir /mnt/nvme/kv/{rank}
#
# RANKS defaults to the number of GPUs nvidia-smi sees, else 8. MPIRUN overrides the
# launcher (e.g. MPIRUN="mpirun --bind-to core"); PYTHON overrides the interpreter.
set -euo pipefail
ranks=${1:-}
if [[ -n "$ranks" && "$ranks" =~ ^[0-9]+$ ]]; then
  shift
  if (( 10#$ranks < 1 )); then
    echo "error: RANKS=$ranks: give 1 or more ranks (launch/mpirun.sh 8 ...)" >&2
    exit 2
  fi
  ranks=$((10#$ranks))
else
  ranks=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
  [[ "$ranks" -gt 0 ]] || ranks=8
fi
: "${MPIRUN:=mpirun}"
: "${PYTHON:=python}"
if ! command -v "${MPIRUN%% *}" >/dev/null; then
  echo "error: ${MPIRUN%% *} not found; pip install -e '.[mpi]' or load your site's MPI module" >&2
  exit 2
fi
# mpirun (MPICH's hydra, Open MPI's prterun) hands SIGINT and SIGTERM on to every rank,
# which then end the run in order (exit 130 or 143), but dies of SIGHUP itself, taking the
# ranks down with no result. So mpirun starts with SIGHUP ignored, in the background, and
# a hang-up of this script (a closed terminal or ssh session) reaches it as SIGTERM: the
# run ends in order with status 143. SIGINT is left to the terminal, which sends it to
# mpirun directly; a SIGTERM to this script is passed on (the ranks take a copy that
# arrives with the direct one, from a kill of the whole process group, as one signal).
set +e
trap '' HUP
$MPIRUN -n "$ranks" "$PYTHON" -m mpi_kvbench run "$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' HUP TERM
trap ':' INT
while :; do
  wait "$pid"
  rc=$?
  kill -0 "$pid" 2>/dev/null || break   # wait returned for a signal: mpirun still runs
done
exit "$rc"
