#!/usr/bin/env bash
# One command for a GPU node: the Horovod NCCL build, its check, the GPU step bench, the input bench
# and a 2-minute synthetic-world training on the GPU preset, each under its own time limit, every
# output line prefixed with the card's name (nvidia-smi / torch.cuda.get_device_name).
#
# Usage: bench/gpu_check.sh [--dry-run] [--out DIR] [--venv DIR] [--only STEP[,STEP...]]
#   --dry-run (or GPU_CHECK_DRY_RUN=1)  print the steps with their commands and time limits, check
#                                       what can be checked without a GPU, run nothing; exit 1 when
#                                       a prerequisite is missing
#   --out DIR          logs, the run directory and summary.txt (default: $GPU_CHECK_OUT or
#                      ${TMPDIR:-/tmp}/pixpro-gpu-check-<time>)
#   --venv DIR         the venv (default: $VENV or ./.venv); made (torch + this project) when missing
#   --only STEPS       run only these steps (comma-separated names from the dry run)
# Environment: GPU_CHECK_BUDGET_S (default 780: the whole check, 13 of the 15 GPU minutes, the
# machine's start-up taking the rest; no step starts with under 20 s left and each step's limit is
# cut to what is left), GPU_CHECK_WORKERS (DataLoader workers, default min(nproc - 2, 12)),
# HOROVOD_BUILD_CUDA_CC_LIST, HOROVOD_CUDA_HOME / HOROVOD_NCCL_HOME (site modules instead of the
# PyPI wheels; see .ci/build_horovod_nccl.sh).
# Exit 0 when every step passed, 1 otherwise (the later steps still run), 2 on bad arguments.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN="${GPU_CHECK_DRY_RUN:-0}"
OUT_DIR="${GPU_CHECK_OUT:-}"
VENV="${VENV:-$ROOT/.venv}"
ONLY=""
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    --venv) VENV="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument: $1 (--help)" >&2; exit 2 ;;
  esac
done
[[ "$DRY_RUN" == 1 ]] || DRY_RUN=0
if [[ -d "$(dirname "$VENV")" ]]; then VENV="$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")"; fi
OUT_DIR="${OUT_DIR:-${TMPDIR:-/tmp}/pixpro-gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}"
PY="$VENV/bin/python"
BUDGET_S="${GPU_CHECK_BUDGET_S:-780}"
CORES="$(nproc)"
WORKERS="${GPU_CHECK_WORKERS:-$(( CORES > 14 ? 12 : (CORES > 3 ? CORES - 2 : 1) ))}"
NGPU=1   # the GPUs on this node (nvidia-smi -L), the ranks of the allreduce step; at most 8
if command -v nvidia-smi >/dev/null; then
  NGPU="$(timeout 30 nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
  ((NGPU >= 1)) || NGPU=1
  ((NGPU <= 8)) || NGPU=8
fi
export PYTHONUNBUFFERED=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd "$ROOT"

# --- the steps: name, time limit (s), command ---------------------------------------------
# The training: the k = 6 GPU preset (ResNet-50, LARS, positives on the device) on the synthetic
# world, 64 samples a step on one GPU, stopped by the trainer's own deadline 2 minutes after its
# start (exit 75 with a checkpoint; 0 if it finished). The world is packed into the run directory
# by the step before (in parallel, outside the 2 minutes); the trainer uses a packed world it finds.
WORLD="synth:videos=128,frames=8,size=512x288,seed=0"
TRAIN_OVERRIDES=(data.synthetic=true data.synth.videos=128 data.synth.frames=8 data.synth.width=512
                 data.synth.height=288 data.batch_size=64 "data.num_workers=$WORKERS" run.device=cuda
                 stop.deadline=2m stop.margin_s=10 checkpoint.every_epochs=0 "checkpoint.keep_epochs=[]"
                 log.tensorboard=false)
HVD_SNIPPET='import time, torch, horovod, horovod.torch as hvd
hvd.init(); torch.cuda.set_device(hvd.local_rank())
assert hvd.nccl_built(), "Horovod was built without NCCL"
x = torch.ones(25_600_000, device="cuda")          # a ResNet-50-sized gradient (102 MB fp32)
for _ in range(3): y = hvd.allreduce(x, op=hvd.Sum, name="warm")
torch.cuda.synchronize(); t = time.perf_counter()
for i in range(10): y = hvd.allreduce(x, op=hvd.Sum, name="r%d" % i)
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 10
assert y[0].item() == hvd.size(), y[0].item()
if hvd.rank() == 0:
    print(f"horovod {horovod.__version__}: nccl_built={hvd.nccl_built()} ranks={hvd.size()} "
          f"allreduce of 102 MB per GPU: sum[0]={y[0].item():.0f}, {dt * 1e3:.2f} ms ({x.numel() * 4 / dt / 1e9:.1f} GB/s of buffer)")'

STEPS=(venv build_horovod check_build hvd_allreduce bench_gpu_step bench_input world train)
declare -A LIMIT=([venv]=300 [build_horovod]=300 [check_build]=60 [hvd_allreduce]=90
                  [bench_gpu_step]=180 [bench_input]=180 [world]=150 [train]=210)
step_cmd() {  # sets CMD to the step's command
  case "$1" in
    venv) CMD=(bash -c "python3 -m venv '$VENV' && '$VENV/bin/pip' install -q torch==2.14.1 torchvision==0.29.1 && '$VENV/bin/pip' install -q -e '${ROOT}[test]'") ;;
    build_horovod) CMD=("$ROOT/.ci/build_horovod_nccl.sh" --venv "$VENV" --install) ;;
    check_build) CMD=("$VENV/bin/horovodrun" --check-build) ;;
    hvd_allreduce) CMD=("$VENV/bin/horovodrun" -np "$NGPU" -H "localhost:$NGPU" "$PY" -c "$HVD_SNIPPET") ;;
    bench_gpu_step) CMD=("$PY" bench/bench_gpu_step.py --device cuda --raft-pairs 16) ;;
    bench_input) CMD=("$PY" bench/bench_input.py --device cuda --workers "$WORKERS" --arch resnet50
                      --batch 64 --image-size 224) ;;
    world) CMD=("$VENV/bin/hdf5_tools" pack "$WORLD" "$OUT_DIR/train/data" --nodes 1 --shard-size 8MiB
                -j "$WORKERS" --no-progress) ;;
    train) CMD=("$PY" -m pixpro_of train --config pixpro_k6 --run-dir "$OUT_DIR/train" "${TRAIN_OVERRIDES[@]}") ;;
  esac
}
wanted() {  # is step $1 to run?
  if [[ "$1" == venv && -x "$PY" ]]; then return 1; fi
  [[ -z "$ONLY" || ",$ONLY," == *",$1,"* ]]
}

# --- dry run: the plan and the checks a CPU machine can make ----------------------------------
if ((DRY_RUN)); then
  echo "gpu_check: dry run; budget ${BUDGET_S} s; out $OUT_DIR; venv $VENV; workers $WORKERS"
  n=0
  for s in "${STEPS[@]}"; do
    step_cmd "$s"
    n=$((n + 1))
    note=""
    if [[ "$s" == venv ]]; then
      if [[ -x "$PY" ]]; then note="  (skipped: the venv exists)"; fi
      printf 'step %d %s timeout %ss: bash -c "%s"%s\n' "$n" "$s" "${LIMIT[$s]}" "${CMD[2]}" "$note"
      continue
    fi
    if [[ "$s" == hvd_allreduce ]]; then CMD=("${CMD[@]:0:6}" -c "<allreduce of 102 MB on each GPU>"); fi
    printf 'step %d %s timeout %ss:%s' "$n" "$s" "${LIMIT[$s]}" "$(printf ' %q' "${CMD[@]}")"
    echo "$note"
  done
  bad=0
  check() {  # check NAME COMMAND...: ok or FAIL with the command's last line
    local name="$1"; shift
    local msg rc=0
    msg="$("$@" 2>&1)" || rc=$?
    if ((rc == 0)); then echo "check ok   $name${msg:+: ${msg##*$'\n'}}"
    else echo "check FAIL $name: ${msg##*$'\n'}"; bad=1; fi
  }
  check "timeout (coreutils)" command -v timeout
  if command -v nvidia-smi >/dev/null; then
    echo "check ok   nvidia-smi: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>&1 | head -1)"
  else
    echo "check skip nvidia-smi: not found (expected on a machine without a GPU)"
  fi
  if [[ -x "$PY" ]]; then
    check "torch is a CUDA build" "$PY" -c "import torch; assert torch.version.cuda, 'torch ' + torch.__version__ + ' is a CPU-only build'; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'available', torch.cuda.is_available())"
    check "Horovod NCCL build plan" bash -c "'$ROOT/.ci/build_horovod_nccl.sh' --venv '$VENV' --dry-run | tr '\n' ';' | sed 's/  */ /g'"
    check "bench_gpu_step.py --raft-pairs" bash -c "'$PY' bench/bench_gpu_step.py --help | grep -q -- --raft-pairs"
    check "bench_input.py --device --workers --arch --batch --image-size" bash -c \
      "test -f bench/bench_input.py || { echo 'bench/bench_input.py is missing'; exit 1; }; h=\$('$PY' bench/bench_input.py --help) && for o in --device --workers --arch --batch --image-size; do grep -q -- \"\$o\" <<<\"\$h\" || { echo \"no \$o option\"; exit 1; }; done"
    check "training overrides (--print-config)" bash -c "'$PY' -m pixpro_of train --config pixpro_k6 --print-config $(printf ' %q' "${TRAIN_OVERRIDES[@]}") >/dev/null && echo 'pixpro_k6 accepts them'"
  else
    echo "check skip python: $PY is missing (the venv step makes it)"
  fi
  for tool in mpirun mpicxx; do   # without them the build is Gloo-only and horovodrun uses Gloo
    if command -v "$tool" >/dev/null; then echo "check ok   $tool: $(command -v "$tool") (Horovod with MPI)"
    else echo "check skip $tool: not found (Horovod is then built with Gloo only; horovodrun uses Gloo)"; fi
  done
  check "build script parses (bash -n)" bash -n "$ROOT/.ci/build_horovod_nccl.sh"
  exit "$bad"
fi

# --- the real run --------------------------------------------------------------------------
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"
T0=$SECONDS
if ! command -v nvidia-smi >/dev/null || ! CARD="$(timeout 30 nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" || [[ -z "$CARD" ]]; then
  echo "gpu_check: no GPU here (nvidia-smi missing or failing); --dry-run checks the rest" >&2
  exit 1
fi
DRIVER="$(timeout 30 nvidia-smi --query-gpu=driver_version,memory.total --format=csv,noheader | head -1 || true)"
echo "gpu_check: card $CARD (driver, memory: $DRIVER); $CORES cores; out $OUT_DIR; budget $BUDGET_S s" | tee -a "$SUMMARY"

failed=0
run_step() {
  local name="$1" limit="${LIMIT[$1]}" left rc t
  left=$((BUDGET_S - (SECONDS - T0)))
  if ((left < 20)); then
    echo "[$CARD] $name: SKIPPED, ${left} s of the budget left" | tee -a "$SUMMARY"; failed=1; return
  fi
  ((limit <= left)) || limit=$left
  step_cmd "$name"
  echo "[$CARD] $name: running (limit ${limit} s):$(printf ' %q' "${CMD[@]:0:8}")"
  t=$SECONDS
  set +o errexit
  timeout -k 15 "$limit" "${CMD[@]}" </dev/null 2>&1 | tee "$OUT_DIR/$name.log" |
    awk -v p="[$CARD] $name | " '{ print p $0; fflush() }'
  rc=${PIPESTATUS[0]}
  set -o errexit
  judge "$name" "$rc" "$((SECONDS - t))"
}
figure() { echo "[$CARD] $1: $2" | tee -a "$SUMMARY"; }
judge() {  # judge NAME RC SECONDS: PASS/FAIL line and the step's figures into the summary
  local name="$1" rc="$2" took="$3" ok=0 log="$OUT_DIR/$1.log"
  case "$name" in
    check_build) ((rc == 0)) && grep -q '\[X\] NCCL' "$log" && ok=1 ;;
    train) ((rc == 0 || rc == 75)) && ok=1 ;;
    *) ((rc == 0)) && ok=1 ;;
  esac
  local why=""
  if ((rc == 124 || rc == 137)); then why=" (time limit)"; fi
  if [[ "$name" == check_build ]] && ((rc == 0 && !ok)); then why=" (no [X] NCCL under Tensor Operations)"; fi
  if ((ok)); then figure "$name" "PASS rc=$rc in ${took} s"; else figure "$name" "FAIL rc=$rc$why in ${took} s (log: $log)"; failed=1; fi
  case "$name" in
    build_horovod) if ((ok)); then figure "$name" "wheel $(tail -1 "$log")"; fi ;;
    check_build) figure "$name" "$(awk '/^Available/ { sub(/^Available /, ""); sub(/:$/, ""); s = $0 }
                                       /\[X\]/ { x[s] = x[s] " " $2 }
                                       END { printf "built: frameworks%s; controllers%s; tensor operations%s",
                                             x["Frameworks"], x["Controllers"], x["Tensor Operations"] }' "$log")" ;;
    hvd_allreduce|bench_gpu_step|bench_input)
      grep -vE '^\s*$|Warning|warn' "$log" | tail -8 | while IFS= read -r l; do figure "$name" "$l"; done ;;
    train)
      "$PY" - "$OUT_DIR/train" <<'PYEOF' 2>&1 | while IFS= read -r l; do figure train "$l"; done || true
import csv, statistics, sys
from pathlib import Path
run = Path(sys.argv[1])
rows = list(csv.DictReader(open(run / "metrics.csv"))) if (run / "metrics.csv").exists() else []
if not rows:
    print("no metrics.csv rows (no step finished)")
    sys.exit(0)
rates = [float(r["samples_per_s"]) for r in rows if r.get("samples_per_s")]
tail = rates[len(rates) // 2:] or rates
data = [float(r["time/data"]) for r in rows[len(rows) // 2:] if r.get("time/data")]
step = [float(r["time/step"]) for r in rows[len(rows) // 2:] if r.get("time/step")]
print(f"{len(rows)} steps logged; median of the second half: {statistics.median(tail):.1f} samples/s, "
      f"step {statistics.median(step):.3f} s of which waiting for data {statistics.median(data):.3f} s; "
      f"last loss {rows[-1].get('loss')}; done={'yes' if (run / 'done').exists() else 'no (exit 75 at the deadline)'}")
PYEOF
      ;;
  esac
}

for s in "${STEPS[@]}"; do
  if [[ "$s" == build_horovod ]]; then  # after the venv step: the card as torch names it
    figure torch "$(timeout 120 "$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda, "device", torch.cuda.get_device_name(0))' 2>&1 | tail -1 || true)"
  fi
  if wanted "$s"; then
    if [[ "$s" == check_build || "$s" == hvd_allreduce ]] && [[ ! -x "$VENV/bin/horovodrun" ]]; then
      figure "$s" "SKIPPED: no horovodrun in $VENV"; failed=1; continue
    fi
    run_step "$s"
  fi
done
echo "gpu_check: $( ((failed)) && echo 'some steps FAILED' || echo 'all steps passed') on $CARD in $((SECONDS - T0)) s; summary: $SUMMARY" | tee -a "$SUMMARY"
exit "$failed"
