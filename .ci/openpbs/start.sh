#!/usr/bin/env bash
# Start (or reuse) a one-node OpenPBS complex inside a private network namespace and configure
# it for the test suite, idempotently. Usage: start.sh   (root; run build.sh first)
#
# Prints KEY=VALUE lines on stdout: PBS_EXEC, NETNS (run every PBS command through
# `ip netns exec $NETNS ...`), HOST, ADDR, TEST_USER (an ordinary user to submit jobs as),
# PIDS (server, scheduler, MOM, comm) and STARTED (1 when this call started the daemons; the
# caller then stops them by PID: SIGTERM to the server also stops its datastore).
#
# Traps this handles:
#  - PBS refuses loopback addresses ("Could not find any usable IP address for host"), and this
#    machine's name may resolve only to 127.0.0.1. Every daemon and command runs in a network
#    namespace ($NETNS) with a private address ($ADDR/32 on a veth pair inside it, no route
#    anywhere), with /etc/netns/$NETNS/hosts mapping the host name to it. The namespace must
#    exist before the very first start: the datastore records the address it was initialised with.
#  - pbs_mom ignores processes owned by root (qsig finds nothing to signal), so jobs are
#    submitted as $TEST_USER, created here when missing.
#  - `make install` does not make pbs_iff set-uid: build.sh does, or ordinary users cannot
#    authenticate to the server.
# Server settings changed from OpenPBS's defaults (none that the launcher's job scripts rely on):
# scheduler_iteration 10 s (default 600: a job released from a dependency could wait 10
# minutes), job_history_enable (so `qstat -x` shows finished jobs), mailer /bin/true (no MTA),
# flatuid. For the cluster profiles' directives: ABCI 3.0's queue rt_HF (accepting jobs, never
# starting them here) and the resource ngpus (type long, host-level consumable) that the generic
# profile's GPU chunks ask for; OpenPBS does not define ngpus by itself.
set -euo pipefail
PBS_EXEC="${PBS_EXEC:-/opt/pbs}"
NETNS="${PBS_NETNS:-pixpro-pbs}"
ADDR="${PBS_NETNS_ADDR:-10.254.254.1}"
IFACE=pbs0
TEST_USER="${PBS_TEST_USER:-pbstest}"
HOST="$(hostname | cut -d. -f1)"
CONF=/etc/pbs.conf
log() { echo "[openpbs] $*" >&2; }

[[ -x "$PBS_EXEC/sbin/pbs_server" ]] || { log "OpenPBS is not installed under $PBS_EXEC (run .ci/openpbs/build.sh)"; exit 3; }
command -v ip >/dev/null || { log "ip (iproute2) is missing"; exit 3; }

# --- network namespace with a private address --------------------------------------------
if ! ip netns list | awk '{ print $1 }' | grep -qx -- "$NETNS"; then
  ip netns add "$NETNS"
fi
in_ns() { ip netns exec "$NETNS" "$@"; }
in_ns ip link set lo up
# The address sits on a veth pair whose two ends are both inside the namespace (no route in or
# out): an ordinary interface, as a compute node has. On lo alone, Open MPI finds "no network
# interfaces ... for out-of-band communications" (it skips loopback interfaces) and mpirun fails.
if ! in_ns ip link show "$IFACE" >/dev/null 2>&1; then
  in_ns ip link add "$IFACE" type veth peer name "${IFACE}p"
fi
in_ns ip link set "${IFACE}p" up
in_ns ip link set "$IFACE" up
in_ns ip -4 addr show dev "$IFACE" | grep -q "inet $ADDR/" || in_ns ip addr add "$ADDR/32" dev "$IFACE"
if in_ns ip -4 addr show dev lo | grep -q "inet $ADDR/"; then in_ns ip addr del "$ADDR/32" dev lo; fi
mkdir -p "/etc/netns/$NETNS"
printf '127.0.0.1\tlocalhost\n%s\t%s\n' "$ADDR" "$HOST" >"/etc/netns/$NETNS/hosts.new"
mv "/etc/netns/$NETNS/hosts.new" "/etc/netns/$NETNS/hosts"

# --- configuration files ---------------------------------------------------------------------
if [[ ! -f "$CONF" ]]; then
  # (It also tries to register an init script with update-rc.d, which fails harmlessly here.)
  if ! out="$(cd / && "$PBS_EXEC/libexec/pbs_postinstall" server 2>&1)" || [[ ! -f "$CONF" ]]; then
    log "pbs_postinstall failed:"; echo "$out" >&2; exit 1
  fi
fi
sed -i -E "s/^PBS_START_MOM=.*/PBS_START_MOM=1/; s/^PBS_SERVER=.*/PBS_SERVER=$HOST/" "$CONF"
# shellcheck source=/dev/null
. "$CONF"

# --- the test user -----------------------------------------------------------------------------
if ! id -u "$TEST_USER" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash "$TEST_USER"
fi

# --- daemons -----------------------------------------------------------------------------------
pid_in() { if [[ -r "$1" ]]; then tr -dc '0-9' <"$1"; fi; }
alive() { [[ -n "${1:-}" ]] && [[ -e "/proc/$1" ]] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
locks=(server_priv/server.lock sched_priv/sched.lock mom_priv/mom.lock server_priv/comm.lock)
started=0
if ! alive "$(pid_in "$PBS_HOME/server_priv/server.lock")"; then
  # The init script starts comm, MOM, scheduler and server (and the datastore, initialising it
  # on the very first start); its output is mostly warnings about limits a sandbox cannot set.
  if ! out="$(in_ns "$PBS_EXEC/libexec/pbs_init.d" start 2>&1)"; then
    log "pbs_init.d start failed:"; echo "$out" >&2; exit 1
  fi
  started=1
fi
end=$((SECONDS + 60))
until in_ns "$PBS_EXEC/bin/qstat" -B >/dev/null 2>&1; do
  ((SECONDS < end)) || { log "the server does not answer after 60 s"; exit 1; }
  sleep 0.5
done

qmgr() { in_ns "$PBS_EXEC/bin/qmgr" -c "$1" >/dev/null; }
qmgr "set server flatuid = true"
qmgr "set server job_history_enable = true"
qmgr "set server mailer = /bin/true"
qmgr "set server scheduler_iteration = 10"
in_ns "$PBS_EXEC/bin/qmgr" -c "list resource ngpus" >/dev/null 2>&1 || qmgr "create resource ngpus type=long, flag=nh"
if ! in_ns "$PBS_EXEC/bin/qstat" -Q rt_HF >/dev/null 2>&1; then
  qmgr "create queue rt_HF queue_type = execution"
fi
# Enabled (it accepts jobs) but not started (none runs): this node is no ABCI node.
qmgr "set queue rt_HF enabled = true"
qmgr "set queue rt_HF started = false"

# The node: created by the server on its first start; wait until the MOM reports it free.
node_free() { in_ns "$PBS_EXEC/bin/pbsnodes" "$HOST" 2>/dev/null | grep -Eq '^ *state = (free|job-busy)$'; }
end=$((SECONDS + 60))
until node_free; do
  ((SECONDS < end)) || { log "node $HOST is not free after 60 s:"; in_ns "$PBS_EXEC/bin/pbsnodes" -a >&2 || true; exit 1; }
  sleep 0.5
done

pids=()
for l in "${locks[@]}"; do pids+=("$(pid_in "$PBS_HOME/$l")"); done
echo "PBS_EXEC=$PBS_EXEC"
echo "PBS_HOME=$PBS_HOME"
echo "NETNS=$NETNS"
echo "HOST=$HOST"
echo "ADDR=$ADDR"
echo "TEST_USER=$TEST_USER"
echo "PIDS=${pids[*]}"
echo "STARTED=$started"
