#!/usr/bin/env bash
# Build Horovod 0.28.1 against the installed torch (2.14 needs C++20) and install it.
# Usage: build.sh VENV WHEEL_CACHE
#   CPU build (default on machines without a CUDA runtime): MPI + Gloo CPU operations.
#   GPU build on a cluster: HOROVOD_GPU_OPERATIONS=NCCL [HOROVOD_NCCL_HOME=...] build.sh ...
# The built wheel is cached (keyed by torch version and GPU flavour) so the next run skips the build.
set -euo pipefail
VENV="$1"; CACHE="$2"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="$VENV/bin/python"
VERSION=0.28.1
TORCH_TAG="$("$PY" -c 'import torch; print(torch.__version__.replace("+", "_"))')"
if [[ -n "${HOROVOD_GPU_OPERATIONS:-}" ]]; then FLAVOUR="gpu-${HOROVOD_GPU_OPERATIONS,,}"; else FLAVOUR=cpu; fi
DEST="$CACHE/horovod-$VERSION-torch$TORCH_TAG-$FLAVOUR"
mkdir -p "$DEST"
wheel="$(ls "$DEST"/horovod-*.whl 2>/dev/null | head -1 || true)"
if [[ -z "$wheel" ]]; then
  echo "[setup] building Horovod $VERSION ($FLAVOUR) against torch $TORCH_TAG; about 3-4 minutes on 2 cores"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "$VENV/bin/pip" download -q --no-binary :all: --no-deps "horovod==$VERSION" -d "$work/sdist" 2>&1 | grep -v "^WARNING: Location" || true
  tar xzf "$work/sdist/horovod-$VERSION.tar.gz" -C "$work"
  (cd "$work/horovod-$VERSION" && patch -s -p1 < "$HERE/horovod-$VERSION-torch214.patch")
  # build needs these in the venv (no build isolation: it must see the installed torch)
  "$VENV/bin/pip" install -q cmake packaging wheel 2>&1 | grep -v "^WARNING: Location" || true
  export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
         HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
  if [[ "$FLAVOUR" == cpu ]]; then export HOROVOD_TORCH_CPU_ONLY=1; fi
  log="$DEST/build.log"
  if ! "$VENV/bin/pip" wheel -v --no-build-isolation --no-deps --no-cache-dir \
        -w "$work/wheel" "$work/horovod-$VERSION" >"$log" 2>&1; then
    echo "[setup] error: Horovod build failed; see $log" >&2
    tail -20 "$log" >&2
    exit 1
  fi
  mv "$work"/wheel/horovod-*.whl "$DEST/"
  wheel="$(ls "$DEST"/horovod-*.whl | head -1)"
fi
"$VENV/bin/pip" install -q "$wheel" 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -c "import horovod.torch"
