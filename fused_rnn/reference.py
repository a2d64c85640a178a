"""The reference stack: a pure-PyTorch multi-layer, bidirectional LSTM / GRU / RNN.

It is the CPU path, the fallback on CUDA and the test oracle. Weights come in
torch.nn's layout and order (``module._flat_weights``), so it computes exactly
what ``torch.nn.LSTM/GRU/RNN`` computes, and it is differentiable by autograd.

Per layer and direction: one input GEMM over all timesteps, then the
recurrent loop. Variable lengths are handled by masking per sequence (the
state is frozen past each sequence's length and those output rows are zero),
so packed sequences need no splitting of the batch. The signature is the
``fused_rnn::rnn_forward`` op's; see csrc/README.md for the contract and the
layout of ``reserve``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dropout import apply_dropout

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def weights_per_direction(has_biases: bool, proj_size: int) -> int:
    return 2 + 2 * int(has_biases) + int(proj_size > 0)


def reserve_width(mode: str, hidden_size: int, proj_size: int) -> int:
    """Columns S of the reserve (L*D, T, B, S); see csrc/README.md."""
    h_out = proj_size if proj_size > 0 else hidden_size
    if mode == "LSTM":
        return 5 * hidden_size + h_out
    if mode == "GRU":
        return 5 * hidden_size
    return hidden_size


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """16-bit inputs are computed in float32 (as the kernel's fp32 accumulation)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _split_weights(weights, layer, direction, num_directions, has_biases, proj_size):
    stride = weights_per_direction(has_biases, proj_size)
    w = list(weights[(layer * num_directions + direction) * stride:][:stride])
    w_ih, w_hh = w[0], w[1]
    b_ih = b_hh = w_hr = None
    if has_biases:
        b_ih, b_hh = w[2], w[3]
    if proj_size > 0:
        w_hr = w[-1]
    return w_ih, w_hh, b_ih, b_hh, w_hr


def _run_direction(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, need_reserve):
    """One layer, one direction. x: (T, B, in). Returns (out (T,B,Hout), h_n, c_n, reserve rows)."""
    T = x.shape[0]
    H = w_hh.shape[0] // GATES[mode]
    xp = torch.matmul(x, w_ih.t())  # (T, B, G*H): the input GEMM for all timesteps
    if b_ih is not None:
        xp = xp + b_ih
    outs: list = [None] * T
    saved: list = [None] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        hh = torch.matmul(h, w_hh.t())
        if b_hh is not None:
            hh = hh + b_hh
        if mode == "LSTM":
            gi, gf, gg, go = (xp[t] + hh).chunk(4, dim=1)
            i, f, g, o = gi.sigmoid(), gf.sigmoid(), gg.tanh(), go.sigmoid()
            c_new = f * c + i * g
            h_new = o * c_new.tanh()
            if w_hr is not None:
                h_new = torch.matmul(h_new, w_hr.t())
            gates = (i, f, g, o)
        elif mode == "GRU":
            xr, xz, xn = xp[t].chunk(3, dim=1)
            hr, hz, hn = hh.chunk(3, dim=1)
            r = (xr + hr).sigmoid()
            z = (xz + hz).sigmoid()
            n = (xn + r * hn).tanh()
            h_new = (1 - z) * n + z * h
            gates = (r, z, n, hn)
        else:
            pre = xp[t] + hh
            h_new = pre.tanh() if mode == "RNN_TANH" else F.relu(pre)
            gates = ()
        if lengths is not None:
            valid = (t < lengths).unsqueeze(1)  # (B, 1)
            h = torch.where(valid, h_new, h)
            outs[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
            if mode == "LSTM":
                c = torch.where(valid, c_new, c)
        else:
            h = outs[t] = h_new
            if mode == "LSTM":
                c = c_new
        if need_reserve:
            saved[t] = torch.cat(gates + ((c,) if mode == "LSTM" else ()) + (h,), dim=1)
    out = torch.stack(outs)
    res = torch.stack(saved) if need_reserve else None
    return out, h, c, res


def rnn_forward(
    input: torch.Tensor,
    weights: list,
    hx: torch.Tensor,
    cx: torch.Tensor | None,
    lengths: torch.Tensor | None,
    seed: torch.Tensor | None,
    mode: str,
    num_layers: int,
    bidirectional: bool,
    has_biases: bool,
    proj_size: int,
    dropout: float,
    need_reserve: bool,
):
    """The stack, as the ``fused_rnn::rnn_forward`` op defines it.

    input (T, B, I) time-major; weights in ``_flat_weights`` order; hx
    (L*D, B, Hout); cx (L*D, B, H) for LSTM else None; lengths int64 (B,) or
    None; seed 0-d int64 tensor (needed when dropout > 0 and L > 1).
    Returns (output (T, B, D*Hout), hy, cy (or an empty tensor), reserve).
    """
    if mode not in GATES:
        raise ValueError(f"fused_rnn: unknown mode {mode!r}")
    device_type = input.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        # Inside the op the precision is the one asked for, not autocast's.
        with torch.autocast(device_type, enabled=False):
            return rnn_forward(input, weights, hx, cx, lengths, seed, mode, num_layers,
                               bidirectional, has_biases, proj_size, dropout, need_reserve)
    dtype = input.dtype
    cdt = compute_dtype(dtype)
    D = 2 if bidirectional else 1
    T, B = input.shape[0], input.shape[1]
    use_dropout = dropout > 0 and num_layers > 1
    if use_dropout and seed is None:
        raise ValueError("fused_rnn: dropout > 0 needs a seed tensor")
    if lengths is not None:
        lengths = lengths.to(device=input.device, dtype=torch.int64)
    cast = (lambda w: None if w is None else w.to(cdt))
    layer_input = zero_padding(input.to(cdt), lengths)
    h_n, c_n, reserves = [], [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh, w_hr = map(
                cast, _split_weights(weights, layer, d, D, has_biases, proj_size)
            )
            row = layer * D + d
            c0 = cx[row].to(cdt) if mode == "LSTM" else None
            out, h, c, res = _run_direction(
                mode, layer_input, hx[row].to(cdt), c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                lengths, reverse=(d == 1), need_reserve=need_reserve,
            )
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
            reserves.append(res)
        layer_out = outs[0] if D == 1 else torch.cat(outs, dim=2)
        if use_dropout and layer < num_layers - 1:
            layer_input = apply_dropout(layer_out, seed, layer, dropout, D)
        else:
            layer_input = layer_out
    output = layer_input.to(dtype)
    hy = torch.stack(h_n).to(dtype)
    cy = torch.stack(c_n).to(dtype) if mode == "LSTM" else input.new_empty((0,))
    if need_reserve:
        reserve = torch.stack(reserves).to(dtype)
    else:
        reserve = input.new_empty((0,))
    return output, hy, cy, reserve


def zero_padding(x, lengths):
    """x (T, B, ...) with the rows past each length zero: whatever the padding holds (NaN
    included) reaches neither an output nor a gradient (the weight gradients sum over all
    rows). Selected, not multiplied, so that NaN * 0 cannot appear."""
    if lengths is None:
        return x
    valid = torch.arange(x.shape[0], device=x.device).unsqueeze(1) < lengths.unsqueeze(0)
    return torch.where(valid.unsqueeze(2), x, x.new_zeros(()))


def reserve_shape(mode, num_layers, bidirectional, T, B, hidden_size, proj_size):
    D = 2 if bidirectional else 1
    return (num_layers * D, T, B, reserve_width(mode, hidden_size, proj_size))


# ----------------------------------------------------------------------------- backward


def _layer_outputs(reserve_rows, lengths, h_out, T, B):
    """Layer output (T, B, D*Hout) rebuilt from the reserve's h columns (zero past lengths)."""
    outs = [r[..., -h_out:] for r in reserve_rows]
    y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return zero_padding(y, lengths)


def _backward_direction(mode, dy, dh, dc, x, res, h0, c0, w_ih, w_hh, w_hr, lengths, reverse):
    """BPTT through one layer, one direction, from its reserve rows.

    dy (T, B, Hout): gradient w.r.t. this direction's outputs; dh/dc: w.r.t. its
    final state. Returns (dgates_ih (T,B,G*H), dgates_hh, dx, dh0, dc0, dw_hr).
    """
    T, B = res.shape[0], res.shape[1]
    H = w_hh.shape[0] // GATES[mode]
    h_out = h0.shape[-1]
    hs = res[..., -h_out:]
    if reverse:
        h_prev_seq = torch.cat([hs[1:], h0.unsqueeze(0)])
    else:
        h_prev_seq = torch.cat([h0.unsqueeze(0), hs[:-1]])
    if mode == "LSTM":
        cs = res[..., 4 * H:5 * H]
        c_prev_seq = torch.cat([cs[1:], c0.unsqueeze(0)]) if reverse else torch.cat(
            [c0.unsqueeze(0), cs[:-1]])
    dg_ih = res.new_zeros(T, B, GATES[mode] * H)
    dg_hh = dg_ih if mode != "GRU" else res.new_zeros(T, B, 3 * H)
    dw_hr = torch.zeros_like(w_hr) if w_hr is not None else None
    steps = range(T) if reverse else range(T - 1, -1, -1)
    for t in steps:
        if lengths is not None:
            valid = (t < lengths).unsqueeze(1)
            v = valid.to(res.dtype)
            # Gate columns of frozen steps are not used: select, never multiply
            # by zero, so whatever they hold cannot turn into NaN.
            r = torch.where(valid, res[t], torch.zeros((), dtype=res.dtype, device=res.device))
        else:
            v = torch.ones((), dtype=res.dtype, device=res.device)
            r = res[t]
        dh_new = v * (dy[t] + dh)
        dh_skip = (1 - v) * dh  # a frozen step passes the gradient through unchanged
        if mode == "LSTM":
            i, f, g, o = r[:, :4 * H].chunk(4, dim=1)
            c = r[:, 4 * H:5 * H]
            tc = c.tanh()
            if w_hr is not None:
                dw_hr += dh_new.t() @ (o * tc)
                dm = dh_new @ w_hr
            else:
                dm = dh_new
            dc_new = v * dc + dm * o * (1 - tc * tc)
            da = torch.cat([dc_new * g * i * (1 - i), dc_new * c_prev_seq[t] * f * (1 - f),
                            dc_new * i * (1 - g * g), dm * tc * o * (1 - o)], dim=1)
            dg_ih[t] = da
            dh = da @ w_hh + dh_skip
            dc = dc_new * f + (1 - v) * dc
        elif mode == "GRU":
            rr, z, n, hn = r[:, :H], r[:, H:2 * H], r[:, 2 * H:3 * H], r[:, 3 * H:4 * H]
            dan = dh_new * (1 - z) * (1 - n * n)
            dar = dan * hn * rr * (1 - rr)
            daz = dh_new * (h_prev_seq[t] - n) * z * (1 - z)
            dg_ih[t] = torch.cat([dar, daz, dan], dim=1)
            dg_hh[t] = torch.cat([dar, daz, dan * rr], dim=1)
            dh = dg_hh[t] @ w_hh + dh_new * z + dh_skip
        else:
            h = r[:, -H:]
            act = (1 - h * h) if mode == "RNN_TANH" else (h > 0).to(h.dtype)
            da = dh_new * act
            dg_ih[t] = da
            dh = da @ w_hh + dh_skip
    dx = dg_ih @ w_ih
    return dg_ih, dg_hh, dx, h_prev_seq, dh, dc, dw_hr


def rnn_backward(grad_output, grad_hy, grad_cy, input, weights, hx, cx, lengths, seed,
                 reserve, mode, num_layers, bidirectional, has_biases, proj_size, dropout):
    """Gradients of :func:`rnn_forward` by backpropagation through time over its reserve.

    The same algorithm as the CUDA backward: top layer first, each direction
    in reverse processing order, gate gradients for all t kept, then the
    weight gradients as a few GEMMs. Dropout masks are regenerated from the
    seed. Returns (grad_input, grad_weights (list, flat order), grad_hx, grad_cx).
    """
    device_type = input.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return rnn_backward(grad_output, grad_hy, grad_cy, input, weights, hx, cx, lengths,
                                seed, reserve, mode, num_layers, bidirectional, has_biases,
                                proj_size, dropout)
    dtype = input.dtype
    cdt = compute_dtype(dtype)
    D = 2 if bidirectional else 1
    T, B = input.shape[0], input.shape[1]
    H = weights[0].shape[0] // GATES[mode]
    h_out = proj_size if proj_size > 0 else H
    use_dropout = dropout > 0 and num_layers > 1
    if lengths is not None:
        lengths = lengths.to(device=input.device, dtype=torch.int64)
    res = reserve.to(cdt)
    stride = weights_per_direction(has_biases, proj_size)
    grad_w = [None] * len(weights)
    grad_hx = torch.zeros_like(hx, dtype=cdt)
    grad_cx = torch.zeros_like(cx, dtype=cdt) if mode == "LSTM" else None
    dy = grad_output.to(cdt)
    for layer in range(num_layers - 1, -1, -1):
        if layer == 0:
            x = zero_padding(input.to(cdt), lengths)
        else:
            x = _layer_outputs([res[(layer - 1) * D + d] for d in range(D)], lengths, h_out, T, B)
            if use_dropout:
                x = apply_dropout(x, seed, layer - 1, dropout, D)
        dx = torch.zeros_like(x)
        for d in range(D):
            row = layer * D + d
            w_ih, w_hh, _, _, w_hr = (
                None if w is None else w.to(cdt)
                for w in _split_weights(weights, layer, d, D, has_biases, proj_size)
            )
            c0 = cx[row].to(cdt) if mode == "LSTM" else None
            dc = grad_cy[row].to(cdt) if mode == "LSTM" else None
            dg_ih, dg_hh, dx_d, h_prev, dh0, dc0, dw_hr = _backward_direction(
                mode, dy[..., d * h_out:(d + 1) * h_out], grad_hy[row].to(cdt), dc, x, res[row],
                hx[row].to(cdt), c0, w_ih, w_hh, w_hr, lengths, reverse=(d == 1),
            )
            dx += dx_d
            grad_hx[row] = dh0
            if mode == "LSTM":
                grad_cx[row] = dc0
            base = row * stride
            grad_w[base] = torch.einsum("tbg,tbi->gi", dg_ih, x)
            grad_w[base + 1] = torch.einsum("tbg,tbh->gh", dg_hh, h_prev)
            if has_biases:
                grad_w[base + 2] = dg_ih.sum((0, 1))
                grad_w[base + 3] = dg_hh.sum((0, 1))
            if proj_size > 0:
                grad_w[base + stride - 1] = dw_hr
        if layer == 0:
            grad_input = dx
        else:
            if use_dropout:
                dx = apply_dropout(dx, seed, layer - 1, dropout, D)
            dy = dx
    grad_w = [g.to(w.dtype) for g, w in zip(grad_w, weights)]
    grad_cx = grad_cx.to(dtype) if grad_cx is not None else input.new_empty((0,))
    return grad_input.to(dtype), grad_w, grad_hx.to(dtype), grad_cx
