"""Shared by the GPU tests of the fused kernels (test_forward_gpu.py, test_backward_gpu.py):
the problem description, random inputs quantised to a case's dtype, the extension, the
allocator poison, cuDNN (torch.nn) on the same weights, the error measure.

Imported as a top-level module (pytest puts tests/gpu on sys.path); importing it needs no
GPU, so the GPU tests still collect (and skip) on a machine without one.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from fused_rnn import reference

DTYPE = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
         "bf16": torch.bfloat16}
NN = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}


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


def make_inputs(case: Case, seed: int = 0, backward: bool = False):
    """Random weights (torch's init range), input, states, lengths; all quantised to the
    case's dtype on the GPU. The float64 reference gets the same quantised values.
    With `backward`, also output gradients (gout, ghy, gcy; drawn after the rest) and
    the dropout seed tensor (seed) of the case."""
    g = torch.Generator().manual_seed(seed)
    dt = DTYPE[case.prec]
    D = 2 if case.bidir else 1
    G = reference.GATES[case.mode]
    k = 1.0 / math.sqrt(case.H)

    def rnd(*shape, scale=1.0, uniform=False):
        t = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * scale if uniform \
            else torch.randn(shape, generator=g, dtype=torch.float64) * scale
        return t.to(dt).cuda()

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
        lengths = lengths.cuda()
    inp = dict(x=x, w=weights, hx=hx, cx=cx, lengths=lengths)
    if backward:
        inp["gout"] = rnd(case.T, case.B, D * case.H)
        inp["ghy"] = rnd(case.L * D, case.B, case.H)
        inp["gcy"] = rnd(case.L * D, case.B, case.H) if case.mode == "LSTM" else None
        inp["seed"] = torch.tensor(123456789 + case.B, dtype=torch.int64, device="cuda") \
            if case.dropout > 0 and case.L > 1 else None
    return inp


def cudnn_module(case: Case, inp):
    """torch.nn (cuDNN) at the case's dtype, holding the weights of `inp`."""
    kw = dict(num_layers=case.L, bias=case.bias, bidirectional=case.bidir,
              dtype=DTYPE[case.prec], device="cuda")
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
    """max |got - ref| / max(1, max |ref|), in float64."""
    if got is None or ref is None or ref.numel() == 0:
        return 0.0
    ref = ref.double()
    return ((got.double() - ref).abs().max() / max(1.0, ref.abs().max().item())).item()
