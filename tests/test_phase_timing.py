"""CI without a GPU for the per-phase timing build option (csrc/kernels/phase_timing.h,
FRNN_PHASE_TIMING; benchmarks/floors.py --phases reads the records on a GPU):

* the forward and backward emulators (csrc/emu) built WITH -DFRNN_PHASE_TIMING=1 under
  ASan + UBSan (and again under TSan: the recorded CTAs add a barrier) run one
  multi-layer bf16 LSTM each with a phase buffer: the records are
  exactly those of the recorded CTAs (one per layer-direction), on exactly their active
  wave steps, every phase of an active step took time, the stamps are ordered, the
  emulated clock rate comes out of the stamps, nothing is written past the buffer's
  capacity (also with a buffer too short for the run), and the kernel's results still
  match the reference (the instrumentation changes nothing);
* production kernels carry no recorder (their PTX reads no clock), the instrumented
  bf16 kernels (and the tightest variant, the backward FP32 FMA) compile for sm_90a
  without spills;
* the C++ layout helpers and the Python mirror in benchmarks/floors.py agree.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys

import pytest
import torch
from compile_helpers import (CSRC, NVCC, ROOT, build_config, build_emulator, nvcc_compile,
                             run_host_program, spill_bytes)
from test_compile_backward import Case as BwdCase
from test_compile_backward import _run_and_check, grads_op  # noqa: F401 (grads_op: fixture)
from test_compile_kernels import EmuCase, _check_emu, _emu_run
from test_compile_kernels import test_binding_syntax as _binding_syntax_check

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import floors  # noqa: E402

FILL = 0x5A5A5A5A5A5A5A5A  # csrc/emu/emu_launch.h PhaseBuffer::kFill: "never written"
GUARD = 64                 # PhaseBuffer::kGuard elements behind the capacity
NONE = -1

#      mode    L  bidir bias I  H   B   T  dtype       tf32   rsv   lens   p    sms
FWD_CASE = EmuCase("LSTM", 3, False, True, 7, 24, 70, 5, "bfloat16", False, True, False, 0.3, 6)
# small, for the buffer that is too short
FWD_SHORT = EmuCase("LSTM", 2, False, True, 4, 8, 3, 3, "bfloat16", False, False, False, 0.0, 2)
#      mode    L  bidir  bias  I  H   B    T  dtype       tf32   lens   p    sms
BWD_CASE = BwdCase("LSTM", 3, False, True, 7, 8, 140, 4, "bfloat16", False, False, 0.3, 9)


def _build_pair(tmp_path_factory, sanitize):
    """(forward, backward) emulators with the recorder compiled in, built side by side."""
    def build(main):
        exe, stderr = build_emulator(tmp_path_factory, f"{main}_emu_main.cpp", f"{main}_emu_phases",
                                     sanitize, defines=("FRNN_PHASE_TIMING=1",))
        assert "warning" not in stderr, stderr[-6000:]
        return exe

    tmp_path_factory.getbasetemp()  # create it once, before two threads would race to
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return tuple(pool.map(build, ("forward", "backward")))


@pytest.fixture(scope="module")
def emulators(tmp_path_factory):
    return _build_pair(tmp_path_factory, "address,undefined")


@pytest.fixture(scope="module")
def emulators_tsan(tmp_path_factory):
    return _build_pair(tmp_path_factory, "thread")


def _read(path):
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.int64).tolist()


def _plan_numbers(plan):
    """(CTAs per layer-direction, batch slices, wave steps) from a planner's reason."""
    per_ld = int(re.search(r"(\d+) per layer-direction", plan).group(1))
    slices = re.search(r"x (\d+) batch slices", plan)
    steps = int(re.search(r"(\d+) (?:grid|wave) steps", plan).group(1))
    return per_ld, int(slices.group(1)) if slices else 1, steps


def _check_records(buf, cap, kind, L, T, plan, sync="grid"):
    """Everything a complete run's buffer must hold (D = 1). `sync`: the kernel's
    synchronisation policy."""
    per_ld, slices, steps = _plan_numbers(plan)
    S = floors.phase_wave_steps(kind, L, 1, T)
    assert S == steps
    assert cap == floors.phase_buffer_elems(kind, L, 1, T)
    assert buf[cap:] == [FILL] * GUARD, "written past the buffer's capacity"
    assert FILL not in buf[:cap], "the buffer is sized for the run: every element is written"
    stride = 8 + 4 * S
    assert buf[:8] == [floors.PHASE_MAGIC, floors.PHASE_KINDS.index(kind), L, S, T, L, 1, stride]
    g_lo, g_hi = min(buf[8 + r * stride + 4] for r in range(L)), \
        max(buf[8 + r * stride + 5] for r in range(L))
    for ld in range(L):
        rec = buf[8 + ld * stride:8 + (ld + 1) * stride]
        block, rec_ld, c0, c1, g0, g1, loop0, n = rec[:8]
        assert (block, rec_ld, n) == (ld * per_ld * slices, ld, S), rec[:8]
        assert c0 <= loop0 <= c1 and g0 < g1 and g_lo <= g0 and g1 <= g_hi, rec[:8]
        # the emulated SM clock counts 2 per ns of the emulated global timer
        assert (c1 - c0) / (g1 - g0) == pytest.approx(2.0, rel=0.05)
        # the wavefront: forward layer l runs t = s - l; backward k = s - (L-1-l) = 0..T
        first = ld if kind == "forward" else L - 1 - ld
        active = set(range(first, first + (T if kind == "forward" else T + 1)))
        total = 0
        for s in range(S):
            slots = rec[8 + 4 * s:12 + 4 * s]
            gather, gemm, epi, barrier = slots
            if sync == "grid":  # every CTA in every barrier but after the last step
                assert (barrier >= 0) == (s < S - 1), (ld, s, slots)
            else:  # flags: a wait before and a publish after each of its own steps only
                assert (barrier > 0) == (s in active), (ld, s, slots)
            if s in active:  # every phase of an active step took time (> 0)
                assert gemm > 0 and epi > 0, (ld, s, slots)
                assert gather > 0 if kind == "forward" else gather == NONE, (ld, s, slots)
            else:
                assert [gather, gemm, epi] == [NONE] * 3, (ld, s, slots)
            total += sum(x for x in slots if x >= 0)
        # the steps' phases partition the loop's time (minus the last step's tail)
        assert 0 < total <= c1 - loop0
        assert len([s for s in range(S) if rec[8 + 4 * s + 1] >= 0]) == len(active)
    res = floors.analyze_phase_buffer(buf[:cap])
    assert res["records"] == L and res["incomplete"] == 0
    assert res["active_steps"] == [T if kind == "forward" else T + 1] * L
    assert res["clock_ghz"] == pytest.approx(2.0, rel=0.05)
    assert (res["phases_us"]["gather"] is None) == (kind == "backward")
    return res


def _forward(exe, tmp_path, sync):
    case = FWD_CASE
    cap = floors.phase_buffer_elems("forward", case.L, 1, case.T)
    phase = tmp_path / "phase.bin"
    out = _emu_run(exe, case, tmp_path, extra_args=(cap, phase), sync=sync)
    _check_emu(case, out)  # the results are the reference's, with the recorder on
    assert "batch tile 64" in out["plan"]  # 70 rows: two tiles summed per step
    buf = _read(phase)
    assert len(buf) == cap + GUARD
    _check_records(buf, cap, "forward", case.L, case.T, out["plan"], sync)


def _backward(exe, grads_op, tmp_path, sync):  # noqa: F811
    case = BWD_CASE
    cap = floors.phase_buffer_elems("backward", case.L, 1, case.T)
    phase = tmp_path / "phase.bin"
    plan = _run_and_check(exe, grads_op, case, tmp_path, extra_args=(cap, phase), sync=sync)
    # 3 batch slices of 48 rows (2 passes of 32 + 16): only batch slice 0 records
    assert "x 3 batch slices of 48 rows" in plan and "2 batch tiles" in plan, plan
    buf = _read(phase)
    assert len(buf) == cap + GUARD
    _check_records(buf, cap, "backward", case.L, case.T, plan, sync)


@pytest.mark.parametrize("sync", ["flags", "grid"])
def test_forward_records_phases_and_changes_nothing(emulators, tmp_path, sync):
    _forward(emulators[0], tmp_path, sync)


@pytest.mark.parametrize("sync", ["flags", "grid"])
def test_backward_records_phases_and_changes_nothing(emulators, grads_op, tmp_path, sync):  # noqa: F811
    _backward(emulators[1], grads_op, tmp_path, sync)


# The recorded CTAs synchronise differently (one more __syncthreads after their last
# tile / pass): TSan sees a barrier the instrumentation dropped or misplaced.
@pytest.mark.parametrize("sync", ["flags", "grid"])
def test_forward_recorder_adds_no_race(emulators_tsan, tmp_path, sync):
    _forward(emulators_tsan[0], tmp_path, sync)


@pytest.mark.parametrize("sync", ["flags", "grid"])
def test_backward_recorder_adds_no_race(emulators_tsan, grads_op, tmp_path, sync):  # noqa: F811
    _backward(emulators_tsan[1], grads_op, tmp_path, sync)


def test_short_buffer_is_never_overrun(emulators, tmp_path):
    """A buffer too short for the run: the kernel fills exactly its capacity (record 0
    whole, record 1's first elements) and writes nothing beyond."""
    case = FWD_SHORT
    S = floors.phase_wave_steps("forward", case.L, 1, case.T)
    cap = 8 + (8 + 4 * S) + 5
    assert cap < floors.phase_buffer_elems("forward", case.L, 1, case.T)
    phase = tmp_path / "phase.bin"
    out = _emu_run(emulators[0], case, tmp_path, extra_args=(cap, phase))
    _check_emu(case, out)
    buf = _read(phase)
    assert buf[cap:] == [FILL] * GUARD, "written past the buffer's capacity"
    assert FILL not in buf[:cap]
    res = floors.analyze_phase_buffer(buf[:cap])
    assert res["records"] == 1 and res["incomplete"] == 1
    assert res["active_steps"] == [case.T]


# --------------------------------------------------------------- nvcc: production vs instrumented


def _ptx(source, tmp_path, defines=()):
    out = tmp_path / (os.path.basename(source) + ".ptx")
    cmd = [NVCC, "-O3", "--use_fast_math", "--expt-relaxed-constexpr", *[f"-D{d}" for d in defines],
           "-gencode=arch=compute_90a,code=sm_90a", "-ptx", f"-I{CSRC}", source, "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out.read_text()


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("name", ["forward_bf16.cu", "backward_bf16.cu"])
def test_production_kernels_read_no_clock(name, tmp_path):
    """Without the flag the recorder compiles to nothing (no clock or timer read), with it
    it is there. (The byte-identical SASS without the flag is in csrc/kernels/README.md.)"""
    src = os.path.join(CSRC, "kernels", name)
    plain = _ptx(src, tmp_path)
    assert "%clock64" not in plain and "%globaltimer" not in plain
    timed = _ptx(src, tmp_path, defines=("FRNN_PHASE_TIMING=1",))
    assert "%clock64" in timed and "%globaltimer" in timed


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
def test_instrumented_kernels_compile_without_spills(tmp_path, monkeypatch):
    """The flag as fused_rnn/_build.py adds it (FUSED_RNN_PHASE_TIMING=1, as the GPU check
    builds every kernel): the bf16 kernels that the phase run measures, the forward's
    other tensor-core variants (their weights take 104-112 registers), and the backward
    FP32 FMA kernel (the most registers), for sm_90a: no spill, no stack frame."""
    monkeypatch.setenv("FUSED_RNN_PHASE_TIMING", "1")
    assert "-DFRNN_PHASE_TIMING=1" in build_config().nvcc_flags(["9.0a"])
    names = ["forward_bf16.cu", "forward_f16.cu", "forward_tf32.cu", "backward_bf16.cu",
             "backward_f32.cu"]

    def compile_one(name):
        return nvcc_compile(os.path.join(CSRC, "kernels", name), ["9.0a"], tmp_path / f"{name}.o")

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(compile_one, names))
    for name, (rc, log) in zip(names, results):
        assert rc == 0, log[-6000:]
        # 3 cells x 2 synchronisation policies (16-bit forward: and the recurrence in a cluster)
        n = 9 if name in ("forward_bf16.cu", "forward_f16.cu") else 6
        assert len(re.findall(r"Compiling entry function", log)) == n, log
        assert not any(spill_bytes(log)), f"spills in instrumented {name}:\n{log}"
        assert not any(int(n) for n in re.findall(r"(\d+) bytes stack frame", log)), log
        print(name, re.findall(r"Used (\d+) registers", log))


def test_binding_compiles_with_the_flag(monkeypatch):
    """The binding's phase-buffer hook (csrc/torch/phase_buffer.h) as an instrumented build
    compiles it: forward_op.cpp instantiates it, with the flag _build.py adds. (Without
    the flag: test_compile_kernels.py's own syntax check.)"""
    monkeypatch.setenv("FUSED_RNN_PHASE_TIMING", "1")
    assert "-DFRNN_PHASE_TIMING=1" in build_config().cxx_flags()
    _binding_syntax_check(os.path.join(CSRC, "torch", "forward_op.cpp"))


# --------------------------------------------------------------- the layout, C++ vs Python

_LAYOUT_PROGRAM = r"""
#define FRNN_PHASE_TIMING 1  // as the binding sees the header: helpers only, g++-safe
#include "kernels/phase_timing.h"
#include <cstdio>
using namespace fused_rnn;
int main() {
  printf("{\"magic\": %lld, \"sizes\": [", (long long)kPhaseMagic);
  const int Ls[] = {1, 2, 4, 16};
  const long long Ts[] = {1, 7, 512, 70000};
  bool first = true;
  for (int kind = 0; kind < 2; ++kind) for (int L : Ls) for (int D = 1; D <= 2; ++D)
  for (long long T : Ts) {
    printf("%s[%d, %d, %d, %lld, %lld, %lld]", first ? "" : ", ", kind, L, D, T,
           (long long)phase_wave_steps(kind, L, D, T), (long long)phase_buffer_elems(kind, L, D, T));
    first = false;
  }
  printf("]}\n");
  return 0;
}
"""


def test_layout_helpers_match_the_python_mirror(tmp_path_factory):
    res = run_host_program(tmp_path_factory, "phase_layout", _LAYOUT_PROGRAM)
    assert res["magic"] == floors.PHASE_MAGIC
    for kind, L, D, T, steps, elems in res["sizes"]:
        name = floors.PHASE_KINDS[kind]
        assert floors.phase_wave_steps(name, L, D, T) == steps
        assert floors.phase_buffer_elems(name, L, D, T) == elems
