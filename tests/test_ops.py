"""The custom ops: opcheck, gradcheck, torch.compile, the reserve layout, autograd corner cases."""

import pytest
import torch

import fused_rnn
from fused_rnn import reference
from helpers import make_pair, state_for

MODES = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]


def _op_args(mode, T=4, B=3, I=5, H=4, L=2, bidir=True, bias=True, proj=0, dropout=0.0,
             lengths=None, need_reserve=False, dtype=torch.float64, requires_grad=False):
    kw = dict(num_layers=L, bidirectional=bidir, bias=bias)
    if proj:
        kw["proj_size"] = proj
    m, _ = make_pair(mode, I, H, dtype=dtype, **kw)
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=requires_grad)
    state = state_for(m, B, dtype=dtype)
    h, c = state if mode == "LSTM" else (state, None)
    weights = [w.detach().clone().requires_grad_(requires_grad) for w in m._flat_weights]
    h.requires_grad_(requires_grad)
    if c is not None:
        c.requires_grad_(requires_grad)
    seed = torch.tensor(99, dtype=torch.int64) if dropout > 0 else None
    return (x, weights, h, c, lengths, seed, mode, L, bidir, bias, proj, dropout, need_reserve)


OPCHECK_CASES = [
    dict(mode="LSTM"), dict(mode="LSTM", proj=2, bidir=False), dict(mode="GRU", bias=False),
    dict(mode="RNN_TANH"), dict(mode="RNN_RELU", bidir=False),
    dict(mode="LSTM", lengths=torch.tensor([4, 1, 3])), dict(mode="GRU", dropout=0.3),
    dict(mode="LSTM", need_reserve=True), dict(mode="GRU", need_reserve=True, L=1),
]


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items() if k != "lengths"))
def test_opcheck_forward(case):
    args = _op_args(requires_grad=True, **case)
    torch.library.opcheck(torch.ops.fused_rnn.rnn_forward.default, args)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_opcheck_backward(mode):
    x, w, h, c, lengths, seed, *opts = _op_args(mode)
    out, hy, cy, reserve = torch.ops.fused_rnn.rnn_forward(x, w, h, c, lengths, seed, *opts)
    args = (torch.randn_like(out), torch.randn_like(hy), torch.randn_like(cy), x, w, h, c,
            lengths, seed, out, reserve, *opts[:-1])
    torch.library.opcheck(torch.ops.fused_rnn.rnn_backward.default, args,
                          test_utils=("test_schema", "test_faketensor"))


GRADCHECK_CASES = [
    dict(mode=m, bias=b, bidir=d) for m in MODES for b in (True, False) for d in (False, True)
] + [dict(mode="LSTM", proj=2), dict(mode="LSTM", lengths=torch.tensor([3, 1])),
     dict(mode="GRU", dropout=0.4), dict(mode="LSTM", dropout=0.5, bidir=True)]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items() if k != "lengths") + ("-lengths" if "lengths" in c else ""))
def test_gradcheck(case):
    """Every input's gradient (input, all weights, h0, c0) against finite differences."""
    B = 2
    x, w, h, c, lengths, seed, *opts = _op_args(T=3, B=B, I=2, H=3, requires_grad=True, **case)

    def f(x, h, c, *w):
        out, hy, cy, _ = torch.ops.fused_rnn.rnn_forward(x, list(w), h, c, lengths, seed, *opts)
        return (out, hy, cy) if c is not None else (out, hy)

    assert torch.autograd.gradcheck(f, (x, h, c, *w), atol=1e-7, rtol=1e-5)


def test_reserve_layout_of_the_reference():
    """reserve (L*D, T, B, S): gates, c_t, h_t as csrc/README.md says."""
    T, B, H, L = 4, 3, 5, 2
    args = _op_args("LSTM", T=T, B=B, H=H, L=L, bidir=True, need_reserve=True)
    out, hy, cy, res = torch.ops.fused_rnn.rnn_forward(*args)
    assert res.shape == (L * 2, T, B, 6 * H)
    gates = res[..., :4 * H]
    assert ((gates[..., :2 * H] > 0) & (gates[..., :2 * H] < 1)).all()  # i, f sigmoid
    # top layer: forward h_t is output[..., :H], reverse h_t is output[..., H:]
    torch.testing.assert_close(res[2, :, :, 5 * H:], out[:, :, :H])
    torch.testing.assert_close(res[3, :, :, 5 * H:], out[:, :, H:])
    torch.testing.assert_close(res[2, -1, :, 4 * H:5 * H], cy[2])  # forward c at T-1
    torch.testing.assert_close(res[3, 0, :, 4 * H:5 * H], cy[3])  # reverse c at 0
    i, f, g, o = gates[2].chunk(4, dim=-1)
    c = res[2, :, :, 4 * H:5 * H]
    torch.testing.assert_close(o * c.tanh(), res[2, :, :, 5 * H:])
    torch.testing.assert_close(f[1:] * c[:-1] + i[1:] * g[1:], c[1:])
    gru = torch.ops.fused_rnn.rnn_forward(*_op_args("GRU", T=T, B=B, H=H, L=1, bidir=False,
                                                     need_reserve=True))
    assert gru[3].shape == (1, T, B, 5 * H)
    torch.testing.assert_close(gru[3][0, :, :, 4 * H:], gru[0])
    rnn = torch.ops.fused_rnn.rnn_forward(*_op_args("RNN_TANH", T=T, B=B, H=H, L=1, bidir=False,
                                                     need_reserve=True))
    torch.testing.assert_close(rnn[3][0], rnn[0])
    assert reference.reserve_width("LSTM", 8, 3) == 5 * 8 + 3


def test_op_rejects_empty_sequence():
    args = list(_op_args("GRU", T=1))
    args[0] = args[0][:0]
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
        torch.ops.fused_rnn.rnn_forward(*args)


def test_backward_twice_with_retain_graph_is_identical():
    _, fused = make_pair("LSTM", 3, 4, num_layers=2, dropout=0.3)
    fused.train()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    out, _ = fused(x)
    loss = (out ** 2).sum()
    g1 = torch.autograd.grad(loss, [x, *fused.parameters()], retain_graph=True)
    g2 = torch.autograd.grad(loss, [x, *fused.parameters()])
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def test_double_backward_raises_a_clear_error():
    _, fused = make_pair("GRU", 3, 4)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    with fused_rnn.backend("reference"):  # the op's backward (native's is torch's own)
        out, _ = fused(x)
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_no_grad_forward_keeps_no_reserve():
    _, fused = make_pair("LSTM", 3, 4, num_layers=2)
    with torch.no_grad():
        out, _ = fused(torch.randn(5, 2, 3, dtype=torch.float64))
    assert out.grad_fn is None


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = fused_rnn.LSTM(6, 8, num_layers=2, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        y, (h, c) = self.rnn(x)
        return self.head(y).sum(1) + h.sum(0).sum(-1, keepdim=True)


@pytest.mark.parametrize("train", [False, True])
def test_torch_compile_fullgraph_matches_eager(train):
    torch._dynamo.reset()
    model = _Model()
    model.train(train)
    x = torch.randn(2, 5, 6)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    # inside torch.compile a CPU call takes the custom op (the reference stack), eager
    # calls torch's own implementation
    assert model.rnn.last_backend.startswith("reference: "), model.rnn.last_backend
    assert "torch.compile" in model.rnn.last_backend
    torch.testing.assert_close(got, model(x))
    assert model.rnn.last_backend.startswith("native: ")
    if train:
        xa = x.clone().requires_grad_()
        xb = x.clone().requires_grad_()
        compiled(xa).sum().backward()
        ga = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        model(xb).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad)
        for a, p in zip(ga, model.parameters()):
            torch.testing.assert_close(a, p.grad)


def test_torch_compile_inductor_inference():
    torch._dynamo.reset()
    model = _Model().eval()
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))


def test_torch_compile_native_breaks_the_graph_around_itself_only():
    """A call that goes native (here: asked for) runs eagerly behind a graph break, as
    nn.LSTM does; fullgraph=True then refuses it, and the reference compiles whole."""
    torch._dynamo.reset()
    model = _Model()
    model.rnn.backend = "native"
    x = torch.randn(2, 5, 6)
    torch.testing.assert_close(torch.compile(model, backend="aot_eager")(x), model(x))
    assert model.rnn.last_backend.startswith("native: ")
    torch._dynamo.reset()
    with pytest.raises(Exception, match="(?i)graph break|skip|disable"):
        torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch._dynamo.reset()
    model.rnn.backend = "reference"
    torch.testing.assert_close(torch.compile(model, fullgraph=True, backend="aot_eager")(x),
                               model(x))


def test_torch_compile_follows_the_backend_context():
    """The requested backend is read while tracing, and a change recompiles."""
    torch._dynamo.reset()
    model = _Model()
    x = torch.randn(2, 5, 6)
    compiled = torch.compile(model, backend="aot_eager")
    compiled(x)
    assert model.rnn.last_backend.startswith("reference: ")
    with fused_rnn.backend("native"):
        compiled(x)
    assert model.rnn.last_backend.startswith("native: requested by fused_rnn.backend('native')")
    compiled(x)
    assert model.rnn.last_backend.startswith("reference: ")


def test_torch_compile_dynamic_shapes_fullgraph():
    torch._dynamo.reset()
    model = _Model().eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="aot_eager")
    with torch.no_grad():
        for B, T in ((2, 5), (3, 7), (1, 4)):
            x = torch.randn(B, T, 6)
            torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.parametrize("mode", MODES)
def test_backward_ignores_gate_columns_of_frozen_steps(mode):
    """The contract leaves gate columns past a sequence's length unspecified: NaN there is harmless."""
    lengths = torch.tensor([4, 1, 3])
    x, w, h, c, _, seed, *opts = _op_args(mode, T=4, B=3, lengths=lengths, need_reserve=True)
    out, hy, cy, res = torch.ops.fused_rnn.rnn_forward(x, w, h, c, lengths, seed, *opts)
    G = reference.GATES[mode]
    H = w[1].shape[1]
    grads = (torch.randn_like(out), torch.randn_like(hy), torch.randn_like(cy))
    args = (x, w, h, c, lengths, seed, out)
    clean = torch.ops.fused_rnn.rnn_backward(*grads, *args, res, *opts[:-1])
    poisoned = res.clone()
    frozen = torch.arange(4).unsqueeze(1) >= lengths.unsqueeze(0)  # (T, B)
    n_gate_cols = {"LSTM": 4 * H, "GRU": 4 * H}.get(mode, 0)
    if n_gate_cols:
        poisoned[:, frozen, :n_gate_cols] = float("nan")
    else:  # RNN: h of a frozen step is the frozen state; poison nothing that is defined
        assert G == 1
    dirty = torch.ops.fused_rnn.rnn_backward(*grads, *args, poisoned, *opts[:-1])
    for a, b in zip(clean[:1] + tuple(clean[1]) + clean[2:], dirty[:1] + tuple(dirty[1]) + dirty[2:]):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
