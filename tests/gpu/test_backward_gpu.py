"""The fused CUDA backward kernel against a float64 reference and against cuDNN.

Runs only where a CUDA device is visible (marked ``gpu``; tests/conftest.py
skips it elsewhere). On such a machine a missing extension, or one without
the fused backward, FAILS.

Rules (design section 5):
* accuracy: on the same (dtype-quantised) weights, inputs and output
  gradients, every gradient of the fused path (fused forward -> reserve ->
  fused backward) vs the float64 reference (reference forward + BPTT in
  float64) is at most 2x cuDNN's error (torch.nn at the same dtype and TF32
  setting, same weights, autograd) plus a small floor; with dropout (which
  cuDNN can not reproduce) the scale is cuDNN's error on the same case
  without dropout;
* outputs are poisoned (free caching-allocator blocks filled with NaN bytes)
  before each fused call;
* the public op takes the fused path; backward twice with retain_graph is
  bit-identical; double backward raises; gradcheck (float64, reference path);
  a training step runs the fused kernels and no cuDNN kernel; CUDA-graph
  capture; a short training run follows nn.LSTM's loss curve.
"""

from __future__ import annotations

import functools
import math
import zlib

import pytest
import torch
from gpu_helpers import BWD_CAP as CAP
from gpu_helpers import BWD_FLOOR as FLOOR
from gpu_helpers import (DTYPE, NN, SYNC_POLICIES, Case, assert_close_named, assert_finite,
                         assert_sync, backward_args, covered_or_skip, describe_index,
                         forward_args, grads_named,
                         load_extension_or_fail, make_inputs, poison_allocator,
                         reference_backward64, reference_forward64, rel_err, tolerance)
from gpu_helpers import cudnn_backward as run_cudnn
from torch import nn

import fused_rnn

pytestmark = pytest.mark.gpu

# error floors (added to 2x cuDNN's error) and absolute sanity caps, per precision:
# FLOOR, CAP (gpu_helpers.BWD_FLOOR / BWD_CAP, shared with test_smoke_gpu.py)


# ----------------------------------------------------------------------------- fixtures
# (precision: tests/gpu/conftest.py)


@pytest.fixture(scope="module")
def ext():
    mod = load_extension_or_fail()
    assert getattr(mod, "has_fused_backward", False), "extension built without the fused backward"
    assert hasattr(mod, "plan_backward")
    assert hasattr(torch.ops.fused_rnn, "_fused_backward")
    return mod


# ----------------------------------------------------------------------------- problems
# (Case, make_inputs(..., backward=True): gpu_helpers.py)


CASES = [
    Case("LSTM", 1, False, 1, 1, 1, 1, True, "fp32", False),          # the smallest problem
    Case("LSTM", 2, False, 13, 37, 3, 7, True, "tf32", False),
    Case("LSTM", 4, False, 64, 100, 5, 9, True, "bf16", True),
    Case("LSTM", 3, True, 17, 64, 70, 6, False, "fp16", True),        # 2 batch tiles
    Case("LSTM", 1, False, 1024, 1024, 3, 5, True, "bf16", False),    # H = 1024
    Case("LSTM", 2, False, 512, 512, 32, 16, True, "bf16", False),    # speed-target shapes
    Case("LSTM", 2, False, 512, 512, 32, 16, True, "tf32", False),
    # fp32 L=4 H=512: the weight tile (256 KB) does not fit; a share streamed from L2
    Case("LSTM", 4, False, 512, 512, 9, 5, True, "tf32", False),
    Case("LSTM", 4, False, 512, 512, 3, 4, True, "fp32", True),
    Case("LSTM", 4, False, 256, 256, 200, 8, True, "fp16", False),    # batch slices, passes
    Case("LSTM", 2, True, 33, 129, 1, 12, True, "fp32", True),
    Case("GRU", 1, False, 5, 8, 1, 1, True, "bf16", False),
    Case("GRU", 2, False, 13, 37, 4, 10, True, "fp32", True),
    Case("GRU", 3, True, 100, 100, 9, 6, True, "tf32", True),
    Case("GRU", 4, False, 512, 512, 16, 12, True, "bf16", False),
    Case("RNN_TANH", 3, True, 21, 48, 17, 7, True, "bf16", True),
    Case("RNN_TANH", 2, False, 40, 77, 3, 4, True, "fp16", True),
    Case("RNN_RELU", 2, False, 9, 31, 6, 11, True, "fp16", True),
    Case("RNN_RELU", 1, False, 1, 1000, 1, 3, True, "bf16", False),
    Case("RNN_RELU", 3, False, 50, 24, 4, 6, False, "tf32", True),
]
DROPOUT_CASES = [
    Case("LSTM", 3, False, 20, 48, 6, 9, True, "fp32", False, 0.3),
    Case("GRU", 2, True, 11, 33, 5, 7, True, "fp32", True, 0.5),
    Case("RNN_TANH", 2, False, 8, 16, 3, 5, True, "fp32", False, 1.0),
    Case("LSTM", 4, False, 64, 128, 40, 6, True, "bf16", True, 0.2),
    Case("GRU", 3, True, 16, 70, 3, 4, False, "fp16", False, 0.4),
]


def fwd_args(case, inp, need_reserve=True):
    return forward_args(case, inp, need_reserve=need_reserve)


def bwd_args(case, inp, fwd_out):
    return backward_args(case, inp, fwd_out[0], fwd_out[3])


def run_reference(case, inp):
    """The exact gradients (float64 forward + BPTT) of the quantised problem."""
    return reference_backward64(case, inp, reference_forward64(case, inp, need_reserve=True)[3])


def run_fused(case, inp):
    poison_allocator()
    f = torch.ops.fused_rnn._fused_forward(*fwd_args(case, inp))
    poison_allocator()
    g = torch.ops.fused_rnn._fused_backward(*bwd_args(case, inp, f))
    torch.cuda.synchronize()
    return g


def grad_errors(res, ref, case):
    """{name: error} over every gradient: grad_input, grad_hx, grad_cx, grad_w_ih_l0, ..."""
    ref_n = grads_named(case, ref)
    return {n: rel_err(g, ref_n[n]) for n, g in grads_named(case, res).items()}


def plan_backward_or_skip(ext, case):
    """The backward plan's summary; skips shapes the device can not hold on chip, but small
    ones (H <= 256, I <= 256) must be covered on any sm_80+ GPU."""
    args = (case.mode, case.L, case.bidir, case.bias, 0, case.I, case.H, case.B, case.T,
            DTYPE[case.prec], torch.cuda.current_device(), True, case.lengths, case.dropout)
    ok_f, why_f = ext.plan(*args)
    ok, why = ext.plan_backward(*args)
    assert isinstance(why, str) and why
    covered_or_skip(case, ok and ok_f, f"{why_f}; {why}", "kernels")
    assert why.startswith("fused backward: "), why
    print(why)
    return why


# ----------------------------------------------------------------------------- tests


# (the tiny smoke test, L=1 T=1 fp32, is in test_smoke_gpu.py, run before this file)


def test_plan_backward_covers_targets_and_explains_rejections(ext, precision):
    dev = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(dev)
    precision("tf32")
    p = lambda mode, L, H, dt, **kw: ext.plan_backward(  # noqa: E731
        mode, L, kw.get("bidir", False), True, kw.get("proj", 0), H, H, kw.get("B", 32), 512, dt,
        dev, True, False, 0.0)
    if props.major >= 9 and props.multi_processor_count >= 128:  # H100 / H200
        for mode, L, H, dt, B in [("LSTM", 4, 512, torch.bfloat16, 32),
                                  ("GRU", 4, 512, torch.bfloat16, 32),
                                  ("LSTM", 2, 512, torch.float32, 32),
                                  ("LSTM", 4, 256, torch.float32, 32),
                                  ("LSTM", 2, 256, torch.bfloat16, 512),
                                  ("LSTM", 4, 512, torch.bfloat16, 512)]:
            ok, why = p(mode, L, H, dt, B=B)
            assert ok, (mode, L, H, dt, B, why)
            assert why.startswith("fused backward: ")
            assert "streamed from L2" not in why, why
        # fp32 L=4 H=512 (256 KB of weights per CTA): planned, a share streamed
        ok, why = p("LSTM", 4, 512, torch.float32, B=32)
        assert ok and "streamed from L2" in why, why
    ok, why = p("LSTM", 2, 64, torch.bfloat16, proj=32)
    assert not ok and "proj_size" in why
    ok, why = p("LSTM", 2, 64, torch.float64)
    assert not ok and "float64" in why
    ok, why = ext.plan_backward("LSTM", 1, False, True, 0, 8, 8, 1, 1, torch.float32, 99, True,
                                False, 0.0)
    assert not ok and "device" in why
    ok, why = p("LSTM", 4, 4096, torch.float32)
    assert not ok and "shared memory" in why
    # the Python side asks the same planner
    x = torch.randn(5, 2, 8, device="cuda")
    w = [torch.randn(32, 8, device="cuda"), torch.randn(32, 8, device="cuda")]
    h = torch.zeros(1, 2, 8, device="cuda")
    ok, why = fused_rnn.ops.plan(x, w, h, h, None, None, "LSTM", 1, False, False, 0, 0.0, True,
                                 which="backward")
    assert ok and why.startswith("fused backward: "), why


def _check_case(ext, case, scale_case=None, sync=None, last=None):
    """fused vs float64 reference vs cuDNN; returns the errors. `sync`: the policy the
    plans must name (None: the default's); `last`: a dict that keeps the reference and
    cuDNN's errors of the last case, for its next policy."""
    assert_sync(case.id, plan_backward_or_skip(ext, case), sync)
    inp = make_inputs(case, seed=zlib.crc32(case.id.encode()) % 1000, backward=True)
    got = run_fused(case, inp)
    got_n = grads_named(case, got)
    for n, g in got_n.items():
        assert g.dtype == DTYPE[case.prec], f"{case.id}: {n} has dtype {g.dtype}"
    assert_finite(case.id, got_n)
    assert [g.shape for g in got[1]] == [w.shape for w in inp["w"]]
    if case.mode != "LSTM":
        assert got[3].numel() == 0
    if last is not None and case.id in last:
        ref, cerrs = last[case.id]
    else:
        ref, cerrs = _reference_and_cudnn(case, inp, scale_case)
        if last is not None:
            last.clear()
            last[case.id] = ref, cerrs
    # per gradient: error <= 2 x cuDNN's + floor, <= cap; prints one line per gradient,
    # the message names the gradient and the index of its largest error
    return assert_close_named(
        case.id, got_n, grads_named(case, ref),
        {k: tolerance(cerrs.get(k, 0.0), FLOOR[case.prec], CAP[case.prec]) for k in got_n},
        cerrs, where=functools.partial(describe_index, case))


def _reference_and_cudnn(case, inp, scale_case):
    """The float64 reference's gradients of `case` and cuDNN's errors per gradient (on
    `scale_case` where given)."""
    ref = run_reference(case, inp)
    base = scale_case or case
    try:
        binp = inp if scale_case is None else make_inputs(
            base, seed=zlib.crc32(case.id.encode()) % 1000, backward=True)
        cud = run_cudnn(base, binp)
        cud_ref = ref if scale_case is None else run_reference(base, binp)
        cerrs = grad_errors(cud, cud_ref, base)
    except RuntimeError as e:  # e.g. a dtype cuDNN's RNN does not take
        print(f"cuDNN failed ({e}); checking against the floor only")
        cerrs = {k: 0.0 for k in grads_named(case, ref)}
    return ref, cerrs


@pytest.fixture(scope="module")
def last_reference():
    """{case id: (reference gradients, cuDNN's errors)} for the last case only: the
    synchronisation policies of one case run side by side and share it."""
    return {}


# every case once under each synchronisation policy (FUSED_RNN_SYNC, the conftest's
# `sync` fixture), side by side; the forward runs under the same policy
@pytest.mark.parametrize("case,sync", [(c, s) for c in CASES for s in SYNC_POLICIES],
                         indirect=["sync"], ids=lambda v: v.id if isinstance(v, Case) else v)
def test_backward_matches_reference(ext, precision, last_reference, case, sync):
    precision(case.prec)
    _check_case(ext, case, sync=sync, last=last_reference)


# Thread-block clusters (sm_90): the multicast K stream with each size the planner may
# choose, forced through FUSED_RNN_CLUSTER on small shapes (the planner's own rule takes
# clusters only where the stream is large: the speed-target shapes of CASES, e.g. bf16
# L=2 H=512 B=32, run in clusters under auto on an H100/H200, which the next test
# asserts); FP32 FMA, TF32, 16 bits, bidirectional, lengths, several batch tiles.
CLUSTER_CASES = [
    (Case("GRU", 2, True, 40, 64, 19, 6, True, "tf32", True), "4"),
    (Case("LSTM", 3, False, 33, 96, 5, 7, True, "fp16", False), "2"),
    (Case("RNN_RELU", 2, False, 8, 128, 70, 5, True, "fp32", True), "8"),
]


@pytest.mark.parametrize("case,cluster", CLUSTER_CASES,
                         ids=lambda v: v.id if isinstance(v, Case) else f"cluster-{v}")
def test_backward_in_clusters_matches_reference(ext, precision, monkeypatch, case, cluster):
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("thread-block clusters need sm_90")
    precision(case.prec)
    monkeypatch.setenv("FUSED_RNN_CLUSTER", cluster)
    why = plan_backward_or_skip(ext, case)
    assert f"clusters of {cluster} CTAs" in why, why
    _check_case(ext, case)


def test_plan_backward_takes_clusters_where_the_stream_is_large(ext, monkeypatch):
    """Under auto on an H100/H200: clusters for the speed-target shapes at B=32 (256 KB of
    gate gradients per CTA per step), none at B=1 (8 KB); on sm_80 none."""
    monkeypatch.delenv("FUSED_RNN_CLUSTER", raising=False)
    props = torch.cuda.get_device_properties(torch.cuda.current_device())

    def plan(L, H, B, dtype):
        ok, why = ext.plan_backward("LSTM", L, False, True, 0, H, H, B, 512, dtype,
                                    torch.cuda.current_device(), True, False, 0.0)
        assert ok, why
        return why

    big = [plan(4, 512, 32, torch.bfloat16), plan(2, 512, 32, torch.bfloat16)]
    small = plan(4, 512, 1, torch.bfloat16)
    assert "cluster" not in small, small
    for why in big:
        if props.major >= 9 and props.multi_processor_count >= 128:
            assert "K stream multicast in clusters of" in why, why
        elif props.major < 9:
            assert "cluster" not in why, why


def test_plan_backward_weights_in_registers_where_they_fit(ext, precision, monkeypatch):
    """Both places a warp's weight tiles are read from are among the cases that
    test_backward_matches_reference runs, on the tensor-core paths (16 bits, TF32): all of a
    warp's tiles in registers where they fit (small K per warp, one 16-unit m-tile), from
    shared memory elsewhere (e.g. H=512); the FP32 FMA path never holds them."""
    monkeypatch.delenv("FUSED_RNN_CLUSTER", raising=False)
    seen = set()
    for case in CASES:
        precision(case.prec)
        ok, why = ext.plan_backward(case.mode, case.L, case.bidir, case.bias, 0, case.I,
                                    case.H, case.B, case.T, DTYPE[case.prec],
                                    torch.cuda.current_device(), True, case.lengths,
                                    case.dropout)
        if not ok:
            continue
        regs = "weights in registers (" in why
        assert regs != ("weights in shared memory" in why), why
        if case.prec == "fp32":
            assert not regs, why
        seen.add(("tf32" if case.prec == "tf32" else "16-bit" if case.prec != "fp32" else "fp32",
                  regs))
    for kind in ("16-bit", "tf32"):
        assert (kind, True) in seen and (kind, False) in seen, seen


@pytest.mark.parametrize("case", DROPOUT_CASES, ids=lambda c: c.id)
def test_backward_with_dropout_matches_reference(ext, precision, case):
    """Masks regenerated from the seed (no mask tensor): the same gradients as the
    reference with the same seed; cuDNN's error without dropout sets the scale."""
    precision(case.prec)
    _check_case(ext, case, scale_case=case._replace(dropout=0.0))


def test_public_op_takes_the_fused_backward(ext, precision):
    precision("tf32")
    case = Case("GRU", 2, False, 24, 40, 5, 6, True, "bf16", True)
    plan_backward_or_skip(ext, case)
    inp = make_inputs(case, backward=True)
    f = torch.ops.fused_rnn._fused_forward(*fwd_args(case, inp))
    a = torch.ops.fused_rnn._fused_backward(*bwd_args(case, inp, f))
    b = torch.ops.fused_rnn.rnn_backward(*bwd_args(case, inp, f))
    torch.cuda.synchronize()
    for x, y in zip([a[0], a[2], a[3], *a[1]], [b[0], b[2], b[3], *b[1]]):
        assert torch.equal(x, y)
    # without a reserve (forward without need_reserve) it falls back to the reference
    f0 = torch.ops.fused_rnn._fused_forward(*fwd_args(case, inp, need_reserve=False))
    c = torch.ops.fused_rnn.rnn_backward(*bwd_args(case, inp, f0))
    assert rel_err(c[0], a[0]) < 5e-2


def _module_pair(mode, I, H, dtype=torch.float32, **kw):
    if mode.startswith("RNN"):
        kw["nonlinearity"] = "tanh" if mode == "RNN_TANH" else "relu"
    ref = NN[mode](I, H, dtype=dtype, device="cuda", **kw)
    fused = {"LSTM": fused_rnn.LSTM, "GRU": fused_rnn.GRU}.get(mode, fused_rnn.RNN)(
        I, H, dtype=dtype, device="cuda", **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def test_backward_twice_with_retain_graph_is_identical(ext, precision):
    precision("tf32")
    _, m = _module_pair("LSTM", 12, 32, num_layers=3, dropout=0.3)
    m.train()
    x = torch.randn(9, 4, 12, device="cuda", requires_grad=True)
    out, _ = m(x)
    assert m.last_backend.startswith("fused"), m.last_backend
    loss = (out ** 2).sum()
    params = [x, *m.parameters()]
    g1 = torch.autograd.grad(loss, params, retain_graph=True)
    g2 = torch.autograd.grad(loss, params)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def test_double_backward_raises(ext):
    _, m = _module_pair("GRU", 6, 16, num_layers=2)
    x = torch.randn(5, 3, 6, device="cuda", requires_grad=True)
    out, _ = m(x)
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_gradcheck_float64_on_the_gpu(ext):
    """float64 is not covered by the kernels: the reference stack on CUDA tensors (asked for;
    ``auto`` would run cuDNN's float64)."""
    torch.manual_seed(0)
    T, B, I, H, L = 3, 2, 3, 4, 2
    m = fused_rnn.LSTM(I, H, num_layers=L, bidirectional=True, dtype=torch.float64,
                       device="cuda")
    x = torch.randn(T, B, I, dtype=torch.float64, device="cuda", requires_grad=True)
    h0 = torch.randn(2 * L, B, H, dtype=torch.float64, device="cuda", requires_grad=True)
    c0 = torch.randn(2 * L, B, H, dtype=torch.float64, device="cuda", requires_grad=True)
    ws = [w.detach().clone().requires_grad_() for w in m._flat_weights]

    def f(x, h0, c0, *ws):
        out, hy, cy = fused_rnn.functional.lstm(x, (h0, c0), list(ws), True, L, 0.0, False,
                                                True)
        return out, hy, cy

    with fused_rnn.backend("reference"):
        assert torch.autograd.gradcheck(f, (x, h0, c0, *ws), eps=1e-6, atol=1e-5,
                                        fast_mode=True)


def _kernel_names(prof):
    return [e.name for e in prof.events()
            if str(e.device_type).endswith("CUDA")
            and not e.name.startswith(("Memcpy", "Memset", "[memory]"))]


def test_training_step_runs_fused_kernels_and_no_cudnn(ext, precision):
    from torch.profiler import ProfilerActivity, profile

    precision("tf32")
    _, m = _module_pair("LSTM", 32, 64, num_layers=4, dropout=0.1)
    m.train()
    x = torch.randn(16, 8, 32, device="cuda", requires_grad=True)

    def step():
        out, (hy, cy) = m(x)
        (out.square().mean() + hy.sum() + cy.sum()).backward()

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    names = _kernel_names(prof)
    assert any("rnn_forward_kernel" in n for n in names), names
    assert any("rnn_backward_kernel" in n for n in names), names
    cudnn_like = [n for n in names if "cudnn" in n.lower() or n.startswith("RNN_")
                  or "elemWise" in n or "_elementWise" in n or "LSTM_" in n or "GRU_" in n]
    assert not cudnn_like, cudnn_like
    assert sum("rnn_backward_kernel" in n for n in names) == 1, names


def test_cuda_graph_capture_of_the_backward(ext, precision):
    precision("tf32")
    case = Case("LSTM", 2, False, 16, 32, 4, 10, True, "tf32", True, 0.25)
    plan_backward_or_skip(ext, case)
    inp = make_inputs(case, backward=True)
    f = torch.ops.fused_rnn._fused_forward(*fwd_args(case, inp))
    args = bwd_args(case, inp, f)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            torch.ops.fused_rnn._fused_backward(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = torch.ops.fused_rnn._fused_backward(*args)
    inp["gout"].copy_(torch.randn_like(inp["gout"]))
    graph.replay()
    torch.cuda.synchronize()
    eager = torch.ops.fused_rnn._fused_backward(*args)
    torch.cuda.synchronize()
    for g_t, e_t in zip([static[0], static[2], static[3], *static[1]],
                        [eager[0], eager[2], eager[3], *eager[1]]):
        assert torch.equal(g_t, e_t)


def test_training_run_follows_nn_lstm(ext, precision):
    """A 2-layer LSTM learns a delayed-copy task; the fused module's loss curve stays with
    nn.LSTM's (same init, same batches, TF32 as cuDNN uses it by default)."""
    precision("tf32")
    torch.manual_seed(0)
    I, H, T, B, delay, steps = 4, 64, 40, 32, 3, 300
    ref, fused = _module_pair("LSTM", I, H, num_layers=2)
    head_r = nn.Linear(H, I, device="cuda")
    head_f = nn.Linear(H, I, device="cuda")
    head_f.load_state_dict(head_r.state_dict())
    g = torch.Generator(device="cuda").manual_seed(1)
    batches = [torch.randn(T, B, I, device="cuda", generator=g) for _ in range(20)]

    def curve(rnn, head):
        opt = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-2)
        losses = []
        for i in range(steps):
            x = batches[i % len(batches)]
            target = torch.cat([torch.zeros_like(x[:delay]), x[:-delay]])
            out, _ = rnn(x)
            loss = nn.functional.mse_loss(head(out), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return torch.tensor(losses)

    lr_ = curve(ref, head_r)
    lf = curve(fused, head_f)
    assert fused.last_backend.startswith("fused"), fused.last_backend
    print("nn.LSTM", lr_[::30].tolist())
    print("fused  ", lf[::30].tolist())
    assert torch.isfinite(lf).all()
    assert lf[-20:].mean() < 0.05 * lf[:5].mean(), "the fused model did not learn"
    assert lr_[-20:].mean() < 0.05 * lr_[:5].mean(), "nn.LSTM did not learn (test setup)"
    # the same curve within noise: smoothed log-losses (25-step windows) stay together;
    # tight while the loss falls, looser at the end where Adam's steps make it jitter
    sm = lambda c: c.log().unfold(0, 25, 1).mean(1)  # noqa: E731
    gap = (sm(lf) - sm(lr_)).abs()
    print("smoothed log-loss gap", gap[::25].tolist())
    assert gap[:50].max() < 0.1, gap[:50]
    assert gap.max() < 0.7, gap
    assert abs(math.log(lf[-25:].mean() / lr_[-25:].mean())) < 0.7


# one test per bad call, so that a call that crashes the process is named by itself
BAD_BACKWARD_CALLS = {
    "input-on-cpu": lambda inp, f: dict(input=inp["x"].cpu()),
    "gout-float64": lambda inp, f: dict(gout=inp["gout"].double()),
    "reserve-wrong-shape": lambda inp, f: dict(reserve=f[3][:, :2]),
    "reserve-empty": lambda inp, f: dict(reserve=torch.empty(0, device="cuda")),
    "ghy-wrong-shape": lambda inp, f: dict(ghy=inp["ghy"][:, :2]),
    "weights-one-missing": lambda inp, f: dict(weights=inp["w"][:-1]),
    "dropout-without-seed": lambda inp, f: dict(dropout=0.5),
    "lstm-without-cx": lambda inp, f: dict(cx=None),
    "unknown-mode": lambda inp, f: dict(mode="LSTMX"),
    "proj-without-its-weights": lambda inp, f: dict(proj=4),
}


@pytest.mark.parametrize("bad", list(BAD_BACKWARD_CALLS))
def test_bad_inputs_raise_and_device_stays_usable(ext, precision, bad):
    precision("fp32")
    case = Case("LSTM", 2, False, 8, 16, 3, 4, True, "fp32", False)
    inp = make_inputs(case, backward=True)
    f = torch.ops.fused_rnn._fused_forward(*fwd_args(case, inp))
    good = bwd_args(case, inp, f)
    op = torch.ops.fused_rnn._fused_backward
    names = ["gout", "ghy", "gcy", "input", "weights", "hx", "cx", "lengths", "seed", "output",
             "reserve", "mode", "L", "bidir", "bias", "proj", "dropout"]
    a = list(good)
    for k, v in BAD_BACKWARD_CALLS[bad](inp, f).items():
        a[names.index(k)] = v
    with pytest.raises((RuntimeError, ValueError, NotImplementedError)):
        op(*a)
    out = op(*good)
    torch.cuda.synchronize()
    assert torch.isfinite(out[0]).all()
