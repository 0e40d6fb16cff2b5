#!/usr/bin/env bash
# Install Debian's Grid Engine 8.1.9 (gridengine-master, -exec, -client) for a one-node cell,
# idempotently (root only; quiet when done). The daemons are not started here: see start.sh.
#
# Debian's qsub (/usr/bin/qsub) is also the name of PBS's and slurm-wlm-torque's submit
# command; Grid Engine's real binaries live in /usr/lib/gridengine/ and callers that need Grid
# Engine's qsub put SGE_BIN (printed by start.sh) first on PATH.
set -euo pipefail
PACKAGES=(gridengine-master gridengine-exec gridengine-client)
say() { echo "[setup] $*"; }

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
  say "warning: Grid Engine (${missing[*]}) is not installed and this user cannot install it; the Grid Engine tests will skip" >&2
  exit 1
fi
host="$(hostname)"
say "installing Grid Engine: ${missing[*]}"
# Answers for the packages' questions: this host is the master of cell "default", and the
# postinst initialises the cell (berkeleydb spool) under /var/lib/gridengine/default.
debconf-set-selections <<DEB
gridengine-common shared/gridenginemaster string $host
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridengineconfig boolean true
DEB
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
