"""Smoke tests of the fused CUDA kernels: the first GPU stage of scripts/gpu_check.sh.

Small and fast (the stage has 30 s in all, interpreter and CUDA start included), and
ordered so that the first failure is the most basic one:

1. the tiny forward, then the tiny backward (L=1, T=1, fp32): launch, plan, one step;
2. the forward, L=2, T>=3 (so the wavefront takes several synchronised steps and uses
   several slots of the h ring), exact FP32 FMA first, then the tensor-core fragments of
   TF32, bf16, fp16 (mma.sync, weights held in registers, activations by ldmatrix); then
   the bidirectional schedule, lengths, in-kernel dropout, the recurrence in
   thread-block clusters (FUSED_RNN_SYNC=cluster, opt-in; sm_90: st.async pushes of h
   into the peers' shared memory, mbarrier transaction counts; elsewhere the plan falls
   back to flags and says why); last, TF32 L=4 H=512, whose weights (33.5 MB) are split
   between registers and shared memory. The
   forward has two synchronisation policies (FUSED_RNN_SYNC: grid = one grid.sync() per
   wave step, flags = point-to-point step counters; unset = auto = flags): the exact FP32
   case (several CTAs per layer) and the bf16 one run once under each, asserting from the
   plan string that the policy asked for is the one planned; the others under the
   environment's default;
3. the backward, ISOLATED from the forward: the float64 reference forward makes the
   reserve and output (rounded to the case's dtype), the fused backward runs on them,
   and its gradients are compared with the float64 reference backward of that same
   rounded reserve -- so a backward fault is never a forward fault in disguise. Same
   order, then three layers at their own pace under the flags policy, thread-block
   clusters of 2 (forced; sm_90: the multicast K stream), last a case that
   streams more K chunks per warp than the cp.async ring has stages (the ring wraps),
   asserted from the backward plan string. The backward has the same two policies: the
   TF32 case (several CTAs per layer) and the bidirectional one (each direction waits
   for the other direction above) run once under each.

Every check names the case, the tensor (output, h_n, c_n, reserve, grad_input, grad_hx,
grad_cx, grad_w_ih_l0, grad_b_hh_l1_reverse, ...), the first non-finite index and value or
the index of the largest error with got vs expected and the allowed tolerance, and prints
one line per tensor with cuDNN's error (torch.nn, same dtype and TF32 setting, same
weights) beside it. Accuracy rule as in the full tests (gpu_helpers.FWD_* / BWD_*).

The check functions take the "fused" callable and a device: the GPU tests below pass
torch.ops.fused_rnn._fused_forward / _fused_backward and "cuda";
tests/test_smoke_harness.py passes reference stand-ins (must pass) and deliberately
broken ones (must fail, naming the right case, tensor and index) on the CPU.

GPU time (H100, estimated, not measured: no GPU run yet): 27 tests (2 tiny; 13 forward: 11
cases, 2 of them under both synchronisation policies; 12 backward: 10 cases, 2 of them
under both), each one fused launch
on tiny tensors (well under 1 ms of kernel time, T+L-1 <= 7 wave steps), the float64
reference on the GPU (~100-300 small launches per forward or backward, a few per case:
~2-10 ms), one cuDNN call (+ autograd for the backward; a
new cuDNN plan per shape, ~10-50 ms), the allocator poison (a 96 MB fill, ~0.1 ms): so
~20-100 ms per test, ~0.5-2 s for the file, plus one-time costs in the first test
(extension load, cuBLAS/cuDNN handles: ~1-2 s). The Python side is the same work the CPU
harness does (all 17 checks plus 24 deliberately failing ones in ~3 s on 2 cores). So
~2-4 s of the stage's 30 s, and no test near the 15 s per-test limit.
"""

from __future__ import annotations

import functools
import re
import zlib
from typing import NamedTuple

import pytest
import torch
from gpu_helpers import (BWD_CAP, BWD_FLOOR, DTYPE, FWD_CAP, FWD_FLOOR, SYNC_POLICIES, Case,
                         Tol, assert_sync, backward_args, compare_named, covered_or_skip,
                         cudnn_backward,
                         cudnn_forward, describe_index, valid_mask,
                         forward_args, forward_named, grads_named,
                         make_inputs, poison_allocator, raise_problems, reference_backward64,
                         reference_forward64, rel_err, tolerance)

from fused_rnn import reference

pytestmark = pytest.mark.gpu


# ----------------------------------------------------------------------------- cases


class Smoke(NamedTuple):
    case: Case
    path: str                # what it reaches (the report and the test id's meaning)
    multi_cta: bool = False  # its plan must split each layer-direction over > 1 CTA
    ring_wraps: bool = False  # backward: more K chunks per warp than cp.async stages
    both_sync: bool = False  # run once under each FUSED_RNN_SYNC policy (grid, flags)
    # forward: its plan must hold weight tiles both in registers and in shared memory
    smem_weights: bool = False
    # backward: run with FUSED_RNN_CLUSTER=<cluster>; on sm_90 its plan must use it
    cluster: int = 0
    # backward: its plan must stream part of its weights (BackwardConfig::kres)
    streamed: bool = False
    # forward: run with FUSED_RNN_SYNC=cluster; on sm_90 its plan must run the recurrence
    # in thread-block clusters (st.async pushes of h, mbarriers)
    cluster_rec: bool = False


# L=1, T=1, fp32 (moved here from test_forward_gpu.py / test_backward_gpu.py)
TINY = Case("LSTM", 1, False, 3, 5, 2, 1, True, "fp32", False)
TINY_FORWARD_KW = dict(need_reserve=False, strict=1e-5)  # inference path; as before the move
TINY_BACKWARD_KW = dict(strict=1e-5)

FORWARD = [
    Smoke(Case("LSTM", 2, False, 7, 19, 5, 3, True, "fp32", False),
          "exact FP32 FMA, 4 synchronised wave steps between several CTAs per layer, partial "
          "slices; grid barrier (2-slot h ring) and point-to-point flags", multi_cta=True,
          both_sync=True),
    Smoke(Case("GRU", 2, False, 13, 37, 3, 3, True, "tf32", False),
          "TF32 mma.sync fragments (m16n8k8), GRU's split x/h sums"),
    Smoke(Case("RNN_TANH", 2, False, 9, 45, 6, 3, True, "bf16", False),
          "bf16 mma.sync fragments (m16n8k16) in registers, ldmatrix, RNN cell; grid barrier "
          "and point-to-point flags", both_sync=True),
    Smoke(Case("LSTM", 2, False, 33, 70, 19, 3, True, "fp16", False),
          "fp16 mma.sync fragments, 18 CTAs per layer, 8-column mma tiles (B=19)",
          multi_cta=True),
    Smoke(Case("GRU", 2, True, 11, 24, 4, 3, True, "bf16", False),
          "bidirectional schedule (L*T steps), whole-sequence layer buffers"),
    Smoke(Case("RNN_RELU", 2, False, 5, 33, 7, 4, False, "fp16", True),
          "lengths (frozen state past each length, zero output rows), no bias"),
    Smoke(Case("LSTM", 2, False, 6, 20, 3, 3, True, "fp32", False, 0.5),
          "in-kernel Philox dropout == the reference's masks for the same seed"),
    Smoke(Case("LSTM", 3, False, 10, 40, 4, 9, True, "fp16", False, 0.5),
          "flags: rings of 4 slots reused (T=9), producers waiting for the layer above, "
          "dropped copies in their own ring; 3 layers (default policy: flags)", multi_cta=True),
    Smoke(Case("LSTM", 2, False, 13, 40, 3, 5, True, "fp16", True, 0.5),
          "the recurrence in thread-block clusters of 5 (sm_90; FUSED_RNN_SYNC=cluster): h "
          "pushed into the peers' shared memory with st.async, mbarrier transaction counts, "
          "two X tiles; lengths, dropout (the layer above reads the dropped ring)",
          multi_cta=True, cluster_rec=True),
    Smoke(Case("GRU", 3, False, 7, 37, 1, 6, True, "fp16", False),
          "clusters of 5 with a partial last slice (5 units: a padded 16-byte chunk), B=1, "
          "3 layers reading each other's h ring", multi_cta=True, cluster_rec=True),
    Smoke(Case("LSTM", 4, False, 512, 512, 2, 3, True, "tf32", False),
          "weights split between registers (14 tiles per warp) and shared memory (fragment "
          "order, one 16-byte load per lane): TF32 L=4 H=512, 33.5 MB of weights on chip",
          multi_cta=True, smem_weights=True),
]

BACKWARD = [
    Smoke(Case("GRU", 2, False, 7, 19, 5, 3, True, "fp32", False),
          "exact FP32 FMA, reverse wavefront grid barrier, above + rec K, grad_hx step"),
    Smoke(Case("LSTM", 2, False, 13, 37, 3, 3, True, "tf32", False),
          "TF32 wmma fragments, 3 CTAs per layer (partial last slice); grid barrier and "
          "point-to-point flags", multi_cta=True, both_sync=True),
    Smoke(Case("RNN_RELU", 2, False, 9, 45, 6, 3, True, "bf16", False),
          "bf16 wmma fragments, RNN cell"),
    Smoke(Case("GRU", 2, False, 33, 70, 19, 3, True, "fp16", False),
          "fp16 wmma fragments, 2 batch tiles x 4 K splits per pass (B=19)", multi_cta=True),
    Smoke(Case("RNN_TANH", 2, True, 11, 24, 4, 3, True, "bf16", False),
          "bidirectional schedule (L*T+1 steps), both directions' above parts; flags: each "
          "direction waits for the other direction above", both_sync=True),
    Smoke(Case("LSTM", 2, False, 5, 33, 7, 4, False, "fp16", True),
          "lengths (gradient passed through frozen steps), no bias"),
    Smoke(Case("GRU", 2, False, 6, 20, 3, 3, True, "fp32", False, 0.5),
          "dropout masks regenerated from the seed in the backward"),
    Smoke(Case("LSTM", 3, False, 10, 40, 4, 9, True, "fp16", False),
          "flags: 3 layers at their own pace (T=9), waits on the own layer's slices and the "
          "layer above (default policy: flags)", multi_cta=True),
    Smoke(Case("GRU", 2, False, 9, 64, 6, 3, True, "bf16", False),
          "thread-block clusters of 2 (sm_90; forced): bulk copies multicast to both CTAs, "
          "full / empty mbarriers, cluster barriers", multi_cta=True, cluster=2),
    Smoke(Case("LSTM", 4, False, 512, 512, 2, 3, True, "tf32", False),
          "streamed weights: TF32 L=4 H=512's 256 KB tile per CTA, a prefix in shared memory "
          "and the rest copied from the workspace with each chunk (cp.async)",
          multi_cta=True, streamed=True),
    Smoke(Case("LSTM", 2, False, 40, 512, 8, 3, True, "bf16", False),
          "cp.async stage ring wraps: more 128-byte K chunks per warp than stages",
          multi_cta=True, ring_wraps=True),
]


def input_seed(case: Case) -> int:
    return zlib.crc32(case.id.encode()) % 1000


# ----------------------------------------------------------------------------- device


def _poison(device):
    if torch.device(device).type == "cuda":
        poison_allocator()


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- checks
# Device-agnostic: `fused_forward` / `fused_backward` take the ops' arguments and return
# their results; tests/test_smoke_harness.py runs these on the CPU with stand-ins.


def check_forward(case: Case, fused_forward, device, *, need_reserve=True, strict=None,
                  log=print):
    """The fused forward vs the float64 reference on the same quantised inputs (scale:
    cuDNN's error; with dropout, cuDNN's error on the case without dropout; the fused
    output must equal the reference with the same seed). Checks output, h_n, c_n and,
    with `need_reserve`, the reserve on valid timesteps. Returns {tensor: error}."""
    dt = DTYPE[case.prec]
    inp = make_inputs(case, seed=input_seed(case), device=device)
    _poison(device)
    res = fused_forward(*forward_args(case, inp, need_reserve=need_reserve))
    _sync(device)
    ref = reference_forward64(case, inp, need_reserve=need_reserve)
    got_n, ref_n = forward_named(case, res), forward_named(case, ref)
    problems = []
    if case.mode != "LSTM" and res[2].numel() != 0:
        problems.append(f"{case.id}: c_n must be empty for {case.mode}, got shape "
                        f"{tuple(res[2].shape)}")

    # the scale: cuDNN (no dropout) vs the float64 reference of the same problem
    base = case._replace(dropout=0.0)
    binp = dict(inp, seed=None)
    base_ref = ref if base == case else reference_forward64(base, binp)
    base_ref_n = forward_named(base, base_ref)
    try:
        cudnn = {n: rel_err(t, base_ref_n[n])
                 for n, t in forward_named(base, cudnn_forward(base, binp)).items()}
    except RuntimeError as e:  # e.g. a dtype cuDNN's RNN does not take
        log(f"{case.id}: cuDNN failed ({e}); checking against the floor only")
        cudnn = {n: 0.0 for n in got_n}
    # the full forward test's rule: max error <= 2 x (max cuDNN error) + floor, <= cap
    scale = max(cudnn.values())
    tol = {n: tolerance(scale, FWD_FLOOR[case.prec], FWD_CAP[case.prec], strict)
           for n in got_n}
    if case.dropout > 0:
        # the case must be able to tell a missing dropout: the masks change the output
        moved = rel_err(ref[0], base_ref[0])
        assert moved > 10 * tol["output"].allowed, (
            f"{case.id}: test setup: dropout p={case.dropout} moves the reference output by "
            f"only {moved:.3g} (allowed error {tol['output'].allowed:.3g}); it could not tell "
            f"a missing dropout: use a larger p or more units")
    errs, probs = compare_named(case.id, got_n, ref_n, tol, cudnn, dtype=dt, log=log,
                                where=functools.partial(describe_index, case))
    problems += probs

    valid = valid_mask(case, inp["lengths"], device)
    if case.lengths and not any(p.startswith(f"{case.id}: output ") for p in probs):
        past = res[0][~valid]  # (rows past their length, D*H): exactly zero
        nz = (past != 0).nonzero()
        if nz.numel():
            rows = (~valid).nonzero()
            r, j = int(nz[0, 0]), int(nz[0, 1])
            t, b = int(rows[r, 0]), int(rows[r, 1])
            problems.append(f"{case.id}: output past lengths[{b}] = {int(inp['lengths'][b])} "
                            f"is not zero: index {(t, b, j)} = {past[r, j].item()}")
    if need_reserve:
        # same layout and values as the reference's, on valid timesteps (full test's rule)
        if tuple(res[3].shape) != tuple(ref[3].shape):
            problems.append(f"{case.id}: reserve has shape {tuple(res[3].shape)}, expected "
                            f"{tuple(ref[3].shape)}")
        else:
            # (allowed as in test_forward_matches_reference)
            err = max(errs.values())
            r_tol = {"reserve": Tol(max(4 * err, 4 * FWD_FLOOR[case.prec]) + 2 * scale,
                                    f"max(4 x fused error {err:.3g}, 4 x floor "
                                    f"{FWD_FLOOR[case.prec]:.3g}) + 2 x cuDNN {scale:.3g}")}
            r_errs, probs = compare_named(case.id, {"reserve": res[3][:, valid]},
                                          {"reserve": ref[3][:, valid]}, r_tol,
                                          {"reserve": scale}, dtype=dt, log=log)
            errs.update(r_errs)
            problems += probs
    else:
        if res[3].numel() != 0:
            problems.append(f"{case.id}: reserve must be empty without need_reserve, got "
                            f"shape {tuple(res[3].shape)}")
    raise_problems(problems)
    return errs


def check_backward(case: Case, fused_backward, device, *, strict=None, log=print):
    """The fused backward, isolated from the forward: on the float64 reference forward's
    output and reserve rounded to the case's dtype, vs the float64 reference backward of
    that same rounded reserve. Scale: cuDNN's gradient error vs the float64 reference of
    the whole problem (without dropout for a dropout case). Returns {tensor: error}."""
    dt = DTYPE[case.prec]
    inp = make_inputs(case, seed=input_seed(case), backward=True, device=device)
    fwd64 = reference_forward64(case, inp, need_reserve=True)
    out_q, res_q = fwd64[0].to(dt), fwd64[3].to(dt)
    _poison(device)
    got = fused_backward(*backward_args(case, inp, out_q, res_q))
    _sync(device)
    ref = reference_backward64(case, inp, res_q)
    got_n, ref_n = grads_named(case, got), grads_named(case, ref)
    problems = []
    if case.mode != "LSTM" and got[3].numel() != 0:
        problems.append(f"{case.id}: grad_cx must be empty for {case.mode}, got shape "
                        f"{tuple(got[3].shape)}")

    base = case._replace(dropout=0.0)
    binp = dict(inp, seed=None)
    base_fwd = fwd64 if base == case else reference_forward64(base, binp, need_reserve=True)
    exact_n = grads_named(base, reference_backward64(base, binp, base_fwd[3]))
    try:
        cudnn = {n: rel_err(t, exact_n[n])
                 for n, t in grads_named(base, cudnn_backward(base, binp)).items()}
    except RuntimeError as e:  # e.g. a dtype cuDNN's RNN does not take
        log(f"{case.id}: cuDNN failed ({e}); checking against the floor only")
        cudnn = {n: 0.0 for n in got_n}
    tol = {n: tolerance(cudnn[n], BWD_FLOOR[case.prec], BWD_CAP[case.prec], strict)
           for n in got_n}
    if case.dropout > 0:
        moved = rel_err(ref_n["grad_input"], exact_n["grad_input"])
        assert moved > 10 * tol["grad_input"].allowed, (
            f"{case.id}: test setup: dropout p={case.dropout} moves the reference grad_input "
            f"by only {moved:.3g} (allowed error {tol['grad_input'].allowed:.3g}); it could "
            f"not tell a missing dropout: use a larger p or more units")
    errs, probs = compare_named(case.id, got_n, ref_n, tol, cudnn, dtype=dt, log=log,
                                where=functools.partial(describe_index, case))
    raise_problems(problems + probs)
    return errs


# ----------------------------------------------------------------------------- plans
# (covered_or_skip, the rule for planner rejections: gpu_helpers.py)
# Pure functions of the planner's strings (csrc/kernels/forward_plan.h describe(),
# backward_plan.h describe_backward()); the CPU harness feeds them strings.


_PER_DIR = re.compile(r"; (\d+) CTAs \((\d+) per layer-direction")
_BWD_PLAN = re.compile(
    r"^fused backward: .*; (?P<grid>\d+) CTAs \((?P<per_dir>\d+) per layer-direction x "
    r"(?P<slices>\d+) batch slices of (?P<rows>\d+) rows, (?P<units>\d+) units each\), "
    r"(?P<tiles>\d+) batch tiles x (?P<splits>\d+) K splits per pass, "
    r"(?P<stages>\d+)-stage cp\.async")


def ctas_per_layer_direction(why):
    m = _PER_DIR.search(why)
    assert m, (f"the plan string no longer has '<n> CTAs (<m> per layer-direction': update "
               f"test_smoke_gpu.ctas_per_layer_direction for: {why}")
    return int(m.group(2))


def parse_backward_plan(why):
    """{grid, per_dir, slices, rows, units, tiles, splits, stages} of a backward plan."""
    m = _BWD_PLAN.search(why)
    assert m, ("the backward plan string no longer matches '... <n> batch tiles x <k> K "
               "splits per pass, <s>-stage cp.async ...': update "
               f"test_smoke_gpu.parse_backward_plan for: {why}")
    return {k: int(v) for k, v in m.groupdict().items()}


def k_chunks_per_warp(case: Case, k_splits: int):
    """Chunks each of the `k_splits` warps of a batch tile streams through its cp.async
    ring in one step of a layer below the top (K = D above segments + the rec segment,
    each GHp = round16(G*H) long), modelled on backward_kernel.cuh k_split_of / warp_item:
    tiles of 16 K elements, gt per segment; warp ks takes tiles [gt*ks/k_splits,
    gt*(ks+1)/k_splits) of every segment, in chunks of up to 128 bytes of K (4 tiles of
    16-bit, 2 of fp32) from the start of its range in each segment."""
    e = DTYPE[case.prec].itemsize
    chunk_tiles = 128 // e // 16
    gt = -(-reference.GATES[case.mode] * case.H // 16)
    na = (2 if case.bidir else 1) if case.L > 1 else 0
    counts = []
    for ks in range(k_splits):
        wlen = gt * (ks + 1) // k_splits - gt * ks // k_splits
        counts.append((na + 1) * -(-wlen // chunk_tiles))
    return counts


def weights_on_chip_kb(why: str):
    """(KB of weights in registers, KB in shared memory) per CTA, from a forward plan."""
    m = re.search(r"weights ([\d.]+) KB in registers \+ ([\d.]+) KB in shared memory", why)
    assert m, f"the forward plan no longer says where its weights are: {why}"
    return float(m.group(1)), float(m.group(2))


def check_forward_plan(smoke: Smoke, why):
    if smoke.multi_cta:
        n = ctas_per_layer_direction(why)
        assert n > 1, (f"{smoke.case.id}: the plan gives {n} CTA per layer-direction; the case "
                       f"no longer covers '{smoke.path}': make H larger ({why})")
    if smoke.smem_weights:
        regs, shared = weights_on_chip_kb(why)
        assert regs > 0 and shared > 0, (
            f"{smoke.case.id}: the plan holds {regs} KB of weights in registers and {shared} KB "
            f"in shared memory; the case no longer covers '{smoke.path}' ({why})")


def check_backward_plan(smoke: Smoke, why):
    p = parse_backward_plan(why)
    if smoke.multi_cta:
        assert p["per_dir"] > 1, (
            f"{smoke.case.id}: the backward plan gives {p['per_dir']} CTA per "
            f"layer-direction; the case no longer covers '{smoke.path}': make H larger ({why})")
    if smoke.ring_wraps:
        chunks = k_chunks_per_warp(smoke.case, p["splits"])
        assert min(chunks) > p["stages"], (
            f"{smoke.case.id}: a warp streams only {min(chunks)} K chunks per step (per warp: "
            f"{chunks}) through a {p['stages']}-stage cp.async ring, so the ring never wraps "
            f"and the case no longer covers '{smoke.path}': make H larger ({why})")
    if smoke.streamed:
        assert "streamed from L2" in why, (
            f"{smoke.case.id}: the backward plan holds all its weights in shared memory; the "
            f"case no longer covers '{smoke.path}' ({why})")
    return p


# ----------------------------------------------------------------------------- GPU tests


@pytest.fixture(scope="module")
def ext_bwd(ext):  # (ext: tests/gpu/conftest.py)
    assert getattr(ext, "has_fused_backward", False), "extension built without the fused backward"
    assert hasattr(ext, "plan_backward") and hasattr(torch.ops.fused_rnn, "_fused_backward")
    return ext


def plan_forward_or_skip(ext, case: Case, need_reserve):
    ok, why = ext.plan(case.mode, case.L, case.bidir, case.bias, 0, case.I, case.H, case.B,
                       case.T, DTYPE[case.prec], torch.cuda.current_device(), need_reserve,
                       case.lengths, case.dropout)
    covered_or_skip(case, ok, why, "forward")
    print(why)
    return why


def plan_backward_or_skip(ext, case: Case):
    ok, why = ext.plan_backward(case.mode, case.L, case.bidir, case.bias, 0, case.I, case.H,
                                case.B, case.T, DTYPE[case.prec], torch.cuda.current_device(),
                                True, case.lengths, case.dropout)
    covered_or_skip(case, ok, why, "backward")
    print(why)
    return why


def test_smoke_tiny_forward(ext, precision):
    """First and smallest: one layer, one step (if this hangs, nothing else will work)."""
    precision(TINY.prec)
    plan_forward_or_skip(ext, TINY, need_reserve=False)
    check_forward(TINY, torch.ops.fused_rnn._fused_forward, "cuda", **TINY_FORWARD_KW)


def test_smoke_tiny_backward(ext_bwd, precision):
    """The smallest backward: one layer, one step (k = 0 and the k = T finish)."""
    precision(TINY.prec)
    plan_backward_or_skip(ext_bwd, TINY)
    check_backward(TINY, torch.ops.fused_rnn._fused_backward, "cuda", **TINY_BACKWARD_KW)


def sync_params(smokes):
    """(smoke, sync) per test: a both_sync case once under each policy (id "<case>-grid" /
    "<case>-flags"), the others under the environment's default (sync None, id "<case>")."""
    return [pytest.param(s, policy, id=s.case.id + (f"-{policy}" if policy else ""))
            for s in smokes for policy in (SYNC_POLICIES if s.both_sync else (None,))]


@pytest.mark.parametrize("smoke,sync", sync_params(FORWARD), indirect=["sync"])
def test_smoke_forward(ext, precision, smoke, sync, monkeypatch):
    precision(smoke.case.prec)
    if smoke.cluster_rec:
        monkeypatch.setenv("FUSED_RNN_SYNC", "cluster")
    if smoke.smem_weights:  # a coverage-target shape: an H100/H200 must cover it
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        if props.major >= 9 and props.multi_processor_count >= 128:
            c = smoke.case
            ok, why = ext.plan(c.mode, c.L, c.bidir, c.bias, 0, c.I, c.H, c.B, c.T,
                               DTYPE[c.prec], torch.cuda.current_device(), True, c.lengths,
                               c.dropout)
            assert ok, f"{c.id}: an H100/H200 must cover this case: {why}"
    why = plan_forward_or_skip(ext, smoke.case, need_reserve=True)
    check_forward_plan(smoke, why)
    assert_sync(smoke.case.id, why, sync)
    if smoke.cluster_rec and torch.cuda.get_device_capability()[0] >= 9:
        assert "cluster sync" in why and "recurrence in clusters of" in why, (
            f"{smoke.case.id}: FUSED_RNN_SYNC=cluster on an sm_90 device, but the plan does "
            f"not run the recurrence in clusters: {why}")
    check_forward(smoke.case, torch.ops.fused_rnn._fused_forward, "cuda")


@pytest.mark.parametrize("smoke,sync", sync_params(BACKWARD), indirect=["sync"])
def test_smoke_backward(ext_bwd, precision, smoke, sync, monkeypatch):
    precision(smoke.case.prec)
    if smoke.cluster:
        monkeypatch.setenv("FUSED_RNN_CLUSTER", str(smoke.cluster))
    if smoke.ring_wraps or smoke.streamed:  # big shapes: an H100/H200 must cover them
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        if props.major >= 9 and props.multi_processor_count >= 128:
            ok, why = ext_bwd.plan_backward(
                smoke.case.mode, smoke.case.L, smoke.case.bidir, smoke.case.bias, 0,
                smoke.case.I, smoke.case.H, smoke.case.B, smoke.case.T, DTYPE[smoke.case.prec],
                torch.cuda.current_device(), True, smoke.case.lengths, smoke.case.dropout)
            assert ok, f"{smoke.case.id}: an H100/H200 must cover this case: {why}"
    why = plan_backward_or_skip(ext_bwd, smoke.case)
    check_backward_plan(smoke, why)
    assert_sync(smoke.case.id, why, sync)
    if smoke.cluster and torch.cuda.get_device_capability()[0] >= 9:
        assert f"clusters of {smoke.cluster} CTAs" in why, (
            f"{smoke.case.id}: FUSED_RNN_CLUSTER={smoke.cluster} on an sm_90 device, but the "
            f"backward plan uses no such cluster: {why}")
    check_backward(smoke.case, torch.ops.fused_rnn._fused_backward, "cuda")
