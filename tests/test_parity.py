"""fused_rnn modules equal torch.nn in float64: every option, forward and all gradients.

Both CPU paths: the default (``native``: torch's own implementation, so bit for bit
equal) and the reference stack, forced (the oracle: equal to 1e-10).
"""

import itertools
from contextlib import nullcontext

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from helpers import flat, make_pair, requires_grad_, state_for

T, B, I, H, P = 5, 3, 4, 6, 3
LENGTHS = [3, 5, 1]  # unsorted, includes the full length and a length of 1


def _cases():
    for mode in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"):
        projs = (0, P) if mode == "LSTM" else (0,)
        layer_set = (1, 2, 4) if mode != "RNN_RELU" else (1, 2)
        for layers, bias, bf, bidir, proj, h0, packed in itertools.product(
            layer_set, (True, False), (False, True), (False, True), projs, (False, True),
            (False, True),
        ):
            yield pytest.param(
                mode, layers, bias, bf, bidir, proj, h0, packed,
                id=f"{mode}-L{layers}-{'b' if bias else 'nob'}-{'bf' if bf else 'tf'}-"
                   f"{'bi' if bidir else 'uni'}-p{proj}-{'h0' if h0 else 'noh0'}-"
                   f"{'packed' if packed else 'padded'}",
            )


def _input(batch_first, packed, requires_grad=True):
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=torch.float64,
                    requires_grad=requires_grad)
    if not packed:
        return x, x
    return x, pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=batch_first,
                                   enforce_sorted=False)


# native: torch's own kernels, so exactly equal; reference: the oracle, to 1e-10
TOLERANCE = {"native": 0.0, "reference": 1e-10}


def _close(got, want, path):
    if path == "native":
        assert torch.equal(got, want), (got - want).abs().max()
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=TOLERANCE[path])


@pytest.mark.parametrize("path", ["native", "reference"])
@pytest.mark.parametrize("mode,layers,bias,batch_first,bidir,proj,h0,packed", list(_cases()))
def test_matches_torch_nn(mode, layers, bias, batch_first, bidir, proj, h0, packed, path):
    kw = dict(num_layers=layers, bias=bias, batch_first=batch_first, bidirectional=bidir)
    if proj:
        kw["proj_size"] = proj
    ref, fused = make_pair(mode, I, H, **kw)
    x, inp = _input(batch_first, packed)
    state = requires_grad_(state_for(ref, B)) if h0 else None

    out_ref = ref(inp, state)
    # native is the default on a CPU; the reference has to be asked for
    backend = fused_rnn.backend("reference") if path == "reference" else nullcontext()
    with backend:
        out_fused = fused(inp, state)
    assert fused.last_backend.startswith(f"{path}: "), fused.last_backend
    assert fused.last_backward_backend.startswith(f"{path}: "), fused.last_backward_backend
    assert type(out_fused[0]) is type(out_ref[0])
    r, f = flat(out_ref), flat(out_fused)
    assert len(r) == len(f)
    for a, b in zip(r, f):
        assert a.shape == b.shape and a.dtype == b.dtype
        _close(b, a, path)
    if packed:
        for name in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            assert torch.equal(getattr(out_fused[0], name), getattr(out_ref[0], name))

    # every gradient: input, initial state, all parameters; random output cotangents
    wrt = [x] + ([] if state is None else flat(state)) + list(ref.parameters())
    wrt_f = [x] + ([] if state is None else flat(state)) + list(fused.parameters())
    cot = [torch.randn_like(a) for a in r]
    g_ref = torch.autograd.grad(r, wrt, cot, allow_unused=True, retain_graph=True)
    g_fused = torch.autograd.grad(f, wrt_f, cot, allow_unused=True)
    for a, b in zip(g_ref, g_fused):
        if a is None:
            assert b is None or b.abs().max() == 0
            continue
        _close(b, a, path)


def _dropout_cases():
    for mode in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"):
        for train, p, packed, bidir in itertools.product((True, False), (0.0, 0.5), (False, True),
                                                         (False, True)):
            yield pytest.param(mode, train, p, packed, bidir,
                               id=f"{mode}-{'train' if train else 'eval'}-p{p}-"
                                  f"{'packed' if packed else 'padded'}-{'bi' if bidir else 'uni'}")


@pytest.mark.parametrize("mode,train,p,packed,bidir", list(_dropout_cases()))
def test_default_path_is_torchs_bit_for_bit_with_dropout(mode, train, p, packed, bidir):
    """Train and eval, dropout 0 and 0.5 under the same seed: the same numbers as nn,
    dropout masks included (native draws torch's), and the same gradients."""
    kw = dict(num_layers=3, dropout=p, bidirectional=bidir)
    if mode == "LSTM":
        kw["proj_size"] = P
    ref, fused = make_pair(mode, I, H, **kw)
    ref.train(train)
    fused.train(train)
    x, inp = _input(False, packed)
    results = []
    for m in (ref, fused):
        torch.manual_seed(99)
        out = m(inp)
        r = flat(out)
        cot = [torch.ones_like(a) for a in r]
        grads = torch.autograd.grad(r, [x, *m.parameters()], cot, retain_graph=True)
        results.append(r + list(grads))
    assert fused.last_backend.startswith("native: ")
    for a, b in zip(*results):
        assert torch.equal(a, b), (a - b).abs().max()
