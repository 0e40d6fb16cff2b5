#!/usr/bin/env bash
# Benchmarks before and after a change, back to back on one machine: each bench runs at REV (a
# temporary git worktree) and then at the working tree, bench after bench, so both see the same
# load. For a refactor that must not cost speed (bench_shards, bench_pipeline, bench_step).
#   bash bench/before_after.sh REV [BENCH ...]       e.g. bash bench/before_after.sh HEAD~5
# BENCH defaults to shards pipeline step; output: each run's own report, headed by where it ran.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
if (($# < 1)); then
  echo "usage: bash bench/before_after.sh REV [BENCH ...]  (BENCH: shards, pipeline, step, ...)" >&2
  exit 2
fi
REV="$1"; shift
BENCHES=("$@")
((${#BENCHES[@]})) || BENCHES=(shards pipeline step)
git -C "$ROOT" rev-parse --verify --quiet "$REV^{commit}" >/dev/null \
  || { echo "before_after: $REV is not a commit of $ROOT" >&2; exit 2; }
for b in "${BENCHES[@]}"; do
  [[ -f "$ROOT/bench/bench_$b.py" ]] || { echo "before_after: no bench/bench_$b.py" >&2; exit 2; }
done
BEFORE="$(mktemp -d "${TMPDIR:-/tmp}/before_after.XXXXXX")"
trap 'git -C "$ROOT" worktree remove --force "$BEFORE" >/dev/null 2>&1 || rm -rf "$BEFORE"' EXIT
git -C "$ROOT" worktree add --detach --quiet "$BEFORE" "$REV"
# bench_pipeline's own before/after (against an older revision) is left out: REV is the baseline here.
declare -A EXTRA=([pipeline]="--no-baseline")
for b in "${BENCHES[@]}"; do
  for side in before after; do
    if [[ $side == before ]]; then tree="$BEFORE"; label="$(git -C "$ROOT" rev-parse --short "$REV")"
    else tree="$ROOT"; label="working tree"; fi
    echo "== bench_$b at $label ($(date -u +%H:%M:%S) UTC)"
    # shellcheck disable=SC2086  # EXTRA holds words
    (cd "$tree" && PYTHONPATH="$tree" "$PY" "bench/bench_$b.py" ${EXTRA[$b]:-})
  done
done
