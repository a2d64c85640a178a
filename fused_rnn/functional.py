"""Functional entry points: the stack as a function of input, weights and state.

The modules call :func:`run`; users who keep weights themselves call
:func:`lstm`, :func:`gru`, :func:`rnn_tanh` or :func:`rnn_relu`, whose
arguments follow ``torch._VF.lstm`` & co.: ``weights`` is a flat list in
``nn.LSTM._flat_weights`` order (per layer, per direction: w_ih, w_hh,
[b_ih, b_hh], [w_hr]).

Shapes follow torch.nn: input (T, B, I), or (B, T, I) with batch_first; hx
(L*D, B, Hout) (never batch-first). ``lengths`` (int64, one per sequence,
any order, each >= 1) masks each sequence past its length: its state is frozen
and its output rows are zero, as with a PackedSequence.

Which path runs (fused kernel, torch's own ``torch._VF`` implementation, or the
reference stack) is decided per call by :func:`fused_rnn.dispatch.decide`;
``backend=`` asks for one for this call (see :func:`fused_rnn.backend`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import ops, reference
from .dispatch import behind_graph_break, decide
from .dropout import draw_seed

_VF = {"LSTM": torch._VF.lstm, "GRU": torch._VF.gru, "RNN_TANH": torch._VF.rnn_tanh,
       "RNN_RELU": torch._VF.rnn_relu}

# Autocast policy of torch.nn's RNNs: on CUDA all of them run in the autocast
# dtype; on CPU only lstm is in the lower-precision list.
_AUTOCAST_MODES = {"cuda": ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"), "cpu": ("LSTM",)}


def _autocast_dtype(mode: str, device_type: str) -> torch.dtype | None:
    """The dtype autocast makes this call compute in, as for torch.nn's RNNs; None: no cast."""
    if device_type not in _AUTOCAST_MODES or mode not in _AUTOCAST_MODES[device_type]:
        return None
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _autocast(mode, device_type, tensors):
    dtype = _autocast_dtype(mode, device_type)
    if dtype is None:
        return tensors
    return [None if t is None else (t.to(dtype) if t.is_floating_point() else t) for t in tensors]


def effective_dtype(mode: str, input: Tensor) -> torch.dtype:
    """The dtype a call computes in: autocast's where torch.nn's RNNs follow it."""
    dtype = _autocast_dtype(mode, input.device.type)
    return dtype if dtype is not None and input.is_floating_point() else input.dtype


def _check_same(input: Tensor, others, what: str) -> None:
    for t in others:
        if t is None:
            continue
        if t.device != input.device:
            raise RuntimeError(
                f"Input and {what} tensors are not at the same device, found input tensor at "
                f"{input.device} and {what} tensor at {t.device}"
            )
        if t.dtype != input.dtype:
            raise RuntimeError(
                f"Input and {what} tensors are not the same dtype, found input tensor with "
                f"{input.dtype} and {what} tensor with {t.dtype}"
            )


def _native(mode, input, weights, hx, cx, lengths, *, num_layers, bidirectional, has_biases,
            dropout, train, batch_first):
    """What nn.LSTM/GRU/RNN.forward runs (torch._VF.<mode>: cuDNN on a GPU, ATen on a CPU).

    ``lengths`` become a PackedSequence, as nn's modules take them: the sequences are
    sorted by length, run packed, and padded back with zeros past each length.
    """
    fn = _VF[mode]
    state = (hx, cx) if mode == "LSTM" else hx
    if lengths is None:
        result = fn(input, state, weights, has_biases, num_layers, dropout, train, bidirectional,
                    batch_first)
        return result[0], result[1], (result[2] if mode == "LSTM" else None)
    T = input.shape[1 if batch_first else 0]
    packed = pack_padded_sequence(input, lengths.cpu(), batch_first=batch_first,
                                  enforce_sorted=False)
    order, back = packed.sorted_indices, packed.unsorted_indices
    state = ((hx.index_select(1, order), cx.index_select(1, order)) if mode == "LSTM"
             else hx.index_select(1, order))
    result = fn(packed.data, packed.batch_sizes, state, weights, has_biases, num_layers, dropout,
                train, bidirectional)
    output, _ = pad_packed_sequence(PackedSequence(result[0], packed.batch_sizes, order, back),
                                    batch_first=batch_first, total_length=T)
    hy = result[1].index_select(1, back)
    cy = result[2].index_select(1, back) if mode == "LSTM" else None
    return output, hy, cy


def run(
    mode: str,
    input: Tensor,
    weights: list,
    hx: Tensor,
    cx: Tensor | None = None,
    *,
    num_layers: int,
    bidirectional: bool = False,
    has_biases: bool = True,
    proj_size: int = 0,
    dropout: float = 0.0,
    train: bool = False,
    batch_first: bool = False,
    lengths: Tensor | None = None,
    backend: str | None = None,
    path: str | None = None,
):
    """The stack; returns (output, hy, cy or None, forward_backend, backward_backend).

    The backends say which path runs and why (:func:`fused_rnn.dispatch.decide`): the
    forward's (ran), and the backward's (will run, when a gradient is needed; None
    otherwise). ``backend`` is a per-call request ("auto", "fused", "native",
    "reference"; None: inherit), below a ``fused_rnn.backend(...)`` context.
    ``path`` ("fused" or "reference") skips the decision: the modules decide before
    they reshape their input and pass the answer here.
    """
    input, hx, cx, *weights = _autocast(mode, input.device.type, [input, hx, cx, *weights])
    _check_same(input, weights, "parameter")
    _check_same(input, (hx, cx), "hidden")
    if input.dim() != 3:
        raise RuntimeError(f"input must have 3 dimensions, got {input.dim()}")
    if lengths is not None:
        lengths = lengths.to(device=input.device, dtype=torch.int64)
    p = float(dropout) if (train and num_layers > 1) else 0.0
    need_reserve = (
        torch.is_grad_enabled()
        and any(t is not None and t.requires_grad for t in (input, hx, cx, *weights))
    )
    forward = backward = None
    if path is None:
        T, B = _time_major_shape(input, batch_first)
        I, H = weights[0].shape[1], weights[0].shape[0] // reference.GATES[mode]
        d = decide(mode, input.device, input.dtype, T, B, I, H, num_layers=num_layers,
                   bidirectional=bidirectional, has_biases=has_biases, proj_size=proj_size,
                   dropout=p, need_grad=need_reserve, has_lengths=lengths is not None,
                   module_backend=backend)
        path, forward, backward = d
        if path == "native":
            native = behind_graph_break(_native) if torch.compiler.is_compiling() else _native
            output, hy, cy = native(mode, input, weights, hx, cx, lengths,
                                    num_layers=num_layers, bidirectional=bidirectional,
                                    has_biases=has_biases, dropout=float(dropout), train=train,
                                    batch_first=batch_first)
            return output, hy, cy, forward, backward
    if batch_first:
        input = input.transpose(0, 1)
    input = input.contiguous()
    ops._check_seq_len(input)
    seed = draw_seed(input.device) if p > 0 else None
    args = (input, list(weights), hx.contiguous(), None if cx is None else cx.contiguous(),
            lengths, seed, mode, num_layers, bidirectional, has_biases, proj_size, p, need_reserve)
    if path == "reference" and input.device.type != "cpu":
        # the op's CUDA kernel would take the fused kernel where it covers the call: the
        # reference stack directly, differentiated by autograd
        output, hy, cy, _ = reference.rnn_forward(*args)
    else:
        output, hy, cy, _ = torch.ops.fused_rnn.rnn_forward(*args)
    if batch_first:
        output = output.transpose(0, 1)
    return output, hy, (cy if mode == "LSTM" else None), forward, backward


def _time_major_shape(input: Tensor, batch_first: bool):
    """(T, B) of a 3-D input."""
    return (input.shape[1], input.shape[0]) if batch_first else (input.shape[0], input.shape[1])


def _fn(mode):
    def f(input: Tensor, hx, weights: list, has_biases: bool = True, num_layers: int = 1,
          dropout: float = 0.0, train: bool = False, bidirectional: bool = False,
          batch_first: bool = False, proj_size: int = 0, lengths: Tensor | None = None,
          backend: str | None = None):
        h, c = hx if mode == "LSTM" else (hx, None)
        out, hy, cy, _, _ = run(
            mode, input, weights, h, c, num_layers=num_layers, bidirectional=bidirectional,
            has_biases=has_biases, proj_size=proj_size, dropout=dropout, train=train,
            batch_first=batch_first, lengths=lengths, backend=backend,
        )
        return (out, hy, cy) if mode == "LSTM" else (out, hy)

    f.__name__ = mode.lower()
    f.__doc__ = (
        f"{mode} stack, like ``torch._VF.{mode.lower()}``: returns "
        + ("(output, h_n, c_n); hx is (h_0, c_0)." if mode == "LSTM" else "(output, h_n).")
    )
    return f


lstm = _fn("LSTM")
gru = _fn("GRU")
rnn_tanh = _fn("RNN_TANH")
rnn_relu = _fn("RNN_RELU")
