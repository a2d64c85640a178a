"""The custom ops ``fused_rnn::rnn_forward`` and ``fused_rnn::rnn_backward``.

Each schema is written once, here. Per device:

* CPU (and any device but CUDA): the reference stack (``reference.py``);
  its backward is backpropagation through time over the saved ``reserve``.
* CUDA: the fused persistent kernel of ``fused_rnn._C`` when its planner
  says the call is covered, otherwise the reference ops on the CUDA tensors.
  Both directions of the decision are reported by :func:`plan`.

The modules and :mod:`fused_rnn.functional` call these ops only on the paths
:func:`fused_rnn.dispatch.decide` chose them for: ``fused`` (a CUDA call the
planners cover) and ``reference`` on a CPU; ``native`` calls torch's own
``torch._VF`` functions instead, and ``reference`` on CUDA the reference stack
directly.

``register_fake`` gives shapes to torch.compile / FakeTensor, and
``register_autograd`` connects the two ops. The contract (shapes, the
``reserve`` layout) is in csrc/README.md.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from ._build import load_extension

FORWARD_SCHEMA = (
    "(Tensor input, Tensor[] weights, Tensor hx, Tensor? cx, Tensor? lengths, "
    "Tensor? seed, str mode, int num_layers, bool bidirectional, bool has_biases, "
    "int proj_size, float dropout, bool need_reserve) "
    "-> (Tensor output, Tensor hy, Tensor cy, Tensor reserve)"
)
BACKWARD_SCHEMA = (
    "(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor input, Tensor[] weights, "
    "Tensor hx, Tensor? cx, Tensor? lengths, Tensor? seed, Tensor output, Tensor reserve, "
    "str mode, int num_layers, bool bidirectional, bool has_biases, int proj_size, "
    "float dropout) -> (Tensor grad_input, Tensor[] grad_weights, Tensor grad_hx, Tensor grad_cx)"
)

def _check_seq_len(input: Tensor) -> None:
    if input.shape[0] == 0:
        # torch's own message (ATen RNN.cpp)
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")


# --------------------------------------------------------------------------- plan


def plan_shape(mode: str, num_layers: int, bidirectional: bool, has_biases: bool,
               proj_size: int, I: int, H: int, B: int, T: int, dtype: torch.dtype,
               device_index: int, need_reserve: bool, has_lengths: bool, dropout: float, *,
               which: str = "forward") -> tuple[bool, str]:
    """Whether a fused CUDA kernel covers a CUDA call of this shape: (True, "fused: <plan>")
    or (False, why). ``which="forward"`` asks the forward kernel's planner (``_C.plan``),
    ``which="backward"`` the backward kernel's (``_C.plan_backward``)."""
    if which not in ("forward", "backward"):
        raise ValueError(f"fused_rnn.ops.plan: which must be 'forward' or 'backward', got {which!r}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return False, f"{dtype} is not covered by the fused kernel"
    ext = load_extension()
    if ext is None:
        from ._build import extension_status

        return False, f"CUDA extension unavailable ({extension_status()['reason']})"
    planner = ext.plan if which == "forward" else getattr(ext, "plan_backward", None)
    if planner is None:
        return False, "this build of the extension has no fused backward kernel"
    ok, why = planner(mode, num_layers, bidirectional, has_biases, proj_size, I, H, B, T, dtype,
                      device_index, need_reserve, has_lengths, float(dropout))
    return bool(ok), why


def plan(input: Tensor, weights, hx, cx, lengths, seed, mode, num_layers, bidirectional,
         has_biases, proj_size, dropout, need_reserve, *, which: str = "forward"
         ) -> tuple[bool, str]:
    """:func:`plan_shape` for the op's arguments (the backward also needs a saved reserve,
    which this does not check). A tensor off CUDA is never covered."""
    if which not in ("forward", "backward"):
        raise ValueError(f"fused_rnn.ops.plan: which must be 'forward' or 'backward', got {which!r}")
    if input.device.type != "cuda":
        return False, f"input on {input.device.type}, the fused kernel is CUDA-only"
    T, B, I = input.shape
    H = weights[0].shape[0] // reference.GATES[mode]
    index = input.device.index if input.device.index is not None else torch.cuda.current_device()
    return plan_shape(mode, num_layers, bidirectional, has_biases, proj_size, I, H, B, T,
                      input.dtype, index, need_reserve, lengths is not None, dropout, which=which)


# ----------------------------------------------------------------------- forward


@torch.library.custom_op("fused_rnn::rnn_forward", mutates_args=(), schema=FORWARD_SCHEMA)
def rnn_forward(input, weights, hx, cx, lengths, seed, mode, num_layers, bidirectional,
                has_biases, proj_size, dropout, need_reserve):
    _check_seq_len(input)
    return reference.rnn_forward(input, weights, hx, cx, lengths, seed, mode, num_layers,
                                 bidirectional, has_biases, proj_size, dropout, need_reserve)


@rnn_forward.register_kernel("cuda")
def _rnn_forward_cuda(input, weights, hx, cx, lengths, seed, mode, num_layers, bidirectional,
                      has_biases, proj_size, dropout, need_reserve):
    _check_seq_len(input)
    args = (input, weights, hx, cx, lengths, seed, mode, num_layers, bidirectional,
            has_biases, proj_size, dropout, need_reserve)
    if plan(*args)[0]:
        return torch.ops.fused_rnn._fused_forward(*args)
    return reference.rnn_forward(*args)


@rnn_forward.register_fake
def _rnn_forward_fake(input, weights, hx, cx, lengths, seed, mode, num_layers, bidirectional,
                      has_biases, proj_size, dropout, need_reserve):
    T, B = input.shape[0], input.shape[1]
    D = 2 if bidirectional else 1
    H = weights[0].shape[0] // reference.GATES[mode]
    h_out = proj_size if proj_size > 0 else H
    output = input.new_empty((T, B, D * h_out))
    hy = input.new_empty((num_layers * D, B, h_out))
    cy = input.new_empty((num_layers * D, B, H)) if mode == "LSTM" else input.new_empty((0,))
    if need_reserve:
        reserve = input.new_empty(
            reference.reserve_shape(mode, num_layers, bidirectional, T, B, H, proj_size)
        )
    else:
        reserve = input.new_empty((0,))
    return output, hy, cy, reserve


# ---------------------------------------------------------------------- backward


def _reference_backward(grad_output, grad_hy, grad_cy, input, weights, hx, cx, lengths, seed,
                        reserve, mode, num_layers, bidirectional, has_biases, proj_size, dropout):
    """BPTT over the reserve; a missing reserve (need_reserve was False) is recomputed."""
    if reserve.numel() == 0:
        reserve = reference.rnn_forward(input, weights, hx, cx, lengths, seed, mode, num_layers,
                                        bidirectional, has_biases, proj_size, dropout, True)[3]
    return reference.rnn_backward(grad_output, grad_hy, grad_cy, input, weights, hx, cx,
                                  lengths, seed, reserve, mode, num_layers, bidirectional,
                                  has_biases, proj_size, dropout)


@torch.library.custom_op("fused_rnn::rnn_backward", mutates_args=(), schema=BACKWARD_SCHEMA)
def rnn_backward(grad_output, grad_hy, grad_cy, input, weights, hx, cx, lengths, seed, output,
                 reserve, mode, num_layers, bidirectional, has_biases, proj_size, dropout):
    return _reference_backward(grad_output, grad_hy, grad_cy, input, weights, hx, cx, lengths,
                               seed, reserve, mode, num_layers, bidirectional, has_biases,
                               proj_size, dropout)


@rnn_backward.register_kernel("cuda")
def _rnn_backward_cuda(grad_output, grad_hy, grad_cy, input, weights, hx, cx, lengths, seed,
                       output, reserve, mode, num_layers, bidirectional, has_biases, proj_size,
                       dropout):
    options = (mode, num_layers, bidirectional, has_biases, proj_size, dropout)
    # The fused backward needs the forward's reserve (a forward run without
    # need_reserve saved none: the reference recomputes it) and its planner's yes.
    if (
        reserve.numel() > 0
        and plan(input, weights, hx, cx, lengths, seed, *options, True, which="backward")[0]
    ):
        return torch.ops.fused_rnn._fused_backward(
            grad_output, grad_hy, grad_cy, input, weights, hx, cx, lengths, seed, output,
            reserve, *options,
        )
    return _reference_backward(grad_output, grad_hy, grad_cy, input, weights, hx, cx, lengths,
                               seed, reserve, *options)


@rnn_backward.register_fake
def _rnn_backward_fake(grad_output, grad_hy, grad_cy, input, weights, hx, cx, lengths, seed,
                       output, reserve, mode, num_layers, bidirectional, has_biases, proj_size,
                       dropout):
    grad_cx = torch.empty_like(cx) if cx is not None else input.new_empty((0,))
    return (torch.empty_like(input), [torch.empty_like(w) for w in weights],
            torch.empty_like(hx), grad_cx)


# ---------------------------------------------------------------------- autograd


def _setup_context(ctx, inputs, output):
    (input, weights, hx, cx, lengths, seed, mode, num_layers, bidirectional, has_biases,
     proj_size, dropout, need_reserve) = inputs
    out, _, _, reserve = output
    ctx.options = (mode, num_layers, bidirectional, has_biases, proj_size, dropout)
    ctx.num_weights = len(weights)
    ctx.has_cx = cx is not None
    ctx.has_lengths = lengths is not None
    ctx.has_seed = seed is not None
    saved = [input, hx, out, reserve, *weights]
    for t in (cx, lengths, seed):
        if t is not None:
            saved.append(t)
    ctx.save_for_backward(*saved)


def _backward(ctx, grad_output, grad_hy, grad_cy, grad_reserve):
    input, hx, out, reserve, *rest = ctx.saved_tensors
    weights, rest = rest[:ctx.num_weights], rest[ctx.num_weights:]
    cx = rest.pop(0) if ctx.has_cx else None
    lengths = rest.pop(0) if ctx.has_lengths else None
    seed = rest.pop(0) if ctx.has_seed else None
    g_in, g_w, g_hx, g_cx = torch.ops.fused_rnn.rnn_backward(
        grad_output.contiguous(), grad_hy.contiguous(), grad_cy.contiguous(), input, weights,
        hx, cx, lengths, seed, out, reserve, *ctx.options,
    )
    return g_in, g_w, g_hx, (g_cx if ctx.has_cx else None), None, None, *([None] * 7)


rnn_forward.register_autograd(_backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "fused_rnn: double backward (gradients of gradients) through an RNN is not supported"
    )


rnn_backward.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


# ------------------------------------------------------------------- torch.func

# torch.func.grad / vjp / jacrev cannot differentiate a custom op's register_autograd (torch
# builds an autograd.Function without setup_context for it). Under those transforms the
# functional entry point calls the same two ops through these Functions, which have one.


class _RNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(options, input, hx, cx, lengths, seed, *weights):
        return torch.ops.fused_rnn.rnn_forward(input, list(weights), hx, cx, lengths, seed,
                                               *options, True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        options, input, hx, cx, lengths, seed, *weights = inputs
        ctx.options, ctx.num_weights, ctx.has_cx = options, len(weights), cx is not None
        ctx.mark_non_differentiable(output[3])
        ctx.save_for_backward(input, hx, cx, lengths, seed, output[0], output[3], *weights)

    @staticmethod
    def backward(ctx, grad_output, grad_hy, grad_cy, grad_reserve):
        input, hx, cx, lengths, seed, out, reserve, *weights = ctx.saved_tensors
        g_in, g_hx, g_cx, *g_w = _RNNBackwardFunction.apply(
            ctx.options, grad_output.contiguous(), grad_hy.contiguous(), grad_cy.contiguous(),
            input, hx, cx, lengths, seed, out, reserve, *weights)
        return (None, g_in, g_hx, g_cx if ctx.has_cx else None, None, None, *g_w)


class _RNNBackwardFunction(torch.autograd.Function):
    @staticmethod
    def forward(options, grad_output, grad_hy, grad_cy, input, hx, cx, lengths, seed, out,
                reserve, *weights):
        g_in, g_w, g_hx, g_cx = torch.ops.fused_rnn.rnn_backward(
            grad_output, grad_hy, grad_cy, input, list(weights), hx, cx, lengths, seed, out,
            reserve, *options)
        return (g_in, g_hx, g_cx, *g_w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        _no_double_backward(ctx)


def rnn_forward_for_functorch(input, weights, hx, cx, lengths, seed, mode, num_layers,
                              bidirectional, has_biases, proj_size, dropout, need_reserve):
    """``torch.ops.fused_rnn.rnn_forward`` (with its reserve) through an autograd.Function that
    torch.func transforms can differentiate (grad, vjp, jacrev; not vmap or forward mode)."""
    options = (mode, num_layers, bidirectional, has_biases, proj_size, dropout)
    return _RNNFunction.apply(options, input, hx, cx, lengths, seed, *weights)


# The extension registers fused_rnn::_fused_forward / _fused_backward when loaded;
# importing it here is lazy (first CUDA call), so a CPU machine never touches it.
__all__ = ["rnn_forward", "rnn_backward", "rnn_forward_for_functorch", "plan", "plan_shape",
           "FORWARD_SCHEMA", "BACKWARD_SCHEMA", "Tensor"]
