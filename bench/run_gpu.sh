#!/usr/bin/env bash
# Runs the GPU benchmarks and prints their tables last.
#
# Usage, from the project root on a machine with an NVIDIA GPU, Deno and PyTorch:
#   bash bench/run_gpu.sh OUT_DIR            # full run, about 5 minutes
#   bash bench/run_gpu.sh OUT_DIR --quick    # fewer repetitions, no torch.compile default mode
#
# Runs, in order, each with `--out OUT_DIR` (and --quick when given) under a time limit in
# seconds that the variables override:
#   bench/gpu_quantize.ts (only if present)   QUANTIZE_LIMIT  default 150
#   bench/gpu_linear.ts                       LINEAR_LIMIT    default 240
#   bench/gpu_gpt2.ts                         GPT2_LIMIT      default 170
# Each bench runs its PyTorch peer (bench/peers/*.py, python3 with torch + transformers) in the
# same job. OUT_DIR receives run.log (everything printed) and each bench's NAME.md (its table)
# and NAME.json (raw figures), and nothing else. Tables are written after every figure, so a
# bench stopped by its limit still leaves what it measured.
#
# Deno must be on PATH. The PTX kernels are committed: nothing is built.
set -uo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
  sed -n '2,18p' "$0"
  exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
shift
extra=("$@")

cd "$(dirname "$0")/.."
log="$out/run.log"
: > "$log"

if ! command -v deno >/dev/null 2>&1; then
  echo "deno not found on PATH (npm install -g deno installs it)" | tee -a "$log"
  exit 1
fi

flags=(--allow-read --allow-write --allow-env --allow-ffi --allow-run)
status=0

run_bench() { # name script limit
  local name=$1 script=$2 limit=$3
  echo "==== $name: deno run $script --out $out ${extra[*]-} (limit ${limit} s) ====" | tee -a "$log"
  local t0=$SECONDS
  timeout --kill-after=15 "$limit" deno run "${flags[@]}" "$script" --out "$out" \
    ${extra[@]+"${extra[@]}"} \
    2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    echo "==== $name: stopped at its ${limit} s limit (partial results kept) ====" | tee -a "$log"
  elif [[ $rc -ne 0 ]]; then
    echo "==== $name: exited with status $rc ====" | tee -a "$log"
  fi
  echo "==== $name: $((SECONDS - t0)) s ====" | tee -a "$log"
  [[ $rc -ne 0 ]] && status=1
  return 0
}

{
  echo "started $(date -u +%FT%TZ) on $(hostname)"
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv,noheader 2>/dev/null || true
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' 2>&1 || true
  deno --version | head -n 1
} | tee -a "$log"

if [[ -f bench/gpu_quantize.ts ]]; then
  run_bench quantize bench/gpu_quantize.ts "${QUANTIZE_LIMIT:-150}"
fi
run_bench linear bench/gpu_linear.ts "${LINEAR_LIMIT:-240}"
run_bench gpt2 bench/gpu_gpt2.ts "${GPT2_LIMIT:-170}"

{
  echo
  echo "==== tables ===="
  for table in "$out"/*.md; do
    [[ -f "$table" ]] || continue
    echo
    cat "$table"
  done
} | tee -a "$log"
exit $status
