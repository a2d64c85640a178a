#!/usr/bin/env bash
# The GPU check: one short call on an H100/H200 (sm_90a) that says which path broke and why,
# and leaves room for a second call. From the repository root:
#
#   bash scripts/gpu_check.sh                      # every stage; results in ${OUT:-./gpu_out}/
#   bash scripts/gpu_check.sh --dry-run            # the plan and its worst case (no GPU needed)
#   bash scripts/gpu_check.sh --only tests         # one stage (builds first if needed)
#   bash scripts/gpu_check.sh --prebuilt DIR ...   # reuse the extension of an earlier call
#   bash scripts/gpu_check.sh --force              # run every stage whatever came before
#
# Stages, each with its own time limit (--dry-run prints them and the worst-case total):
#   build      the extension in place (fused_rnn/_C*.so) for this GPU's arch only (sm_90a on
#              Hopper), MAX_JOBS=16, with the ptxas report and the per-phase timing compiled in
#              (FUSED_RNN_PHASE_TIMING=1); benchmarks/csrc/floors.cu is compiled beside it.
#              Skipped when --prebuilt DIR (or a leftover in-place build) holds an extension
#              built from this very csrc/ (its compiled-in source hash is checked).
#   smoke      tests/gpu/test_smoke_gpu.py: tiny cases that reach every path only hardware can
#              break (grid barrier, ring slots, tensor-core fragments, cp.async ring, dropout,
#              lengths, bidirectional; the backward fed the reference's reserve)
#   tests      the full GPU tests (forward, then backward, then autotuning) -- only if smoke passed
#   sanitizer  compute-sanitizer memcheck / synccheck over scripts/gpu_sanitize.py (one tiny bf16
#              forward + backward through the op); racecheck over scripts/sanitize_target.cu
#              (the same problem without torch or cuBLAS: the two kernels alone) per dtype, and
#              over a cuBLAS-only control (gpu_sanitize.py --cublas-only: the backward's weight
#              GEMMs, no extension); with --only sanitizer also the bisection (racecheck over
#              the bf16 target built with each FRNN_BISECT switch, csrc/kernels/common.h, and
#              its outputs against the plain build's) -- whenever the build is there; "skipped"
#              where the tool or the device does not support it. The targets build in the
#              background (scripts/sanitize_build.py) while smoke and tests run.
#   bench      benchmarks/bench.py --quick (time-boxed) -- only if the GPU tests passed
#   floors     benchmarks/floors.py (barrier and cuDNN floors), then --phases (time per
#              kernel phase beside the model) -- only if the GPU tests passed
# pytest runs with a per-test limit (pytest-timeout, thread method: a hung test ends the
# process and is named in the summary) when the plugin is installed, in one pytest-xdist
# worker where that is installed (a test that crashes or hangs its process is reported failed
# and the worker is restarted for the rest); every stage also has a hard limit (timeout(1)).
#
# The output folder holds at most 8 files; summary.txt first (per stage ok / FAILED /
# TIMEOUT / skipped with its time, failing test ids, the first lines of each failure):
#   summary.txt build.log smoke.log tests.log sanitizer.log bench_floors.log
#   results.tgz   the benchmark's results folder (results.json/.csv/.md, plots) with
#                 floors.json and phases.json: unpack into benchmarks/results/<device>/, commit,
#                 then python benchmarks/report.py --update-readme
#   prebuilt.tgz  the built extension; a later call takes it with --prebuilt DIR (DIR holding
#                 prebuilt.tgz or the .so): no rebuild when only Python changed
# Exit status: 0 when every stage that ran passed, 1 otherwise, 2 for bad usage.
#
# Environment: PYTHON (default python3), OUT, TORCH_CUDA_ARCH_LIST (default: the GPU's
# own arch, e.g. 9.0a), MAX_JOBS (16).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

ONLY="" PREBUILT="" FORCE=0 DRY=0
ARGS="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --only) ONLY=${2:-}; shift 2 || { usage >&2; exit 2; } ;;
    --only=*) ONLY=${1#--only=}; shift ;;
    --prebuilt) PREBUILT=${2:-}; shift 2 || { usage >&2; exit 2; } ;;
    --prebuilt=*) PREBUILT=${1#--prebuilt=}; shift ;;
    --force) FORCE=1; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
STAGES="build smoke tests sanitizer bench floors"
if [ -n "$ONLY" ] && ! [[ " $STAGES " == *" $ONLY "* ]]; then
  echo "gpu_check: --only takes one of: $STAGES (got '$ONLY')" >&2; exit 2
fi
if [ -n "$PREBUILT" ] && [ ! -d "$PREBUILT" ]; then
  echo "gpu_check: --prebuilt: '$PREBUILT' is not a folder" >&2; exit 2
fi

# ---------------------------------------------------------------- limits (seconds)
# Sized so that the worst case (every stage hits its limit, plus the kill delays) stays
# under 6 minutes: a second call still fits in a 15-minute device budget.
KILL_AFTER=1       # SIGKILL this long after the SIGTERM of a limit
L_SMI=5            # nvidia-smi
L_PROBE=12         # Python: versions, CUDA visible (the first torch import may be slow)
L_BUILD=75         # the extension, 16 parallel jobs (13 translation units; 48 s on an H200 machine)
L_HASH=10          # import the extension, check its source hash
L_SMOKE=26         # whole smoke stage, Python and CUDA start included (19 s on an H200)
T_SMOKE=15         # per smoke test
L_TESTS=90         # the full GPU tests (33-79 s on an H200, one xdist worker)
T_TESTS=30         # per test
L_SANITIZER=10     # per tool over the op (memcheck, synccheck: ~6 s each on an H200)
SAN_TOOLS="memcheck synccheck"
L_SAN_BUILD=60     # the sanitizer targets, in the background (4 dtypes + 5 bisection builds)
L_SAN_TARGET=5     # racecheck over one target run (no torch: a tiny program)
SAN_DTYPES="bf16 fp16 tf32 fp32"
SAN_BISECT="1 2 4 8 16"  # FRNN_BISECT switches (csrc/kernels/common.h), bf16, --only sanitizer
L_SAN_CONTROL=8    # racecheck over the cuBLAS-only control (torch, no extension)
L_BENCH=40         # bench.py --quick --time-budget (L_BENCH - 17): Python, CUDA, the writes
                   # (11 s beyond the budget on an H200)
L_FLOORS=24        # floors.py and floors.py --phases together (15-21 s on an H200)

want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }  # does this call run STAGE (gates aside)?

if [ "$DRY" = 1 ]; then
  n_san=$(echo $SAN_TOOLS | wc -w)
  total=0
  line() {  # line NAME SECONDS WHAT [N_LIMITED_CALLS]
    printf '  %-10s %4s s  %s\n' "$1" "$2" "$3"; total=$((total + $2 + KILL_AFTER * ${4:-1}))
  }
  echo "gpu_check plan (dry run: nothing is built or run)${ARGS:+; options: $ARGS}"
  line env $((L_SMI + L_PROBE)) "nvidia-smi; Python, torch, CUDA versions, a CUDA device visible, pytest-timeout" 2
  # (hash check of the prebuilt or leftover extension, the build, the hash check of the build)
  if [ -n "$PREBUILT" ]; then
    line build $((L_BUILD + L_HASH * 2)) "load $PREBUILT (prebuilt.tgz or _C*.so); if its source hash differs, build" 3
  else
    line build $((L_BUILD + L_HASH * 2)) "setup.py build_ext --inplace, this GPU's arch only, phase timing on (skipped if an in-place build matches csrc/)" 3
  fi
  gated=""; [ -z "$ONLY" ] && [ "$FORCE" = 0 ] && gated=1
  want smoke && line smoke "$L_SMOKE" "tests/gpu/test_smoke_gpu.py, ${T_SMOKE} s per test"
  want tests && line tests "$L_TESTS" "tests/gpu/test_forward_gpu.py + test_backward_gpu.py + test_autotune_gpu.py + test_cluster_gpu.py, ${T_TESTS} s per test${gated:+; only if smoke passed}"
  if want sanitizer; then
    n_dt=$(echo $SAN_DTYPES | wc -w); n_bi=$(echo $SAN_BISECT | wc -w)
    line sanitizer $((L_SANITIZER * n_san + L_SAN_TARGET * n_dt + L_SAN_CONTROL)) "$SAN_TOOLS over the op, ${L_SANITIZER} s each (a retry without the filter options in the same time); racecheck over the torch-free target per dtype ($SAN_DTYPES), ${L_SAN_TARGET} s each; racecheck over the cuBLAS-only control, ${L_SAN_CONTROL} s" $((2 * n_san + n_dt + 1))
    if [ "$ONLY" = sanitizer ]; then
      line targets "$L_SAN_BUILD" "waiting for scripts/sanitize_build.py (started after the build, in the background)"
      line bisection $((L_SAN_TARGET * (n_bi + 1))) "racecheck over the bf16 target with FRNN_BISECT=$SAN_BISECT, plus one plain run for the outputs, ${L_SAN_TARGET} s each" $((n_bi + 1))
    fi
  fi
  want bench && line bench "$L_BENCH" "benchmarks/bench.py --quick${gated:+; only if the GPU tests passed}"
  want floors && line floors "$L_FLOORS" "benchmarks/floors.py, then --phases${gated:+; only if the GPU tests passed}"
  echo "worst case: $total s (every limit reached, plus ${KILL_AFTER} s kill delay each)"
  [ "$FORCE" = 1 ] && echo "--force: every stage runs whatever the earlier ones gave"
  exit 0
fi

# ---------------------------------------------------------------- set-up
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-./gpu_out}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
SCRATCH=$(mktemp -d)
BG_PIDS=""
trap 'for p in $BG_PIDS; do kill "$p" 2>/dev/null; done; rm -rf "$SCRATCH"' EXIT
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS=${MAX_JOBS:-16}
export FUSED_RNN_PTXAS_VERBOSE=1 FUSED_RNN_PHASE_TIMING=1
export FUSED_RNN_NO_JIT=1  # the tests must use the build below, never a silent JIT build
GPU_LINE=$(timeout --kill-after=$KILL_AFTER "$L_SMI" nvidia-smi \
  --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>&1 | head -1)
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then  # this GPU's arch only (9.0 -> 9.0a: Hopper's own)
  cap=$(echo "$GPU_LINE" | awk -F', ' '{print $3}')
  case "$cap" in 9.0) TORCH_CUDA_ARCH_LIST=9.0a ;; [0-9]*.[0-9]*) TORCH_CUDA_ARCH_LIST=$cap ;; *) TORCH_CUDA_ARCH_LIST=9.0a ;; esac
fi
export TORCH_CUDA_ARCH_LIST
SUMMARY="$OUT_DIR/summary.txt"
STAGE_LINES="$SCRATCH/stages"
DETAILS="$SCRATCH/details"
: > "$STAGE_LINES"; : > "$DETAILS"
FAILED_AT=""
declare -A RESULT  # stage -> ok | failed | timeout | skipped

record() {  # record STAGE VERDICT TIME LIMIT [NOTE]
  RESULT[$1]=$2
  local shown=$2
  case "$2" in failed) shown=FAILED ;; timeout) shown=TIMEOUT ;; esac
  printf '%-10s %-8s %5s %6s  %s\n' "$1" "$shown" "$3" "$4" "${5:-}" >> "$STAGE_LINES"
  echo "gpu_check: $1 $shown ${3} ${5:-}"
  if [ "$2" = failed ] || [ "$2" = timeout ]; then FAILED_AT=${FAILED_AT:-$1}; fi
  write_summary
}
skip() { record "$1" skipped - - "$2"; }
write_summary() {  # after every stage (a call cut short still leaves one), and at the end
  {
    cat "$SCRATCH/env"
    echo
    printf '%-10s %-8s %5s %6s  %s\n' stage verdict time limit note
    cat "$STAGE_LINES"
    echo
    if [ -n "$FAILED_AT" ]; then echo "VERDICT: FAILED (first at: $FAILED_AT)"
    elif [ "${1:-}" = final ]; then echo "VERDICT: every stage that ran passed"
    else echo "VERDICT: (still running: the call ended before its last stage)"; fi
    cat "$DETAILS"
  } > "$SUMMARY"
}
detail() { { echo; echo "== $1"; cat; } >> "$DETAILS"; }

limited() {  # limited SECONDS LOG CMD...: run with a hard time limit; returns its status
  local secs=$1 log=$2; shift 2
  timeout --kill-after="$KILL_AFTER" "$secs" "$@" >> "$log" 2>&1
}
verdict_of() { case "$1" in 0) echo ok ;; 124|137) echo timeout ;; *) echo failed ;; esac; }

# ---------------------------------------------------------------- env (top of summary.txt)
{
  echo "fused_rnn GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), host $(hostname)"
  echo "command: scripts/gpu_check.sh $ARGS"
  echo "commit: $(git log -1 --format='%h %s' 2>/dev/null || echo 'no git')$(git status --porcelain 2>/dev/null | grep -q . && echo ' (working tree has uncommitted changes)')"
  echo "gpu: $GPU_LINE"
  echo "nvcc: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo 'not found')"
  echo "build: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS, phase timing compiled in"
} > "$SCRATCH/env" 2>&1
# one Python start: versions, a usable CUDA device, the pytest-timeout plugin
timeout --kill-after=$KILL_AFTER "$L_PROBE" "$PY" -c "
import importlib.util, sys, torch
print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda,
      '| cuDNN', torch.backends.cudnn.version(), '| device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)
print('pytest-timeout:', 'yes (thread method)' if importlib.util.find_spec('pytest_timeout') else
      'NOT installed: a hung test is stopped only by its stage limit')
print('pytest-xdist:', 'yes (one worker, restarted after a crash)' if importlib.util.find_spec('xdist') else
      'NOT installed: a test that crashes the process ends its stage')
sys.exit(0 if torch.cuda.is_available() else 3)" >> "$SCRATCH/env" 2>&1
rc=$?
HAVE_TIMEOUT_PLUGIN=0 HAVE_XDIST=0
grep -q "^pytest-timeout: yes" "$SCRATCH/env" && HAVE_TIMEOUT_PLUGIN=1
grep -q "^pytest-xdist: yes" "$SCRATCH/env" && HAVE_XDIST=1
cat "$SCRATCH/env"
if [ "$rc" != 0 ]; then
  { cat "$SCRATCH/env"; echo; echo "no CUDA device usable from $PY (probe exit $rc): nothing was checked"; } > "$SUMMARY"
  exit 1
fi

# ---------------------------------------------------------------- build
so_file() { ls fused_rnn/_C*.so 2>/dev/null | head -1; }
hash_matches() {  # was the in-place extension built from this csrc/? (prints why not)
  timeout --kill-after=$KILL_AFTER "$L_HASH" "$PY" -c "
import sys
import torch  # noqa: F401  (the extension links against it)
from fused_rnn import _build
try:
    import fused_rnn._C as C
except ImportError as e:
    print(f'it does not import: {e}'); sys.exit(1)
want, got = _build.source_hash(), getattr(C, 'source_hash', 'unknown')
if got != want:
    print(f'it was built from csrc/ {got}, this tree is {want}'); sys.exit(1)
import fused_rnn, pprint
with open('$SCRATCH/backend_info', 'w') as f:
    pprint.pprint(fused_rnn.backend_info(), stream=f)
" 2>&1
}

BUILD_LOG="$OUT_DIR/build.log"
: > "$BUILD_LOG"
build_ready=0
t0=$SECONDS
if [ -n "$PREBUILT" ]; then
  rm -f fused_rnn/_C*.so
  if [ -f "$PREBUILT/prebuilt.tgz" ]; then
    tar xzf "$PREBUILT/prebuilt.tgz" -C fused_rnn
  else
    cp "$PREBUILT"/_C*.so fused_rnn/ 2>/dev/null
  fi
  if [ -z "$(so_file)" ]; then
    echo "--prebuilt $PREBUILT: no prebuilt.tgz or _C*.so there; building" | tee -a "$BUILD_LOG"
  elif why=$(hash_matches 2>&1); then
    build_ready=1
    record build ok $((SECONDS - t0))s "${L_BUILD}s" "prebuilt extension from $PREBUILT (source hash matches)"
  else
    echo "--prebuilt $PREBUILT: $why; rebuilding" | tee -a "$BUILD_LOG"
  fi
elif [ -n "$(so_file)" ] && why=$(hash_matches 2>&1); then
  build_ready=1
  record build ok $((SECONDS - t0))s "${L_BUILD}s" "in-place extension of an earlier call (source hash matches)"
fi
if [ "$build_ready" = 0 ]; then
  rm -rf build fused_rnn/_C*.so
  if want floors || want bench; then  # floors.cu (cached by torch) compiles beside the extension
    ( limited "$L_BUILD" "$SCRATCH/floors_build.log" "$PY" -c \
        "import sys; sys.path.insert(0, 'benchmarks'); import floors; floors.build()" ) &
    BG_PIDS="$BG_PIDS $!"
  fi
  t0=$SECONDS
  limited "$L_BUILD" "$SCRATCH/build_full.log" "$PY" setup.py build_ext --inplace
  rc=$?
  [ "$rc" = 0 ] && [ -z "$(so_file)" ] && rc=1 && echo "setup.py ended without building fused_rnn/_C*.so" >> "$SCRATCH/build_full.log"
  [ "$rc" = 0 ] && ! why=$(hash_matches 2>&1) && rc=1 && echo "the built extension: $why" >> "$SCRATCH/build_full.log"
  # a private copy of libstdc++ inside the extension crashes beside torch's shared one
  # (fused_rnn/_build.py link_flags): refuse it here rather than as a segfault in a test
  if [ "$rc" = 0 ] && command -v nm >/dev/null 2>&1 &&
     nm -DC --defined-only "$(so_file)" 2>/dev/null | grep -q 'std::locale::classic()'; then
    rc=1; echo "error: the built extension carries its own copy of libstdc++ (it defines std::locale::classic())" >> "$SCRATCH/build_full.log"
  fi
  v=$(verdict_of $rc)
  {
    echo "== ptxas report ($TORCH_CUDA_ARCH_LIST): registers / spills / shared memory per kernel"
    grep -E "Compiling entry function|registers|spill|smem|bytes stack" "$SCRATCH/build_full.log" \
      | sed -E 's/.*ptxas info *: //'
    echo; echo "== build log (last 300 lines)"
    tail -n 300 "$SCRATCH/build_full.log"
  } >> "$BUILD_LOG"
  if [ "$v" = ok ]; then
    build_ready=1
    tar czf "$OUT_DIR/prebuilt.tgz" -C fused_rnn "$(basename "$(so_file)")"
    record build ok $((SECONDS - t0))s "${L_BUILD}s" "fused_rnn/$(basename "$(so_file)") -> prebuilt.tgz"
  else
    record build "$v" $((SECONDS - t0))s "${L_BUILD}s" "see build.log"
    grep -iE "error|undefined|fatal" "$SCRATCH/build_full.log" | head -20 | detail "build: first errors"
  fi
fi
[ -f "$SCRATCH/backend_info" ] && { echo "backend_info:"; cat "$SCRATCH/backend_info"; } >> "$SCRATCH/env"

# The torch-free sanitizer targets (no extension needed), in the background while the
# pytest stages run; the sanitizer stage waits for them.
SAN_DIR="$SCRATCH/san" SAN_PID=""
if want sanitizer && [ "$build_ready" = 1 ]; then
  san_bisect=""; [ "$ONLY" = sanitizer ] && san_bisect=$(echo $SAN_BISECT | tr ' ' ',')
  ( limited "$L_SAN_BUILD" "$SCRATCH/san_build.log" "$PY" scripts/sanitize_build.py --out "$SAN_DIR" \
      --dtypes "$(echo $SAN_DTYPES | tr ' ' ',')" --bisect "$san_bisect" \
      --arch "${TORCH_CUDA_ARCH_LIST%%;*}" ) &
  SAN_PID=$!
  BG_PIDS="$BG_PIDS $SAN_PID"
fi

# ---------------------------------------------------------------- pytest stages
pytest_stage() {  # pytest_stage NAME LIMIT PER_TEST FILES...
  local name=$1 secs=$2 per=$3; shift 3
  local log="$OUT_DIR/$name.log" trace="$SCRATCH/$name.trace" t0=$SECONDS rc v note
  : > "$log"; : > "$trace"
  local tflags=()
  [ "$HAVE_TIMEOUT_PLUGIN" = 1 ] && tflags=(--timeout="$per" --timeout-method=thread)
  # one worker process that pytest-xdist restarts when a test crashes it (a segfault, an
  # abort, a per-test timeout): that test is reported failed and the rest still run
  [ "$HAVE_XDIST" = 1 ] && tflags+=(-n 1 --max-worker-restart=20)
  FUSED_RNN_TEST_TRACE="$trace" limited "$secs" "$log" \
    "$PY" -m pytest "$@" -v -rfEs -p no:cacheprovider "${tflags[@]}"
  rc=$?
  v=$(verdict_of $rc)
  # the test that started and never finished: a per-test timeout (os._exit) or the stage limit
  local hung
  # trace lines (tests/conftest.py): "start<TAB>nodeid", "end<TAB>outcome<TAB>nodeid"
  hung=$(awk -F'\t' '$1=="start"{s[$2]=1; last=$2} $1=="end"{delete s[$3]} END{if (last in s) print last}' "$trace")
  local passed failed
  passed=$(grep -c "^end	passed	" "$trace")
  failed=$(grep -c "^end	failed	" "$trace")
  note="$passed passed, $failed failed"
  if [ -n "$hung" ]; then
    if grep -qE '^\+{5,} Timeout \+{5,}' "$log"; then  # pytest-timeout's banner
      v=timeout; note="$note; HUNG (per-test limit ${per}s): $hung"
    elif [ "$v" = timeout ]; then note="$note; stage limit reached in: $hung"
    else v=failed; note="$note; the process died (exit $rc) in: $hung"; fi
  elif [ "$v" = failed ] && [ "$failed" = 0 ] && ! grep -qE '^(FAILED|ERROR) ' "$log"; then
    note="$note; pytest exit $rc (see $name.log)"
  fi
  record "$name" "$v" $((SECONDS - t0))s "${secs}s" "$note"
  if [ "$v" != ok ]; then
    {
      grep -E '^(FAILED|ERROR) ' "$log" | head -25
      [ -n "$hung" ] && echo "did not finish: $hung"
      echo "-- first error lines:"
      grep -E '^E   ' "$log" | head -25
      [ -n "$hung" ] && grep -E -A12 -m1 '^\+{5,} Timeout \+{5,}' "$log"
      tail -n 5 "$log"
    } | detail "$name: failures"
  fi
}

if ! want smoke; then :
elif [ "$build_ready" = 0 ]; then skip smoke "no extension"
else pytest_stage smoke "$L_SMOKE" "$T_SMOKE" tests/gpu/test_smoke_gpu.py
fi

if ! want tests; then :
elif [ "$build_ready" = 0 ]; then skip tests "no extension"
elif [ -z "$ONLY" ] && [ "$FORCE" = 0 ] && [ "${RESULT[smoke]:-}" != ok ]; then
  skip tests "smoke did not pass (--force runs it anyway)"
else pytest_stage tests "$L_TESTS" "$T_TESTS" tests/gpu/test_forward_gpu.py tests/gpu/test_backward_gpu.py tests/gpu/test_autotune_gpu.py tests/gpu/test_cluster_gpu.py
fi

# ---------------------------------------------------------------- sanitizer
# san_run LABEL LIMIT CMD...: one compute-sanitizer run into sanitizer.log under "==== LABEL";
# sets SAN_RC and SAN_SAID (unsupported | TIMEOUT | FAULT (the tool's hardware exception) |
# N errors (exit RC)).
san_run() {
  local label=$1 secs=$2; shift 2
  echo "==== $label" >> "$SAN_LOG"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 limited "$secs" "$SAN_LOG" "$@"
  SAN_RC=$?
  SAN_PART=$(awk -v t="==== $label" '$0==t{on=1; next} /^==== /{on=0} on' "$SAN_LOG")
  local errs
  errs=$(echo "$SAN_PART" | grep -E "SUMMARY" | grep -oE "[0-9]+ errors?" | grep -oE "[0-9]+" | tail -1)
  if echo "$SAN_PART" | grep -qiE "device not supported|not supported on this|unsupported (device|gpu)"; then
    SAN_SAID=unsupported
  elif [ "$SAN_RC" = 124 ] || [ "$SAN_RC" = 137 ]; then SAN_SAID=TIMEOUT
  elif echo "$SAN_PART" | grep -q "failed to handle a hardware exception"; then
    SAN_SAID="FAULT (exit $SAN_RC)"
  else SAN_SAID="${errs:-?} errors (exit $SAN_RC)"; fi
}
if ! want sanitizer; then :
elif [ "$build_ready" = 0 ]; then skip sanitizer "no extension"
elif ! command -v compute-sanitizer >/dev/null 2>&1; then skip sanitizer "compute-sanitizer not found"
else
  SAN_LOG="$OUT_DIR/sanitizer.log"
  : > "$SAN_LOG"
  { echo "==== version"; compute-sanitizer --version 2>&1 | head -5; } >> "$SAN_LOG"
  # only our kernels are instrumented (substring of the kernel name), and torch's own
  # checked API errors (probes it expects to fail) are not counted, where the tool has the options
  filter=()
  san_help=$(compute-sanitizer --help 2>/dev/null)
  echo "$san_help" | grep -q -- '--kernel-name' && filter+=(--kernel-name kns=rnn_)
  api=()
  echo "$san_help" | grep -q -- '--report-api-errors' && api=(--report-api-errors no)
  filter+=("${api[@]}")
  echo "options: over the op: ${filter[*]} --error-exitcode 9 (caching allocator off); over the targets: --error-exitcode 9; over the control: ${api[*]} --error-exitcode 9" >> "$SAN_LOG"
  t0=$SECONDS
  san_v=ok notes="" n_unsup=0 n_runs=0
  gate() {  # gate SAID: a gating run's verdict into san_v
    n_runs=$((n_runs + 1))
    case "$1" in
      unsupported) n_unsup=$((n_unsup + 1)) ;;
      TIMEOUT) san_v=timeout ;;
      *"(exit 0)") ;;
      *) [ "$san_v" != timeout ] && san_v=failed ;;
    esac
  }
  # 1. memcheck and synccheck over the op (torch, the extension, cuBLAS)
  for tool in $SAN_TOOLS; do
    t1=$SECONDS
    san_run "$tool" "$L_SANITIZER" compute-sanitizer --tool "$tool" "${filter[@]}" --error-exitcode 9 \
      "$PY" scripts/gpu_sanitize.py
    if [ "$SAN_RC" != 0 ] && [ ${#filter[@]} -gt 0 ] && ! echo "$SAN_PART" | grep -q "gpu_sanitize"; then
      # the target never ran: the tool refused an option; once more without them, in
      # what is left of this tool's limit
      left=$((L_SANITIZER - (SECONDS - t1))); [ "$left" -lt 1 ] && left=1
      san_run "$tool (again, without: ${filter[*]})" "$left" compute-sanitizer --tool "$tool" \
        --error-exitcode 9 "$PY" scripts/gpu_sanitize.py
    fi
    notes="$notes $tool: $SAN_SAID;"; gate "$SAN_SAID"
  done
  # 2. racecheck over the torch-free target, per dtype
  if [ -n "$SAN_PID" ]; then wait "$SAN_PID" 2>/dev/null; fi
  { echo "==== targets built (scripts/sanitize_build.py)"; cat "$SCRATCH/san_build.log" 2>/dev/null; } >> "$SAN_LOG"
  for d in $SAN_DTYPES; do
    if [ ! -x "$SAN_DIR/target_$d" ]; then
      notes="$notes racecheck target $d: NOT BUILT;"; san_v=failed; continue
    fi
    san_run "racecheck target $d" "$L_SAN_TARGET" compute-sanitizer --tool racecheck --error-exitcode 9 \
      "$SAN_DIR/target_$d"
    notes="$notes racecheck target $d: $SAN_SAID;"; gate "$SAN_SAID"
  done
  # 3. the control: the backward's cuBLAS GEMMs alone (reported, not gating)
  san_run "racecheck cuBLAS control" "$L_SAN_CONTROL" compute-sanitizer --tool racecheck "${api[@]}" \
    --error-exitcode 9 "$PY" scripts/gpu_sanitize.py --cublas-only
  notes="$notes racecheck cuBLAS control (not gating): $SAN_SAID;"
  # 4. --only sanitizer: the bisection (reported, not gating)
  if [ "$ONLY" = sanitizer ] && [ -x "$SAN_DIR/target_bf16" ]; then
    echo "==== plain run of target_bf16 (the outputs the switches 1, 2, 16 must reproduce)" >> "$SAN_LOG"
    limited "$L_SAN_TARGET" "$SAN_LOG" "$SAN_DIR/target_bf16" --out "$SAN_DIR/plain.bin"
    for b in $SAN_BISECT; do
      exe="$SAN_DIR/target_bf16_b$b"
      if [ ! -x "$exe" ]; then notes="$notes bisect $b: NOT BUILT;"; continue; fi
      san_run "racecheck target bf16 FRNN_BISECT=$b" "$L_SAN_TARGET" compute-sanitizer --tool racecheck \
        --error-exitcode 9 "$exe" --out "$SAN_DIR/b$b.bin"
      same=""
      case "$b" in 1|2|16)
        if [ -f "$SAN_DIR/b$b.bin" ] && [ -f "$SAN_DIR/plain.bin" ]; then
          if cmp -s "$SAN_DIR/plain.bin" "$SAN_DIR/b$b.bin"; then same=", outputs identical"
          else same=", OUTPUTS DIFFER"; fi
        fi ;;
      esac
      notes="$notes bisect $b: $SAN_SAID$same;"
    done
  fi
  limit_s=$((L_SANITIZER * $(echo $SAN_TOOLS | wc -w) + L_SAN_TARGET * $(echo $SAN_DTYPES | wc -w) + L_SAN_CONTROL))
  if [ "$n_unsup" -gt 0 ] && [ "$n_unsup" = "$n_runs" ]; then
    record sanitizer skipped $((SECONDS - t0))s "${limit_s}s" "skipped: sanitizer unsupported here;$notes"
  else
    record sanitizer "$san_v" $((SECONDS - t0))s "${limit_s}s" "${notes# }"
    [ "$san_v" != ok ] && grep -E "^=+ (Invalid|Race|Barrier|Error|ERROR|Program hit|Saved host|Internal|    at )|^==== " "$SAN_LOG" \
      | head -40 | detail "sanitizer: first reports"
  fi
fi

# ---------------------------------------------------------------- bench, floors
RESULTS="$SCRATCH/results"
mkdir -p "$RESULTS"
BF_LOG="$OUT_DIR/bench_floors.log"
gate_perf() {  # may the timing stages run? (prints why not)
  if [ "$build_ready" = 0 ]; then echo "no extension"; return 1; fi
  if [ -z "$ONLY" ] && [ "$FORCE" = 0 ] && [ "${RESULT[tests]:-}" != ok ]; then
    echo "the GPU tests did not pass (--force runs it anyway)"; return 1
  fi
}
if want bench; then
  if why=$(gate_perf); then
    t0=$SECONDS
    echo "==== bench.py --quick" >> "$BF_LOG"
    # --no-flashrnn: its JIT builds (per shape) do not fit this stage's time box
    limited "$L_BENCH" "$BF_LOG" "$PY" benchmarks/bench.py --quick --time-budget $((L_BENCH - 17)) \
      --case-timeout $((L_BENCH - 17)) --no-flashrnn --out "$RESULTS"
    rc=$?
    record bench "$(verdict_of $rc)" $((SECONDS - t0))s "${L_BENCH}s" "results.json/.csv/.md and plots in results.tgz"
    [ "$rc" != 0 ] && tail -n 15 "$BF_LOG" | detail "bench: last lines"
  else skip bench "$why"; fi
fi
if want floors; then
  if why=$(gate_perf); then
    for p in $BG_PIDS; do wait "$p" 2>/dev/null; done; BG_PIDS=""
    t0=$SECONDS
    echo "==== floors.py" >> "$BF_LOG"
    # one limit for both: phases get what the floors leave
    limited "$L_FLOORS" "$BF_LOG" bash -c "'$PY' benchmarks/floors.py --out '$RESULTS'; r1=\$?; \
      echo '==== floors.py --phases'; '$PY' benchmarks/floors.py --phases --out '$RESULTS'; r2=\$?; \
      exit \$(( r1 > r2 ? r1 : r2 ))"
    rc=$?
    record floors "$(verdict_of $rc)" $((SECONDS - t0))s "${L_FLOORS}s" "floors.json, phases.json in results.tgz"
    [ "$rc" != 0 ] && tail -n 15 "$BF_LOG" | detail "floors: last lines"
  else skip floors "$why"; fi
fi
if [ -n "$(ls -A "$RESULTS" 2>/dev/null)" ]; then tar czf "$OUT_DIR/results.tgz" -C "$RESULTS" .; fi

# ---------------------------------------------------------------- summary
write_summary final
echo; echo "== summary ($SUMMARY)"; cat "$SUMMARY"
echo; echo "files: $(cd "$OUT_DIR" && ls | tr '\n' ' ')"
[ -z "$FAILED_AT" ]
