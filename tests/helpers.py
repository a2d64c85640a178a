"""Shared builders for the tests: paired torch.nn / fused_rnn modules on the same weights."""

from __future__ import annotations

import torch
from torch import nn

import fused_rnn

NN = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}
FUSED = {"LSTM": fused_rnn.LSTM, "GRU": fused_rnn.GRU, "RNN_TANH": fused_rnn.RNN,
         "RNN_RELU": fused_rnn.RNN}


def make_pair(mode, input_size, hidden_size, dtype=torch.float64, device="cpu", **kw):
    """(torch.nn module, fused_rnn module) with identical weights."""
    if mode.startswith("RNN"):
        kw["nonlinearity"] = "tanh" if mode == "RNN_TANH" else "relu"
    ref = NN[mode](input_size, hidden_size, dtype=dtype, device=device, **kw)
    fused = FUSED[mode](input_size, hidden_size, dtype=dtype, device=device, **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def state_for(module, batch, dtype=torch.float64, device="cpu", batched=True):
    """A random initial state shaped as the module expects (tuple for LSTM)."""
    D = 2 if module.bidirectional else 1
    h_out = module.proj_size if module.proj_size > 0 else module.hidden_size
    shape_h = (module.num_layers * D, batch, h_out) if batched else (module.num_layers * D, h_out)
    shape_c = (module.num_layers * D, batch, module.hidden_size) if batched else (
        module.num_layers * D, module.hidden_size)
    h = torch.randn(shape_h, dtype=dtype, device=device)
    if module.mode == "LSTM":
        return h, torch.randn(shape_c, dtype=dtype, device=device)
    return h


def flat(x):
    """All tensors of a (nested) forward result, PackedSequence data included."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, torch.nn.utils.rnn.PackedSequence):
        return [x.data]
    out = []
    for item in x:
        out += flat(item)
    return out


def requires_grad_(state):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.requires_grad_() for s in state)
    return state.requires_grad_()
