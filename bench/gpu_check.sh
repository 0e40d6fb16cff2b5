#!/usr/bin/env bash
# The device check's wrapper, for the lent GPU machine as it is: its own python3 and torch, the
# wheels it lacks installed from the carried gpu_wheels/ (make gpu-wheels) into /tmp (no network,
# no build), the repository on PYTHONPATH, the data packed beforehand (make gpu-check-data), then
# bench/gpu_check.py, which runs every step under its own limit within 480 s in all (first the
# launcher's smoke, pixpro_of/smoke.py, as one rank; then the benchmark steps) and writes
# at most 8 files under --out ($OUT): summary.txt (every figure, the card's name), summary.json,
# steps.log. Arguments go to bench/gpu_check.py (--dry-run prints the plan and runs nothing).
#
# Usage (on the device): bash bench/gpu_check.sh --out "$OUT"
#   carry: gpu_wheels gpu_check_data
# Environment: PYTHON (default python3), GPU_CHECK_SITE (default /tmp/gpu-check-site).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
SITE="${GPU_CHECK_SITE:-/tmp/gpu-check-site}"
DRY=0
for a in "$@"; do
  case "$a" in
    --dry-run|-h|--help) DRY=1 ;;
  esac
done
export PYTHONUNBUFFERED=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if ((!DRY)); then
  shopt -s nullglob
  wheels=("$ROOT"/gpu_wheels/*.whl)
  if ((${#wheels[@]})); then
    # the carried wheels (simplejpeg) where the image lacks them: no index, no dependencies, no build
    timeout 20 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "${wheels[@]}"
  else
    echo "gpu_check.sh: no wheels in $ROOT/gpu_wheels (make gpu-wheels); using what $PY has" >&2
  fi
  # this tree itself, pure Python (no compiler, no index): the presets, templates and cluster
  # profiles are packages only once installed (pixpro_of.configs, launcher.templates, ...)
  timeout 30 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "$ROOT"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT"   # the installed copy first, the tree after it
exec "$PY" "$ROOT/bench/gpu_check.py" "$@"
