"""CI without a GPU: the CUDA sources compile, use no spills, and the host-side
pieces (planner, gate math) are right.

* every ``csrc/kernels/*.cu`` is compiled with nvcc (``-c``, ``-Xptxas -v``)
  for sm_80 and sm_90a with the extension's own flags (fused_rnn/_build.py);
  a compile error or any register spill fails the test;
* every binding source ``csrc/torch/*.cpp`` is syntax-checked with g++ against
  the installed torch's headers (the CPU wheel ships the ATen/c10 CUDA
  headers; cuBLAS headers are not needed: the binding never includes them);
* the planner (forward_plan.h) and the gate math (gate_math.h) are built with
  g++ into a small host program and checked against expectations.

Skips only what the machine lacks (nvcc / g++ / headers).
"""

from __future__ import annotations

import glob
import math
import os
import re
import subprocess
import sys
import sysconfig

import pytest
from compile_helpers import (ARCHS, CSRC, CXX, NVCC, ROOT, TensorReader, build_config,
                             build_emulator, nvcc_compile, random_stack, rel_err,
                             run_host_program, spill_bytes, write_tensors)

# (backward_*.cu: tests/test_compile_backward.py, both archs per nvcc call)
KERNEL_SOURCES = sorted(s for s in glob.glob(os.path.join(CSRC, "kernels", "*.cu"))
                        if not os.path.basename(s).startswith("backward_"))
BINDING_SOURCES = sorted(glob.glob(os.path.join(CSRC, "torch", "*.cpp")))


def _cuda_include_dir():
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if NVCC is not None:  # nvcc may be a wrapper script outside the toolkit
        candidates.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(NVCC))))
    for root in candidates:
        if root and os.path.exists(os.path.join(root, "include", "cuda_runtime_api.h")):
            return os.path.join(root, "include")
    return None


# --------------------------------------------------------------- nvcc per file/arch


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", KERNEL_SOURCES, ids=os.path.basename)
def test_kernel_compiles_without_spills(source, arch, tmp_path):
    returncode, log = nvcc_compile(source, [arch], tmp_path / "out.o")
    assert returncode == 0, f"nvcc failed for {os.path.basename(source)} sm_{arch}:\n{log}"
    spills = spill_bytes(log)
    assert not any(spills), f"register spills in {os.path.basename(source)} sm_{arch}:\n{log}"
    # the kernel files must actually contain kernels (instantiations not lost):
    # 3 cells x 2 synchronisation policies (grid.sync, flags), and in 16 bits the
    # recurrence in a cluster (kCluster) as a third
    if os.path.basename(source).startswith("forward_") and "dispatch" not in source:
        entries = re.findall(r"Compiling entry function '(\w+)'", log)
        sixteen = os.path.basename(source) in ("forward_bf16.cu", "forward_f16.cu")
        assert len(entries) == (9 if sixteen else 6), log
        assert sum("SyncPolicyE1" in e for e in entries) == 3, entries  # kGrid
        assert sum("SyncPolicyE2" in e for e in entries) == 3, entries  # kFlags
        assert sum("SyncPolicyE4" in e for e in entries) == (3 if sixteen else 0), entries


# --------------------------------------------------------------- binding syntax


def _torch_include_paths():
    try:
        from torch.utils.cpp_extension import include_paths
    except Exception:  # noqa: BLE001 - no torch, nothing to check against
        return None
    return include_paths()


@pytest.mark.skipif(CXX is None, reason="no host C++ compiler")
@pytest.mark.parametrize("source", BINDING_SOURCES, ids=os.path.basename)
def test_binding_syntax(source):
    torch_inc = _torch_include_paths()
    cuda_inc = _cuda_include_dir()
    py_inc = sysconfig.get_paths().get("include")
    if torch_inc is None:
        pytest.skip("torch not importable")
    if cuda_inc is None:
        pytest.skip("no CUDA include directory (cuda_runtime_api.h)")
    if not os.path.exists(os.path.join(torch_inc[0], "c10", "cuda", "CUDAGuard.h")):
        pytest.skip("installed torch ships no c10/cuda headers")
    if not py_inc or not os.path.exists(os.path.join(py_inc, "Python.h")):
        pytest.skip("no Python.h")
    _syntax_check(source, torch_inc, py_inc, cuda_inc)


def _syntax_check(source, torch_inc, py_inc, cuda_inc):
    cfg = build_config()
    cmd = [CXX, *cfg.cxx_flags(), "-fsyntax-only", "-w",
           # the CPU wheel lacks c10/cuda/impl/cuda_cmake_macros.h (export macros only)
           "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
           "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
           *[f"-I{p}" for p in torch_inc], f"-I{py_inc}", f"-I{cuda_inc}",
           *[f"-I{p}" for p in cfg.include_dirs(ROOT)], source]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"g++ -fsyntax-only failed for {source}:\n{proc.stderr[-6000:]}"


@pytest.mark.skipif(CXX is None, reason="no host C++ compiler")
def test_binding_projects_input_with_this_torch(tmp_path):
    """The binding finds at::mm(a, b, out_dtype) (torch >= 2.8), so 16-bit stacks run
    layer 0's input projection as one GEMM before the launch; without it (older torch)
    the kernel keeps it. The detection must agree with the installed torch's version."""
    torch = pytest.importorskip("torch")
    torch_inc, cuda_inc = _torch_include_paths(), _cuda_include_dir()
    py_inc = sysconfig.get_paths().get("include")
    if torch_inc is None or cuda_inc is None or not py_inc or \
            not os.path.exists(os.path.join(torch_inc[0], "c10", "cuda", "CUDAGuard.h")):
        pytest.skip("no torch / CUDA / Python headers to compile against")
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    expected = (major, minor) >= (2, 8)
    src = tmp_path / "detect.cpp"
    src.write_text('#include "torch/problem.h"\n'
                   f"static_assert(fused_rnn::binding::can_project_input() == "
                   f"{'true' if expected else 'false'}, \"mm(..., out_dtype) detection\");\n")
    _syntax_check(str(src), torch_inc, py_inc, cuda_inc)


# --------------------------------------------------------------- host unit tests

_HOST_PROGRAM = r"""
#include "kernels/forward_plan.h"
#include "kernels/gate_math.h"
#include "kernels/philox.cuh"
#include <cstdio>
using namespace fused_rnn;

static int occ(const void* ctx, int64_t smem) {
  return estimate_occupancy(*static_cast<const DeviceLimits*>(ctx), smem);
}

static DeviceLimits h100() {
  DeviceLimits d;
  d.sm_count = 132; d.smem_optin_per_block = 232448; d.smem_per_sm = 233472;
  d.cc_major = 9; d.cc_minor = 0;
  return d;
}

static ForwardProblem prob(Mode m, int L, bool bidir, int I, int H, int B, int T, DType dt,
                           bool tf32 = true, int proj = 0, bool project = false,
                           SyncPolicy sync = SyncPolicy::kAuto) {
  ForwardProblem p;
  p.mode = m; p.num_layers = L; p.bidirectional = bidir; p.input_size = I; p.hidden_size = H;
  p.batch = B; p.seq_len = T; p.dtype = dt; p.allow_tf32 = tf32; p.proj_size = proj;
  p.can_project_input = project; p.sync = sync;
  return p;
}

static void print_plan(const char* name, const ForwardProblem& p, DeviceLimits d) {
  PlanResult r = plan_forward(p, d, &occ, &d);
  printf("\"%s\": {\"ok\": %s, \"reason\": \"%s\", \"grid\": %d, \"units\": %d, \"tile\": %d, "
         "\"smem\": %lld, \"kx_pad\": %d, \"resident\": %s, \"reg_tiles\": %d, "
         "\"w_tiles\": %lld},\n", name, r.ok ? "true" : "false",
         r.reason.c_str(), r.cfg.grid, r.cfg.units_per_cta, r.cfg.batch_tile,
         (long long)r.cfg.smem_bytes, r.cfg.kx_pad, r.cfg.state_resident ? "true" : "false",
         r.cfg.reg_tiles, (long long)r.cfg.w_tiles);
}

// The workspace of a plan: step counters for flags only (one int32 per CTA),
// R ring slots, the fp32 state only when it is not resident.
static bool ws_ok(const ForwardProblem& p, const ForwardConfig& c) {
  const WorkspaceLayout w = forward_workspace(p, c);
  const int64_t es = dtype_size(p.dtype), BH = p.batch * p.hidden_size;
  return (w.flags >= 0) == (c.sync == SyncPolicy::kFlags)
      && w.flags_bytes == (c.sync == SyncPolicy::kFlags ? 4 * c.grid : 0)
      && (w.state_h >= 0) == !c.state_resident
      && (w.state_c >= 0) == (!c.state_resident && p.mode == Mode::kLSTM)
      && (w.xring >= 0 ? w.state_h < 0 || w.state_h - w.xring >= (p.num_layers - 1) * c.ring * BH * es
                       : true)
      && w.hring >= 0 && w.total >= p.layer_dirs() * c.ring * BH * es;
}

// The tensor-core paths' weight tiles: every 16 x 16 tile of the CTA's rows
// belongs to one work item, in registers (at most reg_tiles of each warp's
// first item) or in shared memory at consecutive offsets, w_tiles in all.
static bool frag_ok(const ForwardConfig& c) {
  if (c.reg_tiles == 0) return c.w_tiles == 0 && c.m_group == 1;
  if (c.m_group < 1 || c.m_group > 2 || (c.m_pad / 16) % c.m_group != 0) return false;
  const int items = frag_items(c), splits = c.x_splits + c.h_splits;
  int64_t tiles = 0, reg = 0;
  for (int it = 0; it < items; ++it) {
    const int n = item_tiles(c, it), r = item_reg_tiles(c, it);
    if (n != split_tiles(c, it % splits) * c.m_group) return false;
    if (n < 1 || n > c.k_chunk * c.m_group || r < 0 || r > c.reg_tiles || r > n) return false;
    if (c.m_group == 2 && r % 2 != 0) return false;  // register tiles end at a K tile
    if (it >= 8 && r != 0) return false;
    if (frag_tile_offset(c, it) != tiles - reg) return false;
    tiles += n;
    reg += r;
  }
  return tiles == (int64_t)(c.m_pad / 16) * ((c.kx_pad + c.kh_pad) / 16)
      && c.w_tiles == tiles - reg && frag_tile_offset(c, items) == c.w_tiles;
}

// Invariants of every accepted plan over a sweep of problems.
static int sweep() {
  int bad = 0, accepted = 0;
  const Mode modes[] = {Mode::kLSTM, Mode::kGRU, Mode::kRnnTanh};
  const DType dts[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
  const int Hs[] = {1, 7, 16, 37, 100, 256, 512, 1024};
  const int Is[] = {1, 13, 64, 512};
  const int Bs[] = {1, 17, 64, 512};
  const int Ls[] = {1, 2, 4};
  DeviceLimits d = h100();
  for (Mode m : modes) for (DType dt : dts) for (int H : Hs) for (int I : Is)
  for (int B : Bs) for (int L : Ls) for (int bi = 0; bi < 2; ++bi) for (int pj = 0; pj < 2; ++pj) {
    const SyncPolicy req = (H + B + L) % 2 ? SyncPolicy::kGrid
                         : (H + I) % 3 == 0 ? SyncPolicy::kCluster : SyncPolicy::kAuto;
    const bool tf32 = (H + I + L) % 3 != 0;  // float32: TF32 tensor cores or exact FMA
    ForwardProblem p = prob(m, L, bi, I, H, B, 3, dt, tf32, 0, pj != 0, req);
    PlanResult r = plan_forward(p, d, &occ, &d);
    if (!r.ok) continue;
    ++accepted;
    const ForwardConfig& c = r.cfg;
    const int G = p.gates();
    const int ktx = c.kx_pad / 16, kth = c.kh_pad / 16;
    bool ok = c.grid == p.layer_dirs() * c.ctas_per_dir
      && c.grid <= d.sm_count * c.blocks_per_sm
      && (int64_t)c.ctas_per_dir * c.units_per_cta >= H
      && (int64_t)(c.ctas_per_dir - 1) * c.units_per_cta < H
      && c.m_pad % 16 == 0 && c.m_pad >= G * c.units_per_cta && c.m_pad < G * c.units_per_cta + 16
      // batch tiles of 8 columns (mma.sync) or 16 (FMA)
      && c.batch_tile % (c.reg_tiles > 0 ? 8 : 16) == 0 && c.batch_tile >= 8 && c.batch_tile <= 64
      && (c.reg_tiles > 0 || c.batch_tile >= 16)
      && c.reg_tiles == register_tiles(dt, c.use_tf32) && frag_ok(c)
      && c.kx_pad >= p.max_layer_input() && c.kx_pad % 16 == 0
      && c.kh_pad >= H && c.kh_pad % 16 == 0
      && (c.ld * c.elem_bytes) % 16 == 0 && ((c.ld * c.elem_bytes) / 16) % 2 == 1
      && c.x_splits * c.k_chunk >= ktx && (c.x_splits - 1) * c.k_chunk < ktx
      && c.h_splits * c.k_chunk >= kth && (c.h_splits - 1) * c.k_chunk < kth
      && c.smem_bytes == smem_layout(c).total && c.smem_bytes <= d.smem_optin_per_block
      && c.use_tf32 == (dt == DType::kFloat32 && tf32)
      // synchronisation: the request, else flags; rings of 2 / 4
      && c.sync == (req == SyncPolicy::kGrid ? SyncPolicy::kGrid : SyncPolicy::kFlags)
      && c.ring == (c.sync == SyncPolicy::kGrid ? 2 : 4)
      // layer 0's projection outside: 16-bit only, when the caller can
      && c.x_proj == (pj != 0 && dt != DType::kFloat32)
      && (c.x_splits == 0) == (c.kx_pad == 0)
      // the state: all B rows resident, or one tile staged (only when B > the tile)
      && (c.state_resident ? c.state_rows == B : (c.state_rows == c.batch_tile && B > c.batch_tile))
      // the recurrence in clusters: asked for, 16-bit, one batch tile, U a power of two
      // >= 8, at most 16 CTAs per layer-direction, flags (not lean)
      && (!c.cluster_rec || (req == SyncPolicy::kCluster && dt != DType::kFloat32
                             && c.batch_tile >= B && c.state_resident && !c.lean_sync
                             && c.units_per_cta >= 8
                             && (c.units_per_cta & (c.units_per_cta - 1)) == 0
                             && c.ctas_per_dir >= 2 && c.ctas_per_dir <= 16))
      && (c.cluster_rec || req != SyncPolicy::kCluster
          || r.reason.find("no cluster recurrence (requested: ") != std::string::npos)
      && ws_ok(p, c);
    if (!ok) {
      ++bad;
      fprintf(stderr, "bad plan: %s\n", r.reason.c_str());
    }
  }
  printf("\"sweep\": {\"accepted\": %d, \"bad\": %d},\n", accepted, bad);
  return bad;
}

int main() {
  printf("{\n");
  // gate math
  const float xs[] = {-100.f, -20.f, -9.5f, -3.f, -0.5f, -1e-3f, 0.f, 1e-6f, 0.3f, 2.f, 8.9f, 50.f};
  printf("\"sigmoid\": [");
  for (float x : xs) printf("[%.9g, %.9g],", x, sigmoid_f(x));
  printf("[0, 0.5]],\n\"tanh\": [");
  for (float x : xs) printf("[%.9g, %.9g],", x, tanh_f(x));
  printf("[0, 0]],\n");
  {
    const float pre[4] = {0.5f, -1.0f, 0.25f, 2.0f};
    LstmOut o = lstm_cell(pre, 0.75f);
    printf("\"lstm\": [%.9g, %.9g, %.9g, %.9g, %.9g, %.9g],\n", o.i, o.f, o.g, o.o, o.c, o.h);
    const float gx[3] = {0.1f, -0.2f, 0.3f}, gh[3] = {0.4f, 0.5f, -0.6f};
    GruOut g = gru_cell(gx, gh, -0.25f);
    printf("\"gru\": [%.9g, %.9g, %.9g, %.9g, %.9g],\n", g.r, g.z, g.n, g.hn, g.h);
    printf("\"rnn\": [%.9g, %.9g, %.9g],\n", rnn_cell(0.7f, false), rnn_cell(-0.7f, true),
           rnn_cell(0.7f, true));
  }
  // planner on an H100's numbers
  DeviceLimits d = h100();
  print_plan("lstm_bf16_L4_H512", prob(Mode::kLSTM, 4, false, 512, 512, 32, 512, DType::kBFloat16), d);
  print_plan("gru_bf16_L4_H512", prob(Mode::kGRU, 4, false, 512, 512, 32, 512, DType::kBFloat16), d);
  print_plan("lstm_tf32_L2_H512", prob(Mode::kLSTM, 2, false, 512, 512, 32, 512, DType::kFloat32), d);
  print_plan("lstm_tf32_L4_H256", prob(Mode::kLSTM, 4, false, 256, 256, 512, 512, DType::kFloat32), d);
  print_plan("lstm_tf32_L4_H512", prob(Mode::kLSTM, 4, false, 512, 512, 32, 512, DType::kFloat32), d);
  // the shapes that only fit with weights in registers (as the binding asks: projection on)
  print_plan("lstm_bf16_L2_H1024", prob(Mode::kLSTM, 2, false, 1024, 1024, 32, 512,
                                        DType::kBFloat16, true, 0, true), d);
  print_plan("lstm_bf16_bidir_L2_H512", prob(Mode::kLSTM, 2, true, 512, 512, 32, 512,
                                             DType::kBFloat16, true, 0, true), d);
  print_plan("lstm_fp32_L4_H512", prob(Mode::kLSTM, 4, false, 512, 512, 32, 512, DType::kFloat32,
                                       false), d);
  print_plan("lstm_tf32_L4_H1024", prob(Mode::kLSTM, 4, false, 1024, 1024, 8, 512,
                                        DType::kFloat32), d);
  print_plan("lstm_bf16_L1_H1024", prob(Mode::kLSTM, 1, false, 1024, 1024, 8, 64, DType::kBFloat16), d);
  print_plan("lstm_bf16_L1_H1024_proj", prob(Mode::kLSTM, 1, false, 1024, 1024, 8, 64,
                                             DType::kBFloat16, true, 0, true), d);
  print_plan("lstm_bf16_L4_H512_proj", prob(Mode::kLSTM, 4, false, 512, 512, 32, 512,
                                            DType::kBFloat16, true, 0, true), d);
  print_plan("lstm_bf16_L4_H512_B512", prob(Mode::kLSTM, 4, false, 512, 512, 512, 512,
                                            DType::kBFloat16, true, 0, true), d);
  // the recurrence in clusters (FUSED_RNN_SYNC=cluster): bf16 L=4 H=512 at B = 1, 8, 16, 32
  for (int b : {1, 8, 16, 32}) {
    char name[64];
    snprintf(name, sizeof(name), "cluster_bf16_L4_H512_B%d", b);
    print_plan(name, prob(Mode::kLSTM, 4, false, 512, 512, b, 512, DType::kBFloat16, true, 0,
                          true, SyncPolicy::kCluster), d);
  }
  print_plan("cluster_fp16_gru_L2_H1024_B4", prob(Mode::kGRU, 2, false, 1024, 1024, 4, 512,
                                                  DType::kFloat16, true, 0, true,
                                                  SyncPolicy::kCluster), d);
  print_plan("cluster_bf16_sm80", prob(Mode::kLSTM, 2, false, 64, 64, 4, 8, DType::kBFloat16, true,
                                       0, true, SyncPolicy::kCluster),
             [&] { DeviceLimits a = d; a.cc_major = 8; return a; }());
  print_plan("proj", prob(Mode::kLSTM, 2, false, 64, 64, 8, 8, DType::kBFloat16, true, 32), d);
  print_plan("too_many_layers", prob(Mode::kGRU, 17, true, 8, 8, 1, 1, DType::kFloat16), d);
  print_plan("odd_small", prob(Mode::kRnnRelu, 3, true, 13, 37, 1, 1, DType::kFloat16), d);
  DeviceLimits turing = d; turing.cc_major = 7; turing.cc_minor = 5;
  print_plan("turing", prob(Mode::kLSTM, 1, false, 8, 8, 1, 1, DType::kFloat16), turing);
  // mask function reachable from the kernels' include path (bits are tested in test_dropout.py)
  printf("\"threshold_half\": %llu,\n", (unsigned long long)dropout_threshold(0.5));
  const int bad = sweep();
  printf("\"end\": 0\n}\n");
  return bad == 0 ? 0 : 1;
}
"""


@pytest.fixture(scope="module")
def host_results(tmp_path_factory):
    return run_host_program(tmp_path_factory, "host_checks", _HOST_PROGRAM)


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0


def test_gate_math_matches_formulas(host_results):
    for x, y in host_results["sigmoid"]:
        assert abs(y - _sigmoid(x)) <= 2e-7, (x, y)
    for x, y in host_results["tanh"]:
        assert abs(y - math.tanh(x)) <= 2e-7 * max(1.0, abs(math.tanh(x))) + 1e-12, (x, y)
        if x != 0 and abs(x) < 1:
            assert abs(y / math.tanh(x) - 1) < 1e-6, (x, y)  # relative accuracy near 0
    i, f, g, o, c, h = host_results["lstm"]
    ri, rf, rg, ro = _sigmoid(0.5), _sigmoid(-1.0), math.tanh(0.25), _sigmoid(2.0)
    rc = rf * 0.75 + ri * rg
    for got, want in zip((i, f, g, o, c, h), (ri, rf, rg, ro, rc, ro * math.tanh(rc))):
        assert abs(got - want) < 1e-6
    r, z, n, hn, hg = host_results["gru"]
    rr, rz = _sigmoid(0.1 + 0.4), _sigmoid(-0.2 + 0.5)
    rn = math.tanh(0.3 + rr * -0.6)
    for got, want in zip((r, z, n, hn, hg), (rr, rz, rn, -0.6, (1 - rz) * rn + rz * -0.25)):
        assert abs(got - want) < 1e-6
    assert host_results["rnn"] == pytest.approx([math.tanh(0.7), 0.0, 0.7], abs=1e-6)


def test_planner_on_h100_numbers(host_results):
    res = host_results
    # the speed targets must be covered on an H100
    for name in ("lstm_bf16_L4_H512", "gru_bf16_L4_H512", "lstm_tf32_L2_H512",
                 "lstm_tf32_L4_H256", "lstm_bf16_L1_H1024", "odd_small"):
        assert res[name]["ok"], (name, res[name]["reason"])
        assert res[name]["reason"].startswith("fused: ")
        assert res[name]["grid"] <= 132
    assert res["lstm_bf16_L4_H512"]["units"] == 16
    # the state on chip at the targets' batch sizes; staged per tile at B=512
    assert res["lstm_bf16_L4_H512"]["resident"] and res["lstm_bf16_L4_H512_proj"]["resident"]
    assert res["lstm_bf16_L4_H512_B512"]["ok"] and not res["lstm_bf16_L4_H512_B512"]["resident"]
    assert "flags sync (ring 4)" in res["lstm_bf16_L4_H512"]["reason"]
    # layer 0's projection outside: a one-layer stack holds no W_ih at all
    one = res["lstm_bf16_L1_H1024_proj"]
    assert one["ok"] and one["kx_pad"] == 0 and one["smem"] < res["lstm_bf16_L1_H1024"]["smem"]
    assert "layer-0 input projection before the loop" in one["reason"]
    assert res["lstm_bf16_L4_H512_proj"]["kx_pad"] == 512  # layers 1-3 still multiply D*H
    # weights in registers (104 KB per CTA in 16 bits, 112 KB in TF32) bring these on chip
    # on 132 SMs: float32 (TF32) L=4 H=512 (33.5 MB), bf16 L=2 H=1024, bidirectional bf16
    # L=2 H=512
    for name in ("lstm_tf32_L4_H512", "lstm_bf16_L2_H1024", "lstm_bf16_bidir_L2_H512"):
        assert res[name]["ok"], (name, res[name]["reason"])
        assert res[name]["grid"] <= 132 and res[name]["w_tiles"] > 0, res[name]
        assert "KB in registers" in res[name]["reason"]
    assert "weights 112.0 KB in registers + 144.0 KB in shared memory" in \
        res["lstm_tf32_L4_H512"]["reason"]
    assert res["lstm_tf32_L4_H512"]["reg_tiles"] == 14
    assert res["lstm_bf16_L2_H1024"]["reg_tiles"] == 26
    # bf16 L=4 H=512: 8 items of 32 tiles, 26 of each in registers, 6 in shared memory
    assert "weights 104.0 KB in registers + 24.0 KB in shared memory, 2 row tiles" in \
        res["lstm_bf16_L4_H512"]["reason"]
    assert res["lstm_bf16_L4_H512"]["w_tiles"] == 48
    # honest limits, in words: exact fp32 keeps its weights in shared memory; 134 MB do
    # not fit on chip at all
    for name in ("lstm_fp32_L4_H512", "lstm_tf32_L4_H1024"):
        assert not res[name]["ok"], res[name]
        assert "shared memory" in res[name]["reason"]
    assert not res["proj"]["ok"] and "proj_size" in res["proj"]["reason"]
    assert not res["too_many_layers"]["ok"] and "32" in res["too_many_layers"]["reason"]
    assert not res["turing"]["ok"] and "compute capability" in res["turing"]["reason"]
    assert res["threshold_half"] == 2**31
    # the recurrence in clusters (FUSED_RNN_SYNC=cluster): bf16 L=4 H=512 in clusters of 16
    # (32 units per CTA, 64 CTAs) at B <= 8, with two X tiles in ~200 KB per CTA; at B = 16
    # and 32 they do not fit beside the weights: flags, saying why
    for b in (1, 8):
        r = res[f"cluster_bf16_L4_H512_B{b}"]
        assert r["ok"] and "cluster sync (ring 4)" in r["reason"], r
        assert "recurrence in clusters of 16 CTAs" in r["reason"], r
        assert r["units"] == 32 and r["grid"] == 64 and r["tile"] == 8, r
        assert 190 * 1024 < r["smem"] <= 232448, r
    for b in (16, 32):
        r = res[f"cluster_bf16_L4_H512_B{b}"]
        assert r["ok"] and "flags sync (ring 4)" in r["reason"], r
        assert "; no cluster recurrence (requested: no unit split of H into at most 16 CTAs " \
            "fits shared memory)" in r["reason"], r
        assert r["units"] == 16 and r["grid"] == 128, r  # the flags plan, as without the request
    r = res["cluster_fp16_gru_L2_H1024_B4"]
    assert r["ok"] and "no cluster recurrence (requested: " in r["reason"], r
    r = res["cluster_bf16_sm80"]
    assert r["ok"] and "no cluster recurrence (requested: thread-block clusters need sm_90)" \
        in r["reason"], r


def test_planner_invariants_sweep(host_results):
    assert host_results["sweep"]["bad"] == 0
    assert host_results["sweep"]["accepted"] > 1000


# --------------------------------------------------------------- the kernel, emulated on the CPU
#
# csrc/emu/ runs the unmodified forward kernel source on host threads (one per
# CUDA thread, barriers for __syncthreads / grid.sync, whole-tile wmma), built
# with AddressSanitizer + UBSan (out-of-bounds shared/global accesses, UB) and
# ThreadSanitizer (a missing barrier is a data race), and compared with
# fused_rnn.reference. It checks the kernel's indexing, synchronisation,
# wavefront / ring / ping-pong schedule, masking, reserve and dropout; it can
# not check the real wmma register layout or GPU memory-model details.

EMU_MODES = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]
EMU_DTYPES = ["float32", "float16", "bfloat16"]
# tolerance vs the float64 reference (which keeps 16-bit runs in fp32 between
# steps, while the kernel rounds h to the dtype like cuDNN does)
EMU_TOL = {("float32", False): 2e-6, ("float32", True): 3e-3, ("float16", False): 5e-3,
           ("bfloat16", False): 3e-2}


class EmuCase(tuple):
    fields = ("mode", "L", "bidir", "bias", "I", "H", "B", "T", "dtype", "tf32", "reserve",
              "lengths", "dropout", "sms")

    def __new__(cls, *values):
        assert len(values) == len(cls.fields)
        return super().__new__(cls, values)

    def __getattr__(self, name):
        return self[self.fields.index(name)]

    @property
    def id(self):
        return "-".join(str(v) for v in self)


EMU_CASES = [
    #       mode       L  bidir  bias  I    H   B   T  dtype      tf32  rsv  lens  p    sms
    EmuCase("LSTM", 2, False, True, 13, 37, 3, 5, "float32", False, True, True, 0.0, 8),
    EmuCase("GRU", 3, False, True, 7, 24, 70, 4, "bfloat16", False, True, False, 0.3, 6),
    EmuCase("RNN_TANH", 2, True, True, 5, 20, 2, 6, "float16", False, True, True, 0.5, 8),
    EmuCase("RNN_RELU", 1, False, True, 1, 1, 1, 1, "float32", True, True, False, 0.0, 1),
    EmuCase("LSTM", 3, True, True, 16, 16, 17, 3, "float32", True, True, True, 0.0, 6),
    EmuCase("LSTM", 2, False, True, 4, 8, 2, 40, "bfloat16", False, True, False, 0.2, 4),
    EmuCase("GRU", 2, True, True, 9, 33, 5, 7, "float32", False, True, True, 1.0, 8),
    EmuCase("LSTM", 4, False, False, 3, 5, 1, 9, "float16", False, False, False, 0.0, 8),
    EmuCase("LSTM", 2, False, True, 40, 8, 2, 3, "float32", False, True, False, 0.0, 8),
    EmuCase("LSTM", 1, False, True, 20, 100, 1, 2, "bfloat16", False, True, False, 0.0, 2),
    EmuCase("GRU", 3, True, False, 6, 10, 3, 5, "float32", True, True, True, 0.4, 7),
    EmuCase("RNN_TANH", 3, False, True, 11, 9, 130, 3, "float32", False, True, True, 0.0, 6),
    # Weights in registers and shared memory, at reduced size (few SMs: large unit slices).
    # TF32, 1 row tile per warp item: an item of 38 K tiles split 14 in registers + 24 in
    # shared memory, and items past the 8 warps' first (shared memory only)
    EmuCase("LSTM", 1, False, True, 600, 40, 5, 3, "float32", True, True, False, 0.0, 2),
    # TF32, 2 row tiles per item (as float32 L=4 H=512 on an H100): x items of 50 tiles,
    # 14 in registers + 36 in shared memory; B = 9: a second 8-column tile with one row
    EmuCase("LSTM", 1, False, True, 900, 32, 9, 2, "float32", True, True, False, 0.0, 2),
    # bf16, 2 row tiles per item, layer 0's input in the kernel (the no-projection run):
    # 24 items, 16 of them read from shared memory; with the projection: registers only
    EmuCase("LSTM", 1, False, True, 300, 32, 5, 3, "bfloat16", False, True, True, 0.0, 1),
    # bidirectional, 2 row tiles per item, a batch tile of two 8-column mma tiles, the
    # second with 3 real rows
    EmuCase("GRU", 2, True, True, 9, 40, 11, 3, "bfloat16", False, True, False, 0.3, 4),
    # The lean GEMM (gemm_lean: one unrolled item per warp, 16 or 32 tiles), 1 and 2 row
    # tiles per item, one column tile and pairs of them, every weight tile in registers or
    # some in shared memory. bf16, 16 tiles all in registers, a pair of column tiles, dropout:
    EmuCase("LSTM", 2, False, True, 40, 128, 9, 4, "bfloat16", False, True, False, 0.3, 8),
    # TF32, 16 tiles (14 in registers + 2 in shared memory), one column tile; layer 0's
    # 3-tile x items on the generic loop, layer 1's on the lean one
    EmuCase("LSTM", 2, False, True, 40, 128, 3, 3, "float32", True, True, True, 0.0, 8),
    # bf16, 32 tiles (26 + 6 in shared memory), a pair and a single column tile (B = 19)
    EmuCase("GRU", 1, False, True, 16, 256, 19, 3, "bfloat16", False, True, False, 0.0, 4),
    # TF32, 32 tiles (14 + 18 in shared memory), 2 row tiles per item
    EmuCase("RNN_TANH", 2, False, True, 40, 256, 3, 3, "float32", True, True, False, 0.0, 4),
    # bf16, 1 row tile per item, 16 tiles
    EmuCase("GRU", 1, False, True, 16, 256, 9, 3, "bfloat16", False, True, True, 0.0, 12),
]
# (16-20: the lean GEMM)
LEAN_CASES = EMU_CASES[16:21]
# (12, 13: weights split between registers and shared memory, 1 and 2 row tiles per item)
TSAN_CASES = [EMU_CASES[i] for i in (0, 1, 2, 6, 12, 13, 16, 18)]
# Every synchronisation policy runs every case (FUSED_RNN_SYNC, as in the extension):
# "lean" is the flags kernel's lean protocol (opt-in).
SYNCS = ["flags", "grid", "lean"]
# For the deliberately broken flag variants: one CTA per layer (every h element has
# one reader per layer, so ThreadSanitizer's shadow cells keep each read), three
# layers, and T well past the ring's 4 slots, so slots are overwritten many times.
BREAK_CASE = EmuCase("LSTM", 3, False, True, 4, 8, 2, 12, "float32", False, False, False, 0.0, 3)


def _emu_build(tmp_path_factory, sanitize, defines=()):
    exe, _ = build_emulator(tmp_path_factory, "forward_emu_main.cpp", "forward_emu", sanitize,
                            defines=defines)
    return exe


@pytest.fixture(scope="module")
def emu_asan(tmp_path_factory):
    return _emu_build(tmp_path_factory, "address,undefined")


@pytest.fixture(scope="module")
def emu_tsan(tmp_path_factory):
    return _emu_build(tmp_path_factory, "thread")


def _emu_process(exe, case: EmuCase, tmp_path, extra_args=(), sync="flags", project=True,
                 env=None):
    """Runs the emulated forward kernel on `case` with synchronisation policy `sync`
    (`extra_args`: the driver's optional trailing arguments, e.g. a phase buffer;
    `project`: the driver computes layer 0's input projection before the launch where
    the planner asks for it, as the binding does). Returns (the finished process, the
    inputs, the output file)."""
    inp = random_stack(case)
    x, weights, hx, cx = inp["x"], inp["w"], inp["hx"], inp["cx"]
    lengths, seed = inp["lengths"], inp["seed"]
    blobs = [x, *weights, hx] + ([cx] if cx is not None else []) + \
        ([lengths] if lengths is not None else []) + ([seed.reshape(1)] if seed is not None else [])
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    write_tensors(src, blobs)
    args = [str(exe)] + [str(v) for v in (
        EMU_MODES.index(case.mode), case.L, int(case.bidir), int(case.bias), case.I, case.H,
        case.B, case.T, EMU_DTYPES.index(case.dtype), int(case.tf32), int(case.reserve),
        int(case.lengths), case.dropout, case.sms)] + [str(src), str(dst)] + \
        [str(a) for a in extra_args]
    env = dict(os.environ, FUSED_RNN_SYNC=sync, FRNN_EMU_NO_PROJECTION="0" if project else "1",
               **(env or {}))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    return proc, inp, dst


def _emu_run(exe, case: EmuCase, tmp_path, extra_args=(), sync="flags", project=True, env=None):
    """Runs the emulated forward kernel on `case` (see _emu_process) and returns its
    outputs and the reference's."""
    torch = pytest.importorskip("torch")
    from fused_rnn import reference

    dt = getattr(torch, case.dtype)
    D = 2 if case.bidir else 1
    proc, inp, dst = _emu_process(exe, case, tmp_path, extra_args, sync, project, env)
    x, weights, hx, cx = inp["x"], inp["w"], inp["hx"], inp["cx"]
    lengths, seed = inp["lengths"], inp["seed"]
    assert proc.returncode == 0, f"emulated kernel failed ({proc.returncode}):\n" \
        f"{proc.stdout}\n{proc.stderr[-8000:]}"
    assert proc.stdout.startswith("fused: "), proc.stdout
    assert f", {sync} sync (ring {2 if sync == 'grid' else 4})" in proc.stdout, proc.stdout
    # 16-bit: layer 0's input projection is one GEMM before the launch
    projected = project and case.dtype != "float32"
    assert ("layer-0 input projection before the loop" in proc.stdout) == projected, proc.stdout

    out = TensorReader(dst, dt)
    S = {"LSTM": 6 * case.H, "GRU": 5 * case.H}.get(case.mode, case.H)
    y = out.take(case.T, case.B, D * case.H)
    hy = out.take(case.L * D, case.B, case.H)
    cy = out.take(case.L * D, case.B, case.H) if case.mode == "LSTM" else None
    res = out.take(case.L * D, case.T, case.B, S) if case.reserve else None
    assert out.pos == len(out.raw)

    d = (lambda t: None if t is None else t.double())
    ref = reference.rnn_forward(d(x), [d(w) for w in weights], d(hx), d(cx), lengths, seed,
                                case.mode, case.L, case.bidir, case.bias, 0, case.dropout,
                                case.reserve)
    return dict(y=y, hy=hy, cy=cy, res=res, lengths=lengths, ref=ref, plan=proc.stdout)


def _check_emu(case, out):
    tol = EMU_TOL[(case.dtype, case.tf32 and case.dtype == "float32")]
    ref = out["ref"]
    for name, got, want in (("output", out["y"], ref[0]), ("h_n", out["hy"], ref[1]),
                            ("c_n", out["cy"], ref[2] if case.mode == "LSTM" else None)):
        if got is None:
            continue
        assert torch_isfinite_all(got), name
        assert rel_err(got, want) <= tol, (name, rel_err(got, want), tol)
    import torch

    valid = torch.ones(case.T, case.B, dtype=torch.bool)
    if out["lengths"] is not None:
        valid = torch.arange(case.T).unsqueeze(1) < out["lengths"].unsqueeze(0)
        assert (out["y"][~valid] == 0).all(), "output rows past a length must be exactly 0"
    if case.reserve:
        got, want = out["res"][:, valid], ref[3][:, valid]
        assert torch_isfinite_all(got)
        assert rel_err(got, want) <= 2 * tol, ("reserve", rel_err(got, want))


def torch_isfinite_all(t):
    import torch

    return bool(torch.isfinite(t.float()).all())


@pytest.mark.parametrize("sync", SYNCS)
@pytest.mark.parametrize("case", EMU_CASES, ids=lambda c: c.id)
def test_emulated_kernel_matches_reference(emu_asan, case, sync, tmp_path):
    _check_emu(case, _emu_run(emu_asan, case, tmp_path, sync=sync))


@pytest.mark.parametrize("sync", SYNCS)
@pytest.mark.parametrize("case", TSAN_CASES + [BREAK_CASE], ids=lambda c: c.id)
def test_emulated_kernel_has_no_data_races(emu_tsan, case, sync, tmp_path):
    _check_emu(case, _emu_run(emu_tsan, case, tmp_path, sync=sync))


@pytest.mark.parametrize("case", [c for c in EMU_CASES if c.dtype != "float32"], ids=lambda c: c.id)
def test_emulated_kernel_without_input_projection(emu_asan, case, tmp_path):
    """16-bit stacks with layer 0's x W_ih0^T inside the kernel (a torch without
    mm(..., out_dtype)): the path every float32 case above takes, in 16 bits."""
    _check_emu(case, _emu_run(emu_asan, case, tmp_path, project=False))


def test_state_placement_is_planned(emu_asan, tmp_path):
    """The fp32 state is resident in shared memory when all B rows fit (B=3, B=70 with two
    batch tiles), and the cases above cover the kernel both ways round: a plan that
    stages it per tile is exercised by B=130 (RNN_TANH, three tiles)."""
    plans = {}
    for case in (EMU_CASES[0], EMU_CASES[1], EMU_CASES[11]):
        out = _emu_run(emu_asan, case, tmp_path)
        _check_emu(case, out)
        plans[case.B] = out["plan"]
    assert "state in shared memory" in plans[3] and "state in shared memory" in plans[70]
    assert "batch tile 64" in plans[70], plans[70]


@pytest.mark.parametrize("case", LEAN_CASES, ids=lambda c: c.id)
def test_lean_gemm_is_planned(emu_asan, case, tmp_path):
    """The lean cases' plans give their warps unrolled items (forward_params.h, lean_item),
    so the cases above run gemm_lean; the older cases' plans give none (the generic loop)."""
    import re

    proc, _, _ = _emu_process(emu_asan, case, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = re.search(r"(\d+) of (\d+) items unrolled", proc.stdout)
    assert m and int(m.group(1)) > 0, proc.stdout
    older, _, _ = _emu_process(emu_asan, EMU_CASES[13], tmp_path)
    assert re.search(r", 0 of \d+ items unrolled", older.stdout), older.stdout


# bf16 LSTM with lane groups (B=2, dropout), bf16 LSTM and GRU with one thread per pair, TF32
@pytest.mark.parametrize("case", [EMU_CASES[i] for i in (5, 16, 18, 17)], ids=lambda c: c.id)
def test_emulated_fast_tanh(emu_asan, case, tmp_path):
    """FUSED_RNN_FAST_TANH=1: the bf16 epilogue's hardware-tanh path (one thread per pair and
    lane groups; the emulation's tanh is the exact one, so this checks the path's plumbing,
    not the hardware's accuracy); other dtypes keep the accurate forms."""
    out = _emu_run(emu_asan, case, tmp_path, env={"FUSED_RNN_FAST_TANH": "1"})
    assert ("hardware tanh" in out["plan"]) == (case.dtype == "bfloat16"), out["plan"]
    _check_emu(case, out)
    plain = _emu_run(emu_asan, case, tmp_path)
    assert "hardware tanh" not in plain["plan"]


# The GEMM's mma.sync fragments: the emulation models the hardware's lane layouts from
# the PTX ISA (csrc/emu/emu_mma.h), independently of the kernel's own coordinates
# (mma_frag.cuh). A kernel that puts an element in the wrong lane or register must give
# wrong results: FRNN_EMU_BREAK=4 swaps the row halves of the A fragment (16-bit),
# 5 the columns of the accumulator.
FRAGMENT_BREAKS = {4: "A fragment rows swapped", 5: "accumulator columns swapped"}
FRAGMENT_CASE = EMU_CASES[5]  # bf16 LSTM L=2 H=8 B=2 T=40, dropout


@pytest.fixture(scope="module", params=sorted(FRAGMENT_BREAKS),
                ids=lambda b: FRAGMENT_BREAKS[b].replace(" ", "-"))
def emu_wrong_fragment(request, tmp_path_factory):
    return _emu_build(tmp_path_factory, "address,undefined",
                      defines=(f"FRNN_EMU_BREAK={request.param}",))


def test_wrong_fragment_layout_is_caught(emu_asan, emu_wrong_fragment, tmp_path):
    _check_emu(FRAGMENT_CASE, _emu_run(emu_asan, FRAGMENT_CASE, tmp_path))
    with pytest.raises(AssertionError) as caught:
        _check_emu(FRAGMENT_CASE, _emu_run(emu_wrong_fragment, FRAGMENT_CASE, tmp_path))
    msg = str(caught.value)
    assert msg.startswith("('output'") or msg.startswith("('h_n'"), msg[-4000:]


_FRAGMENT_PROGRAM = r"""
#include "emu/emu_cuda.h"
#include "kernels/mma_frag.cuh"
#include <cstdio>
using namespace fused_rnn;
// Which (row, col) each lane's fragment elements hold, for the test to compare with the
// PTX ISA's tables.
int main() {
  printf("{\"a16\": [");
  for (int l = 0; l < 32; ++l) for (int e = 0; e < 8; ++e) {
    FragCoord f = frag_a_coord<false>(l, e);
    printf("%s[%d, %d]", l + e ? ", " : "", f.row, f.col);
  }
  printf("], \"atf32\": [");
  for (int l = 0; l < 32; ++l) for (int e = 0; e < 8; ++e) {
    FragCoord f = frag_a_coord<true>(l, e);
    printf("%s[%d, %d]", l + e ? ", " : "", f.row, f.col);
  }
  printf("], \"c\": [");
  for (int l = 0; l < 32; ++l) for (int i = 0; i < 4; ++i) {
    FragCoord f = frag_c_coord(l, i);
    printf("%s[%d, %d]", l + i ? ", " : "", f.row, f.col);
  }
  printf("]}\n");
}
"""


def test_fragment_coordinates_follow_the_ptx_isa(tmp_path_factory):
    """mma_frag.cuh's lane coordinates: each element of a tile held exactly once, and the
    PTX ISA's entries (g = lane / 4, t = lane % 4): m16n8k16 A a0..a7 at (g, 2t), (g, 2t+1),
    (g+8, 2t), (g+8, 2t+1), (g, 2t+8), (g, 2t+9), (g+8, 2t+8), (g+8, 2t+9); m16n8k8 .tf32 A
    a0..a3 at (g, t), (g+8, t), (g, t+4), (g+8, t+4) (two steps of 8 K per 16-wide tile);
    C c0..c3 at (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)."""
    from compile_helpers import CSRC

    prog = _FRAGMENT_PROGRAM.replace('"emu/emu_cuda.h"', '"emu_cuda.h"')
    d = tmp_path_factory.mktemp("frag")
    src, exe = d / "frag.cpp", d / "frag"
    src.write_text(prog)
    if CXX is None:
        pytest.skip("no host C++ compiler")
    subprocess.run([CXX, "-std=c++17", "-O1", "-pthread", f"-I{os.path.join(CSRC, 'emu', 'include')}",
                    f"-I{os.path.join(CSRC, 'emu')}", f"-I{CSRC}", str(src), "-o", str(exe)],
                   check=True)
    import json

    got = json.loads(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout)
    a16 = [tuple(v) for v in got["a16"]]
    atf = [tuple(v) for v in got["atf32"]]
    c = [tuple(v) for v in got["c"]]
    assert sorted(a16) == sorted((r, k) for r in range(16) for k in range(16))
    assert sorted(atf) == sorted((r, k) for r in range(16) for k in range(16))
    assert sorted(c) == sorted((r, n) for r in range(16) for n in range(8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        assert a16[8 * lane:8 * lane + 8] == [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t),
                                              (g + 8, 2 * t + 1), (g, 2 * t + 8), (g, 2 * t + 9),
                                              (g + 8, 2 * t + 8), (g + 8, 2 * t + 9)]
        step = [(g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4)]
        assert atf[8 * lane:8 * lane + 8] == step + [(r, k + 8) for r, k in step]
        assert c[4 * lane:4 * lane + 4] == [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t),
                                            (g + 8, 2 * t + 1)]


# Deliberately broken flag synchronisation (sync_flags.cuh, FRNN_EMU_BREAK): each must
# be caught. ThreadSanitizer follows the acquire / release orders of the emulated
# flags: a too weak wait, or an overwrite of a slot whose reader is still at work, is
# a data race on the h ring. When the broken producer instead runs so far ahead that
# its overwrite is published before the late reader even reads (ordered, so no race),
# the reader gets a later step's h: the results differ from the reference. Either way
# the run fails.
BREAKS = {1: "relaxed instead of acquire", 2: "producer does not wait for its consumers",
          3: "ring one slot too shallow"}


@pytest.fixture(scope="module", params=sorted(BREAKS), ids=lambda b: BREAKS[b].replace(" ", "-"))
def emu_broken(request, tmp_path_factory):
    return _emu_build(tmp_path_factory, "thread", defines=(f"FRNN_EMU_BREAK={request.param}",))


@pytest.mark.parametrize("sync", ["flags", "lean"])
def test_broken_flag_synchronisation_is_caught(emu_broken, sync, tmp_path):
    """Both protocols of the flags kernel: per-CTA counters, and the lean one (one counter
    per layer-direction, relaxed polls; break 1 leaves out its acquire fence)."""
    with pytest.raises(AssertionError) as caught:
        out = _emu_run(emu_broken, BREAK_CASE, tmp_path, sync=sync)
        assert "1 per layer-direction" in out["plan"], out["plan"]  # one reader per layer
        _check_emu(BREAK_CASE, out)
    msg = str(caught.value)
    assert "ThreadSanitizer: data race" in msg or msg.startswith("('output'") or \
        msg.startswith("('h_n'") or msg.startswith("('c_n'"), msg[-4000:]


# The recurrence in a thread-block cluster (FUSED_RNN_SYNC=cluster, opt-in; 16-bit, one
# batch tile, U a power of two >= 8, C <= 16: forward_plan.h, plan_cluster_rec). Each
# CTA pushes its h_t into its peers' shared memory with st.async, which signals their
# mbarriers with the bytes (emu_cluster.h models the cluster, mapa, st.async and the
# mbarriers' arrival counts, transaction bytes and phases). `sms` holds every CTA.
CLUSTER_CASES = [
    #       mode       L  bidir  bias  I    H   B   T  dtype      tf32  rsv  lens  p    sms
    # clusters of 5 (U = 8), lengths, dropout (the layer above reads the dropped ring)
    EmuCase("LSTM", 2, False, True, 13, 40, 3, 5, "bfloat16", False, True, True, 0.3, 10),
    # H = 37: the last slice has 5 units (one chunk, 3 of its columns padding), B = 1,
    # 3 layers reading each other's h ring
    EmuCase("GRU", 3, False, True, 7, 37, 1, 6, "float16", False, True, False, 0.0, 15),
    # bidirectional, clusters of 3 (the last with 4 units), B = 9: two column tiles
    EmuCase("RNN_TANH", 2, True, True, 5, 20, 9, 3, "bfloat16", False, True, True, 0.5, 12),
    # T = 1: no push at all; clusters of 2
    EmuCase("LSTM", 1, False, True, 4, 16, 1, 1, "bfloat16", False, False, False, 0.0, 2),
    # clusters of 16 (H = 128, U = 8), B = 8
    EmuCase("LSTM", 1, False, True, 16, 128, 8, 3, "bfloat16", False, True, False, 0.0, 16),
    # U = 16 (H = 200: clusters of 13, the last slice 8 units), relu
    EmuCase("RNN_RELU", 2, False, False, 9, 200, 2, 4, "float16", False, True, False, 0.0, 26),
]


def _cluster_plan(out, case):
    """The plan ran the recurrence in clusters of ceil(H / U), U a power of two."""
    import re

    m = re.search(r"(\d+) CTAs \((\d+) per layer-direction, (\d+) units each\)", out["plan"])
    assert m, out["plan"]
    C, U = int(m.group(2)), int(m.group(3))
    assert f"recurrence in clusters of {C} CTAs" in out["plan"], out["plan"]
    assert U >= 8 and U & (U - 1) == 0 and C == -(-case.H // U) and C <= 16, out["plan"]
    return C, U


@pytest.mark.parametrize("case", CLUSTER_CASES, ids=lambda c: c.id)
def test_emulated_cluster_recurrence(emu_asan, case, tmp_path):
    out = _emu_run(emu_asan, case, tmp_path, sync="cluster")
    _cluster_plan(out, case)
    _check_emu(case, out)


@pytest.mark.parametrize("case", [CLUSTER_CASES[i] for i in (0, 1, 2)], ids=lambda c: c.id)
def test_emulated_cluster_recurrence_has_no_data_races(emu_tsan, case, tmp_path):
    out = _emu_run(emu_tsan, case, tmp_path, sync="cluster")
    _cluster_plan(out, case)
    _check_emu(case, out)


def test_emulated_cluster_recurrence_without_input_projection(emu_asan, tmp_path):
    """Layer 0 multiplies its own x_t (a torch without mm(..., out_dtype)): the x part of
    each of the two X tiles is this CTA's own gather."""
    case = CLUSTER_CASES[0]
    out = _emu_run(emu_asan, case, tmp_path, sync="cluster", project=False)
    _cluster_plan(out, case)
    _check_emu(case, out)


@pytest.mark.parametrize("case", [
    # float32: 16-bit only
    EmuCase("LSTM", 2, False, True, 13, 40, 3, 5, "float32", True, True, True, 0.3, 10),
    # B = 65: more than one batch tile
    EmuCase("GRU", 1, False, True, 7, 16, 65, 2, "bfloat16", False, True, False, 0.0, 4),
], ids=lambda c: c.id)
def test_cluster_recurrence_falls_back_with_its_reason(emu_asan, case, tmp_path):
    """Where the plan does not allow the recurrence in clusters, the flags kernel runs,
    and the plan says why."""
    proc, _, _ = _emu_process(emu_asan, case, tmp_path, sync="cluster")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert ", flags sync (ring 4)" in proc.stdout, proc.stdout
    assert "no cluster recurrence (requested: " in proc.stdout, proc.stdout
    out = _emu_run(emu_asan, case, tmp_path, sync="flags")
    _check_emu(case, out)


# Deliberately broken cluster hand-offs (FRNN_EMU_BREAK, forward_kernel.cuh): each must
# fail -- a data race on an X tile (ThreadSanitizer follows the mbarrier's acquire and
# release), results that differ from the reference, a second arrival in one phase (a CTA
# that ran ahead of its barrier: emu_cluster.h aborts), or a wait that never ends (the
# emulation's watchdog aborts; FRNN_EMU_WATCHDOG_S keeps it short).
CLUSTER_BREAKS = {11: "arrive without expect-tx", 12: "wrong parity", 13: "missing arrive"}
CLUSTER_BREAK_CASE = CLUSTER_CASES[0]


@pytest.fixture(scope="module", params=sorted(CLUSTER_BREAKS),
                ids=lambda b: CLUSTER_BREAKS[b].replace(" ", "-"))
def emu_broken_cluster(request, tmp_path_factory):
    return _emu_build(tmp_path_factory, "thread", defines=(f"FRNN_EMU_BREAK={request.param}",))


def test_broken_cluster_recurrence_is_caught(emu_broken_cluster, tmp_path):
    with pytest.raises(AssertionError) as caught:
        out = _emu_run(emu_broken_cluster, CLUSTER_BREAK_CASE, tmp_path, sync="cluster",
                       env={"FRNN_EMU_WATCHDOG_S": "5"})
        _cluster_plan(out, CLUSTER_BREAK_CASE)
        _check_emu(CLUSTER_BREAK_CASE, out)
    msg = str(caught.value)
    assert "ThreadSanitizer: data race" in msg or "emu: deadlock" in msg or \
        "emu: more mbarrier arrivals than its count in one phase" in msg or \
        msg.startswith("('output'") or msg.startswith("('h_n'") or msg.startswith("('c_n'"), \
        msg[-4000:]
