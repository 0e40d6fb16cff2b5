#!/usr/bin/env bash
# Start (or reuse) a one-node Grid Engine cell and configure it for the test suite, idempotently.
# Usage: start.sh [SLOTS]        (root; run install.sh first)
# Prints KEY=VALUE lines on stdout: SGE_ROOT, SGE_CELL, SGE_BIN (the directory of Grid Engine's
# own qsub/qdel/qstat/qconf: put it first on PATH), HOST, QMASTER_PID, EXECD_PID, and STARTED
# (the daemons this call started, comma-separated; the caller stops those by PID).
#
# Configuration, as close to a default Debian cell as one node allows:
#  - host_aliases: this host's name resolves to 127.0.0.1, which resolves back to "localhost";
#    without the alias commlib refuses every client ("access denied ... not identical").
#  - global config min_uid/min_gid 0, so that root (CI runs as root) may submit.
#  - a parallel environment "mpi" (the generic sge profile's) with control_slaves TRUE, as
#    Open MPI's documentation sets one up.
#  - queue all.q on this host with SLOTS slots (default: cores, at least 2), pe_list mpi and
#    load_thresholds NONE (the default np_load_avg=1.75 stops scheduling on a busy 2-core box).
#  - scheduler: schedule_interval 1 s and flush on submit/finish (default 15 s), so jobs start
#    within about a second; nothing the launcher relies on changes.
set -euo pipefail
export SGE_ROOT="${SGE_ROOT:-/var/lib/gridengine}" SGE_CELL="${SGE_CELL:-default}"
SGE_BIN=/usr/lib/gridengine
export PATH="$SGE_BIN:$PATH"
HOST="$(hostname)"
SLOTS="${1:-$(( $(nproc) > 2 ? $(nproc) : 2 ))}"
COMMON="$SGE_ROOT/$SGE_CELL/common"
SPOOL=/var/spool/gridengine
log() { echo "[gridengine] $*" >&2; }

[[ -x /usr/sbin/sge_qmaster && -d "$COMMON" ]] || { log "Grid Engine is not installed (run .ci/gridengine/install.sh)"; exit 3; }

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
pid_of() { if [[ -r "$1" ]]; then tr -dc '0-9' <"$1"; fi; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local t="$1" what="$2"; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then log "timed out after $t s waiting for $what"; return 1; fi
    sleep 0.3
  done
}

# Names under which this host reaches itself: the reverse name of its address (and the other
# names /etc/hosts gives that address) become aliases of the host name.
addr="$(getent ahostsv4 "$HOST" | awk 'NR == 1 { print $1 }')"
aliases="$( { getent hosts "$addr" | awk '{ print $2 }'; awk -v a="$addr" '$1 == a { for (i = 2; i <= NF; i++) print $i }' /etc/hosts; } \
           | grep -vx -- "$HOST" | sort -u | tr '\n' ' ')"
want="$HOST ${aliases% }"
[[ "$(cat "$COMMON/host_aliases" 2>/dev/null)" == "${want% }" ]] || echo "${want% }" >"$COMMON/host_aliases"
[[ "$(cat "$COMMON/act_qmaster" 2>/dev/null)" == "$HOST" ]] || echo "$HOST" >"$COMMON/act_qmaster"

# Daemons start with a clean environment, as at boot: jobs inherit the execd's, and must not see
# the caller's PATH (a job that only works because the test's virtualenv leaked in proves nothing).
daemon() { env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
               SGE_ROOT="$SGE_ROOT" SGE_CELL="$SGE_CELL" "$@"; }

started=()
qmaster_pid="$(pid_of "$SPOOL/qmaster/qmaster.pid")"
if ! alive "$qmaster_pid"; then
  daemon /usr/sbin/sge_qmaster
  wait_for 30 "sge_qmaster's pid file" bash -c "[[ -s $SPOOL/qmaster/qmaster.pid ]] && kill -0 \$(cat $SPOOL/qmaster/qmaster.pid)"
  qmaster_pid="$(pid_of "$SPOOL/qmaster/qmaster.pid")"
  started+=(qmaster)
fi
wait_for 30 "sge_qmaster to answer" qconf -sh

# qc ARGS...: qconf, quiet unless it fails.
qc() {
  local out
  out="$(qconf "$@" 2>&1)" || { log "qconf $* failed: $out"; return 1; }
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Global configuration: root may run jobs (the file must be named after the configuration).
qconf -sconf global | grep -v '^#' >"$work/global"
if ! grep -Eq '^min_uid +0$' "$work/global" || ! grep -Eq '^min_gid +0$' "$work/global"; then
  sed -i -E 's/^(min_uid|min_gid)( +).*/\1\20/' "$work/global"
  qc -Mconf "$work/global"
fi

# Scheduler: one-second interval.
qconf -ssconf >"$work/sconf"
if ! grep -Eq '^schedule_interval +0:0:1$' "$work/sconf"; then
  sed -i -E 's/^(schedule_interval +).*/\10:0:1/; s/^(flush_submit_sec +).*/\11/; s/^(flush_finish_sec +).*/\11/' "$work/sconf"
  qc -Msconf "$work/sconf"
fi

qconf -ss 2>/dev/null | grep -qx "$HOST" || qc -as "$HOST"

# add_or_modify KIND NAME FILE: qconf -A<kind> when NAME does not exist, else -M<kind>.
add_or_modify() {
  local kind="$1" name="$2" file="$3" list
  case "$kind" in e) list=-sel ;; p) list=-spl ;; q) list=-sql ;; esac
  if qconf "$list" 2>/dev/null | grep -qx -- "$name"; then
    qc -M"$kind" "$file"
  else
    qc -A"$kind" "$file"
  fi
}

cat >"$work/exechost" <<EOF
hostname              $HOST
load_scaling          NONE
complex_values        NONE
user_lists            NONE
xuser_lists           NONE
projects              NONE
xprojects             NONE
usage_scaling         NONE
report_variables      NONE
EOF
qconf -sel 2>/dev/null | grep -qx -- "$HOST" || qc -Ae "$work/exechost"

cat >"$work/mpi" <<EOF
pe_name            mpi
slots              9999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$fill_up
control_slaves     TRUE
job_is_first_task  FALSE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
add_or_modify p mpi "$work/mpi"

cat >"$work/all.q" <<EOF
qname                 all.q
hostlist              $HOST
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               mpi
rerun                 FALSE
slots                 $SLOTS
tmpdir                /tmp
shell                 /bin/bash
prolog                NONE
epilog                NONE
shell_start_mode      posix_compliant
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
EOF
add_or_modify q all.q "$work/all.q"

execd_pidfile() { find "$SPOOL/execd" -mindepth 2 -maxdepth 2 -name execd.pid 2>/dev/null | head -1; }
execd_pid=""
f="$(execd_pidfile)"; [[ -n "$f" ]] && execd_pid="$(pid_of "$f")"
if ! alive "$execd_pid"; then
  rm -f "$SPOOL"/execd/*/execd.pid
  daemon /usr/sbin/sge_execd
  wait_for 30 "sge_execd's pid file" bash -c "f=\$(find $SPOOL/execd -mindepth 2 -maxdepth 2 -name execd.pid | head -1); [[ -s \$f ]] && kill -0 \$(cat \$f)"
  execd_pid="$(pid_of "$(execd_pidfile)")"
  started+=(execd)
fi

# The queue instance is usable once the execd reported its load (state no longer "u"); an
# earlier failed job can leave it in error state "E", which qmod -c clears.
queue_ok() {
  local st
  st="$(qstat -f -q "all.q@$HOST" 2>/dev/null | awk -v q="all.q@$HOST" '$1 == q { print (NF >= 6 ? $6 : "") }')"
  [[ -n "$(qstat -f -q "all.q@$HOST" 2>/dev/null | awk -v q="all.q@$HOST" '$1 == q')" ]] && [[ "$st" != *u* ]]
}
wait_for 60 "the execution host to report in" queue_ok
qmod -c "all.q@$HOST" >/dev/null 2>&1 || true
qmod -e "all.q@$HOST" >/dev/null 2>&1 || true

IFS=,
echo "SGE_ROOT=$SGE_ROOT"
echo "SGE_CELL=$SGE_CELL"
echo "SGE_BIN=$SGE_BIN"
echo "HOST=$HOST"
echo "QMASTER_PID=$qmaster_pid"
echo "EXECD_PID=$execd_pid"
echo "STARTED=${started[*]}"
