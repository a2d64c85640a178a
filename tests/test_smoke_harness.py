"""The GPU smoke checks (tests/gpu/test_smoke_gpu.py) can pass, and can fail, proved on the CPU.

The smoke stage runs first on a rarely lent GPU with seconds to spare: a smoke check that
can not fail, or fails without saying where, wastes the loan. Its check functions take
the "fused" callable and a device, so here they run every smoke case on CPU tensors with
(a) stand-ins that compute the reference (the custom ops' CPU kernels), which must pass,
and (b) deliberately broken stand-ins -- a NaN in h_n, one perturbed element of one
weight gradient, the dropout dropped -- each of which must fail with a message naming
the case, the tensor and the index. The planner-dependent parts (the plan string parser,
the K-chunk model of the cp.async ring, the coverage rule) are fed strings: realistic
ones, and the real planner's for every smoke case on H100 and A100 limits (host g++).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu"))

import gpu_helpers  # noqa: E402
import test_smoke_gpu as smoke  # noqa: E402
from compile_helpers import CSRC, CXX  # noqa: E402

import fused_rnn  # noqa: E402  (also registers torch.ops.fused_rnn.*)

FORWARD = [(smoke.TINY, smoke.TINY_FORWARD_KW)] + [(s.case, {}) for s in smoke.FORWARD]
BACKWARD = [(smoke.TINY, smoke.TINY_BACKWARD_KW)] + [(s.case, {}) for s in smoke.BACKWARD]
FORWARD_PARAMS = [pytest.param(c, kw, id=c.id) for c, kw in FORWARD]
BACKWARD_PARAMS = [pytest.param(c, kw, id=c.id) for c, kw in BACKWARD]

quiet = lambda *a: None  # noqa: E731


@pytest.fixture(autouse=True)
def _native_cpu_rnn():
    """torch.nn on the CPU stands in for cuDNN here; without oneDNN, which builds an RNN
    primitive per shape (seconds over all cases) and is not what is being tested."""
    old = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = old


def run_forward(case, kw, fused):
    return smoke.check_forward(case, fused, "cpu", log=quiet, **kw)


def run_backward(case, kw, fused):
    return smoke.check_backward(case, fused, "cpu", log=quiet, **kw)


def failing_tensors(msg, case):
    """The tensor named by each line of a smoke failure; every line must name the case."""
    names = []
    for line in msg.splitlines():
        assert line.startswith(f"{case.id}: "), f"a line does not name the case {case.id}: {line}"
        names.append(line[len(case.id) + 2:].split(" ")[0])
    return names


# ----------------------------------------------------------------------------- stand-ins


def reference_forward(*args):
    return torch.ops.fused_rnn.rnn_forward(*args)


def reference_backward(*args):
    return torch.ops.fused_rnn.rnn_backward(*args)


def nan_at(shape):
    return (shape[0] - 1, shape[1] // 2, shape[2] // 2)


def nan_in_h_n(*args):
    out, hy, cy, res = reference_forward(*args)
    hy = hy.clone()
    hy[nan_at(hy.shape)] = float("nan")
    return out, hy, cy, res


def perturbing(k, idx):
    """A backward that adds a clear error to element `idx` of weight gradient `k`."""
    def backward(*args):
        gi, gw, ghx, gcx = reference_backward(*args)
        gw = list(gw)
        g = gw[k].clone()
        g[idx] += 4 * (1 + g.abs().max())
        gw[k] = g
        return gi, gw, ghx, gcx
    return backward


def forward_without_dropout(*args):
    args = list(args)
    args[11] = 0.0  # dropout
    return reference_forward(*args)


def backward_without_dropout(*args):
    args = list(args)
    args[16] = 0.0  # dropout
    return reference_backward(*args)


# ----------------------------------------------------------------------------- (a) pass


@pytest.mark.parametrize("case,kw", FORWARD_PARAMS)
def test_forward_check_passes_with_the_reference(case, kw):
    errs = run_forward(case, kw, reference_forward)
    assert set(errs) >= {"output", "h_n"}
    assert ("reserve" in errs) == kw.get("need_reserve", True)


@pytest.mark.parametrize("case,kw", BACKWARD_PARAMS)
def test_backward_check_passes_with_the_reference(case, kw):
    errs = run_backward(case, kw, reference_backward)
    assert list(errs) == ["grad_input", "grad_hx"] + (["grad_cx"] if case.mode == "LSTM" else [])\
        + [f"grad_{n}" for n in gpu_helpers.weight_names(case)]


# ----------------------------------------------------------------------------- (b) fail


@pytest.mark.parametrize("case,kw", FORWARD_PARAMS)
def test_forward_check_names_a_nan_in_h_n(case, kw):
    D = 2 if case.bidir else 1
    idx = nan_at((case.L * D, case.B, case.H))
    with pytest.raises(AssertionError) as e:
        run_forward(case, kw, nan_in_h_n)
    msg = str(e.value)
    assert failing_tensors(msg, case) == ["h_n"], msg
    assert f"h_n is not finite: first bad element at index {idx} = nan" in msg, msg


def _perturb_targets():
    """(case, kw, weight name): the last layer's (reverse) w_hh of every backward case,
    and a few others (first layer, biases, a reverse bias)."""
    out = []
    for case, kw in BACKWARD:
        sfx = f"_l{case.L - 1}{'_reverse' if case.bidir else ''}"
        out.append((case, kw, f"w_hh{sfx}"))
    out.append((smoke.TINY, smoke.TINY_BACKWARD_KW, "w_ih_l0"))
    bidir = next(s.case for s in smoke.BACKWARD if s.case.bidir)
    out.append((bidir, {}, "b_ih_l0_reverse"))
    nobias = next(s.case for s in smoke.BACKWARD if not s.case.bias)
    out.append((nobias, {}, "w_ih_l1"))
    return [pytest.param(c, kw, n, id=f"{c.id}-{n}") for c, kw, n in out]


@pytest.mark.parametrize("case,kw,name", _perturb_targets())
def test_backward_check_names_a_perturbed_weight_gradient(case, kw, name):
    names = gpu_helpers.weight_names(case)
    k = names.index(name)
    G = fused_rnn.reference.GATES[case.mode]
    shape = (G * case.H,) if name.startswith("b_") else (
        (G * case.H, case.H) if name.startswith("w_hh") else
        (G * case.H, case.I if "_l0" in name else (2 if case.bidir else 1) * case.H))
    idx = tuple(n // 2 for n in shape)
    with pytest.raises(AssertionError) as e:
        run_backward(case, kw, perturbing(k, idx))
    msg = str(e.value)
    assert failing_tensors(msg, case) == [f"grad_{name}"], msg
    assert (f"grad_{name} differs from the float64 reference: largest error at index {idx} "
            f"(gate {idx[0] // case.H} unit {idx[0] % case.H}") in msg, msg
    assert re.search(r"error \S+ \(.*\) > allowed \S+ \(", msg), msg


@pytest.mark.parametrize("smoke_case", [s for s in smoke.FORWARD if s.case.dropout > 0],
                         ids=lambda s: s.case.id)
def test_forward_check_names_a_missing_dropout(smoke_case):
    case = smoke_case.case
    with pytest.raises(AssertionError) as e:
        run_forward(case, {}, forward_without_dropout)
    msg = str(e.value)
    # layer 0 is never dropped (h_n, c_n of layer 0 fine): the last layer's values, which
    # read the dropped layer-0 output, are wrong
    names = failing_tensors(msg, case)
    assert names[0] == "output" and set(names) <= {"output", "h_n", "c_n", "reserve"}, msg
    assert "largest error at index (" in msg, msg


@pytest.mark.parametrize("smoke_case", [s for s in smoke.BACKWARD if s.case.dropout > 0],
                         ids=lambda s: s.case.id)
def test_backward_check_names_a_missing_dropout(smoke_case):
    case = smoke_case.case
    assert case.L == 2 and not case.bidir
    with pytest.raises(AssertionError) as e:
        run_backward(case, {}, backward_without_dropout)
    msg = str(e.value)
    names = set(failing_tensors(msg, case))
    # the mask sits between layer 0's output and layer 1's input: every gradient that
    # flows through it is wrong, layer 1's own recurrent weights and biases are not
    assert {"grad_input", "grad_w_ih_l1"} <= names, msg
    assert not names & {"grad_w_hh_l1", "grad_b_ih_l1", "grad_b_hh_l1"}, msg
    assert "largest error at index (" in msg, msg


def test_fp32_forward_check_fails_on_a_tf32_sized_error():
    """The accuracy rule is tight enough to see TF32 rounding where exact FP32 is asked
    for (an fp32 case whose 'fused' forward rounds its weights to 10 mantissa bits)."""
    case = next(s.case for s in smoke.FORWARD if s.case.prec == "fp32" and not s.case.dropout)

    def tf32_like(*args):
        args = list(args)
        args[1] = [(w.view(torch.int32) & ~0x1FFF).view(torch.float32) for w in args[1]]
        return reference_forward(*args)

    with pytest.raises(AssertionError) as e:
        run_forward(case, {}, tf32_like)
    assert failing_tensors(str(e.value), case)[0] == "output", str(e.value)


def test_forward_check_names_a_nonzero_row_past_lengths():
    case = next(s.case for s in smoke.FORWARD if s.case.lengths)
    state = {}

    def leaky(*args):
        out, hy, cy, res = reference_forward(*args)
        lengths = args[4]
        b = int(torch.argmin(lengths))
        assert int(lengths[b]) < case.T, "the case needs a sequence shorter than T"
        out = out.clone()
        out[case.T - 1, b, 1] = 2.0 ** -20  # tiny: within tolerance, but not zero
        state["idx"] = (case.T - 1, b, 1)
        return out, hy, cy, res

    with pytest.raises(AssertionError) as e:
        run_forward(case, {}, leaky)
    msg = str(e.value)
    assert failing_tensors(msg, case) == ["output"], msg
    assert f"is not zero: index {state['idx']} = {2.0 ** -20}" in msg, msg


# ----------------------------------------------------------------------------- plans

H100_RING_PLAN = (
    "fused backward: LSTM bfloat16 L=2 D=1 H=512 I=40 B=8 T=3; 64 CTAs (32 per "
    "layer-direction x 1 batch slices of 8 rows, 16 units each), 1 batch tiles x 8 K splits "
    "per pass, 4-stage cp.async, smem 216.5 KB/CTA, 1 CTA/SM, bf16 tensor cores, weights in "
    "shared memory, 5 wave steps, flags sync")
RING = next(s for s in smoke.BACKWARD if s.ring_wraps)


def test_backward_plan_parser_on_a_real_plan_string():
    p = smoke.parse_backward_plan(H100_RING_PLAN)
    assert p == dict(grid=64, per_dir=32, slices=1, rows=8, units=16, tiles=1, splits=8,
                     stages=4)
    assert RING.case == gpu_helpers.Case("LSTM", 2, False, 40, 512, 8, 3, True, "bf16", False)
    assert smoke.k_chunks_per_warp(RING.case, 8) == [8] * 8  # 2*2048/16 tiles / 8 warps / 4
    smoke.check_backward_plan(RING, H100_RING_PLAN)


def test_backward_plan_check_fails_when_the_ring_would_not_wrap():
    deep = H100_RING_PLAN.replace("4-stage", "8-stage")
    with pytest.raises(AssertionError, match=rf"^{re.escape(RING.case.id)}: a warp streams only "
                       r"8 K chunks per step .* 8-stage cp.async ring, so the ring never wraps"):
        smoke.check_backward_plan(RING, deep)
    # the same K split over 2 warps per tile x 4 tiles: 32 chunks per warp, wraps
    smoke.check_backward_plan(RING, H100_RING_PLAN.replace("1 batch tiles x 8 K", "4 batch "
                                                           "tiles x 2 K"))
    # a small case's K never fills the ring
    small = RING._replace(case=RING.case._replace(H=37))
    with pytest.raises(AssertionError, match="ring never wraps"):
        smoke.check_backward_plan(small, H100_RING_PLAN)


def test_backward_plan_check_fails_on_a_changed_format_or_one_cta():
    with pytest.raises(AssertionError, match="no longer matches"):
        smoke.parse_backward_plan(H100_RING_PLAN.replace("-stage cp.async", "-stage TMA"))
    with pytest.raises(AssertionError, match="no longer matches"):
        smoke.parse_backward_plan("reference: proj_size > 0")
    one = H100_RING_PLAN.replace("64 CTAs (32 per", "2 CTAs (1 per")
    with pytest.raises(AssertionError, match="1 CTA per layer-direction"):
        smoke.check_backward_plan(RING, one)


def test_k_chunks_per_warp_model():
    # fp32: 128-byte chunks are 2 tiles of 16: 2*2048/16 = 256 tiles, 32 per warp, 16 chunks
    tf32 = RING.case._replace(prec="tf32")
    assert smoke.k_chunks_per_warp(tf32, 8) == [16] * 8
    # a warp takes the same tiles of every segment (GRU bf16 bidirectional H=256: 3
    # segments of 48 tiles, 6 of each per warp: chunks of 4 + 2 in each segment)
    gru = gpu_helpers.Case("GRU", 2, True, 8, 256, 4, 3, True, "bf16", False)
    assert smoke.k_chunks_per_warp(gru, 8) == [6] * 8
    # uneven splits: GRU bf16 H=100 L=1: 19 tiles over 8 warps, 2 or 3 each, one chunk
    odd = gpu_helpers.Case("GRU", 1, False, 8, 100, 4, 3, True, "bf16", False)
    assert smoke.k_chunks_per_warp(odd, 8) == [1] * 8
    assert smoke.k_chunks_per_warp(odd._replace(prec="tf32"), 8) == [1, 1, 2, 1, 1, 2, 1, 2]
    assert smoke.k_chunks_per_warp(gru, 1) == [36]
    # top layer only (L=1): the rec segment alone; 2 tiles (GH=5*4=20 -> 32) over 8 warps
    tiny = smoke.TINY._replace(prec="bf16")
    assert smoke.k_chunks_per_warp(tiny, 8) == [0, 0, 0, 1, 0, 0, 0, 1]


def test_forward_plan_multi_cta_check():
    ok = ("fused: LSTM float16 L=2 D=1 H=70 I=33 B=19 T=3; 36 CTAs (18 per layer-direction, "
          "4 units each), batch tile 32, K chunk 2 (3+3 splits), smem 17.2 KB/CTA, 1 CTA/SM, "
          "fp16 tensor cores, 4 grid steps")
    multi = next(s for s in smoke.FORWARD if s.multi_cta and s.case.prec == "fp16")
    assert smoke.ctas_per_layer_direction(ok) == 18
    smoke.check_forward_plan(multi, ok)
    with pytest.raises(AssertionError, match=r"gives 1 CTA per layer-direction"):
        smoke.check_forward_plan(multi, ok.replace("36 CTAs (18 per", "2 CTAs (1 per"))
    with pytest.raises(AssertionError, match="no longer has"):
        smoke.ctas_per_layer_direction("fused: 36 CTAs, 4 units each")


H100_SPLIT_PLAN = (
    "fused: LSTM float32 L=4 D=1 H=512 I=512 B=2 T=3; 128 CTAs (32 per layer-direction, 16 "
    "units each), batch tile 8, K chunk 16 (2+2 splits), smem 185.1 KB/CTA, 1 CTA/SM, tf32 "
    "tensor cores, 6 wave steps, flags sync (ring 4), state in shared memory, weights 112.0 KB "
    "in registers + 144.0 KB in shared memory, 2 row tiles per warp item")


def test_forward_plan_weights_split_check():
    split = next(s for s in smoke.FORWARD if s.smem_weights)
    assert smoke.weights_on_chip_kb(H100_SPLIT_PLAN) == (112.0, 144.0)
    smoke.check_forward_plan(split, H100_SPLIT_PLAN)
    with pytest.raises(AssertionError, match=r"112.0 KB of weights in registers and 0.0 KB in "
                       r"shared memory; the case no longer covers"):
        smoke.check_forward_plan(split, H100_SPLIT_PLAN.replace("+ 144.0 KB", "+ 0.0 KB"))
    with pytest.raises(AssertionError, match="no longer says where its weights are"):
        smoke.check_forward_plan(split, H100_SPLIT_PLAN.split(", weights")[0])


def test_covered_or_skip_rule():
    small = smoke.FORWARD[0].case
    smoke.covered_or_skip(small, True, "fused: ...")
    with pytest.raises(AssertionError, match="small shape not covered by the fused backward: "
                       "no room"):
        smoke.covered_or_skip(small, False, "no room", "backward")
    with pytest.raises(pytest.skip.Exception, match="not covered .* on this device: no room"):
        smoke.covered_or_skip(RING.case, False, "no room", "backward")
    with pytest.raises(AssertionError, match="gave no reason"):
        smoke.covered_or_skip(small, True, "")


# ----------------------------------------------------------------------------- the real planner

_DEVICES = {  # DeviceLimits: SMs, opt-in smem per block, smem per SM, compute capability
    "H100": (132, 232448, 233472, 9, 0),
    "A100": (108, 166912, 167936, 8, 0),
}
_MODE = {"LSTM": "kLSTM", "GRU": "kGRU", "RNN_TANH": "kRnnTanh", "RNN_RELU": "kRnnRelu"}
_DT = {"fp32": "kFloat32", "tf32": "kFloat32", "fp16": "kFloat16", "bf16": "kBFloat16"}


def _plan_program():
    lines = []
    for dev, (sms, optin, per_sm, major, minor) in _DEVICES.items():
        for which, cases in (("fwd", [(smoke.TINY, False)] + [(s.case, True)
                                                               for s in smoke.FORWARD]),
                             ("bwd", [(smoke.TINY, True)] + [(s.case, True)
                                                              for s in smoke.BACKWARD])):
            for c, reserve in cases:
                lines.append(
                    f'  show("{dev}", "{which}", "{c.id}", Mode::{_MODE[c.mode]}, {c.L}, '
                    f'{str(c.bidir).lower()}, {str(c.bias).lower()}, {c.I}, {c.H}, {c.B}, '
                    f'{c.T}, DType::{_DT[c.prec]}, {str(c.prec == "tf32").lower()}, '
                    f'{str(reserve).lower()}, {str(c.lengths).lower()}, {c.dropout}, '
                    f'{sms}, {optin}, {per_sm}, {major}, {minor});')
    return r"""
#include "kernels/backward_plan.h"
#include "kernels/forward_plan.h"
#include <cstdio>
#include <string>
using namespace fused_rnn;
static int occ_f(const void* ctx, int64_t smem) {
  return estimate_occupancy(*static_cast<const DeviceLimits*>(ctx), smem);
}
static int occ_b(const void* ctx, int64_t smem) {
  return estimate_occupancy(*static_cast<const DeviceLimits*>(ctx), smem, 250);
}
static bool first = true;
static void show(const char* dev, const char* which, const char* id, Mode m, int L, bool bi,
                 bool bias, int I, int H, int B, int T, DType dt, bool tf32, bool reserve,
                 bool len, double p, int sms, long long optin, long long per_sm, int major,
                 int minor) {
  ForwardProblem q;
  q.mode = m; q.num_layers = L; q.bidirectional = bi; q.has_biases = bias; q.input_size = I;
  q.hidden_size = H; q.batch = B; q.seq_len = T; q.dtype = dt; q.allow_tf32 = tf32;
  q.need_reserve = reserve; q.has_lengths = len; q.dropout = p;
  DeviceLimits d;
  d.sm_count = sms; d.smem_optin_per_block = optin; d.smem_per_sm = per_sm;
  d.cc_major = major; d.cc_minor = minor;
  bool ok; std::string why;
  if (which[0] == 'f') { PlanResult r = plan_forward(q, d, &occ_f, &d); ok = r.ok; why = r.reason; }
  else { BackwardPlanResult r = plan_backward(q, d, &occ_b, &d); ok = r.ok; why = r.reason; }
  std::string esc;
  for (char ch : why) { if (ch == '"' || ch == '\\') esc += '\\'; esc += ch; }
  printf("%s[\"%s\", \"%s\", \"%s\", %s, \"%s\"]\n", first ? "" : ",", dev, which, id,
         ok ? "true" : "false", esc.c_str());
  first = false;
}
int main() {
  printf("[\n");
""" + "\n".join(lines) + r"""
  printf("]\n");
  return 0;
}
"""


@pytest.fixture(scope="module")
def real_plans(tmp_path_factory):
    if CXX is None:
        pytest.skip("no host C++ compiler")
    d = tmp_path_factory.mktemp("smoke_plans")
    src, exe = d / "plans.cpp", d / "plans"
    src.write_text(_plan_program())
    subprocess.run([CXX, "-std=c++17", "-O0", "-Wall", "-Werror", f"-I{CSRC}", str(src), "-o",
                    str(exe)], check=True)
    rows = json.loads(subprocess.run([str(exe)], check=True, capture_output=True,
                                     text=True).stdout)
    return {(dev, which, cid): (ok, why) for dev, which, cid, ok, why in rows}


@pytest.mark.parametrize("dev", list(_DEVICES))
def test_smoke_cases_plans_on_real_device_limits(real_plans, dev):
    """The real planner (host build, the device's limits): every small smoke case is
    covered, and every plan assertion of the GPU smoke test holds on it -- so the smoke
    stage can not fail (or silently skip) for a reason the CPU could have seen."""
    covered = []
    for which, smokes in (("fwd", [smoke.Smoke(smoke.TINY, "tiny")] + smoke.FORWARD),
                          ("bwd", [smoke.Smoke(smoke.TINY, "tiny")] + smoke.BACKWARD)):
        for s in smokes:
            ok, why = real_plans[(dev, which, s.case.id)]
            try:
                smoke.covered_or_skip(s.case, ok, why, which)
            except pytest.skip.Exception:
                assert dev != "H100", f"{s.case.id} ({which}) must be covered on an H100: {why}"
                continue
            if which == "fwd":
                smoke.check_forward_plan(s, why)
            else:
                smoke.check_backward_plan(s, why)
            covered.append((which, s.case.id))
    print(dev, len(covered), "of", 2 + len(smoke.FORWARD) + len(smoke.BACKWARD), "covered")


# ----------------------------------------------------------------------------- the case list


def test_smoke_cases_cover_what_the_smoke_stage_must_reach():
    """The case list itself: the paths the brief of the smoke stage names stay covered."""
    assert smoke.TINY.L == 1 and smoke.TINY.T == 1 and smoke.TINY.prec == "fp32"
    for cases in ([s.case for s in smoke.FORWARD], [s.case for s in smoke.BACKWARD]):
        plain = [c for c in cases if not (c.bidir or c.lengths or c.dropout)]
        assert {c.prec for c in plain if c.L == 2 and c.T == 3} == {"fp32", "tf32", "bf16",
                                                                   "fp16"}
        assert all(c.L >= 2 and c.T >= 3 for c in cases)
        assert sum(c.bidir for c in cases) >= 1
        assert sum(c.lengths for c in cases) >= 1
        assert sum(c.dropout > 0 for c in cases) >= 1
        assert len({c.mode for c in cases}) >= 3
        assert any(c.H % 16 for c in cases) and any(c.I % 2 for c in cases)
        assert any(c.B % 8 for c in cases)
    assert {s.case.mode for s in smoke.FORWARD + smoke.BACKWARD} == set(
        fused_rnn.reference.GATES)
    # all but the ring and the weights-split cases are small shapes, which every sm_80+ GPU
    # must cover (no skips)
    assert all(s.case.H <= 256 and s.case.I <= 256
               for s in smoke.FORWARD + smoke.BACKWARD
               if not (s.ring_wraps or s.smem_weights or s.streamed))
    assert any(s.streamed for s in smoke.BACKWARD)
    assert [s.smem_weights for s in smoke.FORWARD][-1], "the weights-split case runs last"
    assert any(s.multi_cta for s in smoke.FORWARD) and any(s.multi_cta for s in smoke.BACKWARD)
    assert [s.ring_wraps for s in smoke.BACKWARD][-1], "the ring case runs last"
    ids = [s.case.id for s in smoke.FORWARD + smoke.BACKWARD]
    assert len(set(ids[:len(smoke.FORWARD)])) == len(smoke.FORWARD)
    assert len(set(ids[len(smoke.FORWARD):])) == len(smoke.BACKWARD)
    # the tests run in this order: tiny forward, tiny backward, forward cases, backward cases
    assert [n for n in vars(smoke) if n.startswith("test_")] == [
        "test_smoke_tiny_forward", "test_smoke_tiny_backward", "test_smoke_forward",
        "test_smoke_backward"]


def test_accuracy_rule_cap_gives_way_only_to_cudnn_itself():
    """err <= 2 x cuDNN + floor, capped; where cuDNN alone is beyond the cap, the bound is
    cuDNN's own error (never less accurate than cuDNN), not the looser 2 x rule."""
    tol = gpu_helpers.tolerance
    assert tol(0.01, 0.02, 0.25).allowed == pytest.approx(0.04)      # the 2 x rule
    assert tol(0.2, 0.02, 0.25).allowed == pytest.approx(0.25)       # the cap
    t = tol(0.743, 0.02, 0.25)                                       # cuDNN beyond the cap
    assert t.allowed == pytest.approx(0.743) and "beyond the cap" in t.rule
    assert 0.295 <= t.allowed and not 0.8 <= t.allowed
    assert tol(0.743, 0.02, 0.25, strict=0.1).allowed == pytest.approx(0.1)
