#!/usr/bin/env bash
# One-call check on a GPU machine (H100/H200, sm_90a), from the repository root:
#
#   bash scripts/gpu_check.sh            # results in ${OUT:-./gpu_out}/
#
# 1. builds the CUDA extension in place for sm_90a only (TORCH_CUDA_ARCH_LIST,
#    MAX_JOBS=16), with the ptxas report (registers / spills / smem per kernel);
# 2. runs the tiny smoke tests first (forward and backward; 30 s limit: a hang
#    there costs little), then the GPU tests in full (no -x: every failure is
#    reported), forward before backward, one line per test (-v) so that a hang
#    in a later test leaves the earlier results in the log;
# 3. runs the quick benchmark (benchmarks/bench.py --quick) if present;
# 4. measures the floors (benchmarks/floors.py: barrier latencies).
# The CPU tests are CI's job and are not run here (device time is scarce).
# Every step has its own time limit (build 200 s, smoke 30 s, GPU tests 175 s,
# bench 120 s, floors 45 s) so the script ends under 10 minutes even if a kernel hangs (a
# killed process takes its CUDA context and kernel with it). At most 8 files
# are written to the output folder.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-./gpu_out}"
mkdir -p "$OUT_DIR"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}"
export MAX_JOBS="${MAX_JOBS:-16}"
export FUSED_RNN_PTXAS_VERBOSE=1
export FUSED_RNN_NO_JIT=1          # tests must use the build below, never a silent JIT build
export PYTHONFAULTHANDLER=1
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
status=0
step() {  # step NAME SECONDS LOGFILE CMD...: run with a time limit, tee the log, record the result
  local name=$1 secs=$2 log=$3; shift 3
  local t0=$SECONDS rc verdict=ok
  set +e
  timeout --kill-after=10 "$secs" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then verdict="TIMEOUT after ${secs}s"
  elif [ "$rc" -ne 0 ]; then verdict="FAILED (exit $rc)"; fi
  echo "$name: $verdict in $((SECONDS - t0))s" | tee -a "$SUMMARY"
  if [ "$rc" -ne 0 ]; then status=1; fi
  return 0
}

{
  echo "== $(date -u)  $(hostname)"
  nvidia-smi || true
  nvcc --version | tail -2 || true
  python -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" || true
  echo "git: $(git log --oneline -1 2>/dev/null || echo 'no git')"
} 2>&1 | tee "$OUT_DIR/env.txt"

# 1. build (in place: fused_rnn/_C*.so next to the package; nothing installed)
rm -rf build fused_rnn/_C*.so
step build 200 "$OUT_DIR/build.log" python setup.py build_ext --inplace
# ptxas report first, then the tail of the build log (one file: at most 8 come back)
{
  echo "== ptxas report (sm_90a): registers / spills / shared memory per kernel"
  grep -E "Compiling entry function|registers|spill|smem|bytes stack" "$OUT_DIR/build.log" \
    | sed -E 's/.*ptxas info *: //' || true
  echo; echo "== build log (last 300 lines)"
  tail -n 300 "$OUT_DIR/build.log"
} > "$OUT_DIR/build.tmp"
mv "$OUT_DIR/build.tmp" "$OUT_DIR/build.log"
grep -B1 -E "registers" "$OUT_DIR/build.log" | head -60 || true
python -c "import fused_rnn, pprint; pprint.pprint(fused_rnn.backend_info())" 2>&1 | tee -a "$OUT_DIR/env.txt" || true

# 2. the tiny smoke tests (a hang here costs 30 s, not the whole GPU step), then
#    the GPU tests in full (no -x: every failure is reported), forward first
GPU_TESTS="tests/gpu/test_forward_gpu.py tests/gpu/test_backward_gpu.py"
step "pytest smoke" 30 "$OUT_DIR/pytest_smoke.tmp" \
  python -m pytest $GPU_TESTS -q -rs -k smoke_tiny -o faulthandler_timeout=20 -s
step "pytest tests/gpu" 175 "$OUT_DIR/pytest_gpu.tmp" \
  python -m pytest $GPU_TESTS -v -rs -o faulthandler_timeout=60 -s
cat "$OUT_DIR/pytest_smoke.tmp" "$OUT_DIR/pytest_gpu.tmp" > "$OUT_DIR/pytest_gpu.txt"
rm -f "$OUT_DIR/pytest_smoke.tmp" "$OUT_DIR/pytest_gpu.tmp"

# 3. quick benchmark; its whole results folder (JSON, CSV, markdown, plots) comes
#    back as one archive: unpack it into benchmarks/results/<device>/ and commit
if [ -f benchmarks/bench.py ]; then
  BENCH_TMP="$(mktemp -d)"
  step "bench --quick" 120 "$OUT_DIR/bench.txt" python benchmarks/bench.py --quick --out "$BENCH_TMP"
  tar czf "$OUT_DIR/bench_results.tgz" -C "$BENCH_TMP" . || true
else
  echo "bench: benchmarks/bench.py not present, skipped" | tee -a "$SUMMARY"
fi

# 4. the floors: grid-barrier and cluster-barrier latency, cuDNN per-layer step
if [ -f benchmarks/floors.py ]; then
  step "floors" 45 "$OUT_DIR/floors.txt" python benchmarks/floors.py
fi

echo "== summary"; cat "$SUMMARY"
exit "$status"
