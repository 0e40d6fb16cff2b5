#!/usr/bin/env bash
# Build a Horovod 0.28.1 wheel with NCCL GPU operations (HOROVOD_GPU_OPERATIONS=NCCL, PyTorch,
# MPI and Gloo) against the installed torch, with the same torch-2.14 patch as the CPU build
# (.ci/horovod/horovod-0.28.1-torch214.patch), and cache it; it installs nothing unless asked.
#
# Usage: .ci/build_horovod_nccl.sh [--venv DIR] [--install] [--print-wheel] [--dry-run]
#   --venv DIR      the venv whose torch the wheel is built against (default: $VENV or ./.venv);
#                   only its pip is used to build (no build isolation), nothing is installed into it
#                   except cmake/packaging/wheel when they are missing
#   --install       install the wheel into that venv afterwards (replaces a CPU Horovod there)
#   --print-wheel   print only the cached wheel's path (empty and exit 1 when not built yet)
#   --dry-run       print the toolchain, paths and variables the build would use, build nothing
#
# Where CUDA and NCCL come from, in order:
#   1. a site's modules (`module load cuda nccl`): set HOROVOD_CUDA_HOME (the toolkit with
#      bin/nvcc, include/, lib64/) and HOROVOD_NCCL_HOME (or HOROVOD_NCCL_INCLUDE and
#      HOROVOD_NCCL_LIB); CUDA_HOME / NCCL_HOME as most modules export them are picked up too.
#      Set HOROVOD_NCCL_LINK=STATIC to link a libnccl_static.a the module provides.
#   2. otherwise the package index: the NVIDIA wheels of the CUDA minor and NCCL release torch
#      itself uses (read from the venv), installed with `pip install --target` into a toolkit
#      directory under the cache: nvidia-cuda-runtime (cuda_runtime.h, libcudart*),
#      nvidia-cuda-nvcc + nvidia-cuda-crt + nvidia-nvvm (nvcc, ptxas, cicc), nvidia-cuda-cccl
#      (the C++ core headers nvcc includes) and nvidia-nccl-cu13 (nccl.h, libnccl.so.2).
#      The wheels ship only versioned .so files, so libcudart.so, libnccl.so and lib64 links
#      are added. NCCL is linked shared (no static NCCL on PyPI); at run time `import torch`
#      has already loaded the same libnccl.so.2 from the venv, so horovod.torch finds it.
#
# Other variables: PIXPRO_CACHE (default ~/.cache/pixpro-of), HOROVOD_SDIST (a horovod-0.28.1.tar.gz
# to use offline instead of downloading it), HOROVOD_BUILD_CUDA_CC_LIST
# (compute capabilities of the CUDA kernels, default 80,90: A100 and H100/H200; CUDA 13 builds
# nothing below 75), MAKEFLAGS (default -j$(nproc)).
# The build needs MPI as well as NCCL: `mpicxx` on PATH (e.g. `module load openmpi`), as the job
# scripts start Horovod with mpirun. Without it the script stops before building (a Gloo-only
# Horovod would start under mpirun as N separate one-rank worlds); after the build it checks that
# CMake found both, and --install checks hvd.nccl_built() and hvd.mpi_built().
# The wheel lands in $PIXPRO_CACHE/wheels/horovod-0.28.1-torch<torch>-nccl<nccl>-cuda<cuda>/ with
# build.log and configure-summary.txt (what CMake found) beside it; a cached wheel for the same
# Python is reused without building.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VERSION=0.28.1
PATCH="$HERE/horovod/horovod-$VERSION-torch214.patch"
VENV="${VENV:-$ROOT/.venv}"
INSTALL=0 PRINT_WHEEL=0 DRY_RUN=0
while (($#)); do
  case "$1" in
    --venv) VENV="$2"; shift 2 ;;
    --install) INSTALL=1; shift ;;
    --print-wheel) PRINT_WHEEL=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build_horovod_nccl: unknown argument: $1" >&2; exit 2 ;;
  esac
done
CACHE="${PIXPRO_CACHE:-$HOME/.cache/pixpro-of}"
PY="$VENV/bin/python"
PIP=("$PY" -m pip)
say() { echo "[horovod-nccl] $*" >&2; }
[[ -x "$PY" ]] || { say "error: no python at $PY (--venv DIR)"; exit 1; }

# --- versions torch uses -------------------------------------------------------------------
read -r TORCH_TAG TORCH_CUDA NCCL_WHEEL_VER CUDART_WHEEL_VER PYTAG < <("$PY" - <<'PYEOF'
import importlib.metadata as md
import torch
def ver(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "-"
cudart = ver("nvidia-cuda-runtime")
if cudart == "-":
    cudart = ver("nvidia-cuda-runtime-cu" + (torch.version.cuda or "0").split(".")[0])
nccl = "-"
for name in ("nvidia-nccl-cu13", "nvidia-nccl-cu12", "nvidia-nccl-cu11"):
    if ver(name) != "-":
        nccl = name + "==" + ver(name)
        break
import sys
print(torch.__version__.replace("+", "_"), torch.version.cuda or "-", nccl, cudart, "cp%d%d" % sys.version_info[:2])
PYEOF
)
[[ -n "${TORCH_TAG:-}" ]] || { say "error: cannot import torch from $PY"; exit 1; }
[[ "$TORCH_CUDA" != "-" ]] || { say "error: torch in $VENV is a CPU-only build; install a CUDA build of torch"; exit 1; }
CUDA_MAJOR="${TORCH_CUDA%%.*}"

# --- toolchain: site modules or wheels ------------------------------------------------------
: "${HOROVOD_CUDA_HOME:=${CUDA_HOME:-}}"
: "${HOROVOD_NCCL_HOME:=${NCCL_HOME:-}}"
if [[ -n "$HOROVOD_CUDA_HOME" ]]; then
  SOURCE="site"
  TOOLKIT="$HOROVOD_CUDA_HOME"
  [[ -x "$TOOLKIT/bin/nvcc" ]] || { say "error: no nvcc at $TOOLKIT/bin/nvcc (HOROVOD_CUDA_HOME)"; exit 1; }
  CUDA_VER="$("$TOOLKIT/bin/nvcc" --version | sed -n 's/.*release \([0-9][0-9.]*\),.*/\1/p')"
  if [[ "${CUDA_VER%%.*}" != "$CUDA_MAJOR" ]]; then
    say "error: $TOOLKIT is CUDA $CUDA_VER but torch was built with CUDA $TORCH_CUDA; load a CUDA $CUDA_MAJOR.x module"; exit 1
  fi
  if [[ -z "$HOROVOD_NCCL_HOME" && -z "${HOROVOD_NCCL_INCLUDE:-}" ]]; then
    say "error: HOROVOD_CUDA_HOME is set but not HOROVOD_NCCL_HOME (or HOROVOD_NCCL_INCLUDE + HOROVOD_NCCL_LIB)"; exit 1
  fi
  NCCL_H="${HOROVOD_NCCL_INCLUDE:-$HOROVOD_NCCL_HOME/include}/nccl.h"
  [[ -f "$NCCL_H" ]] || { say "error: no nccl.h at $NCCL_H"; exit 1; }
  NCCL_VER="$(awk '/#define NCCL_(MAJOR|MINOR|PATCH) /{v=v (v==""?"":".") $3} END{print v}' "$NCCL_H")"
  NCCL_LIB_DIR="${HOROVOD_NCCL_LIB:-$HOROVOD_NCCL_HOME/lib}"
  if [[ -z "${HOROVOD_NCCL_LINK:-}" ]]; then
    if [[ -f "$NCCL_LIB_DIR/libnccl_static.a" ]]; then HOROVOD_NCCL_LINK=STATIC; else HOROVOD_NCCL_LINK=SHARED; fi
  fi
  # an NCCL with only libnccl.so.2 (e.g. the nvidia-nccl wheel of an existing venv): CMake looks for
  # libnccl.so, so link to it from a directory of our own instead of writing into theirs
  if [[ "$HOROVOD_NCCL_LINK" == SHARED && ! -e "$NCCL_LIB_DIR/libnccl.so" && -e "$NCCL_LIB_DIR/libnccl.so.2" ]]; then
    NCCL_LINKS="$CACHE/nccl-links/$(echo "$NCCL_LIB_DIR" | md5sum | cut -c1-12)"
    ((DRY_RUN)) || { mkdir -p "$NCCL_LINKS" && ln -sfn "$NCCL_LIB_DIR/libnccl.so.2" "$NCCL_LINKS/libnccl.so"; }
    HOROVOD_NCCL_INCLUDE="${HOROVOD_NCCL_INCLUDE:-$HOROVOD_NCCL_HOME/include}"
    HOROVOD_NCCL_LIB="$NCCL_LINKS"
  fi
else
  SOURCE="wheels"
  [[ "$NCCL_WHEEL_VER" != "-" ]] || { say "error: no nvidia-nccl-cu* wheel in $VENV (torch's CUDA build pulls one in)"; exit 1; }
  [[ "$CUDART_WHEEL_VER" != "-" ]] || { say "error: no nvidia-cuda-runtime wheel in $VENV"; exit 1; }
  CUDA_VER="$TORCH_CUDA"                      # e.g. 13.0: nvcc, crt, nvvm, cccl of that minor
  NCCL_VER="${NCCL_WHEEL_VER#*==}"
  if ((CUDA_MAJOR >= 13)); then
    CUDART_PKG="nvidia-cuda-runtime==$CUDART_WHEEL_VER"
    TOOL_PKGS=("nvidia-cuda-nvcc==$CUDA_VER.*" "nvidia-cuda-crt==$CUDA_VER.*" "nvidia-nvvm==$CUDA_VER.*"
               "nvidia-cuda-cccl==$CUDA_VER.*")
    SUB="cu$CUDA_MAJOR"                       # CUDA 13 wheels share site-packages/nvidia/cu13/
  else
    CUDART_PKG="nvidia-cuda-runtime-cu$CUDA_MAJOR==$CUDART_WHEEL_VER"
    TOOL_PKGS=("nvidia-cuda-nvcc-cu$CUDA_MAJOR==$CUDA_VER.*" "nvidia-cuda-cccl-cu$CUDA_MAJOR==$CUDA_VER.*")
    SUB="cuda_nvcc"                           # CUDA 12 wheels: one directory per package (untested here)
  fi
  PREFIX="$CACHE/cuda-wheels-$CUDA_VER-nccl$NCCL_VER"
  TOOLKIT="$PREFIX/nvidia/$SUB"
  HOROVOD_CUDA_HOME="$TOOLKIT"
  HOROVOD_NCCL_HOME="$PREFIX/nvidia/nccl"
  NCCL_LIB_DIR="$HOROVOD_NCCL_HOME/lib"
  HOROVOD_NCCL_LINK="${HOROVOD_NCCL_LINK:-SHARED}"
fi
TAG="nccl$NCCL_VER-cuda$CUDA_VER"
[[ "$SOURCE" == wheels ]] || TAG="$TAG-site"
DEST="$CACHE/wheels/horovod-$VERSION-torch$TORCH_TAG-$TAG"
wheel="$(compgen -G "$DEST/horovod-$VERSION-$PYTAG-*.whl" | head -1 || true)"
if [[ -n "$wheel" ]] && ! grep -q "Found MPI" "$DEST/configure-summary.txt" 2>/dev/null; then
  # a wheel cached by an older version of this script, which built Gloo-only without mpicxx
  say "error: the cached $(basename "$wheel") was built without MPI (no 'Found MPI' in $DEST/configure-summary.txt); remove $DEST and build again"
  exit 1
fi
if ((PRINT_WHEEL)); then
  [[ -n "$wheel" ]] && echo "$wheel" && exit 0
  exit 1
fi
export HOROVOD_BUILD_CUDA_CC_LIST="${HOROVOD_BUILD_CUDA_CC_LIST:-80,90}"
# MPI (controller and CPU operations) is required: the job scripts start Horovod with mpirun
if ! MPICXX="$(command -v mpicxx)"; then
  say "error: no mpicxx on PATH: the NCCL build needs MPI as well as NCCL (load the site's MPI, e.g. \`module load openmpi\`, or install libopenmpi-dev)"
  exit 1
fi
export MAKEFLAGS="${MAKEFLAGS:--j$(nproc)}"

if ((DRY_RUN)); then
  cat <<EOF
torch            $TORCH_TAG (CUDA $TORCH_CUDA) in $VENV
source           $SOURCE
CUDA toolkit     $HOROVOD_CUDA_HOME (CUDA $CUDA_VER)
NCCL             $HOROVOD_NCCL_HOME (NCCL $NCCL_VER, link $HOROVOD_NCCL_LINK)
EOF
  if [[ "$SOURCE" == wheels ]]; then
    echo "wheels           $CUDART_PKG ${TOOL_PKGS[*]} $NCCL_WHEEL_VER"
  fi
  echo "CUDA archs       $HOROVOD_BUILD_CUDA_CC_LIST"
  echo "controllers      MPI ($MPICXX) + Gloo"
  [[ -z "${HOROVOD_NCCL_LIB:-}" ]] || echo "NCCL lib dir     $HOROVOD_NCCL_LIB"
  echo "wheel cache      $DEST${wheel:+ (cached: $(basename "$wheel"))}"
  exit 0
fi

if [[ -z "$wheel" ]]; then
  # --- the toolkit from wheels, once ----------------------------------------------------------
  if [[ "$SOURCE" == wheels && ! -f "$PREFIX/.complete" ]]; then
    say "installing CUDA $CUDA_VER compiler, headers and NCCL $NCCL_VER wheels into $PREFIX"
    rm -rf "$PREFIX"
    # one pip call: --target does not merge into an existing nvidia/ directory
    "${PIP[@]}" install -q --no-deps --no-compile --target "$PREFIX" \
      "$CUDART_PKG" "${TOOL_PKGS[@]}" "$NCCL_WHEEL_VER" 2>&1 | grep -v "^WARNING: Location" || true
    for lib in "$TOOLKIT/lib/libcudart.so".*; do [[ -e "$lib" ]] && ln -sfn "$(basename "$lib")" "$TOOLKIT/lib/libcudart.so"; break; done
    ln -sfn libnccl.so.2 "$NCCL_LIB_DIR/libnccl.so"
    [[ -e "$TOOLKIT/lib64" ]] || ln -sfn lib "$TOOLKIT/lib64"    # nvcc.profile links from lib64
    for f in bin/nvcc include/cuda_runtime.h lib/libcudart_static.a lib/libcudart.so; do
      [[ -e "$TOOLKIT/$f" ]] || { say "error: $TOOLKIT/$f missing after installing the wheels"; exit 1; }
    done
    [[ -e "$HOROVOD_NCCL_HOME/include/nccl.h" ]] || { say "error: no nccl.h in $HOROVOD_NCCL_HOME/include"; exit 1; }
    touch "$PREFIX/.complete"
  fi

  # --- sdist, patch, pip wheel ----------------------------------------------------------------
  say "building Horovod $VERSION with NCCL $NCCL_VER / CUDA $CUDA_VER ($SOURCE) against torch $TORCH_TAG, archs $HOROVOD_BUILD_CUDA_CC_LIST"
  mkdir -p "$DEST"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  sdist="${HOROVOD_SDIST:-$CACHE/sdist/horovod-$VERSION.tar.gz}"
  if [[ ! -f "$sdist" ]]; then
    "${PIP[@]}" download -q --no-binary :all: --no-deps "horovod==$VERSION" -d "$(dirname "$sdist")" 2>&1 | grep -v "^WARNING: Location" || true
  fi
  [[ -f "$sdist" ]] || { say "error: no Horovod sdist at $sdist (offline? download horovod-$VERSION.tar.gz and set HOROVOD_SDIST)"; exit 1; }
  tar xzf "$sdist" -C "$work"
  (cd "$work/horovod-$VERSION" && patch -s -p1 < "$PATCH")
  if ! "$PY" -c "import cmake, packaging, wheel" 2>/dev/null; then
    "${PIP[@]}" install -q cmake packaging wheel 2>&1 | grep -v "^WARNING: Location" || true
  fi
  export HOROVOD_WITH_MPI=1  # CMake fails when it cannot find MPI, instead of leaving it out
  unset HOROVOD_WITHOUT_MPI
  export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 \
         HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
         HOROVOD_CUDA_HOME HOROVOD_NCCL_HOME HOROVOD_NCCL_LINK
  [[ -n "${HOROVOD_NCCL_INCLUDE:-}" ]] && export HOROVOD_NCCL_INCLUDE
  [[ -n "${HOROVOD_NCCL_LIB:-}" ]] && export HOROVOD_NCCL_LIB
  unset HOROVOD_TORCH_CPU_ONLY
  # torch's cpp_extension (FindPytorch) and CMake's CUDA detection both look at these
  export CUDA_HOME="$HOROVOD_CUDA_HOME" CUDA_PATH="$HOROVOD_CUDA_HOME" CUDACXX="$HOROVOD_CUDA_HOME/bin/nvcc" \
         CUDAToolkit_ROOT="$HOROVOD_CUDA_HOME" PATH="$HOROVOD_CUDA_HOME/bin:$PATH"
  log="$DEST/build.log"
  start=$SECONDS
  if ! "${PIP[@]}" wheel -v --no-build-isolation --no-deps --no-cache-dir \
        -w "$work/wheel" "$work/horovod-$VERSION" >"$log" 2>&1; then
    say "error: the build failed after $((SECONDS - start)) s; see $log"
    grep -E "error|Error" "$log" | head -20 >&2 || tail -20 "$log" >&2
    exit 1
  fi
  for part in NCCL MPI; do
    if ! grep -q "Found $part" "$log"; then
      say "error: the build finished but CMake did not report $part; see $log"; exit 1
    fi
  done
  mv "$work"/wheel/horovod-*.whl "$DEST/"
  wheel="$(compgen -G "$DEST/horovod-$VERSION-$PYTAG-*.whl" | head -1)"
  # what CMake found, kept beside the wheel
  grep -E "CUDA|NCCL|Pytorch|MPI" "$log" | grep -E "^-- |Found|found" >"$DEST/configure-summary.txt" || true
  say "built $wheel in $((SECONDS - start)) s"
fi

if ((INSTALL)); then
  "${PIP[@]}" install -q --force-reinstall --no-deps "$wheel" 2>&1 | grep -v "^WARNING: Location" || true
  # again without --no-deps: horovod itself is in place now, so this adds only its missing
  # requirements (cloudpickle, psutil, pyyaml, packaging, cffi) from the wheel's metadata
  "${PIP[@]}" install -q "$wheel" 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c "import torch, horovod.torch as hvd; assert hvd.nccl_built(), 'Horovod was built without NCCL'; assert hvd.mpi_built(), 'Horovod was built without MPI'"
  say "installed into $VENV"
fi
echo "$wheel"
