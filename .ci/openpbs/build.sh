#!/usr/bin/env bash
# Install OpenPBS (the open-source PBS Professional) under /opt/pbs, building it once from the
# pinned source tarball and caching the installed tree, as .ci/horovod/build.sh caches its wheel.
# Usage: build.sh [CACHE_DIR]    (root only; quiet when /opt/pbs already holds this version)
#   OPENPBS_TARBALL  the source (default: ../shared/vendor/openpbs-cd7ab5eda.tar.gz next to the repo)
# Exit status 4: no cached build and no source to build from.
# The cache is CACHE_DIR/openpbs-<commit>-<debian release>/opt-pbs.tar.gz: the build takes 3-5
# minutes on 2 cores the first time (3 min 12 s measured alone, 4.5 min next to another build),
# unpacking the cache about a second.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
COMMIT=cd7ab5eda
SHA256=22230b98ed7e9aea0792d7ab958e839911ca89119509726acbc1e92ca7c18b46
TARBALL="${OPENPBS_TARBALL:-$ROOT/../shared/vendor/openpbs-$COMMIT.tar.gz}"
CACHE="${1:-${PIXPRO_CACHE:-$HOME/.cache/pixpro-of}}"
PREFIX=/opt/pbs
STAMP="$PREFIX/.pixpro-openpbs-$COMMIT"
DEBIAN="$(cut -d. -f1 /etc/debian_version 2>/dev/null || echo unknown)"
DEST="$CACHE/openpbs-$COMMIT-debian$DEBIAN"
# Runtime needs: the datastore (PostgreSQL), the network namespace tools, and the libraries the
# binaries link against; the build needs the -dev packages and the autotools on top.
RUN_PACKAGES=(postgresql postgresql-contrib iproute2 python3 tcl tk libhwloc15 libical3 libcjson1 libedit2 libxt6 libxft2 libexpat1 libssl3)
BUILD_PACKAGES=(gcc g++ make autoconf automake libtool perl swig python3-dev tcl-dev tk-dev libhwloc-dev
                libx11-dev libxt-dev libxext-dev libxft-dev libedit-dev libical-dev libncurses-dev
                libexpat1-dev libssl-dev libcjson-dev postgresql-server-dev-all)

say() { echo "[setup] $*"; }

if [[ -f "$STAMP" && -x "$PREFIX/sbin/pbs_server" ]]; then
  exit 0
fi
if [[ $(id -u) != 0 ]]; then
  say "warning: OpenPBS is not installed under $PREFIX and only root can install it; the PBS tests will skip" >&2
  exit 1
fi

apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    say "installing Debian packages for OpenPBS: ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}
apt_install "${RUN_PACKAGES[@]}"

cached="$DEST/opt-pbs.tar.gz"
if [[ ! -f "$cached" ]]; then
  if [[ ! -f "$TARBALL" ]]; then
    say "error: the OpenPBS source $TARBALL is missing (set OPENPBS_TARBALL)" >&2
    exit 4
  fi
  if [[ "$(sha256sum "$TARBALL" | cut -d' ' -f1)" != "$SHA256" ]]; then
    say "error: $TARBALL does not have the pinned sha256 $SHA256" >&2
    exit 1
  fi
  apt_install "${BUILD_PACKAGES[@]}"
  say "building OpenPBS $COMMIT; 3-6 minutes on 2 cores (log: $DEST/build.log)"
  mkdir -p "$DEST"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  log="$DEST/build.log"
  tar xzf "$TARBALL" -C "$work"
  if ! (cd "$work/openpbs" && ./autogen.sh && \
        ./configure --prefix="$PREFIX" PYTHON=/usr/bin/python3 && \
        make -j"${OPENPBS_JOBS:-2}" && make install DESTDIR="$work/stage") >"$log" 2>&1; then
    say "error: OpenPBS build failed; see $log" >&2
    tail -20 "$log" >&2
    exit 1
  fi
  # pbs_iff (which authenticates an ordinary user's client commands to the server from a
  # privileged port) and pbs_rcp are set-uid root, as the project's own packages install them;
  # `make install` leaves them 0755. The tarball keeps owners and modes.
  chmod 4755 "$work/stage$PREFIX/sbin/pbs_iff" "$work/stage$PREFIX/sbin/pbs_rcp"
  tar czpf "$work/opt-pbs.tar.gz" -C "$work/stage" "${PREFIX#/}"
  mv "$work/opt-pbs.tar.gz" "$cached"
fi
tar xzpf "$cached" -C /
chmod 4755 "$PREFIX/sbin/pbs_iff" "$PREFIX/sbin/pbs_rcp"
touch "$STAMP"
