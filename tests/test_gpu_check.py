"""scripts/gpu_check.sh without a GPU: the dry run (stages, limits, worst case), the usage
errors, and the stage logic end to end with a fake Python and a fake compute-sanitizer
(which stage runs after which outcome, what summary.txt says, which files come back).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")
BUDGET_S = 360  # a whole call, build included, in the worst case: 6 minutes

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def run(*args, cwd_script=SCRIPT, env=None, timeout=120):
    return subprocess.run(["bash", cwd_script, *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


# ----------------------------------------------------------------------------- dry run


def test_dry_run_lists_every_stage_within_six_minutes():
    proc = run("--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for stage in ("env", "build", "smoke", "tests", "sanitizer", "bench", "floors"):
        assert re.search(rf"^\s+{stage}\s+\d+ s", out, re.M), (stage, out)
    total = int(re.search(r"worst case: (\d+) s", out).group(1))
    stage_sum = sum(int(s) for s in re.findall(r"^\s+\w+\s+(\d+) s", out, re.M))
    assert stage_sum < total <= BUDGET_S, (stage_sum, total, out)  # kill delays on top
    assert "only if smoke passed" in out and "only if the GPU tests passed" in out


def test_dry_run_of_one_stage_and_prebuilt():
    proc = run("--dry-run", "--only", "smoke", "--prebuilt", ROOT)
    assert proc.returncode == 0, proc.stderr
    stages = re.findall(r"^\s+(\w+)\s+\d+ s", proc.stdout, re.M)
    assert stages == ["env", "build", "smoke"], proc.stdout
    assert "prebuilt" in proc.stdout
    forced = run("--dry-run", "--force").stdout
    assert "only if" not in forced and "--force" in forced


@pytest.mark.parametrize("args", [["--only", "nonsense"], ["--bogus"], ["--prebuilt", "/no/such/dir"]])
def test_bad_usage_exits_2(args):
    proc = run(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.strip()


# ----------------------------------------------------------------------------- fake machine

FAKE_PYTHON = r"""#!/usr/bin/env bash
# a stand-in for python3 on a GPU machine: logs each call, behaves per FAKE_* variables
echo "$*" >> "$FAKE_LOG"
case "$*" in
  *"torch.cuda.is_available"*) echo "python 3.12 | torch fake | CUDA 13.0 | device FakeGPU"
                               if [ "${FAKE_PLUGIN:-yes}" = yes ]; then echo "pytest-timeout: yes (thread method)"
                               else echo "pytest-timeout: NOT installed: ..."; fi
                               if [ "${FAKE_XDIST:-no}" = yes ]; then echo "pytest-xdist: yes (one worker)"
                               else echo "pytest-xdist: NOT installed: ..."; fi; exit 0 ;;
  *"floors.build()"*) exit 0 ;;
  *"source_hash"*)
    if [ "${FAKE_HASH:-ok}" = ok ]; then exit 0; fi
    echo "it was built from csrc/ aaaa, this tree is bbbb"; exit 1 ;;
  *"setup.py build_ext"*)
    echo "ptxas info    : Used 200 registers, 0 bytes spill stores"
    [ "${FAKE_BUILD:-ok}" = ok ] || { echo "forward_kernel.cuh(10): error: boom"; exit 1; }
    touch fused_rnn/_C.cpython-312-x86_64-linux-gnu.so; exit 0 ;;
  *"-m pytest"*test_smoke_gpu*) what=${FAKE_SMOKE:-pass}; test=tests/gpu/test_smoke_gpu.py::test_fwd ;;
  *"-m pytest"*) what=${FAKE_TESTS:-pass}; test=tests/gpu/test_forward_gpu.py::test_case ;;
  *bench.py*) out=${@: -1}; mkdir -p "$out"; echo '{}' > "$out/results.json"; exit 0 ;;
  *floors.py*--phases*) out=${@: -1}; echo '{}' > "$out/phases.json"; exit 0 ;;
  *floors.py*) out=${@: -1}; echo '{}' > "$out/floors.json"; exit 0 ;;
  *gpu_sanitize.py*) exit 0 ;;
  *sanitize_build.py*)  # fake targets: each writes its --out file and says it finished
    out=""; dtypes=""; bisect=""
    while [ $# -gt 0 ]; do case "$1" in --out) out=$2; shift ;; --dtypes) dtypes=$2; shift ;;
      --bisect) bisect=$2; shift ;; esac; shift; done
    [ "${FAKE_SANBUILD:-ok}" = ok ] || { echo "target_bf16: FAILED"; exit 1; }
    mkdir -p "$out"
    for name in $(echo "$dtypes" | tr ',' ' ' | sed 's/[^ ]*/target_&/g') \
                $(echo "$bisect" | tr ',' ' ' | sed 's/[^ ]*/target_bf16_b&/g'); do
      printf '#!/usr/bin/env bash\n[ "$1" = --out ] && echo same > "$2"\necho "sanitize_target: all outputs finite"\n' > "$out/$name"
      chmod +x "$out/$name"; echo "$name: built"
    done; exit 0 ;;
  *) echo "fake python: unexpected call: $*" >&2; exit 99 ;;
esac
printf 'start\t%s\n' "$test" >> "$FUSED_RNN_TEST_TRACE"
case "$what" in
  pass) printf 'end\tpassed\t%s\n' "$test" >> "$FUSED_RNN_TEST_TRACE"; echo "1 passed"; exit 0 ;;
  fail) printf 'end\tfailed\t%s\n' "$test" >> "$FUSED_RNN_TEST_TRACE"
        echo "E   AssertionError: LSTM-L2-T3-bf16: h_n not finite: first at [0, 1, 2] = nan"
        echo "FAILED $test - AssertionError: LSTM-L2-T3-bf16: h_n not finite"; exit 1 ;;
  hang) echo "+++++++ Timeout +++++++"; echo "~~~ Stack of MainThread ~~~"; exit 1 ;;
  crash) echo "Fatal Python error: Aborted"; exit 134 ;;
esac
"""

FAKE_SANITIZER = r"""#!/usr/bin/env bash
echo "compute-sanitizer $*" >> "$FAKE_LOG"
case "$*" in --help) echo "  --kernel-name arg   filter"; echo "  --report-api-errors arg"; exit 0 ;; esac
case "${FAKE_SAN:-clean}" in
  badopt) case "$*" in *--kernel-name*) echo "Unrecognized option: --kernel-name"; exit 1 ;; esac
          echo "gpu_sanitize: fused forward + backward ran"
          echo "========= ERROR SUMMARY: 0 errors"; exit 0 ;;
  clean) echo "gpu_sanitize: fused forward + backward ran"
         echo "========= ERROR SUMMARY: 0 errors"; exit 0 ;;
  unsupported) echo "========= Error: Device not supported"; exit 1 ;;
  fault16) case "${@: -1}" in */target_bf16|*/target_fp16)  # the plain targets, not the bisection
             echo "========= Internal Sanitizer Error: The Sanitizer failed to handle a hardware exception."
             echo "========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)"; exit 1 ;; esac
           [ "${*: -2:1}" = --out ] && "${@: -3}"  # a bisection run: the target itself
           echo "========= ERROR SUMMARY: 0 errors"; exit 0 ;;
  race) echo "gpu_sanitize: fused forward + backward ran"
        echo "========= Race reported between Write access at 0x10 in rnn_forward_kernel"
        echo "========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)"; exit 9 ;;
esac
"""


@pytest.fixture
def fake_tree(tmp_path):
    """A copy of the script in an empty tree, a fake python3 and compute-sanitizer on PATH."""
    tree = tmp_path / "repo"
    (tree / "scripts").mkdir(parents=True)
    (tree / "fused_rnn").mkdir()
    shutil.copy(SCRIPT, tree / "scripts" / "gpu_check.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("python3", FAKE_PYTHON), ("compute-sanitizer", FAKE_SANITIZER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()

    def go(*args, **fake):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_", "TORCH_CUDA"))}
        env.update(PATH=f"{bin_dir}:{env['PATH']}", FAKE_LOG=str(log), PYTHON="python3",
                   OUT=str(tmp_path / "out"), **{f"FAKE_{k.upper()}": v for k, v in fake.items()})
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        log.write_text("")
        proc = run(*args, cwd_script=str(tree / "scripts" / "gpu_check.sh"), env=env)
        summary = (tmp_path / "out" / "summary.txt").read_text()
        return proc, summary, log.read_text(), sorted(os.listdir(tmp_path / "out"))

    go.tree = tree
    go.out = tmp_path / "out"
    return go


def stage(summary, name):
    m = re.search(rf"^{name}\s+(\S+)", summary, re.M)
    return m.group(1) if m else None


def test_everything_passes(fake_tree):
    proc, summary, calls, files = fake_tree()
    assert proc.returncode == 0, summary
    for s in ("build", "smoke", "tests", "sanitizer", "bench", "floors"):
        assert stage(summary, s) == "ok", (s, summary)
    assert files == ["bench_floors.log", "build.log", "prebuilt.tgz", "results.tgz", "sanitizer.log",
                     "smoke.log", "summary.txt", "tests.log"]
    assert len(files) <= 8
    assert "--timeout=15 --timeout-method=thread" in calls  # the per-test limit
    assert " -n 1" not in calls  # no pytest-xdist here: one process per stage
    assert "every stage that ran passed" in summary and "device FakeGPU" in summary
    assert "--kernel-name kns=rnn_ --report-api-errors no" in calls
    assert "still running" not in summary
    with tarfile.open(fake_tree.out / "results.tgz") as t:
        names = t.getnames()
    assert "./results.json" in names  # report.py finds it at the top of the folder
    assert any(n.endswith("floors.json") for n in names) and any(n.endswith("phases.json") for n in names)
    assert "Used 200 registers" in (fake_tree.out / "build.log").read_text()


def test_without_pytest_timeout_the_tests_still_run(fake_tree):
    proc, summary, calls, _ = fake_tree(plugin="no")
    assert proc.returncode == 0, summary
    assert "--timeout" not in calls and "pytest-timeout: NOT installed" in summary


def test_smoke_failure_stops_tests_and_timings_but_not_the_sanitizer(fake_tree):
    proc, summary, calls, _ = fake_tree(smoke="fail")
    assert proc.returncode == 1
    assert stage(summary, "smoke") == "FAILED"
    assert stage(summary, "tests") == "skipped" and "smoke did not pass" in summary
    assert stage(summary, "sanitizer") == "ok"
    assert stage(summary, "bench") == "skipped" and stage(summary, "floors") == "skipped"
    assert "test_forward_gpu" not in calls and "bench.py" not in calls
    # the failing test id and the first lines of its failure are in the summary
    assert "FAILED tests/gpu/test_smoke_gpu.py::test_fwd - AssertionError" in summary
    assert "first at [0, 1, 2] = nan" in summary
    assert "VERDICT: FAILED (first at: smoke)" in summary


def test_a_hung_test_is_named(fake_tree):
    proc, summary, _, _ = fake_tree(smoke="hang")
    assert proc.returncode == 1
    assert stage(summary, "smoke") == "TIMEOUT"
    assert "HUNG (per-test limit 15s): tests/gpu/test_smoke_gpu.py::test_fwd" in summary


def test_a_crashed_test_is_named_as_a_failure(fake_tree):
    proc, summary, _, _ = fake_tree(tests="crash")
    assert proc.returncode == 1
    assert stage(summary, "tests") == "FAILED"
    assert "the process died (exit 134) in: tests/gpu/test_forward_gpu.py::test_case" in summary


def test_failed_tests_stop_the_timings_and_force_runs_them(fake_tree):
    _, summary, calls, _ = fake_tree(tests="fail")
    assert stage(summary, "tests") == "FAILED" and stage(summary, "bench") == "skipped"
    assert "bench.py" not in calls
    proc, summary, calls, _ = fake_tree("--force", smoke="fail", tests="fail")
    assert proc.returncode == 1
    assert "test_forward_gpu.py" in calls and "bench.py" in calls and "floors.py" in calls
    assert stage(summary, "bench") == "ok"


def test_build_failure_stops_everything(fake_tree):
    proc, summary, calls, files = fake_tree(build="fail")
    assert proc.returncode == 1
    assert stage(summary, "build") == "FAILED"
    assert all(stage(summary, s) == "skipped" for s in ("smoke", "tests", "sanitizer", "bench"))
    assert "error: boom" in summary
    assert "prebuilt.tgz" not in files


def test_prebuilt_skips_the_build_only_when_the_source_hash_matches(fake_tree, tmp_path):
    fake_tree()  # a first call leaves prebuilt.tgz
    keep = tmp_path / "kept"
    keep.mkdir()
    shutil.copy(fake_tree.out / "prebuilt.tgz", keep / "prebuilt.tgz")
    for so in (fake_tree.tree / "fused_rnn").glob("_C*.so"):
        so.unlink()
    proc, summary, calls, _ = fake_tree("--prebuilt", str(keep), "--only", "tests")
    assert proc.returncode == 0, summary
    assert "setup.py" not in calls and "source hash matches" in summary
    assert stage(summary, "smoke") is None and stage(summary, "tests") == "ok"
    # built from another csrc/: said so, and rebuilt
    _, summary, calls, _ = fake_tree("--prebuilt", str(keep), "--only", "smoke", hash="mismatch")
    assert "setup.py build_ext" in calls
    assert "this tree is bbbb" in (fake_tree.out / "build.log").read_text()


def test_sanitizer_unsupported_is_skipped_and_a_race_fails(fake_tree):
    proc, summary, _, _ = fake_tree("--only", "sanitizer", san="unsupported")
    assert stage(summary, "sanitizer") == "skipped"
    assert "skipped: sanitizer unsupported here" in summary
    assert proc.returncode == 0
    proc, summary, _, _ = fake_tree("--only", "sanitizer", san="race")
    assert proc.returncode == 1 and stage(summary, "sanitizer") == "FAILED"
    assert "Race reported" in summary and "1 errors" in summary
    # a tool that refuses the filter options runs again without them
    proc, summary, calls, _ = fake_tree("--only", "sanitizer", san="badopt")
    assert proc.returncode == 0 and stage(summary, "sanitizer") == "ok", summary
    assert calls.count("--tool memcheck --error-exitcode 9") == 1


def test_racecheck_runs_per_dtype_over_the_torch_free_target(fake_tree):
    """racecheck over scripts/sanitize_target.cu per dtype (not over the op), memcheck and
    synccheck over the op, the cuBLAS control reported; a fault in the 16-bit targets fails
    the stage and is named; --only sanitizer adds the bisection."""
    proc, summary, calls, _ = fake_tree()
    assert stage(summary, "sanitizer") == "ok", summary
    for d in ("bf16", "fp16", "tf32", "fp32"):
        assert f"racecheck target {d}: 0 errors (exit 0)" in summary
        assert re.search(rf"--tool racecheck --error-exitcode 9 \S+/target_{d}$", calls, re.M), calls
    assert "--tool racecheck --kernel-name" not in calls  # racecheck no longer over the op
    assert "--tool racecheck --report-api-errors no --error-exitcode 9 python3 scripts/gpu_sanitize.py " \
        "--cublas-only" in calls
    assert "cuBLAS control (not gating): 0 errors" in summary and "bisect" not in summary
    proc, summary, calls, _ = fake_tree(san="fault16")
    assert proc.returncode == 1 and stage(summary, "sanitizer") == "FAILED"
    assert "racecheck target bf16: FAULT" in summary and "racecheck target fp16: FAULT" in summary
    assert "racecheck target tf32: 0 errors (exit 0)" in summary
    log = (fake_tree.out / "sanitizer.log").read_text()
    assert "==== version" in log and "options: over the op" in log
    proc, summary, calls, _ = fake_tree("--only", "sanitizer", san="fault16")
    for b in (1, 2, 16):
        assert f"bisect {b}: 0 errors (exit 0), outputs identical;" in summary, summary
    for b in (4, 8):
        assert f"bisect {b}: 0 errors (exit 0);" in summary
    assert "--bisect 1,2,4,8,16" in calls
    # targets that did not build fail the stage, named
    proc, summary, _, _ = fake_tree("--only", "sanitizer", sanbuild="fail")
    assert stage(summary, "sanitizer") == "FAILED" and "racecheck target bf16: NOT BUILT" in summary


def test_no_gpu_is_said_and_nothing_runs(tmp_path):
    if shutil.which("python3") is None:
        pytest.skip("no python3")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON="python3")
    proc = run(env=env, timeout=120)
    assert proc.returncode == 1, proc.stdout
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "nothing was checked" in summary
    assert os.listdir(tmp_path / "out") == ["summary.txt"]


def _import_gpu_sanitize():
    """scripts/gpu_sanitize.py as a module (scripts/ is not a package)."""
    import sys

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import gpu_sanitize
    finally:
        sys.path.pop(0)
    return gpu_sanitize


def test_sanitizer_target_runs_its_problem_on_the_reference():
    """scripts/gpu_sanitize.py's argument lists are the ops' (run here through the public
    ops, reference path on the CPU), and without a GPU it refuses (exit 1), never passes."""
    import sys

    import torch

    import fused_rnn  # noqa: F401  (registers torch.ops.fused_rnn)

    gpu_sanitize = _import_gpu_sanitize()
    named = gpu_sanitize.run(torch.ops.fused_rnn.rnn_forward, torch.ops.fused_rnn.rnn_backward, "cpu")
    L, B, H = gpu_sanitize.L, gpu_sanitize.B, gpu_sanitize.H
    assert named["h_n"].shape == (L, B, H) and named["grad_cx"].shape == (L, B, H)
    assert named["reserve"].numel() > 0 and len([k for k in named if k.startswith("grad_w")]) == 4 * L
    assert all(torch.isfinite(v).all() for v in named.values())
    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gpu_sanitize.py")],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and "no CUDA device" in proc.stdout


def test_sanitizer_target_options_change_its_problem(monkeypatch):
    """--dtype / --hidden / --layers / --dropout set the problem run() builds (for bisecting a
    sanitizer report); bad values are usage errors."""
    import torch

    import fused_rnn  # noqa: F401

    gpu_sanitize = _import_gpu_sanitize()
    for name in ("DTYPE", "H", "L", "P"):  # restored after the test
        monkeypatch.setattr(gpu_sanitize, name, getattr(gpu_sanitize, name))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", torch.backends.cudnn.allow_tf32)
    gpu_sanitize.configure(["--dtype", "fp32", "--hidden", "7", "--layers", "1", "--dropout", "0"])
    assert (gpu_sanitize.DTYPE, gpu_sanitize.H, gpu_sanitize.L, gpu_sanitize.P) == (torch.float32, 7, 1, 0.0)
    assert torch.backends.cudnn.allow_tf32 is False  # fp32: the exact path, not TF32
    named = gpu_sanitize.run(torch.ops.fused_rnn.rnn_forward, torch.ops.fused_rnn.rnn_backward, "cpu")
    assert named["h_n"].shape == (1, gpu_sanitize.B, 7) and named["output"].dtype == torch.float32
    assert len([k for k in named if k.startswith("grad_w")]) == 4
    gpu_sanitize.configure(["--dtype", "tf32"])
    assert gpu_sanitize.DTYPE == torch.float32 and torch.backends.cudnn.allow_tf32 is True
    for bad in (["--dtype", "fp64"], ["--hidden", "0"], ["--dropout", "1"]):
        with pytest.raises(SystemExit) as e:
            gpu_sanitize.configure(bad)
        assert e.value.code == 2, bad


def test_the_cublas_control_makes_the_backward_grads_calls_on_the_problem_shapes():
    """gpu_sanitize.py --cublas-only: csrc/torch/backward_grads.h's GEMMs on random tensors,
    with the shapes of the gradients the real op returns (run here on the CPU)."""
    import torch

    import fused_rnn  # noqa: F401

    gpu_sanitize = _import_gpu_sanitize()
    named = gpu_sanitize.run(torch.ops.fused_rnn.rnn_forward, torch.ops.fused_rnn.rnn_backward, "cpu")
    control = gpu_sanitize.cublas_control("cpu")
    assert control["grad_input"].shape == (gpu_sanitize.T, gpu_sanitize.B, gpu_sanitize.I)
    weights = [named[f"grad_w{i}"] for i in range(4 * gpu_sanitize.L)]
    mine = [control[f"grad_{n}_l{l}"] for l in range(gpu_sanitize.L)
            for n in ("w_ih", "w_hh", "b_ih", "b_hh")]
    assert [t.shape for t in mine] == [t.shape for t in weights]
    assert all(t.dtype == gpu_sanitize.DTYPE and torch.isfinite(t.float()).all() for t in mine)
    src = open(os.path.join(ROOT, "scripts", "gpu_sanitize.py")).read()
    assert "load_extension" not in src.split("def cublas_control")[1].split("def configure")[0]


def test_a_crashing_test_ends_only_itself_where_xdist_is_installed(fake_tree):
    """With pytest-xdist, each pytest stage runs in one worker that is restarted after a
    crash, so a segfault in one test leaves the others to run and be reported."""
    proc, summary, calls, _ = fake_tree(xdist="yes")
    assert proc.returncode == 0, summary
    pytest_calls = [c for c in calls.splitlines() if "-m pytest" in c]
    assert len(pytest_calls) == 2, calls
    for c in pytest_calls:
        assert "-n 1 --max-worker-restart=20" in c, c
