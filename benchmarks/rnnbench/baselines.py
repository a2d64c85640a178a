"""What the fused kernel is timed against, one class per implementation, one interface.

Each implementation of a case is a Baseline:

    skip_reason(case) -> str | None   why it does not run this case (None: it does)
    prepare(inputs)                   build what it needs from the case's nn module (the
                                      weights every implementation shares) and its inputs
    step(x)                           one timed call on the input buffer x
    outputs(x) -> dict                one call's results for the parity check, in nn's
                                      layout: output, h_n (and c_n), and in training the
                                      input's and every nn parameter's gradient
    before_run()                      host-side work before each timed run (off the clock)
    close()                           free what prepare built

Baselines (what a user could run instead of fused_rnn): `cudnn` (the nn module, eager),
`cudnn_graph` (the same captured in a CUDA graph; training: forward + backward captured as
torch.cuda.make_graphed_callables does), `cudnn_persist` (fp16 only: a stack of single-layer
nn modules captured in a graph, where PyTorch's rule gives cuDNN's PERSIST_STATIC kernel),
`flashrnn` (FlashRNN's cuda_fused LSTM, one call per layer plus the input projections).
Ours: `fused` (the module with the kernel forced) and `fused_graph` (captured the same way
as cudnn_graph). `reference` (fused_rnn's pure-PyTorch stack) is timed for context only.

parity(): every implementation's results against the float64 reference (the nn module's
weights in float64), under the GPU tests' rule: its largest error <= 2 x eager cuDNN's
error + a floor (cases.FWD_FLOOR / BWD_FLOOR).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time

import torch
import torch.nn.functional as F

from . import cases, timing
from .cases import Case

FLASHRNN_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
FLASHRNN_INSTALL = ("not installed (pip install flashrnn==1.0.8, or `pip install -e .[peers]`; "
                    "benchmarks/README.md says how to carry it to a machine without network)")


@dataclasses.dataclass
class Env:
    """What the baselines need beyond a case: the package under test, FlashRNN's entry point
    (None: not importable, with why), the GPU's capability."""
    fused_rnn: object
    flashrnn: object = None
    flashrnn_why: str = FLASHRNN_INSTALL
    capability: tuple = (9, 0)
    sm_count: int = 132


@dataclasses.dataclass
class Inputs:
    """One case's shared state: the nn module (whose weights every implementation takes),
    the fused_rnn module holding the same weights, the input buffers, the output gradient
    (training) and the initial state (streaming cases)."""
    case: Case
    dtype: torch.dtype
    ref: torch.nn.Module
    fused: torch.nn.Module
    xs: list
    gout: torch.Tensor | None = None
    hx: object = None  # h0, or (h0, c0) for LSTM; None: zeros

    @property
    def train(self) -> bool:
        return self.case.mode == "train"


def load_flashrnn():
    """(FlashRNN's flashrnn() function, None) or (None, why not)."""
    try:
        from flashrnn.flashrnn import flashrnn as fn  # flashrnn 1.x layout
    except ImportError:
        return None, FLASHRNN_INSTALL
    except Exception as e:  # noqa: BLE001 - a broken install is a skip reason, not a crash
        return None, f"import failed: {type(e).__name__}: {e}"
    return getattr(fn, "flashrnn", fn), None


# ------------------------------------------------------------------ results


def results_dict(out, state, grads=None, names=()) -> dict:
    """{output, h_n[, c_n][, grad_input, grad_<name>...]} detached."""
    res = {"output": out.detach()}
    if isinstance(state, tuple):
        res["h_n"], res["c_n"] = state[0].detach(), state[1].detach()
    else:
        res["h_n"] = state.detach()
    if grads is not None:
        res["grad_input"] = grads[0]
        res.update({f"grad_{n}": g for n, g in zip(names, grads[1:])})
    return res


def call_results(call, x, gout, params: dict, train: bool) -> dict:
    """One call(x) -> (output, state), with the gradients of gout w.r.t. x and `params`
    ({nn name: tensor}) in training (returned, not accumulated)."""
    with torch.set_grad_enabled(train):
        out, state = call(x)
        grads = torch.autograd.grad(out, [x, *params.values()], gout) if train else None
    return results_dict(out, state, grads, list(params))


def module_call(m, hx):
    return (lambda x: m(x)) if hx is None else (lambda x: m(x, hx))


# ------------------------------------------------------------------ the classes


class Baseline:
    name = ""
    jit_build = False  # prepare() may compile for minutes (timed apart: build_s)

    def __init__(self, env: Env):
        self.env = env
        self.ci: Inputs | None = None

    def skip_reason(self, c: Case) -> str | None:
        return None

    def prepare(self, ci: Inputs) -> None:
        self.ci = ci

    def step(self, x) -> None:
        raise NotImplementedError

    def outputs(self, x) -> dict:
        raise NotImplementedError

    def before_run(self) -> None:
        pass

    def close(self) -> None:
        self.ci = None


class ModuleBaseline(Baseline):
    """An nn-style module called eagerly: forward under no_grad, or forward + backward of
    the case's output gradient (accumulated into .grad, dropped before each run)."""

    def module(self, ci: Inputs):
        return ci.ref

    def context(self):
        return contextlib.nullcontext()

    def prepare(self, ci: Inputs) -> None:
        super().prepare(ci)
        self.m = self.module(ci)
        self.call = module_call(self.m, ci.hx)
        self._drop = timing.grad_dropper(list(self.m.parameters()), ci.xs)

    def before_run(self) -> None:
        self._drop()

    def step(self, x) -> None:
        with self.context():
            if self.ci.train:
                torch.autograd.backward(self.call(x)[0], self.ci.gout)
            else:
                with torch.no_grad():
                    self.call(x)

    def outputs(self, x) -> dict:
        with self.context():
            return call_results(self.call, x, self.ci.gout, dict(self.m.named_parameters()), self.ci.train)


class Cudnn(ModuleBaseline):
    """torch.nn's module, eager: cuDNN on a GPU. The anchor of the parity rule."""
    name = "cudnn"


class Fused(ModuleBaseline):
    """The fused_rnn module with the kernel forced (fused_rnn.backend("fused")): the
    kernel itself, or its refusal where it cannot run the case."""
    name = "fused"

    def module(self, ci: Inputs):
        return ci.fused

    def context(self):
        return self.env.fused_rnn.backend("fused")


class Auto(ModuleBaseline):
    """The fused_rnn module as users get it: its default policy picks the path."""
    name = "auto"

    def module(self, ci: Inputs):
        return ci.fused


class Graphed(Baseline):
    """A call captured in a CUDA graph per input buffer (timing.GraphedSteps): inference
    under no_grad; training forward + backward with the gradients of the input and of
    every parameter returned into static tensors, as make_graphed_callables does."""

    def function(self, ci: Inputs):
        """(call(x) -> (output, state), {nn name: parameter}) of what is captured."""
        raise NotImplementedError

    def context(self):
        return contextlib.nullcontext()

    def prepare(self, ci: Inputs) -> None:
        super().prepare(ci)
        call, params = self.function(ci)
        self.names = list(params)
        train, gout = ci.train, ci.gout

        def make(x):
            def fn():
                with self.context(), torch.set_grad_enabled(train):
                    out, state = call(x)
                    grads = torch.autograd.grad(out, [x, *params.values()], gout) if train else None
                state = state if isinstance(state, tuple) else (state,)
                return out.detach(), tuple(s.detach() for s in state), grads
            return fn

        self.graphs = timing.GraphedSteps(make, ci.xs)

    def step(self, x) -> None:
        self.graphs.step(x)

    def outputs(self, x) -> dict:
        out, state, grads = self.graphs.outputs(x)
        return results_dict(out, state if len(state) == 2 else state[0], grads, self.names)

    def close(self) -> None:
        if getattr(self, "graphs", None) is not None:
            self.graphs.close()
        self.graphs = None
        super().close()


class CudnnGraph(Graphed):
    """The nn module (cuDNN) captured in a CUDA graph: no launch overhead on the host."""
    name = "cudnn_graph"

    def function(self, ci: Inputs):
        return module_call(ci.ref, ci.hx), dict(ci.ref.named_parameters())


class FusedGraph(Graphed):
    """The fused_rnn module with the kernel forced, captured exactly as cudnn_graph."""
    name = "fused_graph"

    def context(self):
        return self.env.fused_rnn.backend("fused")

    def function(self, ci: Inputs):
        return module_call(ci.fused, ci.hx), dict(ci.fused.named_parameters())


def split_state(hx, layer: int, lstm: bool):
    """Layer `layer`'s slice of a stack's initial state, as a one-layer module takes it."""
    if hx is None:
        return None
    if lstm:
        return hx[0][layer:layer + 1], hx[1][layer:layer + 1]
    return hx[layer:layer + 1]


def join_states(states: list, lstm: bool):
    if lstm:
        return torch.cat([s[0] for s in states]), torch.cat([s[1] for s in states])
    return torch.cat(states)


class CudnnPersist(Graphed):
    """fp16, a stack of L single-layer nn modules (one cuDNN call each, dropout between
    them in training), captured in a CUDA graph: where PyTorch's rule
    (cases.persist_static) gives each call cuDNN's PERSIST_STATIC kernel."""
    name = "cudnn_persist"

    def rule(self, c: Case):
        """PyTorch's rule for each one-layer call of the stack."""
        return cases.persist_static(c.cell, c.dtype, 1, c.hidden, c.hidden, c.batch,
                                    self.env.capability, self.env.sm_count)

    def skip_reason(self, c: Case) -> str | None:
        ok, why = self.rule(c)
        if ok and c.layers == 1:
            return ("one layer: the nn module's own call is this one (cudnn, cudnn_graph run "
                    "PERSIST_STATIC already)")
        return None if ok else why

    def function(self, ci: Inputs):
        c, ref = ci.case, ci.ref
        lstm = c.cell == "LSTM"
        mods, params = [], {}
        for layer in range(c.layers):
            m = type(ref)(ref.input_size if layer == 0 else ref.hidden_size, ref.hidden_size,
                          num_layers=1, bias=ref.bias, device=ref.weight_hh_l0.device, dtype=ci.dtype,
                          **({"nonlinearity": ref.nonlinearity} if c.cell in ("RNN", "RNN_RELU") else {}))
            with torch.no_grad():
                for n, p in m.named_parameters():
                    p.copy_(getattr(ref, n.replace("_l0", f"_l{layer}")))
                    params[n.replace("_l0", f"_l{layer}")] = p
            m.train(ci.train)
            mods.append(m)
        self.mods = mods
        p = c.dropout if ci.train else 0.0

        def call(x):
            h, states = x, []
            for layer, m in enumerate(mods):
                h, s = m(h, split_state(ci.hx, layer, lstm))
                states.append(s)
                if p and layer < len(mods) - 1:
                    h = F.dropout(h, p, training=True)
            return h, join_states(states, lstm)

        return call, params


class FlashRNN(Baseline):
    """FlashRNN's fused CUDA LSTM (backend cuda_fused; it JIT-compiles per shape and dtype:
    the first call is timed apart, `build_s`). One call per layer on the projections
    x_l W_ih^T, which are part of the timed work as in cuDNN; dropout between layers in
    training. Called eagerly, through its public flashrnn() as a user calls it (per call it
    looks up its configuration and permutes to its internal layouts: at T = 1 that host
    work is most of its time); not captured in a CUDA graph. Its parameters are the nn module's, in its layout: W_ih as is, R =
    W_hh viewed (4, 1, H, H) (gate-major i, f, g, o like torch; row = output unit), b =
    b_ih + b_hh viewed (4, 1, H); their gradients map back to nn's names for parity."""
    name = "flashrnn"
    jit_build = True

    def skip_reason(self, c: Case) -> str | None:
        if self.env.flashrnn is None:
            return self.env.flashrnn_why or FLASHRNN_INSTALL
        if c.cell != "LSTM":
            return "FlashRNN's fused kernel is compared for LSTM only"
        return None

    def prepare(self, ci: Inputs) -> None:
        super().prepare(ci)
        c, ref = ci.case, ci.ref
        H = c.hidden
        self.layers = []
        with torch.no_grad():
            for layer in range(c.layers):
                w_ih, w_hh = getattr(ref, f"weight_ih_l{layer}"), getattr(ref, f"weight_hh_l{layer}")
                b = getattr(ref, f"bias_ih_l{layer}") + getattr(ref, f"bias_hh_l{layer}")
                self.layers.append((w_ih.detach().clone().requires_grad_(ci.train),
                                    w_hh.detach().reshape(4, 1, H, H).clone().requires_grad_(ci.train),
                                    b.detach().reshape(4, 1, H).clone().requires_grad_(ci.train)))
        self.dt = FLASHRNN_DTYPES[ci.dtype]
        self._grads = None
        t0 = time.perf_counter()
        self.step(ci.xs[0])  # the JIT build of this shape (and its backward in training)
        torch.cuda.synchronize()
        self.build_s = time.perf_counter() - t0

    def forward(self, x):
        """x (T, B, I) -> (output (T, B, H), (h_n, c_n))."""
        c, hx = self.ci.case, self.ci.hx
        T, B, H = x.shape[0], x.shape[1], c.hidden
        p = c.dropout if self.ci.train else 0.0
        h, hs, cs = x.transpose(0, 1), [], []
        for layer, (W, R, b) in enumerate(self.layers):
            wx = F.linear(h, W).reshape(B, T, 4, 1, H)
            states = None
            if hx is not None:
                states = torch.stack([hx[0][layer], hx[1][layer]])[:, :, None, None, :]
            y, last = self.env.flashrnn(wx, R, b, states=states, function="lstm",
                                        backend="cuda_fused", dtype=self.dt)
            h = y[0, :, :, 0, :]  # (B, T, H): the hidden state of every step
            hs.append(last[0, :, 0, 0, :])
            cs.append(last[1, :, 0, 0, :])
            if p and layer < len(self.layers) - 1:
                h = F.dropout(h, p, training=True)
        return h.transpose(0, 1), (torch.stack(hs), torch.stack(cs))

    def params(self) -> list:
        return [t for layer in self.layers for t in layer]

    def step(self, x) -> None:
        if self.ci.train:
            out = self.forward(x)[0]
            torch.autograd.grad(out, [x, *self.params()], self.ci.gout)  # returned, not accumulated
        else:
            with torch.no_grad():
                self.forward(x)

    def outputs(self, x) -> dict:
        train, H = self.ci.train, self.ci.case.hidden
        with torch.set_grad_enabled(train):
            out, state = self.forward(x)
            grads = torch.autograd.grad(out, [x, *self.params()], self.ci.gout) if train else None
        res = results_dict(out, state)
        if grads is not None:
            res["grad_input"] = grads[0]
            for layer in range(len(self.layers)):
                gW, gR, gb = grads[1 + 3 * layer: 4 + 3 * layer]
                res[f"grad_weight_ih_l{layer}"] = gW
                res[f"grad_weight_hh_l{layer}"] = gR.reshape(4 * H, H)
                res[f"grad_bias_ih_l{layer}"] = res[f"grad_bias_hh_l{layer}"] = gb.reshape(4 * H)
        return res


class Reference(Baseline):
    """fused_rnn.reference.rnn_forward (the pure-PyTorch stack) on the nn module's weights:
    context, not a baseline (it launches ~10 kernels per layer and step)."""
    name = "reference"

    def prepare(self, ci: Inputs) -> None:
        super().prepare(ci)
        c = ci.case
        fr = self.env.fused_rnn
        weights = list(ci.ref._flat_weights)
        kw = dict(device=weights[0].device, dtype=weights[0].dtype)
        if ci.hx is None:
            h0 = torch.zeros(c.layers, c.batch, c.hidden, **kw)
            c0 = torch.zeros(c.layers, c.batch, c.hidden, **kw) if c.cell == "LSTM" else None
        else:
            h0, c0 = ci.hx if c.cell == "LSTM" else (ci.hx, None)
        p = c.dropout if ci.train else 0.0

        def forward(x):
            seed = fr.dropout.draw_seed(x.device) if p > 0 else None
            return fr.reference.rnn_forward(x, weights, h0, c0, None, seed, cases.OP_MODE[c.cell],
                                            c.layers, False, True, 0, p, False)[0]
        self.forward = forward

    def step(self, x) -> None:
        if self.ci.train:
            torch.autograd.backward(self.forward(x), self.ci.gout)
        else:
            with torch.no_grad():
                self.forward(x)


REGISTRY = {cls.name: cls for cls in (Cudnn, CudnnGraph, CudnnPersist, FlashRNN, Fused, FusedGraph,
                                      Auto, Reference)}


# ------------------------------------------------------------------ parity


def reference64(ci: Inputs) -> dict:
    """The float64 reference of the case's first input: the nn module's weights in float64
    (on the same device; no TF32 in float64), its results in nn's layout."""
    m = copy.deepcopy(ci.ref).double()
    m.train(ci.train)
    x = ci.xs[0].detach().double().requires_grad_(ci.train)
    gout = ci.gout.double() if ci.gout is not None else None
    hx = None
    if ci.hx is not None:
        hx = tuple(h.double() for h in ci.hx) if isinstance(ci.hx, tuple) else ci.hx.double()
    return call_results(module_call(m, hx), x, gout, dict(m.named_parameters()), ci.train)


def errors(got: dict, want: dict) -> dict:
    """{key: largest |got - want|} for every key of the reference (an implementation that
    leaves one out raises: it cannot pass by omission)."""
    missing = sorted(set(want) - set(got))
    if missing:
        raise RuntimeError(f"parity: no {', '.join(missing)} from this implementation")
    out = {}
    for k, g in got.items():
        if k not in want:
            continue
        if tuple(g.shape) != tuple(want[k].shape):
            raise RuntimeError(f"parity: {k} has shape {tuple(g.shape)}, the reference "
                               f"{tuple(want[k].shape)}")
        out[k] = (g.double() - want[k]).abs().max().item() if g.numel() else 0.0
    return out


def rule(errs: dict, anchor: dict, dtype: str) -> tuple[float, str]:
    """(largest error, "ok" or the first key that breaks err <= 2 x cuDNN's + floor; "not
    checked: ..." where eager cuDNN's own error is not finite: no bound to hold it to)."""
    bad_anchor = [k for k in errs if not math.isfinite(anchor.get(k, 0.0))]
    if bad_anchor:
        return max(errs.values()), f"not checked: eager cuDNN's {bad_anchor[0]} is not finite"
    worst, verdict = 0.0, "ok"
    for k, e in errs.items():
        floor = (cases.BWD_FLOOR if k.startswith("grad_") else cases.FWD_FLOOR)[dtype]
        a = anchor.get(k, 0.0)
        allowed = 2 * a + floor
        if not math.isfinite(e):
            return math.inf, f"FAIL: {k} is not finite"
        worst = max(worst, e)
        if e > allowed and verdict == "ok":
            verdict = (f"FAIL: {k} error {e:.3g} > {allowed:.3g} (2 x cuDNN {a:.3g} + floor "
                       f"{floor:g})")
    return worst, verdict


def finite(b: Baseline, x) -> str:
    """With dropout the values differ by design and are not compared; they must still be
    finite: "" or "FAIL: <key> is not finite"."""
    for k, t in b.outputs(x).items():
        if not torch.isfinite(t).all():
            return f"FAIL: {k} is not finite"
    return ""


def parity(b: Baseline, x, want: dict, anchor: dict, dtype: str) -> tuple[float, str]:
    """b's results on x against the float64 reference `want`, under the rule with eager
    cuDNN's errors `anchor`."""
    return rule(errors(b.outputs(x), want), anchor, dtype)

