"""Functional entry points: the stack as a function of input, weights and state.

The modules call :func:`run`; users who keep weights themselves call
:func:`lstm`, :func:`gru`, :func:`rnn_tanh` or :func:`rnn_relu`, whose
arguments follow ``torch._VF.lstm`` & co.: ``weights`` is a flat list in
``nn.LSTM._flat_weights`` order (per layer, per direction: w_ih, w_hh,
[b_ih, b_hh], [w_hr]).

Shapes follow torch.nn: input (T, B, I), or (B, T, I) with batch_first; hx
(L*D, B, Hout) (never batch-first; None: zeros). ``lengths`` (integers, one per
sequence, any order, each in 1..T) masks each sequence past its length: its state
is frozen, its output rows are zero and its input rows there never reach a
gradient, as with a PackedSequence.

Every argument is checked once, before any path runs, with torch.nn's message
where torch.nn has one (``torch._VF`` itself checks little and may read out of
bounds). A ``lengths`` tensor on the CPU is checked value by value; one on a GPU
only where its values are read anyway (the native path packs on the CPU), since
checking it elsewhere would wait for the GPU.

Which path runs (fused kernel, torch's own ``torch._VF`` implementation, or the
reference stack) is decided per call by :func:`fused_rnn.dispatch.decide`;
``backend=`` asks for one for this call (see :func:`fused_rnn.backend`).
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import ops, reference
from .dispatch import _check_name, behind_graph_break, decide, register_graph_break
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
    if lengths.device.type != "cpu":  # values read here anyway: checked (a CPU one was)
        lengths = lengths.cpu()
        check_length_values(lengths, T)
    packed = pack_padded_sequence(input, lengths, batch_first=batch_first,
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


register_graph_break("functional", _native)


def check_length_values(lengths: Tensor, T: int) -> None:
    """Each length in 1..T (torch's message for one below 1); `lengths` on the CPU."""
    if lengths.numel() == 0:
        return
    low, high = int(lengths.min()), int(lengths.max())
    if low <= 0:
        raise RuntimeError("Length of all samples has to be greater than 0, but found an "
                           "element in 'lengths' that is <= 0")
    if high > T:
        raise RuntimeError(f"Length of all samples has to be at most the sequence length {T}, "
                           f"but found an element in 'lengths' that is {high}")


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
    caller: str | None = None,
):
    """The stack; returns (output, hy, cy or None, forward_backend, backward_backend).

    The backends say which path runs and why (:func:`fused_rnn.dispatch.decide`): the
    forward's (ran), and the backward's (will run, when a gradient is needed; None
    otherwise). ``backend`` is a per-call request ("auto", "fused", "native",
    "reference"; None: inherit), below a ``fused_rnn.backend(...)`` context; ``caller``
    names the function that passed it (None: a module's ``backend``).
    ``path`` ("fused" or "reference") skips the decision: the modules decide before
    they reshape their input and pass the answer here (their padding is zeros already).
    Arguments are not checked here: :func:`check_args` (the functional API) or the
    modules' torch checks come first.
    """
    input, hx, cx, *weights = _autocast(mode, input.device.type, [input, hx, cx, *weights])
    _check_same(input, weights, "parameter")
    _check_same(input, (hx, cx), "hidden")
    if input.dim() != 3:
        raise RuntimeError(f"input must have 3 dimensions, got {input.dim()}")
    p = float(dropout) if (train and num_layers > 1) else 0.0
    # torch.jit.trace records the op with need_reserve as a constant: a trace keeps the
    # reserve whenever a tensor requires grad, so that its check (and a later training use)
    # under no_grad sees the same graph
    need_reserve = (
        (torch.is_grad_enabled() or torch.jit.is_tracing())
        and any(t is not None and t.requires_grad for t in (input, hx, cx, *weights))
    )
    mask_padding = lengths is not None and path is None
    forward = backward = None
    if path is None:
        T, B = _time_major_shape(input, batch_first)
        I, H = weights[0].shape[1], weights[0].shape[0] // reference.GATES[mode]
        d = decide(mode, input.device, input.dtype, T, B, I, H, num_layers=num_layers,
                   bidirectional=bidirectional, has_biases=has_biases, proj_size=proj_size,
                   dropout=p, need_grad=need_reserve, has_lengths=lengths is not None,
                   module_backend=backend, caller=caller)
        path, forward, backward = d
        if path == "native":
            native = (behind_graph_break("functional", forward)
                      if torch.compiler.is_compiling() else _native)
            output, hy, cy = native(mode, input, weights, hx, cx, lengths,
                                    num_layers=num_layers, bidirectional=bidirectional,
                                    has_biases=has_biases, dropout=float(dropout), train=train,
                                    batch_first=batch_first)
            return output, hy, cy, forward, backward
    if lengths is not None:
        lengths = lengths.to(device=input.device, dtype=torch.int64)
    if batch_first:
        input = input.transpose(0, 1)
    if mask_padding and path == "fused":
        # the kernel's weight-gradient GEMMs read every input row: rows past a length zeroed
        # (NaN there never reaches a gradient); the reference zeroes them itself
        input = reference.zero_padding(input, lengths)
    input = input.contiguous()
    ops._check_seq_len(input)
    seed = draw_seed(input.device) if p > 0 else None
    args = (input, list(weights), hx.contiguous(), None if cx is None else cx.contiguous(),
            lengths, seed, mode, num_layers, bidirectional, has_biases, proj_size, p, need_reserve)
    if path == "reference" and input.device.type != "cpu":
        # the op's CUDA kernel would take the fused kernel where it covers the call: the
        # reference stack directly, differentiated by autograd
        output, hy, cy, _ = reference.rnn_forward(*args)
    elif torch._C._are_functorch_transforms_active():
        # torch.func.grad & co. cannot differentiate a custom op's registered autograd (and
        # torch.func.jvp would treat it as constant): the same two ops through an
        # autograd.Function that supports grad / vjp and refuses what it cannot do
        output, hy, cy, _ = ops.rnn_forward_for_functorch(*args)
    else:
        output, hy, cy, _ = torch.ops.fused_rnn.rnn_forward(*args)
    if batch_first:
        output = output.transpose(0, 1)
    return output, hy, (cy if mode == "LSTM" else None), forward, backward


def _time_major_shape(input: Tensor, batch_first: bool):
    """(T, B) of a 3-D input."""
    return (input.shape[1], input.shape[0]) if batch_first else (input.shape[0], input.shape[1])


_BOOLS = ("has_biases", "train", "bidirectional", "batch_first")


def _weight_names(num_layers: int, D: int, has_biases: bool, proj_size: int) -> list:
    """nn.LSTM's parameter names, in ``_flat_weights`` order."""
    names = []
    for layer in range(num_layers):
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            names += [f"weight_ih{sfx}", f"weight_hh{sfx}"]
            if has_biases:
                names += [f"bias_ih{sfx}", f"bias_hh{sfx}"]
            if proj_size > 0:
                names.append(f"weight_hr{sfx}")
    return names


def check_args(mode: str, input, hx, weights, *, has_biases, num_layers, dropout, train,
               bidirectional, batch_first, proj_size, lengths, backend, caller: str) -> None:
    """Every argument of a functional call, once, before any path runs: torch.nn's exception
    and message where torch.nn has one (its constructor's, its forward's), a message naming
    the argument otherwise. ``hx`` is None, a tensor, or (h_0, c_0) for LSTM."""
    G = reference.GATES[mode]
    for name, value in zip(_BOOLS, (has_biases, train, bidirectional, batch_first)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    if isinstance(num_layers, bool) or not isinstance(num_layers, numbers.Integral):
        raise TypeError(f"num_layers should be of type int, got: {type(num_layers).__name__}")
    if num_layers <= 0:
        raise ValueError("num_layers must be greater than zero")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
            or not 0 <= dropout <= 1:
        raise ValueError("dropout should be a number in range [0, 1] representing the "
                         "probability of an element being zeroed")
    if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral):
        raise TypeError(f"proj_size should be of type int, got: {type(proj_size).__name__}")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size > 0 and mode != "LSTM":
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
    if backend is not None:
        _check_name(backend, caller)
    if not isinstance(input, Tensor):
        raise TypeError(f"{caller}: input must be a Tensor, got {type(input).__name__}")
    if input.dim() != 3:
        raise RuntimeError(f"input must have 3 dimensions, got {input.dim()}")

    D = 2 if bidirectional else 1
    names = _weight_names(num_layers, D, has_biases, proj_size)
    if not isinstance(weights, (list, tuple)) or not all(isinstance(w, Tensor) for w in weights):
        raise TypeError(f"{caller}: weights must be a list of Tensors (nn.{mode}'s "
                        "_flat_weights order)")
    w0 = weights[0] if len(weights) else None
    if w0 is not None and (w0.dim() != 2 or w0.shape[0] == 0 or w0.shape[0] % G != 0):
        raise ValueError(f"{caller}: weights[0] (weight_ih_l0) must have shape ({G} * "
                         f"hidden_size, input_size), got {tuple(w0.shape)}")
    if w0 is not None and proj_size >= w0.shape[0] // G:
        raise ValueError("proj_size has to be smaller than hidden_size")
    if len(weights) != len(names):
        per = "w_ih, w_hh" + (", b_ih, b_hh" if has_biases else "") + (
            ", w_hr" if proj_size > 0 else "")
        raise ValueError(
            f"{caller}: expected {len(names)} weights ({per} per layer and direction, for "
            f"num_layers={num_layers}, bidirectional={bidirectional}, has_biases={has_biases}, "
            f"proj_size={proj_size}), got {len(weights)}")
    H, I = w0.shape[0] // G, w0.shape[1]
    h_out = proj_size if proj_size > 0 else H
    for i, (w, name) in enumerate(zip(weights, names)):
        kind = name.split("_l")[0]
        layer = int(name.split("_l")[1].split("_")[0])
        want = {"weight_ih": (G * H, I if layer == 0 else D * h_out), "weight_hh": (G * H, h_out),
                "bias_ih": (G * H,), "bias_hh": (G * H,), "weight_hr": (proj_size, H)}[kind]
        if tuple(w.shape) != want:
            raise ValueError(f"{caller}: weights[{i}] ({name}) must have shape {want}, got "
                             f"{tuple(w.shape)}")
    if input.size(-1) != I:
        raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {I}, got "
                           f"{input.size(-1)}")

    T, B = _time_major_shape(input, batch_first)
    if hx is not None:
        if mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise RuntimeError("lstm expects two hidden states")
            states = ((hx[0], h_out, "Expected hidden[0] size {}, got {}"),
                      (hx[1], H, "Expected hidden[1] size {}, got {}"))
        else:
            states = ((hx, h_out, "Expected hidden size {}, got {}"),)
        for state, width, msg in states:
            if not isinstance(state, Tensor):
                raise TypeError(f"{caller}: hx must be "
                                + ("(h_0, c_0), two Tensors" if mode == "LSTM" else "a Tensor")
                                + f", got {type(state).__name__}")
            want = (num_layers * D, B, width)
            if tuple(state.shape) != want:
                raise RuntimeError(msg.format(want, list(state.shape)))

    if lengths is not None:
        if not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.is_floating_point() \
                or lengths.is_complex() or lengths.dtype == torch.bool:
            what = (f"a {lengths.dim()}-D {lengths.dtype} tensor" if isinstance(lengths, Tensor)
                    else type(lengths).__name__)
            raise ValueError(f"{caller}: lengths must be a 1-D tensor of integers, got {what}")
        if lengths.numel() != B:
            raise RuntimeError(f"Expected `len(lengths)` to be equal to batch_size, but got "
                               f"{lengths.numel()} (batch_size={B})")
        if lengths.device.type == "cpu" and not torch.compiler.is_compiling():
            check_length_values(lengths, T)


def _zeros_state(mode, input, weights, num_layers, bidirectional, batch_first, proj_size):
    """hx = None: zeros, as torch.nn's modules start."""
    G = reference.GATES[mode]
    H = weights[0].shape[0] // G
    _, B = _time_major_shape(input, batch_first)
    rows = num_layers * (2 if bidirectional else 1)
    h = input.new_zeros(rows, B, proj_size if proj_size > 0 else H)
    return (h, input.new_zeros(rows, B, H)) if mode == "LSTM" else h


def _fn(mode):
    name = f"fused_rnn.functional.{mode.lower()}"

    def f(input: Tensor, hx, weights: list, has_biases: bool = True, num_layers: int = 1,
          dropout: float = 0.0, train: bool = False, bidirectional: bool = False,
          batch_first: bool = False, proj_size: int = 0, lengths: Tensor | None = None,
          backend: str | None = None):
        check_args(mode, input, hx, weights, has_biases=has_biases, num_layers=num_layers,
                   dropout=dropout, train=train, bidirectional=bidirectional,
                   batch_first=batch_first, proj_size=proj_size, lengths=lengths,
                   backend=backend, caller=name)
        num_layers, proj_size, dropout = int(num_layers), int(proj_size), float(dropout)
        if hx is None:
            hx = _zeros_state(mode, input, weights, num_layers, bidirectional, batch_first,
                              proj_size)
        h, c = hx if mode == "LSTM" else (hx, None)
        out, hy, cy, _, _ = run(
            mode, input, list(weights), h, c, num_layers=num_layers, bidirectional=bidirectional,
            has_biases=has_biases, proj_size=proj_size, dropout=dropout, train=train,
            batch_first=batch_first, lengths=lengths, backend=backend, caller=name,
        )
        return (out, hy, cy) if mode == "LSTM" else (out, hy)

    f.__name__ = mode.lower()
    f.__qualname__ = mode.lower()
    f.__doc__ = (
        f"{mode} stack, like ``torch._VF.{mode.lower()}``: returns "
        + ("(output, h_n, c_n); hx is (h_0, c_0) or None (zeros)." if mode == "LSTM"
           else "(output, h_n); hx is h_0 or None (zeros).")
        + " Every argument is checked first (torch.nn's messages)."
    )
    return f


lstm = _fn("LSTM")
gru = _fn("GRU")
rnn_tanh = _fn("RNN_TANH")
rnn_relu = _fn("RNN_RELU")
