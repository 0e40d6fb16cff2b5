#!/bin/bash
#PJM -N golden-pjm
#PJM -L node=4
#PJM --mpi proc=16
#PJM -L rscgrp=cxgfs-small
#PJM -L elapse=168:00:00
#PJM -g jh0001
#PJM -j
#PJM -X
#
# Training job for run golden-pjm, rendered by `launcher` (profile pjm).
# 4 node(s) x 4 rank(s) via mpirun, backend horovod, walltime 168:00:00.
# Every link of the run executes this same script: it exits at once when the run is done,
# stages shards to node-local disk, starts the trainer, and on exit code 75
# ("checkpointed, resume me") keeps a chain of dependent jobs going.
# What to do after each step is decided by `python -m launcher.outcome` (launcher/outcome.py);
# this script keeps the scheduler's directives, the traps, `wait` and the scheduler's commands.
set -uo pipefail

RUN_DIR=/runs/golden-pjm
LAUNCHER_NNODES=4
LAUNCHER_RANKS_PER_NODE=4
LAUNCHER_WALLTIME_S=604800
LAUNCHER_MARGIN_S=900
LAUNCHER_WARNING_LEAD_S=300
LAUNCHER_CHAIN_LENGTH=1
LAUNCHER_MAX_TIMEOUTS=20
LAUNCHER_MAX_PREEMPTIONS=100
LAUNCHER_RESUME_MODE=chain
LAUNCHER_SCHEDULER=pjm
LAUNCHER_STAGE=train
LAUNCHER_LINK="${LAUNCHER_LINK:-0}"
LAUNCHER_START=$(date +%s)
LAUNCHER_JOB_ID="${PJM_JOBID:?this script runs under PJM (pjsub)}"
LAUNCHER_RESTART_COUNT="$LAUNCHER_LINK"
launcher_hosts() { cat "$PJM_O_NODEINF"; }
LAUNCHER_LOCALDIR="${PJM_LOCALTMP:-/tmp}"
export RUN_DIR LAUNCHER_JOB_ID LAUNCHER_RESTART_COUNT LAUNCHER_LINK LAUNCHER_CHAIN_LENGTH LAUNCHER_LOCALDIR \
    LAUNCHER_START LAUNCHER_WALLTIME_S LAUNCHER_WARNING_LEAD_S LAUNCHER_MAX_TIMEOUTS LAUNCHER_MAX_PREEMPTIONS \
    LAUNCHER_RESUME_MODE LAUNCHER_SCHEDULER LAUNCHER_STAGE

mkdir -p "$RUN_DIR/logs" "$RUN_DIR/job" "$RUN_DIR/checkpoints" || exit 1
cd "$RUN_DIR" || exit 1
exec >>"$RUN_DIR/logs/run.log" 2>&1

# Software environment (from the cluster profile).
# shellcheck source=/dev/null
source /etc/profile.d/modules.sh
# The profile's modules (module scripts are not written for `set -u`). `module` comes from the
# setup lines above or else the usual init script of Environment Modules or Lmod; without it,
# or when a module does not load, the job stops here with one line saying so.
set +u
if ! command -v module >/dev/null 2>&1; then
    for launcher_init in /etc/profile.d/modules.sh /etc/profile.d/lmod.sh /usr/share/lmod/lmod/init/bash \
        /usr/share/Modules/init/bash /usr/share/modules/init/bash; do
        if [ -r "$launcher_init" ]; then
            # shellcheck source=/dev/null
            . "$launcher_init"
            break
        fi
    done
fi
if ! command -v module >/dev/null 2>&1; then
    printf "launcher: profile %s lists modules but this node has no 'module' command (no /etc/profile.d/modules.sh or lmod.sh): put the line that defines it in the profile's setup\n" pjm
    exit 1
fi
module load cuda/10.2.89_440.33.01 || { printf "launcher: module load %s failed (profile %s; 'module avail' lists what there is)\n" cuda/10.2.89_440.33.01 pjm; exit 1; }
module load nccl/2.7.3 || { printf "launcher: module load %s failed (profile %s; 'module avail' lists what there is)\n" nccl/2.7.3 pjm; exit 1; }
module load gcc/8.4.0 || { printf "launcher: module load %s failed (profile %s; 'module avail' lists what there is)\n" gcc/8.4.0 pjm; exit 1; }
module load cudnn/8.2.1 || { printf "launcher: module load %s failed (profile %s; 'module avail' lists what there is)\n" cudnn/8.2.1 pjm; exit 1; }
module load openmpi/4.0.4 || { printf "launcher: module load %s failed (profile %s; 'module avail' lists what there is)\n" openmpi/4.0.4 pjm; exit 1; }
set -u
# The Python environment that submitted the job (<PYTHON>).
# shellcheck source=/dev/null
source <PREFIX>/bin/activate
LAUNCHER_PYTHON=<PYTHON>
if [ "$(id -u)" -eq 0 ]; then
    # Open MPI refuses to run as root unless told twice; only set when the job runs as root.
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

# Ask the job's policy (launcher/outcome.py) what to do after STEP; it prints "ACTION [ARG]".
# "exit CODE CLEANUP_S" ends the job here; any other action is left in launcher_action/launcher_arg(2).
launcher_act() {
    local line
    if ! line=$("$LAUNCHER_PYTHON" -m launcher.outcome "$@") || [ -z "$line" ]; then
        echo "launcher: the job's policy (python -m launcher.outcome $1) failed"
        exit 1
    fi
    read -r launcher_action launcher_arg launcher_arg2 <<<"$line"
    if [ "$launcher_action" = exit ]; then
        # shellcheck disable=SC2034  # read by the clean-up on exit, when the job has one
        launcher_cleanup_s=${launcher_arg2:-120}
        exit "$launcher_arg"
    fi
}
launcher_act begin

# Signals: the scheduler's warning or termination signal is passed on to the rank launcher's
# supervisor (launcher.supervise) as SIGUSR2; it passes a stop to every rank (mpirun and srun
# forward USR2) and keeps mpirun from aborting on SIGTERM, so the command checkpoints at its next
# step. Schedulers that signal every process of the job reach the same supervisor.
launcher_child=""
launcher_got_signal=""
launcher_interrupted=0
# shellcheck disable=SC2317  # called from the traps below
launcher_on_signal() {
    launcher_got_signal=$1
    launcher_interrupted=1
    echo "launcher: received SIG$1"
    if [ -n "$launcher_child" ]; then
        kill -s USR2 "$launcher_child" 2>/dev/null || true
    fi
}
trap 'launcher_on_signal TERM' TERM
trap 'launcher_on_signal USR2' USR2
trap 'launcher_on_signal USR1' USR1
trap 'launcher_on_signal INT' INT

# Run a command in the background and wait for it; a trapped signal interrupts `wait`,
# so wait again until the command itself has exited. Sets launcher_rc.
launcher_run() {
    "$@" &
    launcher_child=$!
    if [ -n "$launcher_got_signal" ]; then
        kill -s USR2 "$launcher_child" 2>/dev/null || true
    fi
    while :; do
        launcher_interrupted=0
        wait "$launcher_child"
        launcher_rc=$?
        [ "$launcher_interrupted" = 1 ] || break
    done
    launcher_child=""
}

# What every rank on every node needs: mpirun starts remote ranks with the environment sshd
# gives (only -x variables reach them). Variables that are not set are not forwarded.
launcher_forward=(PATH LD_LIBRARY_PATH PYTHONPATH VIRTUAL_ENV CONDA_PREFIX OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM RUN_DIR LAUNCHER_JOB_ID LAUNCHER_RESTART_COUNT LAUNCHER_LOCALDIR MASTER_ADDR MASTER_PORT LAUNCHER_DEADLINE)

# Hosts: one line per node, "host slots=N", in the scheduler's order.
LAUNCHER_HOSTFILE="$RUN_DIR/job/hostfile.$LAUNCHER_JOB_ID"
launcher_hosts | awk -v slots="$LAUNCHER_RANKS_PER_NODE" 'NF && !seen[$1]++ { print $1 " slots=" slots }' >"$LAUNCHER_HOSTFILE"
launcher_got_hosts=$(wc -l <"$LAUNCHER_HOSTFILE")
if [ "$launcher_got_hosts" -ne "$LAUNCHER_NNODES" ]; then
    launcher_act event "fail: expected $LAUNCHER_NNODES hosts, the scheduler gave $launcher_got_hosts"
    exit 1
fi
MASTER_ADDR=$(awk 'NR == 1 { print $1 }' "$LAUNCHER_HOSTFILE")
launcher_id_digits=$(printf '%s' "$LAUNCHER_JOB_ID" | tr -cd '0-9' | tail -c 6)
MASTER_PORT=$((10000 + 10#${launcher_id_digits:-0} % 50000))

# The command stops by this deadline (walltime minus a margin, counted from job start, so
# staging time is included) and exits 75 after writing a checkpoint.
LAUNCHER_DEADLINE=$((LAUNCHER_START + LAUNCHER_WALLTIME_S - LAUNCHER_MARGIN_S))
LAUNCHER_DEADLINE_ISO=$(date -u -d "@$LAUNCHER_DEADLINE" +%Y-%m-%dT%H:%M:%SZ)
export MASTER_ADDR MASTER_PORT LAUNCHER_HOSTFILE LAUNCHER_DEADLINE LAUNCHER_DEADLINE_ISO
launcher_mpi_env=()
for launcher_var in "${launcher_forward[@]}"; do
    if [ -n "${!launcher_var+x}" ]; then
        launcher_mpi_env+=(-x "$launcher_var")
    fi
done
# One process per node (staging).
launcher_per_node=(mpirun -np 4 -hostfile "${LAUNCHER_HOSTFILE}" -map-by ppr:1:node -bind-to none -x NCCL_BUFFSIZE=1048576 -x NCCL_IB_TIMEOUT=14 "${launcher_mpi_env[@]}")

# Stage this node's shards to node-local disk (one copier per node; it knows its node from the
# MPI or SLURM step environment); the command reads the staged manifest. The directory is private
# to this run and job (mode 0700, marked with the run; one another user planted is refused) and is
# removed on every node when the job ends. Staging time counts against the walltime: the deadline
# is from job start.
LAUNCHER_DATA_DIR="$LAUNCHER_LOCALDIR/golden-pjm-$LAUNCHER_JOB_ID"
# shellcheck disable=SC2317  # called from the EXIT trap
launcher_unstage() {
    # A node that died never answers (its copy went with it): the policy then shortens the wait.
    timeout "${launcher_cleanup_s:-120}" "${launcher_per_node[@]}" rm -rf -- "$LAUNCHER_DATA_DIR" >/dev/null 2>&1 || true
    rm -rf -- "$LAUNCHER_DATA_DIR"
}
trap launcher_unstage EXIT
launcher_stage_start=$(date +%s)
launcher_run "${launcher_per_node[@]}" "$LAUNCHER_PYTHON" -m hdf5_tools.cli stage <REPO>/tests/golden/launcher/shards.manifest --to "$LAUNCHER_DATA_DIR" --run "$RUN_DIR"
launcher_act staged "$launcher_rc" "$launcher_got_signal" "$(( $(date +%s) - launcher_stage_start ))"

# Start the train command as ranks (through mpirun) under the supervisor, unless a stop came first.
launcher_command=(<PYTHON> -m pixpro_of train --run-dir /runs/golden-pjm --config pixpro_k6 --deadline "$LAUNCHER_DEADLINE_ISO" dist.backend=horovod data.batch_size=256)
launcher_command+=('data.shards=['"$LAUNCHER_DATA_DIR/manifest.json]")
launcher_ranks=(mpirun -np 16 -hostfile "${LAUNCHER_HOSTFILE}" -map-by ppr:4:node -bind-to none -x NCCL_BUFFSIZE=1048576 -x NCCL_IB_TIMEOUT=14 "${launcher_mpi_env[@]}")
# What this link runs with (hosts, interpreter, packages, commit, modules, GPUs) into job/env/.
"$LAUNCHER_PYTHON" -m launcher.envrecord "$LAUNCHER_HOSTFILE"
launcher_ckpt_before=$("$LAUNCHER_PYTHON" -m launcher.outcome stamp)
launcher_rc=75
if [ -z "$launcher_got_signal" ]; then
    launcher_act event "train: ${launcher_ranks[0]} with 16 ranks, deadline $LAUNCHER_DEADLINE_ISO"
    launcher_run "$LAUNCHER_PYTHON" -m launcher.supervise --shield -- "${launcher_ranks[@]}" "${launcher_command[@]}"
fi

# After the command: the policy says exit, requeue or extend the chain (the scheduler's own commands).
launcher_act decide "$launcher_rc" "$launcher_got_signal" "$launcher_ckpt_before" "$LAUNCHER_HOSTFILE" mpirun -np 1 -bind-to none -x NCCL_BUFFSIZE=1048576 -x NCCL_IB_TIMEOUT=14 -host
case "$launcher_action" in
    extend)
        LAUNCHER_NEXT_LINK=$launcher_arg
        LAUNCHER_AFTER=$launcher_arg2
        if [ ! -e "$RUN_DIR/job/job.sh" ]; then
            cp -- "$0" "$RUN_DIR/job/job.sh"
        fi
        launcher_out=$(pjsub --step -x LAUNCHER_LINK="${LAUNCHER_NEXT_LINK}" -o /runs/golden-pjm/logs/pjm.out --sparam jid="${LAUNCHER_AFTER}" /runs/golden-pjm/job/job.sh 2>&1)
        launcher_act extended "$?" "$LAUNCHER_NEXT_LINK" "$launcher_out"
        ;;
esac
echo "launcher: unexpected action '$launcher_action' from the job's policy"
exit 1

# ---- submit command(s) on stderr ----
# pjsub --step -x LAUNCHER_LINK=0 -o /runs/golden-pjm/logs/pjm.out /runs/golden-pjm/job/job.sh
