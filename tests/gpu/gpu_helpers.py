"""Shared by the GPU tests of the fused kernels (test_smoke_gpu.py, test_forward_gpu.py,
test_backward_gpu.py): the problem description, random inputs quantised to a case's dtype,
the extension, the allocator poison, cuDNN (torch.nn) on the same weights, the error
measure, the tolerances, and checks whose failure messages point at the fault (case,
tensor, index, values).

Imported as a top-level module (pytest puts tests/gpu on sys.path); importing it needs no
GPU, so the GPU tests still collect (and skip) on a machine without one, and the CPU test
tests/test_smoke_harness.py runs the smoke checks through it on CPU tensors. Nothing here
assumes CUDA unless its name or docstring says so.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import pytest
import torch
from torch import nn

from fused_rnn import reference, tuning

DTYPE = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
         "bf16": torch.bfloat16}
NN = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}

# Accuracy rule (design section 5): error vs the float64 reference
#   <= 2 x cuDNN's error (same dtype, same TF32 setting, same weights) + FLOOR[prec]
#   and <= CAP[prec] (an absolute sanity cap).
# forward: output, h_n, c_n
FWD_FLOOR = tuning.FWD_FLOOR  # the same floors as autotuning's first-use check
FWD_CAP = {"fp32": 1e-4, "tf32": 2e-2, "fp16": 2e-2, "bf16": 1e-1}
# backward: every gradient
BWD_FLOOR = tuning.BWD_FLOOR
BWD_CAP = {"fp32": 5e-4, "tf32": 5e-2, "fp16": 5e-2, "bf16": 2.5e-1}

# The forward kernel's synchronisation policies: FUSED_RNN_SYNC = grid (one grid.sync() per
# wave step) | flags (point-to-point step counters) | auto (or unset: flags). The extension
# reads it at every call (its plan cache keys on it); the plan names the policy it ran
# ("..., 514 wave steps, flags sync (ring 4), ..."). The backward kernel ignores it. Tests
# take it through the `sync` fixture (tests/gpu/conftest.py), parametrized indirectly.
SYNC_ENV = "FUSED_RNN_SYNC"
SYNC_POLICIES = ("flags", "grid")


def assert_sync(what, plan, policy):
    """A forward plan string (fused_rnn._C.plan's reason, a module's last_backend) names
    `policy` as the synchronisation that ran (nothing is checked for policy None: the
    environment's default)."""
    if policy is not None:
        assert f"{policy} sync" in plan, (
            f"{what}: {SYNC_ENV}={policy}, but the plan does not say '{policy} sync': {plan}")


def load_extension_or_fail():
    """The extension; on a machine with a visible CUDA device a missing one FAILS."""
    from fused_rnn._build import extension_status, load_extension

    mod = load_extension()
    assert mod is not None, (
        "a CUDA device is visible but the fused_rnn extension did not load: "
        f"{extension_status()}")
    return mod


def poison_allocator():
    """Fill free caching-allocator blocks with 0xFF bytes (NaN for fp32/fp16/bf16)."""
    big = torch.empty(96 << 20, dtype=torch.uint8, device="cuda").fill_(255)
    small = [torch.empty(512 << 10, dtype=torch.uint8, device="cuda").fill_(255)
             for _ in range(24)]
    del big, small


class Case(NamedTuple):
    mode: str
    L: int
    bidir: bool
    I: int
    H: int
    B: int
    T: int
    bias: bool
    prec: str
    lengths: bool
    dropout: float = 0.0  # the backward tests' cases carry it; the forward's pass it apart

    @property
    def id(self):
        return (f"{self.mode}-L{self.L}{'-bi' if self.bidir else ''}-I{self.I}-H{self.H}"
                f"-B{self.B}-T{self.T}{'' if self.bias else '-nobias'}-{self.prec}"
                f"{'-len' if self.lengths else ''}{f'-p{self.dropout}' if self.dropout else ''}")


def make_inputs(case: Case, seed: int = 0, backward: bool = False, device="cuda"):
    """Random weights (torch's init range), input, states, lengths; all quantised to the
    case's dtype, on `device` (the GPU unless told). The float64 reference gets the same
    quantised values. Also the dropout seed tensor of the case (seed; None without
    dropout). With `backward`, also output gradients (gout, ghy, gcy; drawn after the
    rest, so the other tensors do not depend on `backward`)."""
    g = torch.Generator().manual_seed(seed)
    dt = DTYPE[case.prec]
    D = 2 if case.bidir else 1
    G = reference.GATES[case.mode]
    k = 1.0 / math.sqrt(case.H)

    def rnd(*shape, scale=1.0, uniform=False):
        t = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * scale if uniform \
            else torch.randn(shape, generator=g, dtype=torch.float64) * scale
        return t.to(dt).to(device)

    weights = []
    for layer in range(case.L):
        for _ in range(D):
            in_l = case.I if layer == 0 else D * case.H
            weights.append(rnd(G * case.H, in_l, scale=k, uniform=True))
            weights.append(rnd(G * case.H, case.H, scale=k, uniform=True))
            if case.bias:
                weights.append(rnd(G * case.H, scale=k, uniform=True))
                weights.append(rnd(G * case.H, scale=k, uniform=True))
    x = rnd(case.T, case.B, case.I)
    hx = rnd(case.L * D, case.B, case.H, scale=0.5)
    cx = rnd(case.L * D, case.B, case.H, scale=0.5) if case.mode == "LSTM" else None
    lengths = None
    if case.lengths:
        lengths = torch.randint(1, case.T + 1, (case.B,), generator=g, dtype=torch.int64)
        lengths[0] = case.T  # one full-length sequence (packing needs max == T for total_length)
        lengths = lengths.to(device)
    inp = dict(x=x, w=weights, hx=hx, cx=cx, lengths=lengths)
    inp["seed"] = torch.tensor(123456789 + case.B, dtype=torch.int64, device=device) \
        if case.dropout > 0 and case.L > 1 else None
    if backward:
        inp["gout"] = rnd(case.T, case.B, D * case.H)
        inp["ghy"] = rnd(case.L * D, case.B, case.H)
        inp["gcy"] = rnd(case.L * D, case.B, case.H) if case.mode == "LSTM" else None
    return inp


def cudnn_module(case: Case, inp):
    """torch.nn (cuDNN on a GPU) at the case's dtype, holding the weights of `inp`, on
    their device."""
    kw = dict(num_layers=case.L, bias=case.bias, bidirectional=case.bidir,
              dtype=DTYPE[case.prec], device=inp["x"].device)
    if case.mode.startswith("RNN"):
        kw["nonlinearity"] = "tanh" if case.mode == "RNN_TANH" else "relu"
    m = NN[case.mode](case.I, case.H, **kw)
    with torch.no_grad():
        for p, w in zip(m._flat_weights, inp["w"]):
            p.copy_(w)
    return m


def run_module(m, case: Case, x, state, lengths):
    """m(x, state), through a packed sequence when there are lengths (output padded back
    to T): (output, h)."""
    if lengths is None:
        return m(x, state)
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    out, h = m(packed, state)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, total_length=case.T)
    return out, h


def rel_err(got, ref):
    """max |got - ref| / max(1, max |ref|), in float64 (largest_error's measure)."""
    if got is None or ref is None:
        return 0.0
    return largest_error(got, ref)[0]


def valid_mask(case: Case, lengths, device="cuda"):
    """(T, B) bool: t < lengths[b]."""
    t = torch.arange(case.T, device=device).unsqueeze(1)
    if lengths is None:
        return torch.ones(case.T, case.B, dtype=torch.bool, device=device)
    return t < lengths.unsqueeze(0)


def covered_or_skip(case: Case, ok, why, what="forward"):
    """The GPU tests' rule: a case the planner does not cover skips with the planner's
    reason, except small shapes (H <= 256, I <= 256), which any sm_80+ GPU must cover."""
    assert isinstance(why, str) and why, f"{case.id}: the {what} planner gave no reason"
    if not ok:
        assert not (case.H <= 256 and case.I <= 256), (
            f"{case.id}: small shape not covered by the fused {what}: {why}")
        pytest.skip(f"{case.id}: not covered by the fused {what} on this device: {why}")


# ----------------------------------------------------------------------------- arguments


def _cast_all(cast):
    return (lambda t: t) if cast is None else (lambda t: None if t is None else cast(t))


def forward_args(case: Case, inp, *, cast=None, need_reserve=False):
    """The 13 arguments of `_fused_forward` / `rnn_forward` / `reference.rnn_forward` for
    `inp` (dropout and seed from the case); `cast` is applied to every float tensor (e.g.
    `torch.Tensor.double` for the float64 reference)."""
    c = _cast_all(cast)
    return (c(inp["x"]), [c(w) for w in inp["w"]], c(inp["hx"]), c(inp["cx"]), inp["lengths"],
            inp["seed"], case.mode, case.L, case.bidir, case.bias, 0, case.dropout, need_reserve)


def backward_args(case: Case, inp, output, reserve, *, cast=None):
    """The 17 arguments of `_fused_backward` / `rnn_backward` for `inp` and a forward's
    `output` and `reserve` (taken as given); `cast` as for forward_args."""
    c = _cast_all(cast)
    gcy = c(inp["gcy"] if inp["gcy"] is not None else inp["gout"].new_empty((0,)))
    return (c(inp["gout"]), c(inp["ghy"]), gcy, c(inp["x"]), [c(w) for w in inp["w"]],
            c(inp["hx"]), c(inp["cx"]), inp["lengths"], inp["seed"], output, reserve, case.mode,
            case.L, case.bidir, case.bias, 0, case.dropout)


def reference_forward64(case: Case, inp, *, need_reserve=False):
    """reference.rnn_forward in float64 on the (dtype-quantised) values of `inp`."""
    return reference.rnn_forward(*forward_args(case, inp, cast=torch.Tensor.double,
                                               need_reserve=need_reserve))


def reference_backward64(case: Case, inp, reserve):
    """reference.rnn_backward in float64 on the values of `inp` and the given `reserve`
    (cast to float64): the exact gradients of that reserve."""
    a = backward_args(case, inp, None, reserve.double(), cast=torch.Tensor.double)
    return reference.rnn_backward(*a[:9], *a[10:])  # (no `output` argument)


# ----------------------------------------------------------------------------- cuDNN


def cudnn_forward(case: Case, inp):
    """torch.nn at the case's dtype on the same weights (cuDNN on a GPU), no dropout:
    (output, h_n, c_n or None)."""
    m = cudnn_module(case, inp)
    with torch.no_grad():
        state = (inp["hx"], inp["cx"]) if case.mode == "LSTM" else inp["hx"]
        out, h = run_module(m, case, inp["x"], state, inp["lengths"])
    if case.mode == "LSTM":
        return out, h[0], h[1]
    return out, h, None


def cudnn_backward(case: Case, inp):
    """torch.nn at the case's dtype (cuDNN on a GPU), same weights and output gradients,
    no dropout, autograd: (grad_input, grad_weights, grad_hx, grad_cx or None)."""
    m = cudnn_module(case, inp)
    x = inp["x"].clone().requires_grad_()
    h0 = inp["hx"].clone().requires_grad_()
    c0 = inp["cx"].clone().requires_grad_() if case.mode == "LSTM" else None
    state = (h0, c0) if case.mode == "LSTM" else h0
    out, h = run_module(m, case, x, state, inp["lengths"])
    hy, cy = (h[0], h[1]) if case.mode == "LSTM" else (h, None)
    loss = (out.float() * inp["gout"].float()).sum() + (hy.float() * inp["ghy"].float()).sum()
    if cy is not None:
        loss = loss + (cy.float() * inp["gcy"].float()).sum()
    params = list(m._flat_weights)
    grads = torch.autograd.grad(loss, [x, h0] + ([c0] if c0 is not None else []) + params)
    gx, ghx = grads[0], grads[1]
    gcx = grads[2] if c0 is not None else None
    gw = list(grads[3 if c0 is not None else 2:])
    return gx, gw, ghx, gcx


# ----------------------------------------------------------------------------- names


def weight_names(case: Case, proj_size: int = 0):
    """Names of the flat weights in reference.py's order, which is torch's
    `_flat_weights_names` with `weight_`/`bias_` shortened to `w_`/`b_`
    (`w_hh_l1_reverse` is torch's `weight_hh_l1_reverse`)."""
    kw = dict(num_layers=case.L, bias=case.bias, bidirectional=case.bidir)
    if proj_size > 0:
        kw["proj_size"] = proj_size
    m = NN[case.mode](1, proj_size + 1, **kw)  # (names only: the sizes do not matter)
    return [n.replace("weight_", "w_", 1).replace("bias_", "b_", 1) for n in m._flat_weights_names]


def forward_named(case: Case, res):
    """{"output", "h_n"[, "c_n" (LSTM)]} of a forward result (output, hy, cy, ...)."""
    named = {"output": res[0], "h_n": res[1]}
    if case.mode == "LSTM":
        named["c_n"] = res[2]
    return named


def grads_named(case: Case, res):
    """{"grad_input", "grad_hx"[, "grad_cx" (LSTM)], "grad_w_ih_l0", ...} of a backward
    result (grad_input, grad_weights, grad_hx, grad_cx)."""
    names = weight_names(case)
    assert len(res[1]) == len(names), (
        f"{case.id}: {len(res[1])} weight gradients, expected {len(names)} ({names})")
    named = {"grad_input": res[0], "grad_hx": res[2]}
    if case.mode == "LSTM":
        named["grad_cx"] = res[3]
    named.update((f"grad_{n}", g) for n, g in zip(names, res[1]))
    return named


# ----------------------------------------------------------------------------- checks
# Failure messages point at the fault: the case id, the tensor's name, the first bad
# (multi-dimensional) index and value, or the index of the largest error with got vs
# expected there and the error vs the allowed tolerance.


class Tol(NamedTuple):
    allowed: float
    rule: str  # how `allowed` was obtained, for the message


def tolerance(cudnn_err: float, floor: float, cap: float, strict: Optional[float] = None):
    """The accuracy rule: err <= 2 x cuDNN's err + floor and err <= cap (and <= strict).

    Where cuDNN's own error is beyond the cap (a case so ill-conditioned in its dtype that
    the reference's rounding decides it, e.g. a ReLU pre-activation within a bf16 ulp of 0
    flipping its derivative), the cap gives way to cuDNN's own error: never less accurate
    than cuDNN."""
    rule = 2 * cudnn_err + floor
    why = f"2 x cuDNN {cudnn_err:.3g} + floor {floor:.3g}"
    allowed = rule
    if cap < allowed:
        if cudnn_err > cap:
            allowed, why = cudnn_err, f"cuDNN's own {cudnn_err:.3g}, beyond the cap {cap:.3g}"
        else:
            allowed, why = cap, f"cap {cap:.3g}; {why} = {rule:.3g}"
    if strict is not None and strict < allowed:
        allowed, why = strict, f"strict bound {strict:.3g}; {why}"
    return Tol(allowed, why)


def unravel(flat: int, shape):
    """The multi-dimensional index of element `flat` of a tensor of `shape`."""
    idx = []
    for n in reversed(tuple(shape)):
        idx.append(flat % n)
        flat //= n
    return tuple(reversed(idx))


def first_nonfinite(t):
    """None, or (index, value, count) of the first non-finite element (row-major order)."""
    bad = ~torch.isfinite(t.detach())
    count = int(bad.sum().item())
    if count == 0:
        return None
    flat = int(bad.reshape(-1).nonzero()[0, 0].item())
    return unravel(flat, t.shape), t.reshape(-1)[flat].item(), count


def largest_error(got, ref):
    """(rel_err(got, ref), index of the largest |got - ref|, got there, ref there)."""
    if ref.numel() == 0:
        return 0.0, None, None, None
    diff = (got.detach().double() - ref.detach().double()).abs()
    flat = int(diff.reshape(-1).argmax().item())
    err = diff.reshape(-1)[flat].item() / max(1.0, ref.detach().double().abs().max().item())
    return err, unravel(flat, ref.shape), got.reshape(-1)[flat].item(), ref.reshape(-1)[flat].item()


def describe_index(case: Case, name, idx):
    """What an index of a named tensor means in the kernel's terms (time step, batch row,
    layer-direction, gate and unit: a unit picks the CTA slice that owns it), or ''."""
    if idx is None:
        return ""
    D = 2 if case.bidir else 1
    H = case.H

    def ld(i):
        return f"layer {i // D}{' reverse' if i % D else ''}"

    def unit(j):
        return f"direction {j // H} unit {j % H}" if D == 2 else f"unit {j}"
    if name == "output" and len(idx) == 3:
        return f" (t={idx[0]}, b={idx[1]}, {unit(idx[2])})"
    if name in ("h_n", "c_n", "grad_hx", "grad_cx") and len(idx) == 3:
        return f" ({ld(idx[0])}, b={idx[1]}, unit {idx[2]})"
    if name == "grad_input" and len(idx) == 3:
        return f" (t={idx[0]}, b={idx[1]}, input feature {idx[2]})"
    if name.startswith(("grad_w_", "grad_b_")) and len(idx) in (1, 2):
        what = f" (gate {idx[0] // H} unit {idx[0] % H}"
        if len(idx) == 2:
            col = idx[1]
            if name.startswith(("grad_w_ih_l0", "grad_w_hh")) or D == 1:
                what += f", column {col}"
            else:
                what += f", column {col} = {unit(col)} of the layer below"
        return what + ")"
    return ""


def nonfinite_message(case_id, name, t, where=None):
    bad = first_nonfinite(t)
    if bad is None:
        return None
    idx, val, count = bad
    at = where(name, idx) if where is not None else ""
    return (f"{case_id}: {name} is not finite: first bad element at index {idx} = {val}{at} "
            f"({count} of {t.numel()} non-finite; shape {tuple(t.shape)})")


def compare_named(case_id, got, ref, tol, cudnn=None, *, dtype=None, log=print, where=None):
    """Checks each named tensor of `got` against `ref` (same names): dtype, shape,
    finiteness, error (rel_err) <= tol[name].allowed. Prints one line per tensor (error,
    cuDNN's error beside it, allowed). `where(name, index)` may say what an index means
    (e.g. functools.partial(describe_index, case)). Returns ({name: error}, [problems])."""
    errs, problems = {}, []
    for name, g in got.items():
        if name not in ref:
            problems.append(f"{case_id}: {name}: no reference tensor of that name")
            continue
        r = ref[name]
        c = (cudnn or {}).get(name)
        if dtype is not None and g.dtype != dtype:
            problems.append(f"{case_id}: {name} has dtype {g.dtype}, expected {dtype}")
        if tuple(g.shape) != tuple(r.shape):
            problems.append(f"{case_id}: {name} has shape {tuple(g.shape)}, expected "
                            f"{tuple(r.shape)}")
            errs[name] = math.inf
            continue
        msg = nonfinite_message(case_id, name, g, where)
        if msg is not None:
            problems.append(msg)
            errs[name] = math.inf
            log(f"{case_id} {name:>24}: NOT FINITE")
            continue
        err, idx, gv, rv = largest_error(g, r)
        errs[name] = err
        t = tol[name]
        ok = err <= t.allowed
        cud = "n/a" if c is None else f"{c:.2e}"
        log(f"{case_id} {name:>24}: err {err:.2e}  cuDNN {cud:>8}  allowed {t.allowed:.2e}"
            f"{'' if ok else '  FAIL'}")
        if not ok:
            problems.append(
                f"{case_id}: {name} differs from the float64 reference: largest error at index "
                f"{idx}{where(name, idx) if where is not None else ''}: got {gv:.6g}, expected "
                f"{rv:.6g}; error {err:.3g} (|got - ref| / "
                f"max(1, max|ref|)) > allowed {t.allowed:.3g} ({t.rule})")
    return errs, problems


def raise_problems(problems):
    """One AssertionError listing every problem (the first line names the first fault)."""
    if problems:
        raise AssertionError("\n".join(problems))


def assert_close_named(case_id, got, ref, tol, cudnn=None, *, dtype=None, log=print,
                       where=None):
    """compare_named, raising on any problem; returns {name: error}."""
    errs, problems = compare_named(case_id, got, ref, tol, cudnn, dtype=dtype, log=log,
                                   where=where)
    raise_problems(problems)
    return errs


def assert_finite(case_id, tensors, where=None):
    """Every named tensor finite; else one message per bad tensor: case, name, first bad
    index and value."""
    raise_problems([m for m in (nonfinite_message(case_id, n, t, where)
                                for n, t in tensors.items()) if m is not None])
