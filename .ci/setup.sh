#!/usr/bin/env bash
# Idempotent environment set-up: Debian packages (when root and missing), the
# virtual environment, torch, this project (with --test, its test extras), and a patched
# Horovod 0.28.1 built once and cached under ~/.cache/pixpro-of/wheels.
# Quiet when everything is already in place.
#   setup.sh          what every command runs (make setup: make demo, make reproduce, ...)
#   setup.sh --test   also what only the test suite uses (make test): pytest, ruff and mypy, shellcheck,
#                     HDF5's command-line tools, SLURM with munge, Grid Engine and OpenPBS (built once,
#                     ~5 minutes)
set -euo pipefail
FOR_TESTS=0
case "${1:-}" in
  --test) FOR_TESTS=1 ;;
  "") ;;
  *) echo "setup.sh: unknown option $1 (use --test or nothing)" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
TORCH_VERSION="${TORCH_VERSION:-2.14.1}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.29.1}"
CACHE="${PIXPRO_CACHE:-$HOME/.cache/pixpro-of}"
APT_PACKAGES=(openmpi-bin libopenmpi-dev)
if ((FOR_TESTS)); then
  APT_PACKAGES+=(shellcheck hdf5-tools slurm-wlm munge)
fi

say() { echo "[setup] $*"; }

# --- Debian packages -------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "warning: missing Debian packages (${missing[*]}); install them or load the cluster's modules"
  fi
fi

# --- virtual environment + torch -----------------------------------------
if [[ ! -x "$PY" ]]; then
  say "creating $VENV"
  python3 -m venv "$VENV"
fi
if ! "$PY" - <<PYEOF 2>/dev/null
import torch, torchvision, sys
ok = torch.__version__.split("+")[0] == "$TORCH_VERSION" and torchvision.__version__.split("+")[0] == "$TORCHVISION_VERSION"
sys.exit(0 if ok else 1)
PYEOF
then
  say "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c "import torch, torchvision" # fail loudly if the install did not work
fi

# --- the project (editable); with --test also its test extras (pytest, ruff, mypy) ---------
if ((FOR_TESTS)); then EXTRAS="[test]"; STAMP="$VENV/.pixpro-of-installed-test"
else EXTRAS=""; STAMP="$VENV/.pixpro-of-installed"; fi
if [[ ! -f "$STAMP" || "$ROOT/setup.py" -nt "$STAMP" ]]; then
  say "installing the project (editable)${EXTRAS:+ with test extras}"
  "$VENV/bin/pip" install -q -e "${ROOT}${EXTRAS}" 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c "import pixpro_of, flow, hdf5_tools, launcher, plumbing, synth, click"
  touch "$STAMP" "$VENV/.pixpro-of-installed"  # the test install holds the plain one
fi

# --- Horovod --------------------------------------------------------------
if ! "$PY" -c "import horovod.torch" 2>/dev/null; then
  bash "$ROOT/.ci/horovod/build.sh" "$VENV" "$CACHE/wheels"
fi

# --- Grid Engine and OpenPBS for the batch-scheduler tests (root only) --------------------
# Debian's Grid Engine 8.1.9 (.ci/gridengine/install.sh) and OpenPBS built once from the pinned
# source and cached under $CACHE (.ci/openpbs/build.sh, ~5 minutes the first time). Both are
# quiet when already installed; the tests' fixtures start and stop the daemons
# (.ci/gridengine/start.sh, .ci/openpbs/start.sh). Without root the tests skip and say why.
if ((FOR_TESTS)) && [[ $(id -u) == 0 ]]; then
  bash "$ROOT/.ci/gridengine/install.sh" || say "warning: Grid Engine could not be installed; its tests will fail"
  bash "$ROOT/.ci/openpbs/build.sh" "$CACHE" || say "warning: OpenPBS could not be installed; its tests will skip (no source) or fail"
fi
