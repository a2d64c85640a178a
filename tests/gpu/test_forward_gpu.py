"""The fused CUDA forward kernel against a float64 reference and against cuDNN.

Runs only where a CUDA device is visible (marked ``gpu``; tests/conftest.py
skips it elsewhere). On such a machine a missing or broken extension FAILS:
the ``ext`` fixture asserts it loaded.

Rules (design section 5):
* accuracy: on the same (dtype-quantised) weights and inputs, the fused
  error vs the float64 reference is at most 2x cuDNN's error (torch.nn at the
  same dtype, same TF32 setting) plus a small floor;
* outputs are poisoned (the caching allocator's free blocks are filled with
  0xFF = NaN in every float dtype) before each fused call, then checked finite;
* reserve == the reference's reserve on valid timesteps; dropout == the
  reference with the same seed; inference == training forward bit for bit;
* one kernel launch, no cuDNN; CUDA-graph capture/replay; T > 65535; bad
  input raises and leaves the device usable.

Synchronisation policies (FUSED_RNN_SYNC, gpu_helpers.SYNC_POLICIES): the random-shape
forward (every cell, dtype, lengths, bidirectional), the dropout and the CUDA-graph tests
run once under each (the plan must name the policy asked for; a case's float64 reference
is computed once for both); the policy switched between calls of one module has its own
test; the rest run under the environment's default.
"""

from __future__ import annotations

import functools
import zlib

import pytest
import torch
from gpu_helpers import FWD_CAP as CAP
from gpu_helpers import FWD_FLOOR as FLOOR
from gpu_helpers import (DTYPE, SYNC_ENV, SYNC_POLICIES, Case, Tol, assert_close_named,
                         assert_finite, assert_sync, covered_or_skip, describe_index,
                         forward_args, forward_named, make_inputs,
                         poison_allocator, reference_forward64, rel_err, tolerance, valid_mask)
from gpu_helpers import cudnn_forward as run_cudnn
from torch import nn

import fused_rnn

pytestmark = pytest.mark.gpu

# error floors (added to 2x cuDNN's error) and absolute sanity caps, per precision:
# FLOOR, CAP (gpu_helpers.FWD_FLOOR / FWD_CAP, shared with test_smoke_gpu.py)


# ----------------------------------------------------------------------------- fixtures
# (precision: tests/gpu/conftest.py)


# (ext: tests/gpu/conftest.py)


@pytest.fixture(scope="module")
def last_reference():
    """{case id: what the float64 reference and cuDNN gave} for the last case only: the
    synchronisation policies of one case run side by side (both_sync) and share it."""
    return {}


def both_sync(names: str, values, id_of):
    """parametrize(names + ",sync", ...) over values x SYNC_POLICIES, a case's policies side
    by side; id "<id_of(*value)>-<policy>"; `sync` is the conftest fixture (indirect)."""
    if "," not in names:
        values = [(v,) for v in values]
    rows = [(*v, policy) for v in values for policy in SYNC_POLICIES]
    return pytest.mark.parametrize(f"{names},sync", rows, indirect=["sync"],
                                   ids=[f"{id_of(*r[:-1])}-{r[-1]}" for r in rows])


# ----------------------------------------------------------------------------- problems
# (Case, make_inputs: gpu_helpers.py)


CASES = [
    Case("LSTM", 1, False, 1, 1, 1, 1, True, "fp32", False),         # the smallest problem
    Case("LSTM", 2, False, 13, 37, 3, 7, True, "tf32", False),
    Case("LSTM", 4, False, 64, 100, 5, 9, True, "bf16", True),
    Case("LSTM", 3, True, 17, 64, 70, 6, False, "fp16", True),       # 2 batch tiles
    Case("LSTM", 1, False, 1024, 1024, 3, 5, True, "bf16", False),   # H = 1024
    Case("LSTM", 2, False, 512, 512, 32, 16, True, "bf16", False),
    Case("LSTM", 2, False, 512, 512, 32, 16, True, "tf32", False),
    Case("LSTM", 4, False, 256, 256, 200, 8, True, "fp16", False),   # 4 batch tiles
    Case("LSTM", 2, True, 33, 129, 1, 12, True, "fp32", True),
    Case("GRU", 1, False, 5, 8, 1, 1, True, "bf16", False),
    Case("GRU", 2, False, 13, 37, 4, 10, True, "fp32", True),
    Case("GRU", 3, True, 100, 100, 9, 6, True, "tf32", True),
    Case("GRU", 4, False, 512, 512, 16, 12, True, "bf16", False),
    Case("GRU", 2, False, 7, 250, 65, 5, False, "fp16", False),
    Case("RNN_TANH", 1, False, 3, 16, 2, 20, True, "fp32", False),
    Case("RNN_TANH", 3, True, 21, 48, 17, 7, True, "bf16", True),
    Case("RNN_TANH", 4, False, 256, 512, 8, 9, False, "tf32", False),
    Case("RNN_TANH", 2, False, 40, 77, 3, 4, True, "fp16", True),
    Case("RNN_RELU", 2, False, 9, 31, 6, 11, True, "fp16", True),
    Case("RNN_RELU", 2, True, 64, 64, 33, 5, True, "fp32", False),
    Case("RNN_RELU", 1, False, 1, 1000, 1, 3, True, "bf16", False),
    Case("RNN_RELU", 3, False, 50, 24, 4, 6, False, "tf32", True),
    # weights split between registers and shared memory (on an H100/H200)
    Case("LSTM", 4, False, 512, 512, 9, 5, True, "tf32", False),     # 33.5 MB of fp32 weights
    Case("LSTM", 2, False, 1024, 1024, 16, 4, True, "bf16", False),
    Case("LSTM", 2, True, 512, 512, 5, 4, True, "bf16", False),
]


def op_args(case: Case, inp, *, dropout=0.0, seed=None, need_reserve=False):
    """_fused_forward's arguments, with this dropout and seed (the cases carry neither)."""
    return forward_args(case._replace(dropout=dropout), dict(inp, seed=seed),
                        need_reserve=need_reserve)


def run_reference(case: Case, inp, *, dropout=0.0, seed=None, need_reserve=False):
    return reference_forward64(case._replace(dropout=dropout), dict(inp, seed=seed),
                               need_reserve=need_reserve)


def fused(ext, case, inp, **kw):
    poison_allocator()
    res = torch.ops.fused_rnn._fused_forward(*op_args(case, inp, **kw))
    torch.cuda.synchronize()
    return res


def plan_or_skip(ext, case, need_reserve=False, dropout=0.0):
    """The plan's summary; skips shapes the device can not hold on chip, but small
    ones (H <= 256, I <= 256) must be covered on any sm_80+ GPU."""
    ok, why = ext.plan(case.mode, case.L, case.bidir, case.bias, 0, case.I, case.H, case.B,
                       case.T, DTYPE[case.prec], torch.cuda.current_device(), need_reserve,
                       case.lengths, dropout)
    covered_or_skip(case, ok, why)
    print(why)
    return why


# ----------------------------------------------------------------------------- tests


# (the tiny smoke test, L=1 T=1 fp32, is in test_smoke_gpu.py, run before this file)


def test_extension_facts(ext):
    archs = ext.compiled_archs()
    assert archs and all(a.startswith("sm_") for a in archs), archs
    version, why = ext.kernel_binary_version(torch.cuda.current_device())
    major, minor = torch.cuda.get_device_capability()
    assert version == 10 * major + minor, (version, why)
    assert ext.max_layer_directions == 32


def test_plan_covers_targets_and_explains_rejections(ext, precision):
    dev = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(dev)
    precision("tf32")
    p = lambda mode, L, H, dt, **kw: ext.plan(  # noqa: E731
        mode, L, kw.get("bidir", False), True, kw.get("proj", 0), H, H, kw.get("B", 32), 512, dt,
        dev, False, False, 0.0)
    if props.major >= 9 and props.multi_processor_count >= 128:  # H100 / H200
        for mode, L, H, dt in [("LSTM", 4, 512, torch.bfloat16), ("GRU", 4, 512, torch.bfloat16),
                               ("LSTM", 2, 512, torch.float32), ("LSTM", 4, 256, torch.float32),
                               ("LSTM", 4, 512, torch.float16), ("LSTM", 2, 256, torch.bfloat16)]:
            ok, why = p(mode, L, H, dt)
            assert ok, (mode, L, H, dt, why)
            assert why.startswith("fused: ")
    ok, why = p("LSTM", 2, 64, torch.bfloat16, proj=32)
    assert not ok and "proj_size" in why
    ok, why = p("LSTM", 2, 64, torch.float64)
    assert not ok and "float64" in why
    ok, why = ext.plan("LSTM", 1, False, True, 0, 8, 8, 1, 1, torch.float32, 99, False, False, 0.0)
    assert not ok and "device" in why
    ok, why = p("LSTM", 4, 4096, torch.float32)
    assert not ok and "shared memory" in why


@both_sync("case", CASES, lambda case: case.id)
def test_forward_matches_reference(ext, precision, last_reference, case, sync):
    precision(case.prec)
    assert_sync(case.id, plan_or_skip(ext, case, need_reserve=True), sync)
    inp = make_inputs(case, seed=zlib.crc32(case.id.encode()) % 1000)
    out, hy, cy, reserve = fused(ext, case, inp, need_reserve=True)
    D = 2 if case.bidir else 1
    assert out.shape == (case.T, case.B, D * case.H) and out.dtype == DTYPE[case.prec]
    assert hy.shape == (case.L * D, case.B, case.H)
    if case.mode == "LSTM":
        assert cy.shape == (case.L * D, case.B, case.H)
    else:
        assert cy.numel() == 0
    got_n = forward_named(case, (out, hy, cy))
    assert_finite(case.id, got_n)

    if case.id not in last_reference:  # the case's first policy: the reference and cuDNN
        last_reference.clear()
        ref = run_reference(case, inp, need_reserve=True)
        ref_n = forward_named(case, ref)
        try:
            cud = run_cudnn(case, inp)
            cud_errs = {n: rel_err(t, ref_n[n]) for n, t in forward_named(case, cud).items()}
        except RuntimeError as e:  # e.g. a dtype cuDNN's RNN does not take
            cud_errs = {n: 0.0 for n in got_n}
            print(f"cuDNN failed ({e}); checking against the floor only")
        last_reference[case.id] = ref, cud_errs
    ref, cud_errs = last_reference[case.id]
    ref_n = forward_named(case, ref)
    # rule: max error <= 2 x (max cuDNN error) + floor, <= cap; the message names the
    # tensor and the index of its largest error
    cudnn_err = max(cud_errs.values())
    errs = assert_close_named(
        case.id, got_n, ref_n,
        {n: tolerance(cudnn_err, FLOOR[case.prec], CAP[case.prec]) for n in got_n}, cud_errs,
        where=functools.partial(describe_index, case))
    err = max(errs.values())
    print(f"{case.id}: fused err {err:.3g}, cuDNN err {cudnn_err:.3g}")

    # zero output rows past each length, exactly
    valid = valid_mask(case, inp["lengths"])
    assert (out[~valid] == 0).all()

    # reserve: same layout and values as the reference's, on valid timesteps
    assert reserve.shape == ref[3].shape, (reserve.shape, ref[3].shape)
    vr, vf = ref[3][:, valid], reserve[:, valid]
    assert_finite(case.id, {"reserve (valid steps)": vf})
    res_err = rel_err(vf, vr)
    assert res_err <= max(4 * err, FLOOR[case.prec] * 4) + 2 * cudnn_err, (res_err, err)

    # inference (nothing saved) computes the same numbers, bit for bit
    out2, hy2, cy2, reserve2 = fused(ext, case, inp, need_reserve=False)
    assert reserve2.numel() == 0
    assert torch.equal(out2, out) and torch.equal(hy2, hy) and torch.equal(cy2, cy)


def test_public_op_takes_the_fused_path(ext, precision):
    precision("fp32")
    case = Case("GRU", 2, False, 24, 40, 5, 6, True, "bf16", True)
    plan_or_skip(ext, case)
    inp = make_inputs(case)
    a = fused(ext, case, inp)
    b = torch.ops.fused_rnn.rnn_forward(*op_args(case, inp))
    torch.cuda.synchronize()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


DROPOUT_CASES = [
    (Case("LSTM", 3, False, 20, 48, 6, 9, True, "fp32", False), 0.3),
    (Case("GRU", 2, True, 11, 33, 5, 7, True, "fp32", True), 0.5),
    (Case("RNN_TANH", 2, False, 8, 16, 3, 5, True, "fp32", False), 1.0),
    (Case("LSTM", 4, False, 64, 128, 40, 6, True, "bf16", True), 0.2),
    (Case("GRU", 3, True, 16, 70, 3, 4, False, "fp16", False), 0.4),
]


@both_sync("case,p", DROPOUT_CASES, lambda case, p: f"{case.id}-{p}")
def test_dropout_equals_reference_with_same_seed(ext, precision, case, p, sync):
    precision(case.prec)
    assert_sync(case.id, plan_or_skip(ext, case, need_reserve=True, dropout=p), sync)
    inp = make_inputs(case, seed=7)
    seed = torch.tensor(123456789 + int(p * 100), dtype=torch.int64, device="cuda")
    out, hy, cy, reserve = fused(ext, case, inp, dropout=p, seed=seed, need_reserve=True)
    assert_finite(case.id, forward_named(case, (out, hy, cy)))
    ref = run_reference(case, inp, dropout=p, seed=seed, need_reserve=True)
    cap = Tol(CAP[case.prec], f"cap {CAP[case.prec]:.3g}")
    errs = assert_close_named(case.id, forward_named(case, (out, hy, cy)),
                              forward_named(case, ref),
                              {n: cap for n in forward_named(case, ref)})
    err = max(errs.values())
    valid = valid_mask(case, inp["lengths"])
    assert rel_err(reserve[:, valid], ref[3][:, valid]) <= max(4 * err, 4 * FLOOR[case.prec])
    # it really dropped something: differs from the run without dropout
    plain = run_reference(case, inp)
    assert rel_err(out, plain[0]) > 10 * CAP[case.prec] or case.prec != "fp32"
    # same seed, same bits
    again = fused(ext, case, inp, dropout=p, seed=seed, need_reserve=True)
    assert torch.equal(again[0], out)


def test_one_kernel_no_cudnn(ext, precision):
    from torch.profiler import ProfilerActivity, profile

    precision("tf32")
    case = Case("LSTM", 4, False, 32, 64, 8, 16, True, "bf16", False)
    plan_or_skip(ext, case)
    inp = make_inputs(case)
    for call in (torch.ops.fused_rnn._fused_forward, torch.ops.fused_rnn.rnn_forward):
        call(*op_args(case, inp))
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            call(*op_args(case, inp))
            torch.cuda.synchronize()
        names = [e.name for e in prof.events()
                 if str(e.device_type).endswith("CUDA")
                 and not e.name.startswith(("Memcpy", "Memset", "[memory]"))]
        assert 1 <= len(names) <= 2, names
        assert not any("cudnn" in n.lower() for n in names), names
        assert any("rnn_forward_kernel" in n for n in names), names


@both_sync("dropout", [0.0, 0.25], str)
def test_cuda_graph_capture_and_replay(ext, precision, dropout, sync):
    precision("tf32")
    case = Case("LSTM", 2, False, 16, 32, 4, 10, True, "fp32", True)
    assert_sync(case.id, plan_or_skip(ext, case, dropout=dropout), sync)
    inp = make_inputs(case)
    seed = torch.tensor(42, dtype=torch.int64, device="cuda")
    args = op_args(case, inp, dropout=dropout, seed=seed if dropout else None)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            torch.ops.fused_rnn._fused_forward(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = torch.ops.fused_rnn._fused_forward(*args)
    new_x = torch.randn_like(inp["x"])
    inp["x"].copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    eager = torch.ops.fused_rnn._fused_forward(*args)
    torch.cuda.synchronize()
    for g_t, e_t in zip(static_out, eager):
        assert torch.equal(g_t, e_t)


def test_sync_policy_follows_the_environment_at_every_call(ext, precision, monkeypatch):
    """FUSED_RNN_SYNC is read at every call and the plan cache keys on it: one module in one
    process switches policies between calls (and back), the label names the policy that ran,
    both compute the same function; unset is auto = flags; an invalid value raises, naming
    the variable, and the next call with a valid one runs."""
    precision("fp32")
    torch.manual_seed(0)
    m = fused_rnn.GRU(16, 40, num_layers=3, device="cuda")
    x = torch.randn(9, 5, 16, device="cuda")
    outs = {}
    with torch.no_grad():
        for policy in ("grid", "flags", "grid", "flags"):
            monkeypatch.setenv(SYNC_ENV, policy)
            out, h = m(x)
            assert_sync(f"GRU call under {policy}", m.last_backend, policy)
            assert_finite(policy, {"output": out, "h_n": h})
            if policy in outs:  # the same policy again: the same bits
                assert torch.equal(out, outs[policy])
            outs[policy] = out
        assert rel_err(outs["grid"], outs["flags"]) < 1e-5
        monkeypatch.delenv(SYNC_ENV)
        m(x)
        assert_sync("GRU call with FUSED_RNN_SYNC unset", m.last_backend, "flags")
        monkeypatch.setenv(SYNC_ENV, "barrier")
        with pytest.raises(RuntimeError, match="FUSED_RNN_SYNC must be"):
            m(x)
        monkeypatch.setenv(SYNC_ENV, "auto")
        assert torch.isfinite(m(x)[0]).all()
        assert_sync("GRU call under auto", m.last_backend, "flags")


def test_long_sequence_beyond_grid_limit(ext, precision):
    """T > 65535: the time loop is in the kernel, not in a grid dimension."""
    precision("fp32")
    case = Case("LSTM", 2, False, 8, 16, 2, 70000, True, "fp32", False)
    plan_or_skip(ext, case)
    inp = make_inputs(case)
    out, hy, cy, _ = fused(ext, case, inp)
    assert_finite(case.id, forward_named(case, (out, hy, cy)))
    # cuDNN itself refuses this length (CUDNN_STATUS_NOT_SUPPORTED at T=70000 on an H200,
    # torch 2.11 / cuDNN 9.19): it runs in chunks of 10000 steps, each starting from the
    # state the one before left, which is the same recurrence
    outs, hx, cx = [], inp["hx"], inp["cx"]
    for t0 in range(0, case.T, 10000):
        x = inp["x"][t0:t0 + 10000]
        o, hx, cx = run_cudnn(case._replace(T=x.shape[0]), dict(inp, x=x, hx=hx, cx=cx))
        outs.append(o)
    cud = (torch.cat(outs), hx, cx)
    assert rel_err(out, cud[0]) < 1e-3 and rel_err(hy, cud[1]) < 1e-3 and rel_err(cy, cud[2]) < 1e-3
    # prefix property (unidirectional): the first steps equal the fp64 reference on a prefix
    short = case._replace(T=64)
    ref = run_reference(short, dict(inp, x=inp["x"][:64]))
    assert rel_err(out[:64], ref[0]) < 1e-5


# one test per bad call, so that a call that crashes the process is named by itself
BAD_FORWARD_CALLS = {
    "input-on-cpu": lambda inp: dict(input=inp["x"].cpu()),
    "input-float64": lambda inp: dict(input=inp["x"].double()),
    "hx-wrong-shape": lambda inp: dict(hx=inp["hx"][:, :2]),
    "weights-mixed-dtypes": lambda inp: dict(weights=[inp["w"][0].half()] + inp["w"][1:]),
    "weights-one-missing": lambda inp: dict(weights=inp["w"][:-1]),
    "lengths-on-cpu": lambda inp: dict(lengths=torch.ones(3, dtype=torch.int64)),
    "dropout-without-seed": lambda inp: dict(dropout=0.5),
    "lstm-without-cx": lambda inp: dict(cx=None),
    "unknown-mode": lambda inp: dict(mode="LSTMX"),
    "proj-without-its-weights": lambda inp: dict(proj=4),
}


@pytest.mark.parametrize("bad", list(BAD_FORWARD_CALLS))
def test_bad_inputs_raise_and_device_stays_usable(ext, precision, bad):
    precision("fp32")
    case = Case("LSTM", 2, False, 8, 16, 3, 4, True, "fp32", False)
    inp = make_inputs(case)
    op = torch.ops.fused_rnn._fused_forward
    good = op_args(case, inp)
    names = ["input", "weights", "hx", "cx", "lengths", "seed", "mode", "L", "bidir", "bias",
             "proj", "dropout", "need_reserve"]
    a = list(good)
    for k, v in BAD_FORWARD_CALLS[bad](inp).items():
        a[names.index(k)] = v
    with pytest.raises((RuntimeError, ValueError, NotImplementedError)):
        op(*a)
    out = op(*good)
    torch.cuda.synchronize()
    assert torch.isfinite(out[0]).all()


def test_reserve_fully_written_and_training_with_lengths_is_finite(ext, precision):
    """Every reserve element is written (gate columns of frozen steps too), so the
    backward of a packed-sequence training step never meets poisoned memory."""
    precision("fp32")
    case = Case("LSTM", 2, False, 11, 37, 5, 8, True, "fp32", True)
    plan_or_skip(ext, case, need_reserve=True)
    inp = make_inputs(case, seed=3)
    _, _, _, reserve = fused(ext, case, inp, need_reserve=True)
    assert_finite(case.id, {"reserve": reserve})
    for cls in (fused_rnn.LSTM, fused_rnn.GRU):
        m = cls(11, 37, num_layers=2).cuda()
        x = torch.randn(8, 5, 11, device="cuda", requires_grad=True)
        packed = nn.utils.rnn.pack_padded_sequence(x, [8, 3, 5, 1, 8], enforce_sorted=False)
        poison_allocator()
        out, _ = m(packed)
        assert m.last_backend.startswith("fused"), m.last_backend
        out.data.square().sum().backward()
        assert_finite(f"{cls.__name__}(11, 37, num_layers=2), packed",
                      {"grad_input": x.grad,
                       **{f"grad_{n}": p.grad for n, p in m.named_parameters()}})


def test_fp32_follows_cudnn_rnn_precision_setting(ext):
    """torch's new per-operator TF32 API (cudnn.rnn.fp32_precision) is honoured and
    mixing it with the legacy flag does not make float32 calls raise."""
    rnn_backend = getattr(torch.backends.cudnn, "rnn", None)
    if rnn_backend is None or not hasattr(rnn_backend, "fp32_precision"):
        pytest.skip("this torch has no torch.backends.cudnn.rnn.fp32_precision")
    old = rnn_backend.fp32_precision
    try:
        for prec, want in (("ieee", "fp32 FMA"), ("tf32", "tf32 tensor cores")):
            rnn_backend.fp32_precision = prec
            assert ext.fp32_uses_tf32() == (prec == "tf32")
            case = Case("GRU", 2, False, 16, 32, 4, 5, True, "fp32", False)
            assert want in plan_or_skip(ext, case)
            m = fused_rnn.GRU(16, 32, num_layers=2).cuda()
            m(torch.randn(5, 4, 16, device="cuda"))
            assert m.last_backend.startswith("fused") and want in m.last_backend
    finally:
        rnn_backend.fp32_precision = old


# ------------------------------------------------------------------ the auto policy on a GPU


def test_auto_sends_uncovered_calls_to_cudnn_bit_for_bit(ext):
    """proj_size is not covered: auto runs nn.LSTM's own forward (cuDNN), exactly nn's
    numbers, forward and gradients, and says why."""
    torch.manual_seed(0)
    ref = nn.LSTM(12, 24, num_layers=2, proj_size=8, device="cuda")
    m = fused_rnn.LSTM(12, 24, num_layers=2, proj_size=8, device="cuda")
    m.load_state_dict(ref.state_dict())
    x = torch.randn(7, 3, 12, device="cuda", requires_grad=True)
    with fused_rnn.backend("auto"):
        got = m(x)
    assert m.last_backend.startswith("native: proj_size"), m.last_backend
    assert m.last_backward_backend.startswith("native: "), m.last_backward_backend
    want = ref(x)
    for a, b in ((got[0], want[0]), (got[1][0], want[1][0]), (got[1][1], want[1][1])):
        assert torch.equal(a, b)
    ga = torch.autograd.grad(got[0].sum(), [x, *m.parameters()])
    gb = torch.autograd.grad(want[0].sum(), [x, *ref.parameters()])
    for a, b in zip(ga, gb):
        assert torch.equal(a, b)


@pytest.mark.parametrize("train", [False, True])
def test_auto_follows_the_crossover_batch(ext, train):
    """Covered shapes run fused up to the crossover batch (this device's table, or the
    model's default) and cuDNN above it; the labels name the number and its source."""
    L, H, dtype = 4, 256, torch.bfloat16
    limit, where = fused_rnn.dispatch.batch_limit("LSTM", torch.cuda.current_device(), dtype, L,
                                                  H, False, train)
    m = fused_rnn.LSTM(H, H, num_layers=L, device="cuda", dtype=dtype).train(train)
    with fused_rnn.backend("auto"), torch.set_grad_enabled(train):
        if limit >= 1:
            m(torch.randn(4, min(limit, 8), H, device="cuda", dtype=dtype))
            assert m.last_backend.startswith("fused: "), (m.last_backend, limit, where)
        m(torch.randn(4, limit + 1, H, device="cuda", dtype=dtype))
    assert m.last_backend.startswith(f"native: batch {limit + 1} is above {limit}"), m.last_backend
    assert where in m.last_backend
