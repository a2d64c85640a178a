"""CI without a GPU, for the backward kernel (csrc/kernels/backward_*):

* every ``csrc/kernels/backward_*.cu`` compiles with nvcc for sm_80 and sm_90a
  (one nvcc call per file for both archs, two files at a time) with the
  extension's flags and no register spill;
* the backward planner (backward_plan.h) covers the speed-target shapes on an
  H100's numbers, rejects the rest with a reason, and keeps its invariants;
* the kernel source runs in the host emulation (csrc/emu/backward_emu_main.cpp)
  under ASan + UBSan (and TSan for a few cases), and the binding's own
  post-kernel GEMM code (csrc/torch/backward_grads.h, built for CPU tensors)
  turns its outputs into gradients, which must match
  ``fused_rnn.reference.rnn_backward`` in float64 on the same reserve.

What the emulation can not check: the real wmma register layouts, cp.async
and grid.sync on real hardware (the emulation performs copies as late as the
waits allow, so a missing wait or barrier does show), speed.
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import re
import subprocess
from typing import NamedTuple

import pytest
import torch
from compile_helpers import (ARCHS, CSRC, CXX, NVCC, TensorReader, build_config,
                             build_emulator, nvcc_compile, random_stack, rel_err,
                             run_host_program, spill_bytes, write_tensors)

BACKWARD_SOURCES = sorted(glob.glob(os.path.join(CSRC, "kernels", "backward_*.cu")))


# --------------------------------------------------------------- nvcc, both archs per call


@pytest.fixture(scope="module")
def nvcc_logs(tmp_path_factory):
    if NVCC is None:
        pytest.skip("nvcc not on PATH")
    out = tmp_path_factory.mktemp("nvcc_bwd")

    def compile_one(src):
        return (src, *nvcc_compile(src, ARCHS, out / (os.path.basename(src) + ".o")))

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return {os.path.basename(s): (rc, log) for s, rc, log in pool.map(compile_one, BACKWARD_SOURCES)}


@pytest.mark.parametrize("source", [os.path.basename(s) for s in BACKWARD_SOURCES])
def test_backward_kernel_compiles_without_spills(nvcc_logs, source):
    rc, log = nvcc_logs[source]
    assert rc == 0, f"nvcc failed for {source}:\n{log[-6000:]}"
    assert "warning" not in log.lower(), log[-6000:]
    spills = spill_bytes(log)
    assert not any(spills), f"register spills in {source}:\n{log}"
    stacks = [int(n) for n in re.findall(r"(\d+) bytes stack frame", log)]
    assert not any(stacks), f"stack frame (local memory) in {source}:\n{log}"
    if "dispatch" not in source:  # 3 cells x 2 synchronisation policies x 2 archs
        assert len(re.findall(r"Compiling entry function", log)) == 12, log
        print(source, re.findall(r"Used (\d+) registers", log))


@pytest.mark.parametrize("arch,clusters", [("90a", True), ("80", False)])
def test_cluster_instructions_are_in_the_sm90_code_only(arch, clusters, tmp_path):
    """The cluster path (cluster_copy.cuh) assembles for sm_90a: bulk copies multicast to
    the cluster, mbarrier expect_tx / try_wait / remote arrive (mapa), cluster barriers,
    the async-proxy fence; sm_80 code has none of it (the planner never asks for
    clusters there; the kernel traps if it did)."""
    if NVCC is None:
        pytest.skip("nvcc not on PATH")
    ptx = tmp_path / "bwd.ptx"
    flags = build_config().nvcc_flags([arch[0] + "." + arch[1:]])  # one -gencode: one PTX
    cmd = [NVCC, *flags, "-ptx", f"-I{CSRC}", os.path.join(CSRC, "kernels", "backward_bf16.cu"),
           "-o", str(ptx)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = ptx.read_text()
    for needle in ("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes"
                   ".multicast::cluster", "mbarrier.arrive.expect_tx", "mbarrier.try_wait.parity",
                   "mapa.shared::cluster", "mbarrier.arrive.release.cluster.shared::cluster",
                   "barrier.cluster.arrive.release", "fence.proxy.async.global",
                   "fence.mbarrier_init.release.cluster", "mbarrier.init"):
        assert (needle in text) == clusters, (arch, needle)
    assert "cp.async.cg.shared.global" in text  # the stream without clusters, both archs


# --------------------------------------------------------------- planner on the host

_PLAN_PROGRAM = r"""
#include "kernels/backward_plan.h"
#include <algorithm>
#include <cstdio>
using namespace fused_rnn;

static int occ(const void* ctx, int64_t smem) {
  return estimate_occupancy(*static_cast<const DeviceLimits*>(ctx), smem, 250);
}
static DeviceLimits h100() {
  DeviceLimits d;
  d.sm_count = 132; d.smem_optin_per_block = 232448; d.smem_per_sm = 233472;
  d.cc_major = 9; d.cc_minor = 0;
  return d;
}
static ForwardProblem prob(Mode m, int L, bool bidir, int I, int H, int B, DType dt, int proj = 0) {
  ForwardProblem p;
  p.mode = m; p.num_layers = L; p.bidirectional = bidir; p.input_size = I; p.hidden_size = H;
  p.batch = B; p.seq_len = 512; p.dtype = dt; p.allow_tf32 = true; p.proj_size = proj;
  p.need_reserve = true;
  return p;
}
static void show(const char* name, const ForwardProblem& p, DeviceLimits d) {
  BackwardPlanResult r = plan_backward(p, d, &occ, &d);
  printf("\"%s\": {\"ok\": %s, \"reason\": \"%s\", \"grid\": %d, \"units\": %d, \"slices\": %d, "
         "\"stages\": %d, \"smem\": %lld, \"cluster\": %d, \"reg_tiles\": %d, \"kres\": %d, "
         "\"kw\": %d},\n", name,
         r.ok ? "true" : "false", r.reason.c_str(), r.cfg.grid, r.cfg.units_per_cta,
         r.cfg.batch_slices, r.cfg.stages, (long long)r.cfg.smem_bytes, r.cfg.cluster,
         r.cfg.reg_tiles, r.cfg.kres, r.cfg.kw);
}
static int sweep() {
  int bad = 0, accepted = 0, clustered = 0, in_regs = 0, streamed = 0;
  const Mode modes[] = {Mode::kLSTM, Mode::kGRU, Mode::kRnnTanh};
  const DType dts[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
  const int Hs[] = {1, 7, 16, 37, 100, 256, 512, 1024};
  const int Bs[] = {1, 17, 64, 512};
  const int Ls[] = {1, 2, 4};
  DeviceLimits d = h100();
  for (Mode m : modes) for (DType dt : dts) for (int H : Hs) for (int B : Bs)
  for (int L : Ls) for (int bi = 0; bi < 2; ++bi) {
    ForwardProblem p = prob(m, L, bi, 13, H, B, dt);
    BackwardPlanResult r = plan_backward(p, d, &occ, &d);
    if (!r.ok) continue;
    ++accepted;
    const BackwardConfig& c = r.cfg;
    const int G = p.gates();
    bool ok = c.grid == p.layer_dirs() * c.ctas_per_dir * c.batch_slices
      && c.grid <= d.sm_count * c.blocks_per_sm
      && (int64_t)c.ctas_per_dir * c.units_per_cta >= H
      && (int64_t)(c.ctas_per_dir - 1) * c.units_per_cta < H
      && c.units_per_cta <= 16 * kBackwardMaxMTiles
      && c.m_tiles * 16 >= c.units_per_cta && c.m_pad == 16 * c.m_tiles
      && (int64_t)c.batch_slices * c.rows_per_slice >= B
      && (int64_t)(c.batch_slices - 1) * c.rows_per_slice < B
      && (c.batch_slices == 1 || c.rows_per_slice % 16 == 0)
      && c.n_tiles * c.k_splits == kBackwardWarps
      && c.gh_pad % 16 == 0 && c.gh_pad >= G * H
      && c.kw == c.ka + c.gh_pad && c.ka == (L > 1 ? p.num_dirs() : 0) * c.gh_pad
      && c.stages >= 2 && c.stages <= 4
      && (c.stage_ld * c.elem_bytes) % 16 == 0 && (16 * c.stage_ld * c.elem_bytes) % 32 == 0
      && c.kblock * c.elem_bytes == 32
      && c.smem_bytes == backward_smem_layout(c).total && c.smem_bytes <= d.smem_optin_per_block
      && c.use_tf32 == (dt == DType::kFloat32)
      && c.sync == SyncPolicy::kFlags
      && r.reason.find(", flags sync") != std::string::npos
      && (c.cluster == 1 || c.cluster == 2 || c.cluster == 4 || c.cluster == 8)
      && c.ctas_per_dir % c.cluster == 0 && c.grid % c.cluster == 0
      && (c.cluster == 1 || (int64_t)std::min<int64_t>(c.rows_per_slice, B) * c.kw * c.elem_bytes
                                >= kClusterMinStreamBytes)
      && (c.cluster > 1) ==
             (r.reason.find("K stream multicast in clusters of") != std::string::npos)
      // weights in registers: every tile of a warp's K split (that many per segment,
      // rounded up, times the segments), one m-tile, within the instantiation's cap,
      // never on the FP32 FMA path; where they fit, always
      && c.reg_tiles == backward_reg_tiles(c)
      && (c.reg_tiles == 0 ||
          (c.m_tiles == 1 &&
           c.reg_tiles == (c.kw / c.gh_pad) * ((c.gh_pad / 16 + c.k_splits - 1) / c.k_splits) &&
           c.reg_tiles <= backward_reg_tiles_max(c.elem_bytes, c.use_tf32)))
      && (c.reg_tiles > 0 ||  c.m_tiles > 1 || backward_warp_tiles(c) >
                                  backward_reg_tiles_max(c.elem_bytes, c.use_tf32))
      && (c.reg_tiles > 0) == (r.reason.find("weights in registers") != std::string::npos)
      // streamed weights: a resident prefix of whole tiles, only where the whole tile
      // fits at no U (the grid co-resident), never with clusters, registers or slices
      && c.kres % 16 == 0 && c.kres >= 0 && c.kres <= c.kw
      && (c.kres == c.kw ||
          (c.cluster == 1 && c.reg_tiles == 0 && c.batch_slices == 1 &&
           c.smem_bytes + 16 * c.units_per_cta * c.elem_bytes > d.smem_optin_per_block))
      && backward_streams(c) == (r.reason.find("streamed from L2") != std::string::npos);
    if (c.cluster > 1) ++clustered;
    if (backward_streams(c)) ++streamed;
    if (c.reg_tiles > 0) ++in_regs;
    if (!ok) { ++bad; fprintf(stderr, "bad plan: %s\n", r.reason.c_str()); }
  }
  printf("\"sweep\": {\"accepted\": %d, \"bad\": %d, \"clustered\": %d, \"in_regs\": %d, "
         "\"streamed\": %d},\n", accepted, bad, clustered, in_regs, streamed);
  return bad;
}
int main() {
  printf("{\n");
  DeviceLimits d = h100();
  show("lstm_bf16_L4_H512", prob(Mode::kLSTM, 4, false, 512, 512, 32, DType::kBFloat16), d);
  show("gru_bf16_L4_H512", prob(Mode::kGRU, 4, false, 512, 512, 32, DType::kBFloat16), d);
  show("lstm_bf16_L2_H256", prob(Mode::kLSTM, 2, false, 256, 256, 32, DType::kBFloat16), d);
  show("lstm_bf16_L4_H512_B512", prob(Mode::kLSTM, 4, false, 512, 512, 512, DType::kBFloat16), d);
  show("lstm_tf32_L2_H512", prob(Mode::kLSTM, 2, false, 512, 512, 32, DType::kFloat32), d);
  show("lstm_tf32_L4_H256", prob(Mode::kLSTM, 4, false, 256, 256, 32, DType::kFloat32), d);
  show("lstm_tf32_L2_H256_B512", prob(Mode::kLSTM, 2, false, 256, 256, 512, DType::kFloat32), d);
  show("lstm_bf16_L1_H1024", prob(Mode::kLSTM, 1, false, 1024, 1024, 8, DType::kBFloat16), d);
  show("lstm_tf32_L4_H512", prob(Mode::kLSTM, 4, false, 512, 512, 32, DType::kFloat32), d);
  show("lstm_tf32_L4_H512_B1", prob(Mode::kLSTM, 4, false, 512, 512, 1, DType::kFloat32), d);
  ForwardProblem fma512 = prob(Mode::kLSTM, 4, false, 512, 512, 8, DType::kFloat32);
  fma512.allow_tf32 = false;
  show("lstm_fp32_L4_H512", fma512, d);
  ForwardProblem s2 = prob(Mode::kLSTM, 4, false, 512, 512, 32, DType::kFloat32);
  s2.cluster = 2;
  show("lstm_tf32_L4_H512_cluster2", s2, d);
  show("lstm_tf32_L4_H1024_bi", prob(Mode::kLSTM, 4, true, 1024, 1024, 8, DType::kFloat32), d);
  show("proj", prob(Mode::kLSTM, 2, false, 64, 64, 8, DType::kBFloat16, 32), d);
  show("too_many_layers", prob(Mode::kGRU, 17, true, 8, 8, 1, DType::kFloat16), d);
  show("odd_small", prob(Mode::kRnnRelu, 3, true, 13, 37, 1, DType::kFloat16), d);
  ForwardProblem grid = prob(Mode::kLSTM, 4, false, 512, 512, 32, DType::kBFloat16);
  grid.sync = SyncPolicy::kGrid;
  show("grid_requested", grid, d);
  ForwardProblem small_b = prob(Mode::kLSTM, 4, false, 512, 512, 1, DType::kBFloat16);
  show("lstm_bf16_L4_H512_B1", small_b, d);
  ForwardProblem c4 = prob(Mode::kLSTM, 4, false, 512, 512, 32, DType::kBFloat16);
  c4.cluster = 4;
  show("cluster4_requested", c4, d);
  ForwardProblem c1 = c4;
  c1.cluster = 1;
  show("cluster1_requested", c1, d);
  ForwardProblem c8odd = prob(Mode::kRnnRelu, 3, true, 13, 37, 64, DType::kFloat16);
  c8odd.cluster = 8;
  show("cluster8_odd", c8odd, d);
  DeviceLimits a100 = d; a100.cc_major = 8; a100.sm_count = 108;
  a100.smem_optin_per_block = 166912; a100.smem_per_sm = 167936;
  show("lstm_bf16_L2_H256_a100", prob(Mode::kLSTM, 2, false, 256, 256, 32, DType::kBFloat16), a100);
  ForwardProblem c2a = prob(Mode::kLSTM, 2, false, 256, 256, 32, DType::kBFloat16);
  c2a.cluster = 2;
  show("cluster2_a100", c2a, a100);
  show("regs_bf16_L2_H128", prob(Mode::kLSTM, 2, false, 128, 128, 8, DType::kBFloat16), d);
  show("regs_bf16_gru_L2_H256", prob(Mode::kGRU, 2, false, 256, 256, 8, DType::kBFloat16), d);
  show("lstm_bf16_L2_H256_B8", prob(Mode::kLSTM, 2, false, 256, 256, 8, DType::kBFloat16), d);
  show("regs_tf32_L2_H96", prob(Mode::kLSTM, 2, false, 96, 96, 8, DType::kFloat32), d);
  ForwardProblem fma = prob(Mode::kLSTM, 2, false, 96, 96, 8, DType::kFloat32);
  fma.allow_tf32 = false;
  show("fma_L2_H96", fma, d);
  DeviceLimits turing = d; turing.cc_major = 7; turing.cc_minor = 5;
  show("turing", prob(Mode::kLSTM, 1, false, 8, 8, 1, DType::kFloat16), turing);
  const int bad = sweep();
  printf("\"end\": 0\n}\n");
  return bad == 0 ? 0 : 1;
}
"""


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    return run_host_program(tmp_path_factory, "plan", _PLAN_PROGRAM)


def test_backward_planner_covers_the_targets(plans):
    for name in ("lstm_bf16_L4_H512", "gru_bf16_L4_H512", "lstm_bf16_L2_H256",
                 "lstm_bf16_L4_H512_B512", "lstm_tf32_L2_H512", "lstm_tf32_L4_H256",
                 "lstm_tf32_L2_H256_B512", "lstm_bf16_L1_H1024", "odd_small"):
        assert plans[name]["ok"], (name, plans[name]["reason"])
        assert plans[name]["reason"].startswith("fused backward: ")
        assert plans[name]["grid"] <= 132
        assert plans[name]["stages"] >= 3, plans[name]
    assert plans["lstm_bf16_L4_H512"]["units"] == 16
    # the synchronisation policy: auto resolves to flags, as for the forward; grid on request
    assert plans["lstm_bf16_L4_H512"]["reason"].endswith(", flags sync")
    assert plans["grid_requested"]["reason"].endswith(", grid sync")
    assert {k: v for k, v in plans["grid_requested"].items() if k != "reason"} == \
        {k: v for k, v in plans["lstm_bf16_L4_H512"].items() if k != "reason"}
    # thread-block clusters (sm_90): auto where the per-CTA stream is >= 64 KB per step
    # (B=32: 32 rows x 4096 K x 2 bytes = 256 KB; B=1: 8 KB), the largest of 8 / 4 / 2 that
    # divides the 32 unit slices; a request is honoured or refused in words; none on sm_80
    big = plans["lstm_bf16_L4_H512"]
    assert big["cluster"] == 8 and "K stream multicast in clusters of 8 CTAs" in big["reason"]
    assert big["smem"] == 221696 + 512, big  # + 8 warps x 4 stages x 2 barriers x 8 bytes
    # 57 slices of 9 units fit first but have no cluster divisor: 64 of 8 instead
    tf32 = plans["lstm_tf32_L2_H512"]
    assert (tf32["units"], tf32["grid"], tf32["cluster"]) == (8, 128, 8), tf32
    assert plans["lstm_bf16_L4_H512_B1"]["cluster"] == 1
    assert "cluster" not in plans["lstm_bf16_L4_H512_B1"]["reason"]
    assert plans["cluster4_requested"]["cluster"] == 4
    assert plans["cluster1_requested"]["cluster"] == 1
    assert plans["cluster1_requested"]["smem"] == 221696
    assert "cluster" not in plans["cluster1_requested"]["reason"]
    assert plans["cluster8_odd"]["ok"] and plans["cluster8_odd"]["cluster"] == 1
    assert "no cluster (8 requested: it does not divide the unit slices" in \
        plans["cluster8_odd"]["reason"]
    assert plans["lstm_bf16_L2_H256_a100"]["cluster"] == 1
    assert "no cluster (2 requested: clusters need sm_90)" in plans["cluster2_a100"]["reason"]
    assert plans["lstm_bf16_L2_H256"]["slices"] == 2  # idle SMs take a share of the batch
    # honest limits, in words
    assert not plans["lstm_tf32_L4_H1024_bi"]["ok"]
    assert "shared memory" in plans["lstm_tf32_L4_H1024_bi"]["reason"]
    assert not plans["proj"]["ok"] and "proj_size" in plans["proj"]["reason"]
    assert not plans["too_many_layers"]["ok"] and "32" in plans["too_many_layers"]["reason"]
    assert not plans["turing"]["ok"] and "compute capability" in plans["turing"]["reason"]


def test_backward_planner_streams_what_does_not_fit(plans):
    """fp32 L=4 H=512: 32 unit slices of 16 per layer on 132 SMs, each tile 16 units x K
    4096 x 4 bytes = 256 KB, over the 227 KB a CTA may have. The planner keeps the
    largest prefix that fits next to the staging (3 stages: 94 KB; the top layer's rec
    segment, 128 KB, its first) and streams the rest; TF32 and exact FP32 alike."""
    for name in ("lstm_tf32_L4_H512", "lstm_tf32_L4_H512_B1", "lstm_fp32_L4_H512"):
        p = plans[name]
        assert p["ok"], (name, p["reason"])
        assert (p["units"], p["grid"], p["slices"], p["cluster"], p["reg_tiles"]) == \
            (16, 128, 1, 1, 0), p
        assert 0 < p["kres"] < p["kw"] == 4096 and p["kres"] % 16 == 0, p
        assert p["smem"] <= 232448 < p["smem"] + 16 * 16 * 4, p  # the largest prefix
        assert "streamed from L2" in p["reason"], p
    assert plans["lstm_tf32_L4_H512"]["stages"] == 3
    assert "fp32 FMA" in plans["lstm_fp32_L4_H512"]["reason"]
    # a cluster request is refused in words
    assert "no cluster (2 requested: part of the weights is streamed)" in \
        plans["lstm_tf32_L4_H512_cluster2"]["reason"]
    # whatever fits whole never streams
    for name in ("lstm_bf16_L4_H512", "lstm_tf32_L2_H512", "lstm_tf32_L4_H256"):
        assert plans[name]["kres"] == plans[name]["kw"], plans[name]


def test_backward_planner_invariants_sweep(plans):
    assert plans["sweep"]["bad"] == 0
    assert plans["sweep"]["streamed"] > 10, plans["sweep"]
    assert plans["sweep"]["accepted"] > 700
    assert plans["sweep"]["clustered"] > 50, plans["sweep"]
    assert plans["sweep"]["in_regs"] > 100, plans["sweep"]


def test_backward_planner_puts_weights_in_registers_where_they_fit(plans):
    """A warp's K split is the same tiles of every segment each step; where they fit the
    instantiation's cap (12 tiles in 16 bits, 6 in TF32, none on FP32 FMA) and the CTA has
    one 16-unit m-tile, all of them live in registers."""
    # bf16 LSTM L=2 H=128 B=8: 2 segments x ceil(32 / 8) = 8 tiles per warp
    assert plans["regs_bf16_L2_H128"]["reg_tiles"] == 8, plans["regs_bf16_L2_H128"]
    assert "weights in registers (8 tiles per warp)" in plans["regs_bf16_L2_H128"]["reason"]
    # GRU H=256: 2 x ceil(48 / 8) = 12, the 16-bit cap
    assert plans["regs_bf16_gru_L2_H256"]["reg_tiles"] == 12, plans["regs_bf16_gru_L2_H256"]
    # LSTM H=256 B<=16: 2 x 8 = 16 tiles: over the cap, shared memory
    assert plans["lstm_bf16_L2_H256_B8"]["reg_tiles"] == 0
    assert "weights in shared memory" in plans["lstm_bf16_L2_H256_B8"]["reason"]
    # TF32 LSTM L=2 H=96: 2 x ceil(24 / 8) = 6, the TF32 cap; FP32 FMA never
    assert plans["regs_tf32_L2_H96"]["reg_tiles"] == 6, plans["regs_tf32_L2_H96"]
    assert plans["fma_L2_H96"]["reg_tiles"] == 0 and "fp32 FMA" in plans["fma_L2_H96"]["reason"]


# --------------------------------------------------------------- the kernel, emulated

MODES = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]
DTYPES = ["float32", "float16", "bfloat16"]
# tolerance (max abs error / max(1, max |ref|)) vs the float64 reference on the
# same reserve: the kernel exchanges gate gradients in the dtype (bf16: 8 bits)
TOL = {("float32", False): 2e-5, ("float32", True): 6e-3, ("float16", False): 6e-3,
       ("bfloat16", False): 4e-2}


class Case(NamedTuple):
    mode: str
    L: int
    bidir: bool
    bias: bool
    I: int
    H: int
    B: int
    T: int
    dtype: str
    tf32: bool
    lengths: bool
    dropout: float
    sms: int

    @property
    def id(self):
        return (f"{self.mode}-L{self.L}{'-bi' if self.bidir else ''}"
                f"{'' if self.bias else '-nobias'}-I{self.I}-H{self.H}-B{self.B}-T{self.T}"
                f"-{self.dtype}{'-tf32' if self.tf32 else ''}{'-len' if self.lengths else ''}"
                f"{f'-p{self.dropout}' if self.dropout else ''}-sm{self.sms}")


CASES = [
    #    mode        L  bidir  bias   I    H    B   T  dtype       tf32   lens   p    sms
    Case("LSTM", 2, False, True, 13, 37, 3, 5, "float32", False, True, 0.0, 8),   # 3 CTAs/layer, partial slice
    Case("GRU", 3, False, True, 7, 24, 70, 4, "bfloat16", False, False, 0.3, 6),  # 2 passes (64 + 6 rows)
    Case("RNN_TANH", 2, True, True, 5, 20, 2, 6, "float16", False, True, 0.5, 8),
    Case("RNN_RELU", 1, False, True, 1, 1, 1, 1, "float32", True, False, 0.0, 1),  # smallest
    Case("LSTM", 3, True, True, 16, 16, 17, 3, "float32", True, True, 0.0, 6),
    Case("LSTM", 2, False, True, 4, 8, 2, 40, "bfloat16", False, False, 0.2, 4),  # long T
    Case("GRU", 2, True, True, 9, 33, 5, 7, "float32", False, True, 1.0, 8),      # p = 1
    Case("LSTM", 4, False, False, 3, 5, 1, 9, "float16", False, False, 0.0, 8),   # no bias
    Case("LSTM", 1, False, True, 20, 50, 2, 3, "bfloat16", False, True, 0.0, 2),  # U=25: 2 m-tiles
    Case("GRU", 3, True, False, 6, 10, 3, 5, "float32", True, True, 0.4, 7),
    Case("RNN_TANH", 3, False, True, 11, 9, 130, 3, "float32", False, True, 0.0, 6),  # batch slices
    Case("RNN_RELU", 2, False, False, 3, 40, 33, 4, "float16", False, False, 0.3, 12),  # slices + 3 tiles
    # long K per warp: 8 (bf16) / 5 (fp32) chunks through a 4-stage ring (stage reuse)
    Case("LSTM", 2, False, True, 8, 64, 128, 2, "bfloat16", False, False, 0.0, 8),
    Case("GRU", 1, False, True, 8, 48, 128, 3, "float32", False, True, 0.0, 4),
    # weights in registers: 12 tiles per warp (16-bit cap; 2 segments x 6), two chunks per
    # segment, 4 chunks per step through 4 stages; 2 batch tiles, the second partial
    Case("LSTM", 2, False, True, 10, 96, 20, 3, "bfloat16", False, True, 0.0, 12),
    # TF32 in registers: 19 tiles per segment over 8 warps (2 or 3 each), chunks of 2 + 1
    Case("GRU", 1, False, True, 6, 100, 3, 4, "float32", True, False, 0.0, 8),
]
# Where each case's weights are read from (the plan says; backward_reg_tiles): both
# places on each math path that has registers.
WEIGHTS = {
    CASES[1]: "weights in registers (6 tiles per warp)",      # bf16, 4 batch tiles per pass
    CASES[2]: "weights in registers (3 tiles per warp)",      # fp16, bidirectional: 3 segments
    CASES[8]: "weights in shared memory",                     # bf16, 25 units: 2 m-tiles
    CASES[12]: "weights in shared memory",                    # bf16, 2 x 16 tiles per warp
    CASES[14]: "weights in registers (12 tiles per warp)",
    CASES[15]: "weights in registers (3 tiles per warp)",     # TF32
    CASES[0]: "weights in shared memory",                     # FP32 FMA
}
# scripts/gpu_sanitize.py's problem (bf16 LSTM L=2 I=10 H=24 B=3 T=3, lengths, dropout, as
# planned for 132 SMs), and the 16-bit weights-in-shared-memory path at its batch (20 units
# per CTA: two m-tiles): where racecheck faults on an H200 (README, Limitations)
SANITIZE_CASE = Case("LSTM", 2, False, True, 10, 24, 3, 3, "bfloat16", False, True, 0.25, 132)
SANITIZE_SMEM_CASE = Case("LSTM", 2, False, True, 10, 40, 3, 3, "bfloat16", False, True, 0.25, 4)
TSAN_CASES = [CASES[i] for i in (1, 2, 10, 13)] + [SANITIZE_CASE, SANITIZE_SMEM_CASE]
# (wmma multi-pass, bidir, FMA + slices, stage ring; the sanitizer's problem, 16-bit smem)
# Both synchronisation policies run every case (FUSED_RNN_SYNC, as in the extension).
SYNCS = ["flags", "grid"]
# For the deliberately broken flag variants: few CTAs per layer (every gate gradient has
# one reader per CTA of a layer, so ThreadSanitizer's shadow cells keep each read), T
# long enough that the layers run at different speeds. The wait on the layer above needs
# layers (one CTA each); the wait on the own layer needs two unit slices (a CTA's own
# gate gradients are ordered by its own barriers).
BREAK_CASE = Case("LSTM", 3, False, True, 4, 8, 2, 12, "float32", False, False, 0.0, 3)
BREAK_CASE_SLICES = Case("LSTM", 1, False, True, 4, 24, 2, 12, "float32", False, False, 0.0, 2)
# Clusters of 2 CTAs (2 unit slices per layer) whose warps stream more chunks per step
# than they have stages (128 rows: one warp per batch tile, 8 chunks of fp32 through 4
# stages), so a stage is refilled while the step's other chunks are in use.
BREAK_CASE_CLUSTER = Case("LSTM", 2, False, True, 4, 32, 128, 3, "float32", False, False, 0.0, 4)
# Clusters with weights in registers (bf16, 8 tiles per warp in 2 chunks of 4) and 3
# passes of up to 128 rows: 6 chunks per warp and step through 4 stages, the stage ring
# carried across the passes.
CLUSTER_CASE_REGS = Case("LSTM", 1, False, True, 4, 32, 260, 2, "bfloat16", False, False, 0.0, 2)


def _emu_build(tmp_path_factory, sanitize):
    exe, stderr = build_emulator(tmp_path_factory, "backward_emu_main.cpp", "backward_emu",
                                 sanitize)
    assert "warning" not in stderr, stderr[-6000:]
    return exe


@pytest.fixture(scope="module")
def emu_asan(tmp_path_factory):
    return _emu_build(tmp_path_factory, "address,undefined")


@pytest.fixture(scope="module")
def emu_tsan(tmp_path_factory):
    return _emu_build(tmp_path_factory, "thread")


_GRADS_OP = r"""
#include <torch/library.h>
#include "torch/backward_grads.h"

static std::tuple<at::Tensor, std::vector<at::Tensor>> weight_grads(
    const at::Tensor& input, at::TensorList weights, const at::Tensor& hx,
    const at::Tensor& reserve, const at::Tensor& dg_ih, const at::Tensor& dg_hh,
    const std::optional<at::Tensor>& xdrop, int64_t num_layers, bool bidirectional,
    bool has_biases, int64_t gates) {
  return fused_rnn::binding::backward_weight_grads(
      input, weights.vec(), hx, reserve, dg_ih, dg_hh, xdrop.has_value() ? *xdrop : at::Tensor(),
      num_layers, bidirectional, has_biases, gates);
}

TORCH_LIBRARY(fused_rnn_cpu_test, m) {
  m.def("weight_grads(Tensor input, Tensor[] weights, Tensor hx, Tensor reserve, Tensor dg_ih, "
        "Tensor dg_hh, Tensor? xdrop, int num_layers, bool bidirectional, bool has_biases, "
        "int gates) -> (Tensor, Tensor[])", &weight_grads);
}
"""


@pytest.fixture(scope="module")
def grads_op(tmp_path_factory):
    """The binding's post-kernel GEMM code (csrc/torch/backward_grads.h), built for CPU tensors."""
    if CXX is None:
        pytest.skip("no host C++ compiler")
    if hasattr(torch.ops.fused_rnn_cpu_test, "weight_grads"):
        return torch.ops.fused_rnn_cpu_test.weight_grads
    from torch.utils.cpp_extension import include_paths

    d = tmp_path_factory.mktemp("bwd_grads")
    src, lib = d / "grads.cpp", d / "libgrads.so"
    src.write_text(_GRADS_OP)
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    base = [CXX, "-O1", "-shared", "-fPIC", "-w", *[f"-I{p}" for p in include_paths()],
            f"-I{CSRC}", str(src), "-o", str(lib), f"-L{torch_lib}", "-lc10", "-ltorch_cpu",
            f"-Wl,-rpath,{torch_lib}", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    for std in ("-std=c++17", "-std=c++20"):
        proc = subprocess.run(base + [std], capture_output=True, text=True)
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, proc.stderr[-6000:]
    torch.ops.load_library(str(lib))
    return torch.ops.fused_rnn_cpu_test.weight_grads


def _run_and_check(exe, grads_op, case: Case, tmp_path, extra_args=(), sync="flags",
                   cluster="auto", smem=None):
    """Runs the emulated backward kernel on `case` under synchronisation policy `sync`
    (FUSED_RNN_SYNC, as in the extension) and cluster request `cluster`
    (FUSED_RNN_CLUSTER; `extra_args`: the driver's optional trailing arguments, e.g. a
    phase buffer), checks it against the reference, and returns the driver's stdout (the
    plan). `smem`: the emulated device's shared memory per CTA (FRNN_EMU_SMEM), default
    an H100's."""
    from fused_rnn import reference

    inp = random_stack(case, grads=True)
    dt = getattr(torch, case.dtype)
    D = 2 if case.bidir else 1
    G = reference.GATES[case.mode]
    LD, T, B, H = case.L * D, case.T, case.B, case.H
    stride = 4 if case.bias else 2
    # the reserve as the forward computes it in the dtype (what the op saves)
    _, _, _, reserve = reference.rnn_forward(
        inp["x"], inp["w"], inp["hx"], inp["cx"], inp["lengths"], inp["seed"], case.mode, case.L,
        case.bidir, case.bias, 0, case.dropout, True)
    # gate columns past a length are unspecified by the contract: poison them (NaN)
    kernel_reserve = reserve.clone()
    valid = torch.ones(T, B, dtype=torch.bool)
    if inp["lengths"] is not None:
        valid = torch.arange(T).unsqueeze(1) < inp["lengths"].unsqueeze(0)
        n_gate_cols = {"LSTM": 4 * H, "GRU": 4 * H}.get(case.mode, 0)
        if n_gate_cols:
            kernel_reserve[:, ~valid, :n_gate_cols] = float("nan")

    kernel_w = []
    for ld in range(LD):
        kernel_w += inp["w"][ld * stride:ld * stride + 2]
    blobs = [*kernel_w, inp["hx"]] + ([inp["cx"]] if inp["cx"] is not None else []) + \
        ([inp["lengths"]] if inp["lengths"] is not None else []) + \
        ([inp["seed"].reshape(1)] if inp["seed"] is not None else []) + \
        [kernel_reserve, inp["gout"], inp["ghy"]] + ([inp["gcy"]] if inp["gcy"] is not None else [])
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    write_tensors(src, blobs)
    args = [str(exe)] + [str(v) for v in (
        MODES.index(case.mode), case.L, int(case.bidir), case.I, case.H, case.B, case.T,
        DTYPES.index(case.dtype), int(case.tf32), int(case.lengths), case.dropout, case.sms)] + \
        [str(src), str(dst)] + [str(a) for a in extra_args]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, FUSED_RNN_SYNC=sync, FUSED_RNN_CLUSTER=cluster,
                                   **({"FRNN_EMU_SMEM": str(smem)} if smem else {})))
    assert proc.returncode == 0, f"emulated backward kernel failed ({proc.returncode}):\n" \
        f"{proc.stdout}\n{proc.stderr[-8000:]}"
    assert proc.stdout.startswith("fused backward: "), proc.stdout
    assert proc.stdout.strip().endswith(f", {sync} sync"), proc.stdout
    if cluster not in ("auto", "1"):
        assert f"K stream multicast in clusters of {cluster} CTAs" in proc.stdout, proc.stdout
    print(proc.stdout.strip())

    out = TensorReader(dst, dt)
    ghp = (G * H + 15) // 16 * 16
    dg_ih = out.take(LD, T, B, ghp)
    dg_hh = out.take(LD, T, B, ghp) if case.mode == "GRU" else dg_ih
    use_dropout = case.dropout > 0 and case.L > 1
    xdrop = out.take(case.L - 1, T, B, D * H) if use_dropout else None
    grad_hx = out.take(LD, B, H)
    grad_cx = out.take(LD, B, H) if case.mode == "LSTM" else None
    assert out.pos == len(out.raw)

    # structure: finite, zero padding columns, zero gate gradients past a length
    for t_ in (dg_ih, dg_hh, grad_hx) + ((grad_cx,) if grad_cx is not None else ()):
        assert bool(torch.isfinite(t_.float()).all())
    assert (dg_ih[..., G * H:] == 0).all() and (dg_hh[..., G * H:] == 0).all()
    assert (dg_ih[:, ~valid] == 0).all() and (dg_hh[:, ~valid] == 0).all()
    if xdrop is not None:  # bit-identical to the forward's dropped layer outputs
        from fused_rnn.dropout import apply_dropout

        for layer in range(case.L - 1):
            h = torch.cat([reserve[layer * D + d][..., -H:] for d in range(D)], dim=2)
            h = h * valid.unsqueeze(2).to(dt)
            want = apply_dropout(h.float(), inp["seed"], layer, case.dropout, D).to(dt)
            assert torch.equal(xdrop[layer], want), layer

    # the binding's GEMMs, on the CPU
    grad_input, grad_w = grads_op(inp["x"], inp["w"], inp["hx"], kernel_reserve, dg_ih, dg_hh,
                                  xdrop, case.L, case.bidir, case.bias, G)

    d64 = (lambda t: None if t is None else t.double())
    ref = reference.rnn_backward(
        d64(inp["gout"]), d64(inp["ghy"]), d64(inp["gcy"]) if inp["gcy"] is not None else None,
        d64(inp["x"]), [w.double() for w in inp["w"]], d64(inp["hx"]), d64(inp["cx"]),
        inp["lengths"], inp["seed"], reserve.double(), case.mode, case.L, case.bidir, case.bias,
        0, case.dropout)
    tol = TOL[(case.dtype, case.tf32 and case.dtype == "float32")]
    errs = {"grad_input": rel_err(grad_input, ref[0]), "grad_hx": rel_err(grad_hx, ref[2])}
    if grad_cx is not None:
        errs["grad_cx"] = rel_err(grad_cx, ref[3])
    names = ["w_ih", "w_hh", "b_ih", "b_hh"][:stride]
    for i, (got, want) in enumerate(zip(grad_w, ref[1])):
        assert got.shape == want.shape and got.dtype == dt, (i, got.shape, want.shape)
        errs[f"{names[i % stride]}[{i // stride}]"] = rel_err(got, want)
    print({k: f"{v:.2e}" for k, v in errs.items()})
    worst = max(errs, key=errs.get)
    assert errs[worst] <= tol, (worst, errs[worst], tol, errs)
    return proc.stdout


@pytest.mark.parametrize("sync", SYNCS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_emulated_backward_matches_reference(emu_asan, grads_op, case, sync, tmp_path):
    plan = _run_and_check(emu_asan, grads_op, case, tmp_path, sync=sync)
    if case in WEIGHTS:
        assert WEIGHTS[case] in plan, plan


# Streamed weights (BackwardConfig::kres < kw): an emulated device with less shared memory
# per CTA (FRNN_EMU_SMEM) gives these small problems the plans fp32 L=4 H=512 gets on an
# H100 -- a resident prefix of the weight tile, the rest copied from the workspace with
# each chunk. (case, shared memory per CTA, what the plan says)
STREAM_CASES = [
    # FP32 FMA, 2 m-tiles (32 units), lengths: 24 of 128 KB resident; the top layer's tile
    # starts with its rec segment (64 KB): 24 KB of it resident
    (Case("LSTM", 2, False, True, 13, 128, 3, 4, "float32", False, True, 0.0, 8), 170000,
     "weights in shared memory (24.0 KB of 128.0 KB, the rest, 104.0 KB per CTA per step, "
     "streamed from L2)"),
    # nothing resident: every chunk streamed
    (Case("LSTM", 2, False, True, 13, 128, 3, 4, "float32", False, True, 0.0, 8), 144896,
     "(0.0 KB of 128.0 KB"),
    # TF32, 30 units (the last slice 28), K padding (GH = 472 of 480), dropout
    (Case("LSTM", 2, False, True, 7, 118, 5, 3, "float32", True, False, 0.3, 8), 160000,
     "(18.8 KB of 112.5 KB"),
    # bf16, 32 units (the last slice 30), 2 batch tiles per pass, the resident prefix ends
    # inside a chunk of 4 tiles (5 KB: 2.5 tiles); GRU bidirectional below
    (Case("LSTM", 2, False, True, 8, 190, 40, 3, "bfloat16", False, True, 0.0, 12), 150000,
     "(5.0 KB of 96.0 KB"),
    (Case("GRU", 2, True, True, 5, 160, 3, 3, "float16", False, False, 0.2, 20), 150000,
     "(5.0 KB of 90.0 KB"),
]


def _stream_id(value):
    return value.id if isinstance(value, Case) else (f"smem{value}" if isinstance(value, int)
                                                     else "")


@pytest.mark.parametrize("sync", SYNCS)
@pytest.mark.parametrize("case,smem,says", STREAM_CASES, ids=_stream_id)
def test_emulated_backward_with_streamed_weights(emu_asan, grads_op, case, smem, says, sync,
                                                 tmp_path):
    plan = _run_and_check(emu_asan, grads_op, case, tmp_path, sync=sync, smem=smem)
    assert says in plan, plan


@pytest.mark.parametrize("sync", SYNCS)
@pytest.mark.parametrize("case,smem,says", STREAM_CASES[2:4], ids=_stream_id)
def test_emulated_streamed_weights_have_no_data_races(emu_tsan, grads_op, case, smem, says, sync,
                                                      tmp_path):
    plan = _run_and_check(emu_tsan, grads_op, case, tmp_path, sync=sync, smem=smem)
    assert says in plan, plan


@pytest.mark.parametrize("sync", SYNCS)
@pytest.mark.parametrize("case", TSAN_CASES + [BREAK_CASE, BREAK_CASE_SLICES], ids=lambda c: c.id)
def test_emulated_backward_has_no_data_races(emu_tsan, grads_op, case, sync, tmp_path):
    plan = _run_and_check(emu_tsan, grads_op, case, tmp_path, sync=sync)
    if case == SANITIZE_SMEM_CASE:
        assert "weights in shared memory" in plan and "20 units each" in plan, plan


# Thread-block clusters (cluster_copy.cuh): each chunk of the gate-gradient stream is
# fetched once per cluster, each CTA multicasting a share of its rows into every CTA's
# stage, with full / empty mbarriers per warp and stage. The emulation models the
# cluster's barrier, mapa, the mbarriers' arrivals, bytes and phases, and the multicast
# (csrc/emu/emu_cluster.h). The shapes are forced into clusters (FUSED_RNN_CLUSTER) --
# too small for the planner's own rule -- and cover: a partial batch tile (5 rows over 4
# CTAs), several passes and the FP32 FMA path, bidirectional, TF32 with batch slices (a
# cluster per batch slice), stages reused across items and steps.
CLUSTER_CASES = [
    (Case("LSTM", 2, False, True, 6, 64, 5, 4, "bfloat16", False, True, 0.0, 8), "4"),
    (Case("GRU", 2, True, True, 7, 32, 19, 3, "float32", False, False, 0.3, 8), "2"),
    (Case("LSTM", 1, False, True, 9, 64, 40, 5, "float32", True, False, 0.0, 12), "4"),
    (Case("RNN_TANH", 3, False, True, 5, 32, 3, 6, "float16", False, True, 0.0, 12), "2"),
]


def _cluster_id(v):
    return v.id if isinstance(v, Case) else f"cluster{v}"


@pytest.mark.parametrize("sync", SYNCS)
@pytest.mark.parametrize("case,cluster", CLUSTER_CASES, ids=_cluster_id)
def test_emulated_backward_in_clusters(emu_asan, grads_op, case, cluster, sync, tmp_path):
    plan = _run_and_check(emu_asan, grads_op, case, tmp_path, sync=sync, cluster=cluster)
    # the multicast stream feeds register-resident weights too (bf16: 2 segments x 2
    # tiles; TF32 in 3 batch slices of 16 rows: 8 K splits of 16 tiles)
    want = {CLUSTER_CASES[0][0]: 4, CLUSTER_CASES[2][0]: 2}.get(case)
    if want:
        assert f"weights in registers ({want} tiles per warp)" in plan, plan


@pytest.mark.parametrize("case,cluster",
                         CLUSTER_CASES[:2] + [(BREAK_CASE_CLUSTER, "2"), (CLUSTER_CASE_REGS, "2")],
                         ids=_cluster_id)
def test_emulated_backward_in_clusters_has_no_data_races(emu_tsan, grads_op, case, cluster,
                                                         tmp_path):
    _run_and_check(emu_tsan, grads_op, case, tmp_path, cluster=cluster)


# Deliberately broken flag synchronisation of the backward (FRNN_EMU_BREAK, common.h):
# each must be caught. ThreadSanitizer follows the emulated flags' acquire / release
# orders: a consumer whose wait is too weak (1) or one step short (6: the layer above;
# 7: its own layer) reads gate gradients that no release ordered before its read -- a
# data race -- or, where the producer happens not to have written them yet, the poison
# the workspace starts with: non-finite or wrong gradients. Either way the run fails.
BACKWARD_BREAKS = {1: "relaxed instead of acquire", 6: "layer above one step short",
                   7: "own layer one step short", 8: "cluster producer skips the empty barrier",
                   9: "cluster consumer skips the full barrier",
                   10: "cluster barrier waits relaxed"}
# (the broken variant's case, the unit slices per layer its plan must have, and the
# cluster request)
BREAK_CASES = {1: (BREAK_CASE, 1, "1"), 6: (BREAK_CASE, 1, "1"), 7: (BREAK_CASE_SLICES, 2, "1"),
               8: (BREAK_CASE_CLUSTER, 2, "2"), 9: (BREAK_CASE_CLUSTER, 2, "2"),
               10: (BREAK_CASE_CLUSTER, 2, "2")}


@pytest.fixture(scope="module", params=sorted(BACKWARD_BREAKS),
                ids=lambda b: BACKWARD_BREAKS[b].replace(" ", "-"))
def emu_broken(request, tmp_path_factory):
    exe, stderr = build_emulator(tmp_path_factory, "backward_emu_main.cpp", "backward_emu",
                                 "thread", defines=(f"FRNN_EMU_BREAK={request.param}",))
    return request.param, exe


def test_broken_backward_synchronisation_is_caught(emu_broken, grads_op, tmp_path):
    which, exe = emu_broken
    case, slices, cluster = BREAK_CASES[which]
    with pytest.raises(AssertionError) as caught:
        plan = _run_and_check(exe, grads_op, case, tmp_path, sync="flags", cluster=cluster)
        assert f"({slices} per layer-direction x 1 batch slices" in plan, "PLAN: " + plan
    msg = str(caught.value)
    assert not msg.startswith("PLAN: "), msg
    # a race, or a run that finished with wrong results (the checks after the run)
    raced = "ThreadSanitizer: data race" in msg
    assert raced or not msg.startswith("emulated backward kernel failed"), msg[-4000:]
    print("caught:", "data race" if raced else msg.splitlines()[0][:200])


# --------------------------------------------------------------- the C++ schemas


def _schema_in(path, name):
    """The schema string of op `name` in a TORCH_LIBRARY m.def(...) of a C++ file."""
    src = open(path).read()
    defs = ["".join(re.findall(r'"([^"]*)"', d))
            for d in re.findall(r'm\.def\(\s*((?:"[^"]*"\s*)+)\)', src)]
    hits = [d for d in defs if d.startswith(name + "(")]
    assert len(hits) == 1, (path, name, defs)
    return hits[0][len(name):]


def test_cpp_schemas_are_the_ops_schemas():
    """_fused_forward / _fused_backward are declared with exactly rnn_forward / rnn_backward's
    schemas (fused_rnn/ops.py): the Python side passes the same arguments to both."""
    from fused_rnn import ops

    for file, name, schema in (("forward_op.cpp", "_fused_forward", ops.FORWARD_SCHEMA),
                               ("backward_op.cpp", "_fused_backward", ops.BACKWARD_SCHEMA)):
        got = _schema_in(os.path.join(CSRC, "torch", file), name)
        a = torch._C.parse_schema("f" + got)
        b = torch._C.parse_schema("f" + schema)
        assert str(a) == str(b), (file, str(a), str(b))
