#!/bin/bash
#PBS -N golden-abci3
#PBS -l select=2:mpiprocs=8
#PBS -l walltime=24:00:00
#PBS -q rt_HF
#PBS -P grp01
#PBS -j oe
#PBS -r y
#
# Training job for run golden-abci3, rendered by `launcher` (profile abci3).
# 2 node(s) x 8 rank(s) via mpirun, backend horovod, walltime 24:00:00.
# Every link of the run executes this same script: it exits at once when the run is done,
# stages shards to node-local disk, starts the trainer, and on exit code 75
# ("checkpointed, resume me") keeps a chain of dependent jobs going.
set -uo pipefail

RUN_DIR=/runs/golden-abci3
LAUNCHER_NNODES=2
LAUNCHER_RANKS_PER_NODE=8
LAUNCHER_NRANKS=16
LAUNCHER_WALLTIME_S=86400
LAUNCHER_MARGIN_S=900
LAUNCHER_WARNING_LEAD_S=300
LAUNCHER_CHAIN_LENGTH=1
LAUNCHER_MAX_TIMEOUTS=20
LAUNCHER_MAX_PREEMPTIONS=100
LAUNCHER_LINK="${LAUNCHER_LINK:-0}"
LAUNCHER_START=$(date +%s)
LAUNCHER_JOB_ID="${PBS_JOBID:?this script runs under PBS (qsub)}"
LAUNCHER_RESTART_COUNT="$LAUNCHER_LINK"
launcher_hosts() { cat "$PBS_NODEFILE"; }
# The job submits the next link of its chain with the qsub that submitted it (the first on the
# submitter's PATH, $PBS_O_PATH, when this node has it), not whichever comes first on the login
# PATH: /usr/bin/qsub may be another batch system's (Grid Engine, slurm-wlm-torque's wrappers).
if [ -n "${PBS_O_PATH:-}" ]; then
    launcher_qsub=$(PATH="$PBS_O_PATH" command -v qsub 2>/dev/null || true)
    case "$launcher_qsub" in
        /*) PATH="${launcher_qsub%/*}:$PATH" ;;
    esac
fi
LAUNCHER_LOCALDIR="${PBS_LOCALDIR:-/tmp}"
export RUN_DIR LAUNCHER_JOB_ID LAUNCHER_RESTART_COUNT LAUNCHER_LINK LAUNCHER_CHAIN_LENGTH LAUNCHER_LOCALDIR

mkdir -p "$RUN_DIR/logs" "$RUN_DIR/job" "$RUN_DIR/checkpoints" || exit 1
cd "$RUN_DIR" || exit 1
exec >>"$RUN_DIR/logs/run.log" 2>&1

launcher_event() {
    printf '%s\t%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$LAUNCHER_JOB_ID" "$LAUNCHER_LINK" "$*" >>"$RUN_DIR/job/events.tsv"
    echo "launcher: $*"
}

launcher_event "start restart=$LAUNCHER_RESTART_COUNT host=$(hostname)"
if [ -e "$RUN_DIR/done" ]; then
    launcher_event "skip: the run is done"
    exit 0
fi
if [ -e "$RUN_DIR/job/stopped" ]; then
    launcher_event "skip: the run was stopped ($(head -n1 "$RUN_DIR/job/stopped")); 'launcher resume' continues it"
    exit 0
fi

# Software environment (from the cluster profile).
# shellcheck source=/dev/null
source /etc/profile.d/modules.sh
module load cuda/12.6/12.6.1
module load cudnn/9.5/9.5.1
module load nccl/2.23/2.23.4-1
module load hpcx/2.20
# The Python environment that submitted the job (<PYTHON>).
# shellcheck source=/dev/null
source <PREFIX>/bin/activate
LAUNCHER_PYTHON=<PYTHON>
if [ "$(id -u)" -eq 0 ]; then
    # Open MPI refuses to run as root unless told twice; only set when the job runs as root.
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# What every rank on every node needs: mpirun starts remote ranks with the environment sshd
# gives (only -x variables reach them). Variables that are not set are not forwarded.
launcher_forward=(PATH LD_LIBRARY_PATH PYTHONPATH VIRTUAL_ENV CONDA_PREFIX OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM RUN_DIR LAUNCHER_JOB_ID LAUNCHER_RESTART_COUNT LAUNCHER_LOCALDIR)

# Hosts: one line per node, "host slots=N", in the scheduler's order.
LAUNCHER_HOSTFILE="$RUN_DIR/job/hostfile.$LAUNCHER_JOB_ID"
launcher_hosts | awk -v slots="$LAUNCHER_RANKS_PER_NODE" 'NF && !seen[$1]++ { print $1 " slots=" slots }' >"$LAUNCHER_HOSTFILE"
launcher_got_hosts=$(wc -l <"$LAUNCHER_HOSTFILE")
if [ "$launcher_got_hosts" -ne "$LAUNCHER_NNODES" ]; then
    launcher_event "fail: expected $LAUNCHER_NNODES hosts, the scheduler gave $launcher_got_hosts"
    exit 1
fi
MASTER_ADDR=$(awk 'NR == 1 { print $1 }' "$LAUNCHER_HOSTFILE")
launcher_id_digits=$(printf '%s' "$LAUNCHER_JOB_ID" | tr -cd '0-9' | tail -c 6)
MASTER_PORT=$((10000 + 10#${launcher_id_digits:-0} % 50000))
export MASTER_ADDR MASTER_PORT LAUNCHER_HOSTFILE
launcher_forward+=(MASTER_ADDR MASTER_PORT)

# The trainer stops by this deadline (walltime minus a margin, counted from job start, so
# staging time is included) and exits 75 after writing a checkpoint.
LAUNCHER_DEADLINE=$((LAUNCHER_START + LAUNCHER_WALLTIME_S - LAUNCHER_MARGIN_S))
LAUNCHER_DEADLINE_ISO=$(date -u -d "@$LAUNCHER_DEADLINE" +%Y-%m-%dT%H:%M:%SZ)
export LAUNCHER_DEADLINE LAUNCHER_DEADLINE_ISO
launcher_forward+=(LAUNCHER_DEADLINE)
launcher_mpi_env=()
for launcher_var in "${launcher_forward[@]}"; do
    if [ -n "${!launcher_var+x}" ]; then
        launcher_mpi_env+=(-x "$launcher_var")
    fi
done

# Signals: the scheduler's warning or termination signal is passed on to the rank launcher's
# supervisor (launcher.supervise) as SIGUSR2; it passes a stop to every rank (mpirun and srun
# forward USR2) and keeps mpirun from aborting on SIGTERM, so the trainer checkpoints at its next
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
    launcher_rc=0
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
    return "$launcher_rc"
}

# After a failure: the job's hosts that do not run `hostname` within 10 s (a node that died), so
# the failure line names them and the clean-up does not wait for them. One probe per host.
launcher_silent_nodes() {
    local host silent="" n=0 i
    local -a hosts=() pids=()
    local dir
    dir=$(mktemp -d "$RUN_DIR/job/.probe.XXXXXX") || return 0
    while read -r host _; do
        hosts+=("$host")
        n=$((n + 1))
        timeout 10 mpirun -np 1 -host "$host" -bind-to none -mca pml ob1 -mca btl 'self,tcp' hostname >"$dir/$n" 2>/dev/null &
        pids+=($!)
    done <"$LAUNCHER_HOSTFILE"
    wait "${pids[@]}" 2>/dev/null
    for ((i = 0; i < n; i++)); do
        # Any answer counts (the scheduler's host names need not be what `hostname` prints).
        [ -s "$dir/$((i + 1))" ] || silent+="${silent:+ }${hosts[$i]}"
    done
    rm -rf -- "$dir"
    printf '%s' "$silent"
}

# One process per node (staging, torchrun).
launcher_per_node=(mpirun -np "$LAUNCHER_NNODES" -hostfile "$LAUNCHER_HOSTFILE" -map-by ppr:1:node -bind-to none -mca pml ob1 -mca btl 'self,tcp' "${launcher_mpi_env[@]}")

# Stage this node's shards to node-local disk (one copier per node; it knows its node from the
# MPI or SLURM step environment); the trainer reads the staged manifest. The directory is private
# to this run and job and removed on every node when the job ends. Staging time counts against
# the walltime: the deadline is from job start.
LAUNCHER_DATA_DIR="$LAUNCHER_LOCALDIR/golden-abci3-$LAUNCHER_JOB_ID"
# shellcheck disable=SC2317  # called from the EXIT trap
launcher_unstage() {
    # A node that died never answers (its copy went with it): the others' copies are removed at
    # once, so do not wait long for it.
    local limit=120
    [ -z "${LAUNCHER_SILENT_NODES:-}" ] || limit=10
    timeout "$limit" "${launcher_per_node[@]}" rm -rf -- "$LAUNCHER_DATA_DIR" >/dev/null 2>&1 || true
    rm -rf -- "$LAUNCHER_DATA_DIR"
}
trap launcher_unstage EXIT
launcher_stage_start=$(date +%s)
launcher_run "${launcher_per_node[@]}" "$LAUNCHER_PYTHON" -m hdf5_tools.cli stage <REPO>/tests/golden/launcher/shards.manifest --to "$LAUNCHER_DATA_DIR"
if [ "$launcher_rc" -ne 0 ]; then
    if [ -n "$launcher_got_signal" ]; then
        launcher_rc=75
    else
        launcher_event "fail: staging exited $launcher_rc"
        echo "staging failed (exit $launcher_rc)" >"$RUN_DIR/job/stopped"
        exit "$launcher_rc"
    fi
else
    launcher_event "staged in $(( $(date +%s) - launcher_stage_start )) s"
fi

# Start the ranks.
launcher_trainer=(<PYTHON> -m pixpro_of train --run-dir /runs/golden-abci3 --config pixpro_k6 --deadline "$LAUNCHER_DEADLINE_ISO" dist.backend=horovod data.batch_size=256)
launcher_trainer+=('data.shards=['"$LAUNCHER_DATA_DIR/manifest.json]")
launcher_ranks=(mpirun -np "$LAUNCHER_NRANKS" -hostfile "$LAUNCHER_HOSTFILE" -map-by "ppr:$LAUNCHER_RANKS_PER_NODE:node" -bind-to none -mca pml ob1 -mca btl 'self,tcp' "${launcher_mpi_env[@]}")
# The newest checkpoint (name and time), to tell afterwards whether this job wrote one.
launcher_ckpt_stamp() {
    local name
    name=$(cat "$RUN_DIR/checkpoints/latest" 2>/dev/null) || return 0
    printf '%s@%s' "$name" "$(stat -c %.9Y "$RUN_DIR/checkpoints/$name" 2>/dev/null)"
}
launcher_ckpt_before=$(launcher_ckpt_stamp)
if [ -z "$launcher_got_signal" ]; then
    launcher_event "train: ${launcher_ranks[0]} with $LAUNCHER_NRANKS ranks, deadline $LAUNCHER_DEADLINE_ISO"
    launcher_run "$LAUNCHER_PYTHON" -m launcher.supervise --shield -- "${launcher_ranks[@]}" "${launcher_trainer[@]}"
fi

# Continue the run in a new job that waits for this one, unless a pre-submitted link already will.
launcher_extend_chain() {
    if [ "$LAUNCHER_LINK" -lt $((LAUNCHER_CHAIN_LENGTH - 1)) ]; then
        launcher_event "chain: link $((LAUNCHER_LINK + 1)) is already queued"
        return 0
    fi
    LAUNCHER_NEXT_LINK=$((LAUNCHER_LINK + 1))
    LAUNCHER_AFTER=$LAUNCHER_JOB_ID
    if [ ! -e "$RUN_DIR/job/job.sh" ]; then
        cp -- "$0" "$RUN_DIR/job/job.sh"
    fi
    local out
    if out=$(qsub -v LAUNCHER_LINK="${LAUNCHER_NEXT_LINK}" -o /runs/golden-abci3/logs/pbs.out -W depend=afterany:"${LAUNCHER_AFTER}" /runs/golden-abci3/job/job.sh 2>&1); then
        printf '%s\textend\t%s\t\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$LAUNCHER_NEXT_LINK" "$(printf '%s' "$out" | tr '\t\n' '  ')" >>"$RUN_DIR/job/jobs.tsv"
        launcher_event "chain: submitted link $LAUNCHER_NEXT_LINK: $out"
    else
        launcher_event "fail: could not submit link $LAUNCHER_NEXT_LINK: $out"
        echo "could not submit link $LAUNCHER_NEXT_LINK of the chain" >"$RUN_DIR/job/stopped"
        return 1
    fi
}

if [ "$launcher_rc" -ne 0 ] && [ "$launcher_rc" -ne 75 ] && [ -n "$launcher_got_signal" ]; then
    # The scheduler signalled the job (walltime or preemption; it often signals every process,
    # and mpirun then aborts): the run continues from its newest valid checkpoint, as after
    # exit 75.
    launcher_event "interrupted by SIG$launcher_got_signal (exit $launcher_rc); resuming from the last checkpoint"
    launcher_rc=75
fi
case "$launcher_rc" in
    0)
        if [ -e "$RUN_DIR/done" ]; then
            launcher_event "finished"
        else
            launcher_event "finished: exit 0 but no done marker"
        fi
        exit 0
        ;;
    75)
        if [ -e "$RUN_DIR/job/stopped" ]; then
            launcher_event "checkpointed; the run was stopped ($(head -n1 "$RUN_DIR/job/stopped")), not continuing"
            exit 0
        fi
        launcher_now=$(date +%s)
        if [ "$launcher_got_signal" = TERM ] && [ "$launcher_now" -lt $((LAUNCHER_START + LAUNCHER_WALLTIME_S - LAUNCHER_WARNING_LEAD_S)) ]; then
            launcher_kind=preemption
            launcher_max=$LAUNCHER_MAX_PREEMPTIONS
        else
            launcher_kind=timeout
            launcher_max=$LAUNCHER_MAX_TIMEOUTS
        fi
        launcher_count_file="$RUN_DIR/job/$launcher_kind.count"
        launcher_count=$(( $(cat "$launcher_count_file" 2>/dev/null || echo 0) + 1 ))
        echo "$launcher_count" >"$launcher_count_file"
        if [ "$launcher_count" -gt "$launcher_max" ]; then
            launcher_event "stop: $launcher_kind budget of $launcher_max used up"
            echo "$launcher_kind budget of $launcher_max used up" >"$RUN_DIR/job/stopped"
            exit 1
        fi
        launcher_ckpt_after=$(launcher_ckpt_stamp)
        launcher_ckpt_name=$(cat "$RUN_DIR/checkpoints/latest" 2>/dev/null || echo "the start")
        if [ -n "$launcher_ckpt_after" ] && [ "$launcher_ckpt_after" != "$launcher_ckpt_before" ]; then
            launcher_event "checkpointed: $launcher_kind $launcher_count of $launcher_max ($launcher_ckpt_name)"
        else
            launcher_event "stopped without a new checkpoint: $launcher_kind $launcher_count of $launcher_max; the next job resumes from $launcher_ckpt_name"
        fi
        launcher_extend_chain || exit 1
        exit 0
        ;;
    *)
        LAUNCHER_SILENT_NODES=$(launcher_silent_nodes)
        launcher_event "fail: trainer exited $launcher_rc${LAUNCHER_SILENT_NODES:+; no answer from $LAUNCHER_SILENT_NODES within 10 s (node down?)}"
        echo "trainer exited $launcher_rc in job $LAUNCHER_JOB_ID" >"$RUN_DIR/job/stopped"
        exit "$launcher_rc"
        ;;
esac

# ---- submit command(s) on stderr ----
# qsub -v LAUNCHER_LINK=0 -o /runs/golden-abci3/logs/pbs.out /runs/golden-abci3/job/job.sh
