"""Functional entry points: the stack as a function of input, weights and state.

The modules call :func:`run`; users who keep weights themselves call
:func:`lstm`, :func:`gru`, :func:`rnn_tanh` or :func:`rnn_relu`, whose
arguments follow ``torch._VF.lstm`` & co.: ``weights`` is a flat list in
``nn.LSTM._flat_weights`` order (per layer, per direction: w_ih, w_hh,
[b_ih, b_hh], [w_hr]).

Shapes follow torch.nn: input (T, B, I), or (B, T, I) with batch_first; hx
(L*D, B, Hout) (never batch-first). ``lengths`` (int64, one per sequence,
any order) masks each sequence past its length: its state is frozen and its
output rows are zero, as with a PackedSequence.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import ops
from .dropout import draw_seed

# Autocast policy of torch.nn's RNNs: on CUDA all of them run in the autocast
# dtype; on CPU only lstm is in the lower-precision list.
_AUTOCAST_MODES = {"cuda": ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"), "cpu": ("LSTM",)}


def _autocast(mode, device_type, tensors):
    if device_type not in _AUTOCAST_MODES or not torch.is_autocast_enabled(device_type):
        return tensors
    if mode not in _AUTOCAST_MODES[device_type]:
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return [None if t is None else (t.to(dtype) if t.is_floating_point() else t) for t in tensors]


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
):
    """The stack; returns (output, hy, cy or None, forward_backend, backward_backend).

    The backends say which path runs and why: the forward's (ran), and the
    backward's (will run, when a gradient is needed; None otherwise).
    """
    input, hx, cx, *weights = _autocast(mode, input.device.type, [input, hx, cx, *weights])
    _check_same(input, weights, "parameter")
    _check_same(input, (hx, cx), "hidden")
    if batch_first:
        input = input.transpose(0, 1)
    input = input.contiguous()
    if lengths is not None:
        lengths = lengths.to(device=input.device, dtype=torch.int64)
    p = float(dropout) if (train and num_layers > 1) else 0.0
    seed = draw_seed(input.device) if p > 0 else None
    need_reserve = (
        torch.is_grad_enabled()
        and any(t is not None and t.requires_grad for t in (input, hx, cx, *weights))
    )
    args = (input, list(weights), hx.contiguous(), None if cx is None else cx.contiguous(),
            lengths, seed, mode, num_layers, bidirectional, has_biases, proj_size, p, need_reserve)
    backward = None
    if torch.compiler.is_compiling():
        forward = "decided at run time (inside torch.compile)"
        if need_reserve:
            backward = forward
    else:
        ops._check_seq_len(input)
        forward = ops.plan(*args)[1]
        if need_reserve:
            backward = ops.plan(*args, which="backward")[1]
    output, hy, cy, _ = torch.ops.fused_rnn.rnn_forward(*args)
    if batch_first:
        output = output.transpose(0, 1)
    return output, hy, (cy if mode == "LSTM" else None), forward, backward


def _fn(mode):
    def f(input: Tensor, hx, weights: list, has_biases: bool = True, num_layers: int = 1,
          dropout: float = 0.0, train: bool = False, bidirectional: bool = False,
          batch_first: bool = False, proj_size: int = 0, lengths: Tensor | None = None):
        h, c = hx if mode == "LSTM" else (hx, None)
        out, hy, cy, _, _ = run(
            mode, input, weights, h, c, num_layers=num_layers, bidirectional=bidirectional,
            has_biases=has_biases, proj_size=proj_size, dropout=dropout, train=train,
            batch_first=batch_first, lengths=lengths,
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
