#!/usr/bin/env bash
# The fused engine on a GPU in one go, at most about 9 minutes (the steps' limits add up to 505 s): the
# population tests (the CUDA ones included), a forward + backward micro-benchmark (grouped conv vs vmap vs a
# loop), bench/fused.py for the MLP and the CNN, bench/pbt.py, and a torch.compile / CUDA graphs trial. Everything goes to $OUT: one .md per step, and
# summary.txt with each step's exit code and seconds.
#
#   OUT=/some/folder bash bench/gpu.sh
#
# Needs python3 with a CUDA build of torch, numpy, scikit-learn and pytest; nothing else (no services:
# tests/conftest.py imports psycopg and redis, so pytest runs with --noconftest). Each step has its own
# time limit, and a failed or timed-out step does not stop the others; the benchmarks print each K's row
# as soon as it is measured, so a step cut short still leaves the rows it finished.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
failed=0

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/summary.txt"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.md"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$OUT/summary.txt"
  if [ "$rc" -ne 0 ]; then failed=1; fi
}

step device 15 bash -c 'nvidia-smi -L; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"'
step tests 75 python3 -m pytest -q -p no:cacheprovider --noconftest \
  tests/trainer/test_population.py tests/trainer/test_loop.py::test_resolve_device
step stacked-forward-cnn 35 python3 bench/stacked_forward.py --model cnn --members 4,16,64 --device cuda --threads 0 \
  --repeats 5
step fused-mlp 150 python3 bench/fused.py --members 1,4,16,64 --epochs 10 --device cuda --threads 0 --repeats 3
step fused-cnn 50 python3 bench/fused.py --model cnn --members 1,4,16 --epochs 10 --device cuda --threads 0 --repeats 3
step pbt 90 python3 bench/pbt.py --population 32 --epochs 12 --interval 3 --device cuda --threads 0
step compiled 90 python3 bench/fused.py --members 16,64 --epochs 5 --device cuda --threads 0 --repeats 2 \
  --compile reduce-overhead
echo "== all steps done (any failed: $failed)" | tee -a "$OUT/summary.txt"
exit "$failed"
